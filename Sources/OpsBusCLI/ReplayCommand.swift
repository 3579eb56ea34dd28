import ArgumentParser
import Foundation
import OpsBusBridge
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Re-publish a stream's entries onto their original topics, or print them as JSON lines.",
        discussion: """
            --from/--to take a stream id (1700000000000 or 1700000000000-3; both bounds inclusive; '-' and '+' \
            are the ends) or an ISO-8601 time (2026-01-31T12:00:00Z). --filter keeps entries whose topic matches \
            an MQTT topic filter.
            --to-mqtt publishes each entry's exact payload bytes on its topic at QoS 1 (not retained), in stream \
            order, waiting for each PUBACK. Use it to rebuild processor state after a broker loss: the processor \
            ignores events it has already applied. The bridge itself drops the echoes of replayed envelopes as \
            duplicates (same event_id) while they are within its dedup window.
            --print writes one JSON object per entry: id, then each field as a string; a value that is not UTF-8 \
            (a binary payload) is written as <field>_base64.
            """)

    @Option(help: "The stream to read (e.g. events:jobs).")
    var stream: String

    @Option(help: "First entry: stream id or ISO-8601 time (default: the beginning).")
    var from: String = "-"

    @Option(help: "Last entry: stream id or ISO-8601 time (default: the end).")
    var to: String = "+"

    @Option(help: "Only entries whose topic matches this MQTT topic filter.")
    var filter: String?

    @Flag(help: "Re-publish on the original topics (QoS 1, exact payload bytes).")
    var toMqtt = false

    @Flag(help: "Print entries as JSON lines.")
    var print = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard toMqtt != print else { throw ValidationError("choose exactly one of --to-mqtt and --print") }
    }

    func run() async throws {
        let logger = try common.makeLogger("opsbus.replay")
        let start: String
        let end: String
        do {
            start = try StreamPosition.parse(from)
            end = try StreamPosition.parse(to)
        } catch {
            throw ValidationError("\(error)")
        }
        let topicFilter: TopicFilter?
        do { topicFilter = try filter.map { try TopicFilter($0) } } catch { throw ValidationError("--filter: \(error)") }
        let redis: RedisConnection
        do { redis = try RedisConnection(endpoint: try connection.redisEndpoint()) } catch { throw CLIError("\(error)") }
        do {
            guard try redis.command(["EXISTS", stream]).int == 1 else { throw CLIError("stream '\(stream)' does not exist") }
        } catch let error as CLIError {
            throw error
        } catch {
            throw CLIError("\(error)")
        }

        var client: MQTTClient?
        var republished = 0
        var skipped = 0
        do {
            if toMqtt {
                let mqtt = try MQTTClient(
                    configuration: MQTTClientConfiguration(
                        endpoint: try connection.mqttEndpoint(), clientID: "opsbus-replay-\(EventID.make().suffix(10))"),
                    logger: logger)
                try await mqtt.connect()
                client = mqtt
            }
            var next: String? = start
            while let position = next {
                let page = try StreamEntry.page(redis, stream: stream, from: position, to: end)
                next = page.next
                for entry in page.entries {
                    guard let topic = entry.topic, let payload = entry["payload"] else {
                        skipped += 1
                        continue
                    }
                    if let topicFilter, !topicFilter.matches(topic) { continue }
                    if let client {
                        try await client.publish(topic: topic, payload: payload, qos: .atLeastOnce)
                        republished += 1
                    } else {
                        output(entry.jsonLine())
                    }
                }
            }
            await client?.disconnect()
        } catch {
            await client?.disconnect()
            throw CLIError("\(error)")
        }
        if skipped > 0 {
            logger.warning("skipped entries without a topic or payload field", metadata: ["count": "\(skipped)"])
        }
        guard toMqtt else { return }
        output("republished \(republished) entries from \(stream)")
    }
}
