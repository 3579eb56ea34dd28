import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusJournal
import OpsBusProcessor

struct ProcessorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "processor",
        abstract: "Run the processor: events from MQTT become Redis state and automated actions.",
        discussion: """
            Subscribes at QoS 1 with a persistent session (fixed client id), so events published while it is down \
            are delivered when it returns. Each event is applied to Redis atomically and idempotently before the \
            broker gets its acknowledgement: kill -9 loses nothing, duplicates change nothing. Invalid messages go to \
            the dead-letter stream opsbus:deadletter with the reason. Key layout: README, "Redis key layout".

            Automated actions (BUSINESS_LOGIC_AUTOMATION): worker busy/idle and resources from job events, model \
            usage and success/failure patterns, retries with backoff (trigger.retry on triggers/retry/<job_id> when \
            due) or the job dead-letter stream, failover of a dead worker's jobs, precache/scaling/failover triggers, \
            webhook notifications to NOTIFICATION_SERVICE_URL for jobs that ask for one.

            Batching (--journal DIR or OPSBUS_PROCESSOR_JOURNAL): each message is appended to a local journal \
            before the broker gets its PUBACK (kill -9 still loses nothing), and a drain thread applies the journal \
            to Redis in batches of up to --batch-size events, one round trip and one script call per batch, over \
            --batch-writers connections that each take a share of the publisher sessions (each keeps its order): \
            about 3 times the one-at-a-time throughput (BENCHMARKS.md). Same atomic, idempotent state. While \
            Redis is down the journal grows up to 1 GiB, then messages are refused and the broker keeps them. One \
            journal directory per instance; keep it on storage that outlives the process.

            Scale out: run several with the same --group (MQTT 5 shared subscription $share/<group>/…) and a \
            different --instance each.

            Lifecycle: SIGTERM/SIGINT start a graceful shutdown: the event in hand is applied, a group member leaves \
            its shared subscription, the connections close; exit status 0. A shutdown longer than \
            --shutdown-timeout exits with 75. \(ExitStatus.helpText)

            Settings (flag > environment > config file given by --config or $OPSBUS_CONFIG > default): MQTT_URL, \
            REDIS_URL, OPSBUS_TOPIC_PREFIX, EVENT_PROCESSING_BATCH_SIZE (outbox batch, default 100), BUSINESS_LOGIC_TIMEOUT_MS (Redis command timeout, default 5000), \
            BUSINESS_LOGIC_AUTOMATION, MODEL_USAGE_TRACKING, USER_NOTIFICATIONS_ENABLED (true/false, default true), \
            NOTIFICATION_SERVICE_URL, NOTIFICATION_SECRET or NOTIFICATION_SECRET_FILE, WORKER_LINK_GRACE_SECONDS \
            (default 30), GAP_REPORT_AFTER_SECONDS (default 60), PATTERN_ANALYSIS_INTERVAL (seconds between pattern \
            analyses publishing trigger.recommendation on triggers/recommendation/<kind>.<scope>, default 300, 0 = off).
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

    @Option(help: "Seconds without any event after which a worker that sent heartbeats is declared offline.")
    var heartbeatTimeout: Double = 90

    @Option(help: ArgumentHelp(
        "Seconds a worker may stay unreachable (last will received) before its in-flight jobs fail over; it may still finish them and flush the results (default $WORKER_LINK_GRACE_SECONDS or 30).",
        valueName: "seconds"))
    var workerLinkGrace: Double?

    @Option(help: ArgumentHelp(
        "Seconds a gap in a publisher session's seq may stay open (reordering) before it is reported as lost events (default $GAP_REPORT_AFTER_SECONDS or 60).",
        valueName: "seconds"))
    var gapReportAfter: Double?

    @Option(help: ArgumentHelp(
        "Seconds between pattern analyses (failure rates, timeouts, resources, slow models → trigger.recommendation); 0 turns them off (default $PATTERN_ANALYSIS_INTERVAL or 300).",
        valueName: "seconds"))
    var patternAnalysisInterval: Int?

    @Option(help: "Automated actions on or off (default $BUSINESS_LOGIC_AUTOMATION or true).")
    var automation: Bool?

    @Option(help: ArgumentHelp(
        "Where events come from: mqtt, or stream:<key> to read a stream the bridge writes (e.g. stream:events:jobs) through a consumer group.",
        valueName: "mqtt|stream:<key>"))
    var source: String = "mqtt"

    @Option(help: "Consumer group for --source stream:… (instances in one group share the entries).")
    var streamGroup: String = "opsbus-processor"

    @Option(help: ArgumentHelp(
        "Journal directory: apply events in batches behind a local journal (default: off, one event at a time; $OPSBUS_PROCESSOR_JOURNAL).",
        valueName: "dir"))
    var journal: String?

    @Option(help: "Events per Redis script call with --journal (1-1000).")
    var batchSize: Int = 128

    @Option(help: "Redis connections applying --journal batches at once, each for its share of the publisher sessions (1-8); one publisher's events always keep their order.")
    var batchWriters: Int = 2

    @Option(help: "When to fsync the --journal: always (survives OS crashes, one flush per message), batch, never (default; survives process crashes).")
    var journalFsync: String = "never"

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var http: HTTPOptions
    @OptionGroup var common: CommonOptions

    @Option(help: ArgumentHelp(
        "Seconds a graceful shutdown (SIGTERM/SIGINT) may take before the process exits with status 75.",
        valueName: "seconds"))
    var shutdownTimeout: Double = 10

    func run() async throws {
        let logger = try common.makeLogger("opsbus.processor")
        if let group {
            do { _ = try Identifier(validating: group, field: "group") } catch { throw ValidationError("--group: \(error)") }
        }
        try ServiceRunner.checkTimeout(shutdownTimeout)
        let settings = try RuntimeSettings.current
        var configuration = ProcessorConfiguration(
            mqtt: try connection.mqttEndpoint(), redis: try connection.redisEndpoint(),
            scheme: try connection.topicScheme(),
            clientID: clientID ?? (group.map { "opsbus-processor-\($0)-\(instance)" } ?? "opsbus-processor"),
            group: group, maxPayloadBytes: maxPayloadBytes, timelineLimit: timelineLimit)
        configuration.automation = try settings.bool("BUSINESS_LOGIC_AUTOMATION", flag: automation)
        configuration.modelUsageTracking = try settings.bool("MODEL_USAGE_TRACKING")
        configuration.userNotifications = try settings.bool("USER_NOTIFICATIONS_ENABLED")
        configuration.outboxBatchSize = try settings.int("EVENT_PROCESSING_BATCH_SIZE")
        configuration.redisCommandTimeout = Double(try settings.int("BUSINESS_LOGIC_TIMEOUT_MS")) / 1000
        configuration.heartbeatTimeout = heartbeatTimeout
        configuration.workerLinkGrace = try workerLinkGrace ?? Double(settings.int("WORKER_LINK_GRACE_SECONDS"))
        configuration.gapReportAfter = try gapReportAfter ?? Double(settings.int("GAP_REPORT_AFTER_SECONDS"))
        let patternInterval = try patternAnalysisInterval ?? settings.int("PATTERN_ANALYSIS_INTERVAL")
        guard (0...86_400).contains(patternInterval) else {
            throw ValidationError("--pattern-analysis-interval must be a number of seconds from 0 to 86400, not \(patternInterval)")
        }
        configuration.patternAnalysisInterval = Double(patternInterval)
        for (name, value) in [("--worker-link-grace", configuration.workerLinkGrace),
                              ("--gap-report-after", configuration.gapReportAfter)]
        where !(value.isFinite && value >= 0 && value <= 86_400) {
            throw ValidationError("\(name) must be a number of seconds from 0 to 86400, not \(value)")
        }
        if source.hasPrefix("stream:"), source.count > "stream:".count {
            configuration.source = .stream(key: String(source.dropFirst("stream:".count)), group: streamGroup)
        } else if source != "mqtt" {
            throw ValidationError("--source must be mqtt or stream:<key>, not '\(source)'")
        }
        if let directory = try journal ?? settings.value("OPSBUS_PROCESSOR_JOURNAL") {
            if case .stream = configuration.source {
                throw ValidationError("--journal applies to --source mqtt only (a stream source is durable already)")
            }
            guard (1...1000).contains(batchSize) else {
                throw ValidationError("--batch-size must be from 1 to 1000, not \(batchSize)")
            }
            guard (1...8).contains(batchWriters) else {
                throw ValidationError("--batch-writers must be from 1 to 8, not \(batchWriters)")
            }
            guard let fsync = JournalFsync(rawValue: journalFsync) else {
                throw ValidationError("--journal-fsync: expected always, batch or never (got '\(journalFsync)')")
            }
            var settings = ProcessorJournal(directory: directory)
            settings.batchSize = batchSize
            settings.writers = batchWriters
            settings.fsync = fsync
            settings.drainTimeout = shutdownTimeout * 0.8
            configuration.journal = settings
        }
        for name in ["NOTIFICATION_SERVICE_URL", "NOTIFICATION_SECRET", "NOTIFICATION_SECRET_FILE"] {
            _ = try settings.value(name)
        }
        do {
            configuration.webhooks = try WebhookEndpoint.fromEnvironment(settings.environment)
        } catch {
            throw ConfigurationFailure.exit(ConfigurationProblem(variable: "NOTIFICATION_*", message: "\(error)"))
        }
        let processor: EventProcessor
        do { processor = try EventProcessor(configuration: configuration, logger: logger) } catch { throw CLIError("\(error)") }
        let endpoints = try http.resolve().map { ProcessorObservability(processor: processor, host: $0.host, port: $0.port, logger: logger) }
        do { try endpoints?.start() } catch { throw CLIError("--http-port: \(error)") }
        defer { endpoints?.stop() }
        try await ServiceRunner.run("processor", shutdownTimeout: shutdownTimeout, logger: logger) {
            try await processor.run()
        }
    }
}
