import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusProcessor

struct ProcessorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "processor",
        abstract: "Run the processor: events from MQTT become Redis state (job hashes, worker registry, …).",
        discussion: """
            Subscribes at QoS 1 with a persistent session (fixed client id), so events published while it is down \
            are delivered when it returns. Each event is applied to Redis atomically and idempotently before the \
            broker gets its acknowledgement: kill -9 loses nothing, duplicates change nothing. Invalid messages go to \
            the dead-letter stream opsbus:deadletter with the reason. Key layout: README, "Redis key layout".
            Scale out: run several with the same --group (MQTT 5 shared subscription $share/<group>/…).
            Stops on SIGINT/SIGTERM after the event in hand is applied.
            """)

    @Option(help: "Shared-subscription group; instances in one group split the events (default: none).")
    var group: String?

    @Option(help: "MQTT client id; must be stable across restarts and unique per instance (default opsbus-processor[-<group>-<n>]).")
    var clientID: String?

    @Option(help: "Instance number within the group, for the default client id.")
    var instance: Int = 1

    @Option(help: "Payloads larger than this are dead-lettered (bytes).")
    var maxPayloadBytes: Int = 262_144

    @Option(help: "Events kept per job timeline.")
    var timelineLimit: Int = 200

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.processor")
        if let group {
            do { _ = try Identifier(validating: group, field: "group") } catch { throw ValidationError("--group: \(error)") }
        }
        let configuration = ProcessorConfiguration(
            mqtt: try connection.mqttEndpoint(), redis: try connection.redisEndpoint(),
            scheme: try connection.topicScheme(),
            clientID: clientID ?? (group.map { "opsbus-processor-\($0)-\(instance)" } ?? "opsbus-processor"),
            group: group, maxPayloadBytes: maxPayloadBytes, timelineLimit: timelineLimit)
        let processor: EventProcessor
        do { processor = try EventProcessor(configuration: configuration, logger: logger) } catch { throw CLIError("\(error)") }
        let task = Task { try await processor.run() }
        let signals = SignalCanceller { _ in task.cancel() }
        defer { signals.cancel() }
        do {
            try await task.value
        } catch {
            throw CLIError("\(error)")
        }
    }
}
