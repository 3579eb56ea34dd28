import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusMQTT

struct TailCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail",
        abstract: "Watch events live, one readable line each (a friendlier mosquitto_sub -v).",
        discussion: """
            Filters are MQTT topic filters (+ one level, # the rest). Default: every opsbus topic family \
            (jobs/+/+, workers/+/+, resources/+/+, queues/+/state, services/+/health, models/+/loaded, triggers/+/+).
            Examples:
              opsbus tail                     everything
              opsbus tail 'jobs/+/failed'     failures only
              opsbus tail 'jobs/j-42/#' --json   one job, raw JSON lines for jq
            Colour is used when stdout is a terminal (--no-colour to turn it off). Messages that are not opsbus \
            events are shown as topic and payload, like mosquitto_sub -v.
            """)

    @Argument(help: "Topic filters (default: all opsbus topics).")
    var filters: [String] = []

    @Flag(help: "Print each message as one JSON object {topic, qos, retain, payload} per line.")
    var json = false

    @Flag(name: .customLong("no-colour"), help: "Never colour the output.")
    var noColour = false

    @Option(help: "Exit after this many messages.")
    var count: Int?

    @Option(help: "Exit after this many seconds.")
    var timeout: Double?

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.tail")
        let scheme = try connection.topicScheme()
        let chosen = filters.isEmpty ? scheme.subscriptionFilters() : filters
        for filter in chosen {
            do { _ = try TopicFilter(filter) } catch { throw ValidationError("invalid filter '\(filter)': \(error)") }
        }
        let configuration = MQTTClientConfiguration(
            endpoint: try connection.mqttEndpoint(), clientID: "opsbus-tail-\(EventID.make().suffix(10))")
        let client: MQTTClient
        do {
            client = try MQTTClient(configuration: configuration, logger: logger)
            try await client.connect()
            _ = try await client.subscribe(chosen, qos: .atLeastOnce)
            logger.info("subscribed", metadata: ["filters": "\(chosen)"])
        } catch {
            throw CLIError("\(error)")
        }
        let formatter = EventLineFormatter(colour: !noColour && TextStyle.stdoutIsTerminal)
        let signals = SignalCanceller { _ in Foundation.exit(0) }
        defer { signals.cancel() }
        let limit = count
        let reader = Task {
            var seen = 0
            for await message in client.messages {
                if json {
                    var object: JSONObject = [
                        "topic": .string(message.topic), "qos": .int(Int64(message.qos.rawValue)),
                        "retain": .bool(message.retain),
                    ]
                    object["payload"] = (try? JSONValue.parse(message.payload)) ?? .string(String(decoding: message.payload, as: UTF8.self))
                    output(JSONValue.object(object).serialized())
                } else {
                    output(formatter.format(topic: message.topic, payload: message.payload, retained: message.retain))
                }
                seen += 1
                if let limit, seen >= limit { break }
            }
        }
        if let timeout {
            let timer = Task {
                try? await Task.sleep(for: .seconds(timeout))
                reader.cancel()
            }
            await reader.value
            timer.cancel()
        } else {
            await reader.value
        }
        await client.disconnect()
    }
}
