import Foundation
import OpsBusHTTP
import OpsBusLocalServers
import Testing

/// The HTTP endpoints of `opsbus processor` and `opsbus bridge`, run as real processes against real servers.
@Suite("Metrics and health endpoints", .serialized)
struct ObservabilityTests {
    /// Parses the Prometheus text format into `name{labels}` → value (samples only).
    static func samples(_ text: String) -> [String: Double] {
        var result: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            result[String(line[..<space])] = value
        }
        return result
    }

    static func get(_ port: Int, _ path: String) -> HTTPGetResponse? { try? HTTPGet.fetch(port: port, path: path, timeout: 5) }

    static func startProcessor(_ servers: TestServers, port: Int, extra: [String] = []) throws -> ChildProcess {
        try ChildProcess(try opsbusExecutable(), ["processor", "--http-port", String(port), "--client-id",
                                                  "obs-\(UUID().uuidString.prefix(8))"] + extra,
                         environment: ["MQTT_URL": servers.mqttURL, "REDIS_URL": servers.redisURL])
    }

    static func publish(_ servers: TestServers, _ arguments: [String]) async throws {
        let result = try await run(try opsbusExecutable(), ["publish"] + arguments,
                                   environment: ["MQTT_URL": servers.mqttURL])
        #expect(result.status == 0, "publish \(arguments): \(result.stderr)")
    }

    @Test("/metrics counts received, applied and dead-lettered events by type and reason; latency is observed")
    func processorMetricsMove() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let processor = try Self.startProcessor(servers, port: port)
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 },
                "never ready: \(processor.stderr)")
        let before = Self.samples(Self.get(port, "/metrics")?.body ?? "")
        #expect(before["opsbus_events_received_total{type=\"job.received\"}"] == nil)
        #expect(before["opsbus_mqtt_connected"] == 1)

        for index in 1...3 { try await Self.publish(servers, ["job.received", "--job", "obs-job-\(index)"]) }
        // Not an envelope: dead-lettered as invalid_event.
        _ = try await run("/usr/bin/mosquitto_pub", ["-p", String(servers.broker.port), "-q", "1",
                                                     "-t", "jobs/obs-bad/received", "-m", "not json"])
        var after: [String: Double] = [:]
        let moved = try await waitUntil(timeout: 30) {
            after = Self.samples(Self.get(port, "/metrics")?.body ?? "")
            return after["opsbus_events_applied_total{type=\"job.received\"}"] == 3
                && after["opsbus_events_dead_lettered_total{reason=\"invalid_event\"}"] == 1
        }
        #expect(moved, "metrics after publishing: \(after.filter { $0.key.hasPrefix("opsbus_events") })")
        #expect(after["opsbus_events_received_total{type=\"job.received\"}"] == 3)
        #expect(after["opsbus_event_latency_seconds_count"] == 3)
        #expect(after["opsbus_jobs{status=\"received\"}"] == 3)
        #expect(after["opsbus_bus_events_total{type=\"job.received\"}"] == 3)
        #expect(after["opsbus_mqtt_connects_total"] == 1)

        let health = Self.get(port, "/health")
        #expect(health?.status == 200)
        #expect(health?.body.contains(#""verdict":"#) == true, "\(health?.body ?? "nil")")
        #expect(Self.get(port, "/health/live")?.status == 200)
        #expect(Self.get(port, "/nope")?.status == 404)
        processor.signal(SIGTERM)
        #expect(try await processor.wait(timeout: 30) == 0, "stderr: \(processor.stderr)")
    }

    @Test("/health/ready is 503 with the reason while Redis is down, and 200 again after it restarts")
    func readinessFollowsRedis() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let processor = try Self.startProcessor(servers, port: port)
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 },
                "never ready: \(processor.stderr)")
        servers.redis.stop()
        var down: HTTPGetResponse?
        #expect(try await waitUntil(timeout: 30) {
            down = Self.get(port, "/health/ready")
            return down?.status == 503
        })
        #expect(down?.body.contains("Redis") == true, "reason: \(down?.body ?? "nil")")
        #expect(Self.get(port, "/health/live")?.status == 200, "live while Redis is down")
        #expect(Self.get(port, "/health")?.status == 503)
        try servers.redis.start()
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 },
                "not ready after Redis came back: \(Self.get(port, "/health/ready")?.body ?? "nil")")
        processor.signal(SIGTERM)
        _ = try await processor.wait(timeout: 30)
    }

    @Test("/health/ready is 503 while the broker is down")
    func readinessFollowsBroker() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let processor = try Self.startProcessor(servers, port: port)
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 })
        servers.broker.stop()
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.body.contains("broker") == true })
        #expect(Self.get(port, "/health/ready")?.status == 503)
        try servers.broker.start()
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 })
        let metrics = Self.samples(Self.get(port, "/metrics")?.body ?? "")
        #expect((metrics["opsbus_mqtt_disconnects_total"] ?? 0) >= 1, "\(metrics.filter { $0.key.contains("mqtt") })")
        processor.signal(SIGTERM)
        _ = try await processor.wait(timeout: 30)
    }

    @Test("the bridge's /metrics counts entries by route and dedup hits")
    func bridgeMetrics() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let journal = FileManager.default.temporaryDirectory.appendingPathComponent("obs-journal-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let bridge = try ChildProcess(
            try opsbusExecutable(), ["bridge", "--http-port", String(port), "--journal", journal],
            environment: ["MQTT_URL": servers.mqttURL, "REDIS_URL": servers.redisURL])
        #expect(try await waitUntil(timeout: 30) { Self.get(port, "/health/ready")?.status == 200 },
                "bridge never ready: \(bridge.stderr)")
        for index in 1...2 { try await Self.publish(servers, ["job.received", "--job", "obs-bridge-\(index)"]) }
        var samples: [String: Double] = [:]
        #expect(try await waitUntil(timeout: 30) {
            samples = Self.samples(Self.get(port, "/metrics")?.body ?? "")
            return samples["opsbus_bridge_entries_written_total"] == 2
        }, "bridge metrics: \(samples.filter { $0.key.contains("bridge") }); \(bridge.stderr)")
        #expect(samples.contains { $0.key.hasPrefix("opsbus_bridge_route_entries_total{stream=") && $0.value == 2 },
                "\(samples.filter { $0.key.contains("route") })")
        #expect(samples["opsbus_bridge_dedup_hits_total"] == 0)
        #expect(samples["opsbus_mqtt_connected"] == 1)
        #expect(Self.get(port, "/health")?.body.contains(#""entries":2"#) == true)
        bridge.signal(SIGTERM)
        _ = try await bridge.wait(timeout: 30)
    }

    @Test("--http-port out of range and a bad OPSBUS_HTTP_PORT fail at start naming the option")
    func badPort() async throws {
        let result = try await run(try opsbusExecutable(), ["processor", "--http-port", "70000"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("--http-port"), "\(result.stderr)")
        let fromEnvironment = try await run(try opsbusExecutable(), ["processor"], environment: ["OPSBUS_HTTP_PORT": "x"])
        #expect(fromEnvironment.status != 0)
        #expect(fromEnvironment.stderr.contains("OPSBUS_HTTP_PORT"), "\(fromEnvironment.stderr)")
    }

    @Test("the processor logs each event with its job, worker and trace ids as metadata (JSON fields)")
    func processorLogsEventIDs() async throws {
        let servers = try TestServers()
        let processor = try ChildProcess(
            try opsbusExecutable(),
            ["processor", "--mqtt-url", servers.mqttURL, "--redis-url", servers.redisURL, "--log-format", "json",
             "--log-level", "debug"])
        defer { processor.signal(SIGKILL) }
        #expect(try await waitUntil { processor.stderr.contains("processor running") }, "\(processor.stderr)")
        let started = try await run(
            try opsbusExecutable(), ["publish", "job.received", "--job", "j-logged", "--trace-id", "trace-77", "--no-spool"],
            environment: ["MQTT_URL": servers.mqttURL, "WORKER_ID": "gpu-logged"])
        #expect(started.status == 0, "\(started.stderr)")
        // A dead letter: not an event at all.
        let raw = try await run(try opsbusExecutable(), ["publish", "--raw", "jobs/other-job/started", "{\"not\":\"an event\"}"],
                                environment: ["MQTT_URL": servers.mqttURL])
        #expect(raw.status == 0, "\(raw.stderr)")
        func lines() -> [[String: Any]] {
            processor.stderr.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
        func metadata(_ line: [String: Any]) -> [String: Any] { line["metadata"] as? [String: Any] ?? line }
        #expect(try await waitUntil {
            lines().contains { ($0["message"] as? String) == "event applied" && (metadata($0)["job_id"] as? String) == "j-logged" }
        }, "\(processor.stderr)")
        let applied = lines().first { ($0["message"] as? String) == "event applied" }.map(metadata) ?? [:]
        #expect(applied["trace_id"] as? String == "trace-77" && applied["worker_id"] as? String == "gpu-logged"
                && applied["event_type"] as? String == "job.received", "\(applied)")
        #expect(try await waitUntil {
            lines().contains { ($0["message"] as? String) == "event dead-lettered" && ($0["level"] as? String) == "warning"
                && (metadata($0)["reason"] as? String)?.isEmpty == false }
        }, "\(processor.stderr)")
    }

    @Test("--log-format json writes one JSON object per line with level, label, message and metadata")
    func jsonLogs() async throws {
        let result = try await run(try opsbusExecutable(), ["publish", "job.received", "--job", "j-log",
                                                            "--log-format", "json", "--log-level", "debug"],
                                   environment: ["MQTT_URL": "mqtt://127.0.0.1:1"], timeout: 60)
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(!lines.isEmpty, "no JSON lines: \(result.stderr)")
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["level"] is String && object?["label"] is String && object?["message"] is String, "\(line)")
        }
        let bad = try await run(try opsbusExecutable(), ["publish", "job.received", "--job", "j"],
                                environment: ["OPSBUS_LOG_FORMAT": "xml"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("OPSBUS_LOG_FORMAT"), "\(bad.stderr)")
    }
}
