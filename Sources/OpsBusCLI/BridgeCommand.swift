import ArgumentParser
import Foundation
import OpsBusJournal
import OpsBusBridge
import OpsBusCore

/// Where the bridge routes come from, shared by `bridge`, `streams` and `replay`: `--route` flags, else the JSON
/// route file (`--bridge-config`, or `--config` naming a JSON file), else `OPSBUS_BRIDGE_ROUTES` (environment or
/// config file), else the default routes.
struct BridgeRouteOptions: ParsableArguments {
    @Option(name: .customLong("bridge-config"), help: ArgumentHelp(
        "JSON file with routes and settings (format: `opsbus bridge --help`); --config accepts it too.",
        valueName: "file"))
    var bridgeConfig: String?

    @Option(name: .customLong("route"), help: ArgumentHelp(
        "A route FILTER=STREAM[;maxlen=N|none][;maxage=SECONDS][;json][;maxbytes=N]; repeat for more.",
        valueName: "route"))
    var routes: [String] = []

    func configurationFile() throws -> BridgeConfigurationFile? {
        let flagName = bridgeConfig != nil ? "--bridge-config" : "--config"
        guard let path = try bridgeConfig ?? RuntimeSettings.current.bridgeJSONConfig else { return nil }
        do { return try BridgeConfigurationFile.load(path: path) } catch { throw ValidationError("\(flagName): \(error)") }
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
        if let text = try RuntimeSettings.current.value("OPSBUS_BRIDGE_ROUTES"), !text.isEmpty {
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
            Routes: --route (repeatable), else --bridge-config FILE (or --config naming a JSON file), else \
            $OPSBUS_BRIDGE_ROUTES (specs separated by \
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
            SIGINT/SIGTERM (graceful shutdown): stop taking messages, disconnect, write the journal's rest to Redis \
            for up to --drain-timeout (what is left stays in the journal for the next start), exit 0; a shutdown \
            longer than --shutdown-timeout exits with 75. \(ExitStatus.helpText)
            Settings (flag > environment > config file given by --config or $OPSBUS_CONFIG > default): MQTT_URL, \
            REDIS_URL, their *_PASSWORD_FILE, OPSBUS_TOPIC_PREFIX, OPSBUS_BRIDGE_ROUTES, OPSBUS_HTTP_PORT/HOST.
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

    @Option(help: ArgumentHelp(
        "Seconds to keep writing the journal to Redis after SIGTERM before leaving the rest for the next start (default 80 % of --shutdown-timeout).",
        valueName: "seconds"))
    var drainTimeout: Double?

    @Option(help: ArgumentHelp(
        "Seconds a graceful shutdown (SIGTERM/SIGINT) may take before the process exits with status 75.",
        valueName: "seconds"))
    var shutdownTimeout: Double = 10

    @Flag(name: .customLong("no-acks"), help: "Do not publish end-to-end acknowledgements on acks/<owner>/<session_id>.")
    var noAcks = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var http: HTTPOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.bridge", bridgeJSON: true)
        try ServiceRunner.checkTimeout(shutdownTimeout)
        let scheme = try connection.topicScheme()
        let (routes, file) = try routeOptions.resolve(scheme: scheme)
        var configuration = BridgeConfiguration(
            mqtt: try connection.mqttEndpoint(), redis: try connection.redisEndpoint(), routes: routes,
            instance: instance, clientID: clientID,
            journalDirectory: try journal ?? BridgeConfiguration.defaultJournalDirectory(
                instance: instance, stateDirectory: RuntimeSettings.current.value("OPSBUS_STATE_DIR")))
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
        let drain = drainTimeout ?? shutdownTimeout * 0.8
        if drain >= shutdownTimeout {
            throw ValidationError("--drain-timeout (\(drain) s) must be shorter than --shutdown-timeout (\(shutdownTimeout) s)")
        }
        configuration.drainTimeout = drain
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
        try await ServiceRunner.run("bridge", shutdownTimeout: shutdownTimeout, logger: logger) {
            try await bridge.run()
        }
    }
}
