import ArgumentParser
import Foundation
import Logging
import OpsBusBridge
import OpsBusCore
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusSpool
import OpsBusRedis

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the whole pipeline on this machine and show what happened.",
        discussion: """
            Without MQTT_URL/REDIS_URL (or --mqtt-url/--redis-url) the demo starts its own mosquitto and \
            redis-server on free loopback ports and stops them at the end (also on Ctrl-C). It runs the processor, \
            and the bridge (every topic family into Redis Streams events:<family>), simulates GPU workers processing \
            jobs with progress and some failures, lets one worker die (SIGKILL, so \
            the broker publishes its last will), sends one malformed message to show the dead-letter path, then \
            prints job counts, workers, model usage, a few job timelines, and the commands to look for yourself.
            --keep-running leaves everything up until Ctrl-C so you can run those commands.
            """)

    @Option(help: "Simulated workers (plus one that dies).") var workers: Int = 3
    @Option(help: "Jobs per worker.") var jobs: Int = 4
    @Flag(help: "Keep broker, Redis and processor running after the summary, until Ctrl-C.") var keepRunning = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.demo")
        let settings = try RuntimeSettings.current
        var started: [ServerProcess] = []
        defer { started.reversed().forEach { $0.stop() } }

        let mqttEndpoint: MQTTEndpoint
        let redisEndpoint: RedisEndpoint
        let mqttURL: String
        if connection.mqttURL == nil && settings.source("MQTT_URL") == .default {
            output("starting mosquitto …")
            let broker = try LocalMosquitto.start()
            started.append(broker)
            mqttURL = broker.url
            mqttEndpoint = try MQTTEndpoint(url: broker.url)
        } else {
            mqttURL = try connection.mqttURL ?? settings.value("MQTT_URL") ?? ""
            mqttEndpoint = try connection.mqttEndpoint()
        }
        if connection.redisURL == nil && settings.source("REDIS_URL") == .default {
            output("starting redis-server …")
            let redis = try LocalRedis.start()
            started.append(redis)
            redisEndpoint = try RedisEndpoint(url: redis.url)
        } else {
            redisEndpoint = try connection.redisEndpoint()
        }
        let servers = started
        let scheme = try connection.topicScheme()
        let mainTask = Task {
            try await Self.runPipeline(
                mqtt: mqttEndpoint, mqttURL: mqttURL, redis: redisEndpoint, scheme: scheme, workers: workers, jobs: jobs,
                keepRunning: keepRunning, logger: logger)
        }
        let signals = SignalCanceller { _ in
            output("\ninterrupted: shutting down")
            mainTask.cancel()
            // A second Ctrl-C must not leave servers behind either.
            servers.forEach { $0.stop(timeout: 3) }
        }
        defer { signals.cancel() }
        do {
            try await mainTask.value
        } catch is CancellationError {
            output("demo stopped")
        }
    }

    static func runPipeline(
        mqtt: MQTTEndpoint, mqttURL: String, redis: RedisEndpoint, scheme: TopicScheme, workers: Int, jobs: Int,
        keepRunning: Bool, logger: Logger
    ) async throws {
        var configuration = ProcessorConfiguration(mqtt: mqtt, redis: redis, scheme: scheme, clientID: "opsbus-demo-processor")
        // The dying worker's will makes it unreachable; a short link grace lets the demo show it offline and its job
        // failed over before the summary (the default, 30 s, waits for a worker that may still come back).
        configuration.workerLinkGrace = 2
        let processor = try EventProcessor(configuration: configuration, logger: logger)
        let processorTask = Task { try await processor.run() }
        defer { processorTask.cancel() }
        // The bridge mirrors every family into events:<family> streams; its journal lives in a temporary folder.
        let journal = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-demo-journal-\(getpid())")
        let bridge = try Bridge(
            configuration: BridgeConfiguration(mqtt: mqtt, redis: redis, routes: BridgeRoute.defaults(scheme: scheme),
                                               clientID: "opsbus-demo-bridge", journalDirectory: journal.path),
            logger: logger)
        let bridgeTask = Task { try await bridge.run() }
        defer {
            bridgeTask.cancel()
            try? FileManager.default.removeItem(at: journal)
        }
        // Workers start only once the processor's and the bridge's subscriptions exist, so no event can miss them.
        let deadline = Date().addingTimeInterval(20)
        while !processor.isSubscribed || !bridge.isSubscribed {
            if Date() > deadline {
                processorTask.cancel()
                try await processorTask.value
                throw CLIError("the processor did not subscribe within 20 s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }

        output("simulating \(workers) GPU workers with \(jobs) jobs each, and one worker that dies mid-job …")
        // Each worker spools at the edge (here under the demo's temporary folder) and waits for the bridge's acks.
        let spools = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-demo-spool-\(getpid())")
        defer { try? FileManager.default.removeItem(at: spools) }
        let simulations = (1...max(1, workers)).map { number in
            WorkerSimulation(workerID: "gpu-worker-\(number)", machineID: "gpu-box-\((number + 1) / 2)",
                             jobIDs: (1...max(1, jobs)).map { "job-\(number)-\($0)" }, failEvery: 3,
                             spool: SpoolOptions(spool: SpoolConfiguration(directory: spools.path + "/gpu-worker-\(number)")))
        }
        let doomed = try launchDoomedWorker(mqttURL: mqttURL, spool: spools.path + "/doomed")
        let reports = try await withThrowingTaskGroup(of: WorkerSimulation.Report.self) { group in
            for simulation in simulations {
                group.addTask { try await simulation.run(endpoint: mqtt, scheme: scheme, logger: logger) }
            }
            var all: [WorkerSimulation.Report] = []
            for try await report in group { all.append(report) }
            return all
        }
        doomed.waitUntilExit()

        // One malformed message, to show that bad input is dead-lettered, not dropped or fatal.
        let cli = try await EventPublisher.connect(endpoint: mqtt, context: PublisherContext(source: "opsbus-demo"),
                                                   scheme: scheme, logger: logger)
        try await cli.publishRaw(topic: scheme.topic(for: .jobCompleted, subject: try Identifier(validating: "job-bad")),
                                 payload: Array(#"{"event_type": "job.completed", "oops": tru"#.utf8), qos: .atLeastOnce)
        await cli.disconnect()

        let expectedTerminal = reports.reduce(0) { $0 + $1.completed.count + $1.failed.count }
        let view = try DemoSummary.waitForState(redis: redis, expectedTerminalJobs: expectedTerminal, logger: logger)
        output(view.render(mqtt: mqtt, mqttURL: mqttURL, redis: redis, counters: processor.counters, reports: reports))
        output(try DemoSummary.streams(redis: redis, logger: logger))
        if keepRunning {
            output("\neverything keeps running; press Ctrl-C to stop")
            while !Task.isCancelled { try await Task.sleep(for: .seconds(1)) }
        }
    }

    /// A worker in its own process that kills itself (SIGKILL) during its second job: a real crash, so the broker
    /// publishes its last will.
    static func launchDoomedWorker(mqttURL: String, spool: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = [
            "simulate", "--workers", "1", "--jobs", "3", "--worker-prefix", "doomed-worker", "--job-prefix", "job-doomed",
            "--die-during-job", "2", "--log-level", "warning", "--spool", spool,
        ]
        // The URL travels in the environment, not argv, so a password never shows in `ps`.
        process.environment = ProcessInfo.processInfo.environment.merging(["MQTT_URL": mqttURL]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        try ChildLauncher.run(process)
        return process
    }
}
