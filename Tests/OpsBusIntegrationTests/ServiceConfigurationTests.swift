import Foundation
import OpsBusHTTP
import OpsBusLocalServers
import OpsBusProcessor
import Testing

/// The services read the config file (`--config`, `OPSBUS_CONFIG`) with flag > environment > file > default, and
/// run under swift-service-lifecycle: SIGTERM drains and exits 0, an invalid setting exits 78 (README, "Operating
/// opsbus").
@Suite("Services: config file, precedence, lifecycle and exit statuses")
struct ServiceConfigurationTests {
    /// Variables that would otherwise leak from the developer's environment into the child.
    static let cleared: [String: String] = [
        "OPSBUS_CONFIG": "", "MQTT_PASSWORD_FILE": "", "REDIS_PASSWORD_FILE": "", "OPSBUS_TOPIC_PREFIX": "",
        "EVENT_PROCESSING_BATCH_SIZE": "", "BUSINESS_LOGIC_TIMEOUT_MS": "", "OPSBUS_HTTP_PORT": "", "OPSBUS_LOG_LEVEL": "",
        "OPSBUS_LOG_FORMAT": "", "OPSBUS_BRIDGE_ROUTES": "", "NOTIFICATION_SERVICE_URL": "", "NOTIFICATION_SECRET": "",
        "NOTIFICATION_SECRET_FILE": "", "OPSBUS_STATE_DIR": "",
    ]

    static func environment(_ values: [String: String] = [:]) -> [String: String] {
        cleared.merging(values) { $1 }
    }

    static func configFile(_ lines: [String]) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-svc-\(UUID().uuidString).env")
        try (["# written by ServiceConfigurationTests"] + lines).joined(separator: "\n").appending("\n")
            .write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// A port nothing listens on (allocated, then released).
    static func deadPort() throws -> Int { Int(try LoopbackPort.allocate()) }

    /// Starts `processor` with an HTTP port, waits until ready, publishes a job and waits until Redis has it.
    func processesAnEvent(_ servers: TestServers, arguments: [String], environment: [String: String]) async throws {
        let port = Int(try LoopbackPort.allocate())
        let processor = try ChildProcess(
            try opsbusExecutable(), ["processor", "--http-port", String(port)] + arguments,
            environment: Self.environment(environment))
        #expect(try await waitUntil(timeout: 60) { ObservabilityTests.get(port, "/health/ready")?.status == 200 },
                "never ready: \(processor.stderr)")
        let jobID = "cfg-\(UUID().uuidString.prefix(8).lowercased())"
        try await ObservabilityTests.publish(servers, ["job.received", "--job", jobID])
        let redis = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 60) {
            try redis.command(["HGET", RedisKeys().job(jobID), "status"]).string != nil
        }, "the processor never applied \(jobID): \(processor.stderr)")
        processor.signal(SIGTERM)
        let status = try await processor.wait(timeout: 60)
        #expect(status == 0, "SIGTERM is a clean stop: \(processor.stderr)")
        #expect(processor.stderr.contains("processor stopped cleanly"), "\(processor.stderr)")
    }

    @Test("a processor started with only --config (MQTT_URL, REDIS_URL in the file) processes an event; SIGTERM exits 0")
    func processorReadsConfigFile() async throws {
        let servers = try TestServers()
        let file = try Self.configFile(["MQTT_URL=\(servers.mqttURL)", "export REDIS_URL=\"\(servers.redisURL)\""])
        defer { try? FileManager.default.removeItem(atPath: file) }
        try await processesAnEvent(servers, arguments: ["--config", file], environment: [:])
    }

    @Test("environment beats the file (MQTT_URL), a flag beats the environment (--redis-url); OPSBUS_CONFIG names the file")
    func precedence() async throws {
        let servers = try TestServers()
        let dead = try Self.deadPort()
        let file = try Self.configFile(["MQTT_URL=mqtt://127.0.0.1:\(dead)", "REDIS_URL=redis://127.0.0.1:\(dead)"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        try await processesAnEvent(
            servers, arguments: ["--redis-url", servers.redisURL],
            environment: ["OPSBUS_CONFIG": file, "MQTT_URL": servers.mqttURL, "REDIS_URL": "redis://127.0.0.1:\(dead)"])

        // Other commands read the file too: `jobs` finds Redis through it alone.
        let good = try Self.configFile(["REDIS_URL=\(servers.redisURL)"])
        defer { try? FileManager.default.removeItem(atPath: good) }
        let jobs = try await run(try opsbusExecutable(), ["jobs", "--json", "--config", good], environment: Self.environment())
        #expect(jobs.status == 0, "\(jobs.stderr)")
        #expect(jobs.stdout.contains("cfg-"), "\(jobs.stdout)")
    }

    @Test("an invalid value in the file, the environment or a flag exits 78 naming the variable and its source")
    func invalidValuesExitWithTheConfigurationStatus() async throws {
        let file = try Self.configFile(["EVENT_PROCESSING_BATCH_SIZE=0", "MQTT_URL=mqtt://127.0.0.1:1"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let fromFile = try await run(try opsbusExecutable(), ["processor", "--config", file], environment: Self.environment())
        #expect(fromFile.status == 78, "\(fromFile.status): \(fromFile.stderr)")
        #expect(fromFile.stderr.contains("EVENT_PROCESSING_BATCH_SIZE"), "\(fromFile.stderr)")
        #expect(fromFile.stderr.contains("from file \(file)"), "\(fromFile.stderr)")
        #expect(fromFile.stderr.contains("expected a whole number from 1 to 10000"), "\(fromFile.stderr)")

        let badURL = try Self.configFile(["MQTT_URL=http://broker:1883"])
        defer { try? FileManager.default.removeItem(atPath: badURL) }
        for command in [["processor"], ["bridge"], ["tail"]] {
            let result = try await run(try opsbusExecutable(), command + ["--config", badURL], environment: Self.environment())
            #expect(result.status == 78, "\(command): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("MQTT_URL") && result.stderr.contains("from file"), "\(command): \(result.stderr)")
        }

        let fromEnvironment = try await run(
            try opsbusExecutable(), ["processor"],
            environment: Self.environment(["BUSINESS_LOGIC_TIMEOUT_MS": "soon", "MQTT_URL": "mqtt://127.0.0.1:1"]))
        #expect(fromEnvironment.status == 78, "\(fromEnvironment.stderr)")
        #expect(fromEnvironment.stderr.contains("BUSINESS_LOGIC_TIMEOUT_MS") && fromEnvironment.stderr.contains("from env"),
                "\(fromEnvironment.stderr)")

        let unknown = try Self.configFile(["NOT_A_SETTING=1"])
        defer { try? FileManager.default.removeItem(atPath: unknown) }
        let unknownResult = try await run(try opsbusExecutable(), ["processor", "--config", unknown], environment: Self.environment())
        #expect(unknownResult.status == 78 && unknownResult.stderr.contains("NOT_A_SETTING"), "\(unknownResult.stderr)")

        let missing = try await run(try opsbusExecutable(), ["bridge", "--config", "/nonexistent/opsbus.env"],
                                    environment: Self.environment())
        #expect(missing.status == 78 && missing.stderr.contains("/nonexistent/opsbus.env"), "\(missing.stderr)")

        let usage = try await run(try opsbusExecutable(), ["processor", "--no-such-flag"], environment: Self.environment())
        #expect(usage.status == 64, "a usage error: \(usage.stderr)")

        // The batching options are checked before anything connects.
        for (arguments, mentions) in [
            (["--journal", "/tmp/opsbus-unused-journal", "--journal-fsync", "sometimes"], "--journal-fsync"),
            (["--journal", "/tmp/opsbus-unused-journal", "--batch-size", "0"], "--batch-size"),
            (["--journal", "/tmp/opsbus-unused-journal", "--batch-writers", "9"], "--batch-writers"),
            (["--journal", "/tmp/opsbus-unused-journal", "--source", "stream:events:jobs"], "--source mqtt only"),
        ] {
            let result = try await run(try opsbusExecutable(), ["processor"] + arguments, environment: Self.environment())
            #expect(result.status == 64 && result.stderr.contains(mentions), "\(arguments): \(result.stderr)")
        }
    }

    @Test("SIGTERM to a running bridge drains, logs a clean stop and exits 0; its journal is under OPSBUS_STATE_DIR")
    func bridgeStopsCleanly() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-svc-state-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let file = try Self.configFile(["MQTT_URL=\(servers.mqttURL)", "REDIS_URL=\(servers.redisURL)",
                                        "OPSBUS_HTTP_PORT=\(port)", "OPSBUS_STATE_DIR=\(state)"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let bridge = try ChildProcess(try opsbusExecutable(), ["bridge", "--config", file],
                                      environment: Self.environment())
        #expect(try await waitUntil(timeout: 60) { ObservabilityTests.get(port, "/health/ready")?.status == 200 },
                "bridge never ready (OPSBUS_HTTP_PORT from the file): \(bridge.stderr)")
        try await ObservabilityTests.publish(servers, ["job.received", "--job", "svc-bridge-1"])
        let redis = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 60) { try redis.command(["XLEN", "events:jobs"]).int == 1 },
                "the bridge never wrote the event: \(bridge.stderr)")
        bridge.signal(SIGTERM)
        let status = try await bridge.wait(timeout: 60)
        #expect(status == 0, "\(bridge.stderr)")
        #expect(bridge.stderr.contains("bridge shutting down: draining"), "\(bridge.stderr)")
        #expect(bridge.stderr.contains("bridge stopped cleanly"), "\(bridge.stderr)")
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: state + "/bridge/journal", isDirectory: &isDirectory)
                && isDirectory.boolValue, "the default journal directory follows OPSBUS_STATE_DIR from the file")
    }

    @Test("a drain that cannot finish (Redis gone while an event is being applied) exits 75 after --shutdown-timeout")
    func stuckShutdownExitsWithTheTimeoutStatus() async throws {
        let servers = try TestServers()
        let processor = try ChildProcess(
            try opsbusExecutable(),
            ["processor", "--mqtt-url", servers.mqttURL, "--redis-url", servers.redisURL, "--shutdown-timeout", "2",
             "--log-level", "info"],
            environment: Self.environment())
        defer { processor.signal(SIGKILL) }
        #expect(try await waitUntil(timeout: 60) { processor.stderr.contains("processor running") }, "\(processor.stderr)")
        servers.redis.stop()
        // The event is taken but cannot be written: the processor rides out the outage (20 s) before handing it back.
        try await ObservabilityTests.publish(servers, ["job.received", "--job", "svc-stuck-1"])
        #expect(try await waitUntil(timeout: 60) { processor.stderr.contains("Redis write failed; retrying") },
                "\(processor.stderr)")
        processor.signal(SIGTERM)
        let status = try await processor.wait(timeout: 60)
        #expect(status == 75, "exit status \(status): \(processor.stderr)")
        #expect(processor.stderr.contains("did not finish its graceful shutdown in time"), "\(processor.stderr)")
    }

    @Test("--help documents the exit statuses and --shutdown-timeout")
    func helpDocumentsExitStatuses() async throws {
        for command in [["processor"], ["bridge"], []] {
            let help = try await run(try opsbusExecutable(), command + ["--help"], environment: Self.environment())
            #expect(help.status == 0)
            // Help text is wrapped to the terminal's width: compare with the whitespace folded.
            let folded = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
            for text in ["0 clean exit", "64 usage error", "75 graceful shutdown", "78 configuration error"] {
                #expect(folded.contains(text), "\(command) --help lacks '\(text)'")
            }
            if !command.isEmpty { #expect(help.stdout.contains("--shutdown-timeout")) }
        }
    }
}
