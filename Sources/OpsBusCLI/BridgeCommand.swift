import ArgumentParser
import Foundation
import OpsBusBridge
import OpsBusCore

/// Where the bridge routes come from, shared by `bridge`, `streams` and `replay`:
/// `--route` flags, else `--config` file, else `$OPSBUS_BRIDGE_ROUTES`, else the default routes.
struct BridgeRouteOptions: ParsableArguments {
    @Option(name: .long, help: "JSON configuration file with routes and settings (format: `opsbus bridge --help`).")
    var config: String?

    @Option(name: .customLong("route"), help: ArgumentHelp(
        "A route FILTER=STREAM[;maxlen=N|none][;maxage=SECONDS][;json][;maxbytes=N]; repeat for more.",
        valueName: "route"))
    var routes: [String] = []

    func configurationFile() throws -> BridgeConfigurationFile? {
        guard let config else { return nil }
        do { return try BridgeConfigurationFile.load(path: config) } catch { throw ValidationError("--config: \(error)") }
    }

    /// The routes in effect, and the file (when one was given) for its other settings.
    func resolve(scheme: TopicScheme) throws -> (routes: [BridgeRoute], file: BridgeConfigurationFile?) {
        let file = try configurationFile()
        if !routes.isEmpty {
            return (try routes.map { spec in
                do { return try BridgeRoute(parsing: spec) } catch { throw ValidationError("--route: \(error)") }
            }, file)
        }
        if let file { return (file.routes, file) }
        if let text = ProcessInfo.processInfo.environment["OPSBUS_BRIDGE_ROUTES"], !text.isEmpty {
            let specs = text.split(whereSeparator: { $0 == "\n" || $0 == " " || $0 == "\t" }).map(String.init)
            return (try specs.map { spec in
                do { return try BridgeRoute(parsing: spec) } catch { throw ValidationError("OPSBUS_BRIDGE_ROUTES: \(error)") }
            }, nil)
        }
        return (BridgeRoute.defaults(scheme: scheme), nil)
    }
}

struct BridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bridge",
        abstract: "Mirror MQTT topics into Redis Streams: durable, deduplicated, replayable.",
        discussion: """
            Routes map topic filters to stream keys. A key may use topic levels counted from 1: with \
            'events:{1}', jobs/j-1/completed goes to events:jobs. A message goes to the first matching route. \
            Default routes: every opsbus topic family to events:<family>, MAXLEN ~ 1000000.
            Routes: --route (repeatable), else --config FILE, else $OPSBUS_BRIDGE_ROUTES (specs separated by \
            whitespace), else the defaults. Route spec: FILTER=STREAM[;maxlen=N|none][;maxage=SECONDS][;json]\
            [;maxbytes=N], e.g. 'jobs/#=events:jobs;maxlen=100000;json'.
            Config file (JSON): {"routes": [{"filter": "jobs/#", "stream": "events:{1}", "maxLength": 1000000, \
            "maxAgeSeconds": 86400, "requireJSON": true, "maxPayloadBytes": 262144}], "dedupWindowSeconds": 86400, \
            "dedupWindowSize": 100000, "journalMaxBytes": 1073741824, "fsync": "never", "batchSize": 1000, \
            "acknowledgements": true, "sessionTTLSeconds": 604800}.

            Delivery: subscribes at QoS 1 with a durable session (client id opsbus-bridge[-<instance>]). Each \
            message is appended to a local journal (--journal) before the broker gets its PUBACK, so kill -9 loses \
            nothing; a writer thread copies the journal to Redis in pipelined batches, each entry through a Lua \
            script that drops duplicates (same event_id, or session_id+seq) within the dedup window. While Redis \
            is down the journal grows up to --journal-max-bytes, then messages are rejected and the broker keeps \
            them (configure the broker with max_queued_messages 0 and a max_queued_bytes cap). An OS crash or power \
            loss can lose journaled messages unless --fsync always. Invalid payloads go to bridge:deadletter. \
            SIGINT/SIGTERM: stop taking messages, write the journal's rest to Redis, disconnect.
            End-to-end acks: envelopes sent with "ack": true are committed per session strictly in seq order, \
            each seq once (a gap holds later events back until the publisher re-sends); after each batch the bridge \
            publishes, for every such session it touched, a retained QoS 1 message on acks/<owner>/<session_id> \
            with the highest seq committed without gaps. --no-acks stops these messages (ordering stays).
            """)

    @OptionGroup var routeOptions: BridgeRouteOptions

    @Option(help: "Instance name: entries' bridge field, client id opsbus-bridge-<instance>, default journal directory.")
    var instance: String?

    @Option(help: "MQTT client id; must be stable across restarts and unique per bridge (default opsbus-bridge[-<instance>]).")
    var clientID: String?

    @Option(help: "Journal directory, one per bridge instance (default $OPSBUS_STATE_DIR/bridge[-<instance>]/journal, OPSBUS_STATE_DIR defaulting to ./.opsbus).")
    var journal: String?

    @Option(help: "Journal size limit in bytes; when full, messages are rejected and stay on the broker (default 1 GiB).")
    var journalMaxBytes: Int64?

    @Option(help: "When to fsync the journal: always (survives OS crashes), batch, never (default; survives process crashes).")
    var fsync: String?

    @Option(help: "Seconds a dedup id is remembered (default 86400).")
    var dedupWindowSeconds: Int?

    @Option(help: "Most dedup ids remembered per stream (default 100000).")
    var dedupWindowSize: Int?

    @Option(help: "Records per Redis pipeline (default 1000).")
    var batchSize: Int?

    @Option(help: "Seconds to keep writing the journal to Redis after SIGTERM before leaving the rest for the next start.")
    var drainTimeout: Double = 10

    @Flag(name: .customLong("no-acks"), help: "Do not publish end-to-end acknowledgements on acks/<owner>/<session_id>.")
    var noAcks = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var http: HTTPOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.bridge")
        let scheme = try connection.topicScheme()
        let (routes, file) = try routeOptions.resolve(scheme: scheme)
        var configuration = BridgeConfiguration(
            mqtt: try connection.mqttEndpoint(), redis: try connection.redisEndpoint(), routes: routes,
            instance: instance, clientID: clientID, journalDirectory: journal)
        configuration.topicScheme = scheme
        configuration.acknowledgements = !noAcks && (file?.acknowledgements ?? true)
        if let seconds = file?.sessionTTLSeconds { configuration.sessionTTLSeconds = seconds }
        if let window = file?.dedupWindow { configuration.dedupWindow = window }
        if let seconds = dedupWindowSeconds { configuration.dedupWindow.seconds = seconds }
        if let size = dedupWindowSize { configuration.dedupWindow.size = size }
        if let bytes = journalMaxBytes ?? file?.journalMaxBytes { configuration.journalMaxBytes = bytes }
        if let size = batchSize ?? file?.batchSize { configuration.batchSize = size }
        if let fsync {
            guard let mode = JournalFsync(rawValue: fsync) else {
                throw ValidationError("--fsync: expected always, batch or never (got '\(fsync)')")
            }
            configuration.fsync = mode
        } else if let mode = file?.fsync {
            configuration.fsync = mode
        }
        configuration.drainTimeout = drainTimeout
        do { try configuration.validate() } catch { throw ValidationError("\(error)") }
        let bridge: Bridge
        do { bridge = try Bridge(configuration: configuration, logger: logger) } catch { throw CLIError("\(error)") }
        logger.notice("bridge starting", metadata: [
            "routes": "\(routes.map(\.description).joined(separator: " "))", "client_id": "\(configuration.clientID)",
            "journal": "\(configuration.journalDirectory)",
        ])
        let endpoints = try http.resolve().map { BridgeObservability(bridge: bridge, host: $0.host, port: $0.port, logger: logger) }
        do { try endpoints?.start() } catch { throw CLIError("--http-port: \(error)") }
        defer { endpoints?.stop() }
        let task = Task { try await bridge.run() }
        let signals = SignalCanceller { _ in task.cancel() }
        defer { signals.cancel() }
        do {
            try await task.value
        } catch {
            throw CLIError("\(error)")
        }
    }
}
