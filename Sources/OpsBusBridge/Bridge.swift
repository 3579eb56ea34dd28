import Foundation
import Logging
import OpsBusCore
import OpsBusJournal
import OpsBusMQTT
import OpsBusRedis
import Synchronization

/// The MQTT → Redis Streams bridge.
///
/// ```
///  broker ──QoS 1, durable session──▶ handler ──write(2)──▶ journal ──writer thread──▶ Redis (Lua: dedup + XADD,
///                                                                                         one call per 200 records)
///          ◀──────── PUBACK after the handler returned                  └── committed offset (write + rename, ≤ 10/s)
/// ```
///
/// Guarantees:
/// * **No acknowledged message is lost when the bridge dies** (`kill -9` at any moment): the PUBACK of a QoS 1
///   message leaves only after the handler returned (libmosquitto with a loop thread, see `MQTTClient`), and the
///   handler returns only after the message is in the journal (in the kernel's page cache; `JournalFsync.always`
///   for OS crashes). Messages not yet acknowledged are redelivered by the broker (durable session: fixed client id,
///   `cleanSession` false).
/// * **Redis down** (or refusing writes: `OOM`, `READONLY` …): the writer retries with backoff while the handler keeps
///   journaling, up to `journalMaxBytes`;
///   then the handler returns `.reject`, so the broker keeps the messages (it needs `max_queued_messages 0` and a
///   sufficient `max_queued_bytes`, or it drops the newest) and redelivers them.
/// * **Exactly-once effect**: journal replays and broker redeliveries are suppressed in Redis by the dedup id
///   (see `StreamEntryFormat`, `DedupWindow`), atomically with the XADD.
/// * **Order**: one writer, journal order = delivery order, so one publisher's entries on one route keep their order.
/// * **Sessions with end-to-end acks** (envelopes with `ack: true`): committed strictly in `seq` order, exactly once
///   per seq, by `BridgeScripts.appendInSession` (the session's position lives in Redis and moves in the same Lua
///   call as the XADD); events after a gap are held back (not written) until the publisher re-sends from the gap.
///   After each batch, one retained QoS 1 ack per session touched goes to `acks/<owner>/<session_id>` with the
///   committed position (`AckPublisher`; off with `BridgeConfiguration.acknowledgements`).
/// * Not guaranteed: messages the broker acknowledged to the publisher but lost itself (broker `kill -9` before its
///   next autosave); raw (non-envelope) payloads redelivered by the broker are mirrored twice (they carry no id).
public final class Bridge: Sendable {
    public let configuration: BridgeConfiguration
    private let routes: RouteTable
    private let journal: Journal
    private let writer: StreamWriter
    private let drain: JournalDrain
    private let admission: JournalAdmission
    private let counters = StatisticsBox()
    private let client: MQTTClient
    private let stopping = Mutex(false)
    private let subscribed = Mutex(false)
    private let started = Mutex(false)
    private let logger: Logger
    /// What `/metrics` shows of this process (see `BridgeObservability`).
    public let metrics = BridgeMetrics()

    /// Validates the configuration, opens (and recovers) the journal and creates the MQTT client. No network yet.
    public init(configuration: BridgeConfiguration, logger: Logger = Logger(label: "opsbus.bridge")) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        routes = RouteTable(configuration.routes)
        do {
            journal = try Journal(
                directory: configuration.journalDirectory, maxBytes: configuration.journalMaxBytes,
                fsync: configuration.fsync, logger: logger)
        } catch {
            throw BridgeError.journal(error)
        }
        var mqtt = MQTTClientConfiguration(endpoint: configuration.mqtt, clientID: configuration.clientID)
        mqtt.cleanSession = false
        mqtt.keepAlive = configuration.keepAlive
        client = try MQTTClient(configuration: mqtt, logger: logger)
        let acks = configuration.acknowledgements ? AckPublisher(client: client, statistics: counters, logger: logger) : nil
        writer = StreamWriter(
            journalIdentity: journal.identity, routes: routes, configuration: configuration, statistics: counters,
            acks: acks, logger: logger)
        drain = JournalDrain(
            journal: journal, sink: writer, batchSize: configuration.batchSize,
            drainTimeout: .milliseconds(Int(configuration.drainTimeout * 1000)), threadName: "opsbus-bridge-writer",
            logger: logger)
        admission = JournalAdmission(journal: journal, drain: drain, logger: logger)
    }

    /// True once the first SUBACK arrived: messages published from then on reach the bridge.
    public var isSubscribed: Bool { subscribed.withLock { $0 } }

    public var statistics: BridgeStatistics { counters.value.withLock { $0 } }

    /// Seconds since the oldest journaled record not yet in Redis arrived (nil when none is pending), for `/metrics`.
    public var oldestPendingAgeSeconds: Double? {
        let committed = journal.committed
        guard journal.appendedEnd > committed,
              let entry = try? journal.read(from: committed, maxRecords: 1, maxBytes: 4096).entries.first
        else { return nil }
        return max(0, Double(EventTimestamp.now().millisecondsSinceEpoch - entry.record.receivedAtMilliseconds) / 1000)
    }

    /// True while the MQTT connection is up (readiness).
    public var isBrokerConnected: Bool { client.isConnected }

    /// Bytes the journal holds, and of them not yet in Redis (`/metrics`).
    public var journalBytes: (usedBytes: Int64, pendingBytes: Int64) { (journal.usedBytes, journal.pendingBytes) }

    /// The journal's committed position and bytes in use (for tests and `opsbus streams`).
    public var journalState: (committed: JournalPosition, appended: JournalPosition, usedBytes: Int64) {
        (journal.committed, journal.appendedEnd, journal.usedBytes)
    }

    /// Runs until the calling task is cancelled, then stops gracefully: stop taking messages (the one in hand is
    /// rejected and redelivered later), disconnect, write the journal's rest to Redis (up to `drainTimeout`),
    /// close the journal.
    /// - Throws: MQTT errors that are permanent (refused connection, rejected subscription).
    /// A bridge runs once: after `run` returns, its journal is closed; create a new `Bridge` to run again.
    public func run() async throws {
        guard started.withLock({ was in defer { was = true }; return !was }) else {
            throw BridgeError.invalidConfiguration(reason: "Bridge.run() was already called; create a new Bridge to run again")
        }
        client.setMessageHandler { [self] message in handle(message) }
        let watcher = Task { [client, metrics] in await metrics.count(client.connectionEvents) }
        defer { watcher.cancel() }
        drain.start()
        do {
            try await client.connect(waitForBroker: true)
            let filters = routes.subscriptionFilters
            try await client.subscribe(filters, qos: .atLeastOnce)
            subscribed.withLock { $0 = true }
            logger.info("bridge subscribed", metadata: [
                "filters": "\(filters.joined(separator: " "))", "client_id": "\(configuration.clientID)",
                "journal": "\(configuration.journalDirectory)",
            ])
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(3600))
            }
        } catch {
            await shutdown()
            if Task.isCancelled, case MQTTError.cancelled = error { return }
            throw error
        }
        await shutdown()
    }

    private func shutdown() async {
        stopping.withLock { $0 = true }
        await client.disconnect()
        drain.requestStop()
        await drain.waitForExit()
        writer.close()
        journal.close()
        let stats = statistics
        logger.info("bridge stopped", metadata: [
            "entries": "\(stats.entries)", "duplicates": "\(stats.duplicates)", "dead_lettered": "\(stats.deadLettered)",
            "seq_duplicates": "\(stats.sequenceDuplicates)", "out_of_order": "\(stats.outOfOrder)",
            "acks_published": "\(stats.acksPublished)", "committed": "\(stats.committed)",
        ])
    }

    /// The message handler (network thread): journal, then let the PUBACK go. Only messages that did not reach the
    /// journal are rejected, so the broker redelivers exactly those (plus, possibly, later ones whose PUBACK was
    /// still queued: the dedup ids absorb them).
    private func handle(_ message: MQTTMessage) -> MQTTMessageDisposition {
        if stopping.withLock({ $0 }) { return .reject }
        let limit = routes.route(for: message.topic)?.maxPayloadBytes ?? configuration.deadLetterPayloadBytes
        let record = JournalRecord.received(
            topic: message.topic, payload: message.payload, qos: UInt8(message.qos.rawValue), retain: message.retain,
            limit: limit, keep: min(limit, configuration.deadLetterPayloadBytes))
        switch admission.append(record) {
        case .appended:
            counters.value.withLock { $0.journaled += 1 }
            return .accept
        case .refused:
            counters.value.withLock { $0.rejected += 1 }
            return .reject
        }
    }
}
