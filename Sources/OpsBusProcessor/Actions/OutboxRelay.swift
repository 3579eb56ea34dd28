import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis

/// Sends what the Lua scripts put in the outbox stream (`opsbus:outbox`): trigger and failover events to MQTT,
/// notifications to the webhook queues.
///
/// Why an outbox: a script that changes state cannot also publish to MQTT, and publishing after the script would
/// lose the action on a crash in between (the redelivered event is then a duplicate and triggers nothing). So the
/// script records the action atomically with the state change, and this relay delivers it at least once: an entry
/// is acknowledged (XACK + XDEL) only after the broker acknowledged the publish or the webhook queue took it.
/// Entries pending at a crash are re-read by the same consumer on restart, or claimed by another instance after
/// `claimIdle` (XAUTOCLAIM). Event ids are derived from the cause, so a repeat is a duplicate downstream.
final class OutboxRelay: Sendable {
    static let group = "opsbus-relay"

    private let configuration: ProcessorConfiguration
    private let client: MQTTClient
    private let factory: EventFactoryLite
    private let notifications: NotificationSink?
    private let logger: Logger
    private let claimIdleMilliseconds = 30_000

    init(configuration: ProcessorConfiguration, client: MQTTClient, notifications: NotificationSink?, logger: Logger) {
        self.configuration = configuration
        self.client = client
        self.notifications = notifications
        self.logger = logger
        self.factory = EventFactoryLite(scheme: configuration.scheme)
    }

    private var keys: RedisKeys { configuration.keys }
    private var consumer: String { configuration.clientID }

    /// Relays until cancelled; idles 200 ms when the outbox is empty. The Redis connection is local to this one
    /// task (hiredis contexts are not thread-safe).
    func run() async {
        var reader = ConsumerGroupReader(stream: keys.outbox, group: Self.group, consumer: consumer,
                                         batch: configuration.outboxBatchSize, claimIdleMilliseconds: claimIdleMilliseconds)
        var connection: RedisConnection?
        while !Task.isCancelled {
            var handled = 0
            do {
                let redis = try Self.connected(&connection, configuration: configuration, logger: logger)
                handled += try await relay(Self.entries(reader.nextEntries(redis)), redis)
            } catch {
                logger.warning("outbox relay: \(error)")
                connection = nil
            }
            if handled == 0 { try? await Task.sleep(for: .milliseconds(200)) }
        }
    }

    static func connected(_ connection: inout RedisConnection?, configuration: ProcessorConfiguration, logger: Logger)
        throws(RedisError) -> RedisConnection
    {
        if let existing = connection, !existing.isBroken { return existing }
        let fresh = try configuration.connectRedis(logger: logger)
        connection = fresh
        return fresh
    }

    static func entries(_ list: [RedisReply]) -> [OutboxEntry] {
        list.compactMap { item in
            guard let pair = item.array, pair.count == 2, let id = pair[0].string else { return nil }
            return OutboxEntry(id: id, fields: pair[1].hashDictionary())
        }
    }

    private func relay(_ entries: [OutboxEntry], _ redis: RedisConnection) async throws(RedisError) -> Int {
        var succeeded = 0
        var failed = 0
        for entry in entries {
            if await deliver(entry, redis) {
                succeeded += 1
                _ = try redis.pipeline([["XACK", keys.outbox, Self.group, entry.id], ["XDEL", keys.outbox, entry.id]])
            } else {
                failed += 1
            }
        }
        if succeeded + failed > 0 {
            _ = try redis.pipeline([
                ["HINCRBY", keys.stats, "actions_succeeded", String(succeeded)],
                ["HINCRBY", keys.stats, "actions_failed", String(failed)],
            ])
        }
        return succeeded
    }

    /// True when the entry is done (delivered, or malformed and recorded as a dead letter).
    private func deliver(_ entry: OutboxEntry, _ redis: RedisConnection) async -> Bool {
        switch entry.fields["kind"] {
        case "publish":
            let prepared: EventFactoryLite.Prepared
            do {
                prepared = try factory.prepare(entry)
            } catch {
                logger.error("outbox entry \(entry.id) cannot become an event: \(error)")
                return true  // retrying cannot fix it; the entry stays visible in the log
            }
            do {
                try await client.publish(topic: prepared.topic, payload: prepared.payload, qos: .atLeastOnce,
                                         retain: prepared.retain)
                return true
            } catch {
                logger.warning("outbox publish to \(prepared.topic) failed; will retry", metadata: ["error": "\(error)"])
                return false
            }
        case "webhook":
            guard let notifications else { return true }  // notifications not configured: nothing to deliver to
            do {
                return try notifications.enqueue(entry, redis)
            } catch {
                logger.warning("webhook enqueue failed; will retry", metadata: ["error": "\(error)"])
                return false
            }
        default:
            logger.error("outbox entry \(entry.id) has unknown kind \(entry.fields["kind"] ?? "nil")")
            return true
        }
    }
}

/// One outbox stream entry.
struct OutboxEntry: Sendable {
    var id: String
    var fields: [String: String]
}

/// Where the relay hands notification entries (the webhook outbox).
struct NotificationSink: Sendable {
    let enqueue: @Sendable (OutboxEntry, RedisConnection) throws(RedisError) -> Bool
}

/// Builds the envelopes of processor-emitted events from outbox entries.
///
/// They go out unsequenced (`seq` 0): their ids are derived from their cause, so a repeat is a duplicate anyway,
/// and a publish that fails and is retried later must not leave a number behind that receivers would see as a gap.
final class EventFactoryLite: Sendable {
    /// `source` of every event the processor emits.
    static let source = "opsbus-processor"
    let scheme: TopicScheme
    let sessionID = EventID.make()

    init(scheme: TopicScheme) { self.scheme = scheme }

    struct Prepared {
        var topic: String
        var payload: [UInt8]
        var retain: Bool
    }

    struct InvalidEntry: Error, CustomStringConvertible {
        let description: String
    }

    func prepare(_ entry: OutboxEntry) throws -> Prepared {
        let fields = entry.fields
        guard let typeName = fields["event_type"], let eventType = EventType(rawValue: typeName) else {
            throw InvalidEntry(description: "unknown event_type \(fields["event_type"] ?? "nil")")
        }
        guard let eventID = fields["event_id"] else { throw InvalidEntry(description: "no event_id") }
        guard case .object(let body) = try JSONValue.parse(fields["fields"] ?? "{}") else {
            throw InvalidEntry(description: "fields is not a JSON object")
        }
        let envelope = EventEnvelope(
            eventID: eventID, eventType: eventType, timestamp: .now(), source: Self.source,
            jobID: try fields["job_id"].map { try Identifier(validating: $0, field: "job_id") },
            workerID: try fields["worker_id"].map { try Identifier(validating: $0, field: "worker_id") },
            sessionID: sessionID, seq: 0, attempt: fields["attempt"].flatMap { Int($0) }, fields: body)
        try envelope.validate()
        let policy = QoSPolicy.default.policy(for: eventType)
        return Prepared(topic: try scheme.topic(for: envelope), payload: envelope.encoded(), retain: policy.retain)
    }
}
