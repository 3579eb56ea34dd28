import Foundation
import Logging
import OpsBusRedis

/// Where the processor takes its events from.
public enum ProcessorSource: Sendable, Equatable {
    /// MQTT subscriptions (the default).
    case mqtt
    /// A Redis stream written by `opsbus bridge`, read through a consumer group.
    case stream(key: String, group: String)
}

/// Feeds the processor from a Redis stream that the bridge writes (`opsbus processor --source stream:<key>`),
/// through a consumer group: at least once, like MQTT QoS 1.
///
/// An entry is acknowledged (XACK) only after its event was applied (or dead-lettered); if Redis is unreachable
/// for the applier's retry window, the entry stays pending and is read again. After a crash this consumer first
/// re-reads its own pending entries, and entries of consumers that went away are claimed after a minute
/// (XAUTOCLAIM). Redelivered entries are duplicates, which the scripts drop by `event_id`. Entries of one stream are
/// applied in stream order by one consumer; with several consumers in a group, order across them does not matter
/// because the scripts are order-proof.
final class StreamSource: Sendable {
    private let configuration: ProcessorConfiguration
    private let stream: String
    private let group: String
    private let apply: @Sendable (String, [UInt8]) -> ApplyResult
    private let logger: Logger
    private let claimIdleMilliseconds = 60_000

    init(configuration: ProcessorConfiguration, stream: String, group: String, logger: Logger,
         apply: @escaping @Sendable (String, [UInt8]) -> ApplyResult) {
        self.configuration = configuration
        self.stream = stream
        self.group = group
        self.logger = logger
        self.apply = apply
    }

    private var consumer: String { configuration.clientID }

    func run() async {
        var reader = ConsumerGroupReader(stream: stream, group: group, consumer: consumer,
                                         batch: configuration.outboxBatchSize, claimIdleMilliseconds: claimIdleMilliseconds)
        var connection: RedisConnection?
        while !Task.isCancelled {
            var handled = 0
            do {
                let redis = try OutboxRelay.connected(&connection, configuration: configuration, logger: logger)
                handled += try process(Self.entries(reader.nextEntries(redis)), redis)
            } catch {
                logger.warning("stream source: \(error)")
                connection = nil
            }
            if handled == 0 { try? await Task.sleep(for: .milliseconds(200)) }
        }
    }

    /// Applies entries in order; stops at the first one that must wait for Redis (it stays pending).
    private func process(_ entries: [(id: String, topic: String, payload: [UInt8])], _ redis: RedisConnection)
        throws(RedisError) -> Int
    {
        var done = 0
        for entry in entries {
            if case .retryLater = apply(entry.topic, entry.payload) { break }
            _ = try redis.command(["XACK", stream, group, entry.id])
            done += 1
        }
        return done
    }

    /// `[[id, [field, value, …]], …]` → id, topic and the payload's exact bytes.
    static func entries(_ list: [RedisReply]) -> [(id: String, topic: String, payload: [UInt8])] {
        list.compactMap { item in
            guard let pair = item.array, pair.count == 2, let id = pair[0].string, let fields = pair[1].array else {
                return nil
            }
            var topic = ""
            var payload: [UInt8] = []
            var index = 0
            while index + 1 < fields.count {
                switch fields[index].string {
                case "topic": topic = fields[index + 1].string ?? ""
                case "payload": payload = fields[index + 1].bytes ?? []
                default: break
                }
                index += 2
            }
            return (id, topic, payload)
        }
    }
}
