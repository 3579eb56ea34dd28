import Foundation
import Logging
import OpsBusCore
import OpsBusJournal
import OpsBusMQTT
import OpsBusRedis
import Synchronization

/// `opsbus processor`: turns events from MQTT into Redis state.
///
/// Delivery design (libmosquitto facts, see README "Delivery guarantees"): the processor subscribes at QoS 1 with a
/// persistent session and applies each message to Redis **synchronously inside the message handler**, on the MQTT
/// network thread. libmosquitto sends the PUBACK only after the handler returns, so a `kill -9` before the Redis
/// write completed leaves the message unacknowledged and the broker redelivers it. QoS 1 means duplicates; the Lua
/// scripts drop them by event id and only move state forward, so redelivery and reordering are harmless.
/// When Redis is unreachable the handler retries with backoff for `redisRetryWindow`, then rejects the message
/// (the connection is dropped before the PUBACK leaves), and the broker redelivers it after the reconnect.
///
/// With a journal (`ProcessorConfiguration.journal`) the handler instead appends each message to a local journal
/// and returns (a `kill -9` after the `write(2)` loses nothing: the bytes are the kernel's), and a drain thread
/// applies the journal in batches, one round trip and one script call per batch (`BatchApplyScript`): the per-call
/// cost in Redis, not the round trip, bounded the synchronous path (BENCHMARKS.md). `writers` connections apply
/// the parts of consecutive batches concurrently, each the events of its share of the publisher sessions
/// (`partition`), so Redis runs one part while the next is sent and what one publisher sent stays in journal order. The journal is
/// committed only up to the first batch not yet wholly applied. Redis down: the journal absorbs messages up to its
/// size, then the handler refuses them and the broker keeps them.
public final class EventProcessor: Sendable {
    public let configuration: ProcessorConfiguration
    private let logger: Logger
    private let client: MQTTClient
    private let applier: ApplierLock
    private let counterState: CounterBox
    private let subscribed = Mutex(false)
    private let notifications: NotificationSink?
    private let deliverer: WebhookDeliverer?
    /// What `/metrics` shows of this process (see `ProcessorObservability`).
    public let metrics = ProcessorMetrics()
    /// The batching path, when configured.
    private let batching: Batching?

    private struct Batching: Sendable {
        let journal: Journal
        let drain: JournalDrain
        let admission: JournalAdmission
        /// The drain's writers beyond the first (which uses `applier`), each with its own Redis connection.
        let extraAppliers: [ApplierLock]
    }

    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "opsbus.processor"))
        throws(ProcessorError)
    {
        self.configuration = configuration
        self.logger = logger
        var mqtt = MQTTClientConfiguration(endpoint: configuration.mqtt, clientID: configuration.clientID)
        mqtt.cleanSession = false
        mqtt.keepAlive = configuration.keepAlive
        if configuration.group != nil {
            mqtt.protocolVersion = .v5
            mqtt.sessionExpiryInterval = 7 * 86_400
        }
        do {
            client = try MQTTClient(configuration: mqtt, logger: logger)
        } catch {
            throw .mqtt(error)
        }
        let counterState = CounterBox()
        self.counterState = counterState
        applier = ApplierLock(EventApplier(configuration: configuration, logger: logger, metrics: metrics) { result in
            counterState.record(result)
        })
        if let settings = configuration.journal, configuration.source == .mqtt {
            // (A stream source reads entries the bridge already journaled: the journal is for MQTT messages only.)
            let journal: Journal
            do {
                journal = try Journal(directory: settings.directory, maxBytes: settings.maxBytes, fsync: settings.fsync,
                                      logger: logger)
            } catch {
                throw .configuration("\(error)")
            }
            let metrics = metrics
            let extraAppliers = (1..<max(1, settings.writers)).map { _ in
                ApplierLock(EventApplier(configuration: configuration, logger: logger, metrics: metrics) { result in
                    counterState.record(result)
                })
            }
            let drain = JournalDrain(
                journal: journal, sinks: ([applier] + extraAppliers).map { BatchSink(applier: $0, metrics: metrics) },
                partition: { [scheme = configuration.scheme] in Self.partition($0.topic, $0.payload, scheme: scheme) },
                batchSize: settings.batchSize, drainTimeout: .milliseconds(Int(settings.drainTimeout * 1000)),
                threadName: "opsbus-processor-drain", logger: logger)
            batching = Batching(
                journal: journal, drain: drain, admission: JournalAdmission(journal: journal, drain: drain, logger: logger),
                extraAppliers: extraAppliers)
        } else {
            batching = nil
        }
        if configuration.webhooks.isEmpty || !configuration.userNotifications {
            notifications = nil
            deliverer = nil
        } else {
            let outbox = WebhookOutbox(prefix: configuration.keys.prefix)
            let names = Set(configuration.webhooks.map(\.name))
            notifications = NotificationSink { entry, redis throws(RedisError) in
                let endpoint = entry.fields["endpoint"] ?? "default"
                guard names.contains(endpoint), let id = entry.fields["notification_id"] else { return true }
                // false means it was queued before (a relayed duplicate): done either way.
                _ = try outbox.enqueue(redis, endpoint: endpoint, notificationID: id,
                                       body: Array((entry.fields["body"] ?? "{}").utf8))
                return true
            }
            do {
                deliverer = try WebhookDeliverer(
                    redis: configuration.redis, endpoints: configuration.webhooks, outbox: outbox, logger: logger)
            } catch {
                throw .configuration("\(error)")
            }
        }
    }

    /// The batching drain's writer of a message: a hash of its `session_id` (one publisher connection, the unit
    /// whose order MQTT keeps), else of its topic's subject (`jobs/<id>/…`, `workers/<id>/…`), else of its topic. So
    /// what one publisher sent is applied in the order it arrived, as with one writer: a `job.received` asking for
    /// notifications before the `job.started` it should notify of, and each session's `seq` in order, so gap
    /// counts are what one writer would count. Order across publishers is the broker's interleaving either way.
    static func partition(_ topic: String, _ payload: [UInt8], scheme: TopicScheme) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        func mix<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        }
        if let session = sessionID(in: payload) {
            mix(payload[session])
        } else if let subject = try? scheme.parse(topic).subject.rawValue {
            mix(subject.utf8)
        } else {
            mix(topic.utf8)
        }
        return Int(truncatingIfNeeded: hash >> 1)
    }

    /// The bytes of the first `"session_id": "…"` string in a JSON payload, found without parsing it (the drain's
    /// read-ahead thread does this for every message). Only a partition key: a payload that fools it (the text
    /// inside another string) only changes which writer applies it.
    static func sessionID(in payload: [UInt8]) -> Range<Int>? {
        let key = Self.sessionIDKey
        guard payload.count > key.count else { return nil }
        var index = 0
        while index + key.count <= payload.count {
            // From quote to quote with memchr: a byte-by-byte scan in Swift cost 1.5 % of the
            // processor's instructions per event.
            let found = payload.withUnsafeBytes { bytes -> Int? in
                guard let quote = memchr(bytes.baseAddress! + index, Int32(key[0]), bytes.count - index) else {
                    return nil
                }
                return UnsafeRawPointer(quote) - bytes.baseAddress!
            }
            guard let found else { return nil }
            index = found
            guard index + key.count <= payload.count, payload[index..<index + key.count].elementsEqual(key) else {
                index += 1
                continue
            }
            var cursor = index + key.count
            func skipSpaces() { while cursor < payload.count, payload[cursor] == 0x20 { cursor += 1 } }
            skipSpaces()
            guard cursor < payload.count, payload[cursor] == UInt8(ascii: ":") else { index += 1; continue }
            cursor += 1
            skipSpaces()
            guard cursor < payload.count, payload[cursor] == UInt8(ascii: "\"") else { return nil }
            let start = cursor + 1
            guard let end = payload[start...].firstIndex(of: UInt8(ascii: "\"")), end > start else { return nil }
            return start..<end
        }
        return nil
    }

    private static let sessionIDKey = Array(#""session_id""#.utf8)

    /// Counters since start (received, applied, duplicates, dead letters …).
    public var counters: ProcessorCounters { counterState.value }

    /// True once the subscriptions are in place: from then on the broker keeps events for this processor's session.
    public var isSubscribed: Bool { subscribed.withLock { $0 } }

    /// True while the MQTT connection is up (readiness).
    public var isBrokerConnected: Bool { client.isConnected }

    /// With a journal: the bytes it holds, and of them not yet applied to Redis (`/metrics`).
    public var journalBytes: (usedBytes: Int64, pendingBytes: Int64)? {
        batching.map { ($0.journal.usedBytes, $0.journal.pendingBytes) }
    }

    /// Connects to Redis and the broker, subscribes, and processes events until the task is cancelled; then stops
    /// taking messages (the one being applied finishes first) and disconnects.
    public func run() async throws(ProcessorError) {
        try applier.withLock { applier throws(ProcessorError) in try applier.connect() }
        if configuration.source == .mqtt {
            if let batching {
                client.setMessageHandler { [self] message in journal(message, batching) }
                batching.drain.start()
            } else {
                client.setMessageHandler { [self] message in handle(message) }
            }
        }
        do {
            // With a stream source the MQTT connection still carries the processor's own events (triggers).
            try await client.connect(waitForBroker: true)
            if configuration.source == .mqtt {
                _ = try await client.subscribe(configuration.subscriptionFilters, qos: .atLeastOnce)
            }
            subscribed.withLock { $0 = true }
        } catch {
            await client.disconnect()
            await stopBatching()
            throw .mqtt(error)
        }
        logger.info(
            "processor running",
            metadata: ["filters": "\(configuration.subscriptionFilters)", "client_id": "\(configuration.clientID)"])
        let relay = OutboxRelay(configuration: configuration, client: client, notifications: notifications, logger: logger)
        let scheduled = ScheduledActions(configuration: configuration, logger: logger)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await relay.run() }
            group.addTask { [client, metrics] in await metrics.count(client.connectionEvents) }
            group.addTask { await scheduled.run() }
            if let deliverer { group.addTask { await deliverer.run() } }
            if configuration.automation && configuration.patternAnalysisInterval > 0 {
                let analyzer = PatternAnalyzer(configuration: configuration, logger: logger)
                group.addTask { await analyzer.run() }
            }
            if case let .stream(key, groupName) = configuration.source {
                let source = StreamSource(configuration: configuration, stream: key, group: groupName, logger: logger) {
                    [self] topic, payload in applyFromStream(topic: topic, payload: payload)
                }
                group.addTask { await source.run() }
            }
            group.addTask {
                while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(200)) }
            }
            await group.waitForAll()
        }
        if configuration.group != nil && configuration.source == .mqtt {
            // Mosquitto keeps handing a durable group member its round-robin share while it is offline: a member
            // that leaves for good (scale-down) would strand those events in its session. Leaving the group on a
            // deliberate stop sends them to the members that remain; a crashed member keeps its session and gets
            // its share when it returns.
            do {
                try await client.unsubscribe(configuration.subscriptionFilters)
            } catch {
                logger.warning("could not leave the shared-subscription group", metadata: ["error": "\(error)"])
            }
        }
        // The handler stays set until the connection is closed: a message arriving meanwhile is still applied before
        // its PUBACK (removing the handler first would route it to the hand-off stream, acknowledged but unapplied).
        await client.disconnect()
        await stopBatching()
        logger.info("processor stopped", metadata: ["applied": "\(counters.applied)"])
    }

    /// Applies what is journaled (up to the drain timeout; the rest waits for the next start) and closes the journal.
    private func stopBatching() async {
        guard let batching else { return }
        batching.drain.requestStop()
        await batching.drain.waitForExit()
        applier.withLock { $0.close() }
        for extra in batching.extraAppliers { extra.withLock { $0.close() } }
        let pending = batching.journal.pendingBytes
        if pending > 0 {
            // Acknowledged to the broker, not applied yet: only a start with this journal directory applies them.
            logger.error(
                "stopping with journaled events not yet applied to Redis; a processor started again with this journal directory applies them",
                metadata: ["journal": "\(batching.journal.directory)", "pending_bytes": "\(pending)"])
        }
        batching.journal.close()
    }

    /// The batching path's message handler (network thread): journal, then let the PUBACK go. Only a message that
    /// did not reach the journal is rejected, so the broker redelivers it. An oversize message is journaled only as
    /// far as its dead letter shows it.
    private func journal(_ message: MQTTMessage, _ batching: Batching) -> MQTTMessageDisposition {
        let record = JournalRecord.received(
            topic: message.topic, payload: message.payload, qos: UInt8(message.qos.rawValue), retain: message.retain,
            limit: configuration.maxPayloadBytes, keep: RedisPlan.deadLetterPayloadBytes)
        switch batching.admission.append(record) {
        case .appended:
            return .accept
        case .refused:
            counterState.record(.retryLater(reason: "journal full or failing"))
            metrics.recordHandedBack()
            return .reject
        }
    }

    private func applyFromStream(topic: String, payload: [UInt8]) -> ApplyResult {
        let result = applier.withLock { $0.apply(topic: topic, payload: payload) }
        if case .retryLater = result { counterState.record(result) }
        return result
    }

    /// Handles one message on the MQTT network thread; returning `.accept` lets libmosquitto acknowledge it.
    func handle(_ message: MQTTMessage) -> MQTTMessageDisposition {
        let result = applier.withLock { $0.apply(topic: message.topic, payload: message.payload) }
        switch result {
        case .retryLater(let reason):
            counterState.record(result)
            logger.warning("Redis unavailable; message handed back for redelivery", metadata: ["reason": "\(reason)"])
            return .reject
        default:
            return .accept
        }
    }
}

/// The drain's sink: each batch of journaled messages goes to `EventApplier.applyBatch`.
private final class BatchSink: JournalBatchSink, @unchecked Sendable {
    // @unchecked: `mayHaveRun` is used by the drain thread only.
    private let applier: ApplierLock
    private let metrics: ProcessorMetrics
    /// A failed attempt of the current batch may have reached Redis: its re-run must not count events twice.
    private var mayHaveRun = false

    init(applier: ApplierLock, metrics: ProcessorMetrics) {
        self.applier = applier
        self.metrics = metrics
    }

    func write(_ entries: [JournalEntry], replayed: Bool) throws {
        let messages = entries.map {
            EventApplier.BatchMessage(topic: $0.record.topic, payload: $0.record.payload,
                                      originalBytes: $0.record.originalPayloadBytes)
        }
        let retried = replayed || mayHaveRun
        try applier.withLock { applier throws(RedisError) in try applier.applyBatch(messages, retried: retried) }
        mayHaveRun = false
    }

    func writeFailed(_ error: any Error, failures: Int) {
        metrics.redisErrors.increment()
        if let error = error as? RedisError, error.commandMayHaveRun { mayHaveRun = true }
    }
}

/// The applier behind a lock: a hiredis context serves one thread at a time (message handler, drain thread or
/// stream source).
final class ApplierLock: @unchecked Sendable {
    // @unchecked: `applier` is only touched inside `lock`.
    private let applier: EventApplier
    private let lock = Mutex(())
    init(_ applier: EventApplier) { self.applier = applier }
    func withLock<Result: Sendable, Failure: Error>(_ body: (EventApplier) throws(Failure) -> Result) throws(Failure) -> Result {
        try lock.withLock { _ throws(Failure) -> Result in try body(applier) }
    }
}

/// What happened to one message.
public enum ApplyResult: Sendable, Equatable {
    /// State changed (or fields filled, or an ordering rule kept the state: the event is recorded either way).
    case applied(outcome: String)
    /// Same `event_id` seen before: nothing changed.
    case duplicate
    /// Refused input, stored in the dead-letter stream with the reason.
    case deadLettered(reason: String)
    /// Redis could not be reached within the retry window; the message must be redelivered.
    case retryLater(reason: String)
}

/// The processor's counters, shared with its applier.
final class CounterBox: Sendable {
    private let state = Mutex(ProcessorCounters())
    var value: ProcessorCounters { state.withLock { $0 } }
    func record(_ result: ApplyResult) { state.withLock { $0.record(result) } }
}

/// Counters of one processor since start.
public struct ProcessorCounters: Sendable, Equatable {
    public var received = 0
    public var applied = 0
    public var duplicates = 0
    public var deadLettered = 0
    public var redelivered = 0

    mutating func record(_ result: ApplyResult) {
        received += 1
        switch result {
        case .applied: applied += 1
        case .duplicate: duplicates += 1
        case .deadLettered: deadLettered += 1
        case .retryLater: redelivered += 1
        }
    }
}

public enum ProcessorError: Error, CustomStringConvertible, Sendable {
    case mqtt(MQTTError)
    case redis(RedisError)
    case configuration(String)

    public var description: String {
        switch self {
        case .mqtt(let error): return "MQTT: \(error)"
        case .redis(let error): return "Redis: \(error)"
        case .configuration(let reason): return "configuration: \(reason)"
        }
    }
}
