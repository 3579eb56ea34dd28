import Foundation
import OpsBusJournal
import OpsBusBridge
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import Testing

/// `opsbus bridge` as a child process, started with the test's servers and a journal directory of its own.
final class BridgeChild: Sendable {
    let child: ChildProcess

    init(_ servers: TestServers, journal: String, extra: [String] = []) async throws {
        child = try ChildProcess(try opsbusExecutable(), [
            "bridge", "--mqtt-url", servers.mqttURL, "--redis-url", servers.redisURL, "--journal", journal,
            "--instance", "child", "--log-level", "info",
        ] + extra)
        let subscribed = try await waitUntil(timeout: 30) { self.child.stderr.contains("bridge subscribed") || !self.child.isRunning }
        guard subscribed, child.isRunning else {
            throw TestFailure("opsbus bridge did not subscribe: \(child.stderr)")
        }
    }
}

/// Publishes envelopes one after another (each awaits its PUBACK) and records which were acknowledged.
final class SteadyPublisher: Sendable {
    let task: Task<[String], Error>

    init(_ servers: TestServers, count: Int, topic: @escaping @Sendable (Int) -> String = { "jobs/j-\($0 % 7)/progress" },
         pause: Duration = .milliseconds(1)) async throws {
        let client = try await bridgeTestPublisher(servers)
        task = Task {
            var acknowledged: [String] = []
            for index in 0..<count {
                let envelope = bridgeEnvelope(job: "j-\(index % 7)", type: .jobProgress, seq: UInt64(index), session: "steady")
                try await client.publish(topic: topic(index), payload: envelope.encoded(), qos: .atLeastOnce)
                acknowledged.append(envelope.eventID)
                try await Task.sleep(for: pause)
            }
            await client.disconnect()
            return acknowledged
        }
    }
}

func eventIDs(_ redis: RedisConnection, _ stream: String) throws -> [String] {
    var ids: [String] = []
    try StreamEntry.range(redis, stream: stream, from: "-", to: "+", pageSize: 1000) { entry in
        if let id = entry["event_id"] { ids.append(String(decoding: id, as: UTF8.self)) }
    }
    return ids
}

@Suite("Bridge faults: kill -9, Redis outages, full journal", .serialized)
struct BridgeFaultTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    func xlen(_ redis: RedisConnection, _ stream: String) throws -> Int {
        Int(try redis.command(["XLEN", stream]).int ?? -1)
    }

    @Test("opsbus bridge killed with SIGKILL twice under a steady load and restarted: every event exactly once, in order")
    func killNineUnderLoad() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let redis = try servers.redisConnection()
        var bridge = try await BridgeChild(servers, journal: journal)
        let total = 1500
        let publisher = try await SteadyPublisher(servers, count: total)
        for threshold in [300, 800] {
            #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= threshold })
            bridge.child.signal(SIGKILL)
            try await bridge.child.wait(timeout: 10)
            try await Task.sleep(for: .milliseconds(300))
            bridge = try await BridgeChild(servers, journal: journal)
        }
        let acknowledged = try await publisher.task.value
        #expect(acknowledged.count == total)
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= total })
        try await Task.sleep(for: .milliseconds(500))  // let any straggling duplicate show up
        let stored = try eventIDs(redis, "events:jobs")
        #expect(stored.count == total, "no duplicates: \(stored.count) entries for \(total) events")
        let missing = Set(acknowledged).subtracting(stored).count
        #expect(missing == 0, "no losses")
        let inOrder = stored == acknowledged
        #expect(inOrder, "one publisher's entries keep their publish order")
        // Graceful stop: SIGTERM exits 0 with everything committed.
        bridge.child.signal(SIGTERM)
        #expect(try await bridge.child.wait(timeout: 30) == 0)
        let committed = try String(contentsOfFile: journal + "/committed", encoding: .utf8)
        let segments = try FileManager.default.contentsOfDirectory(atPath: journal).filter { $0.hasPrefix("segment-") }.sorted()
        let last = try #require(segments.last)
        let size = try FileManager.default.attributesOfItem(atPath: journal + "/" + last)[.size] as? Int
        #expect(committed.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) == String(size ?? -1),
                "the journal is fully committed after SIGTERM: \(committed) vs \(last) size \(size ?? -1)")
    }

    @Test("Redis stopped for seconds under load and restarted: nothing lost, nothing doubled")
    func redisOutage() async throws {
        let redis = try servers.redisConnection()
        let bridge = try await RunningBridge.start(servers)
        let total = 1200
        let publisher = try await SteadyPublisher(servers, count: total)
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= 200 })
        servers.redis.stop()
        try await Task.sleep(for: .seconds(3))
        #expect(bridge.bridge.statistics.redisFailures > 0, "the writer noticed the outage")
        try servers.redis.start()
        let acknowledged = try await publisher.task.value
        let fresh = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 60) { try xlen(fresh, "events:jobs") >= total })
        let stored = try eventIDs(fresh, "events:jobs")
        #expect(stored.count == total)
        let inOrder = stored == acknowledged
        #expect(inOrder, "every acknowledged event once, in publish order")
        await bridge.stop()
    }

    @Test("a full journal while Redis is down rejects messages; the broker keeps them; all arrive exactly once")
    func fullJournal() async throws {
        let bridge = try await RunningBridge.start(servers, routes: ["jobs/#=events:jobs;maxbytes=2000"]) {
            $0.journalMaxBytes = 300_000
        }
        servers.redis.stop()
        let total = 1500  // about 600 bytes each journaled: far more than 300 kB
        let publisher = try await SteadyPublisher(servers, count: total, pause: .zero)
        let acknowledged = try await publisher.task.value
        #expect(try await waitUntil(timeout: 30) { bridge.bridge.statistics.rejected > 0 }, "the handler rejected when full")
        #expect(bridge.bridge.journalState.usedBytes <= 300_000)
        try servers.redis.start()
        let redis = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 90) { try xlen(redis, "events:jobs") >= total })
        let stored = try eventIDs(redis, "events:jobs")
        #expect(stored.count == total)
        let missing = Set(acknowledged).subtracting(stored).count
        #expect(missing == 0)
        let inOrder = stored == acknowledged
        #expect(inOrder, "rejections and redeliveries keep one publisher's order")
        await bridge.stop()
    }

    @Test("broker restarted (SIGTERM, persistence) under load: the durable session resumes, every event once")
    func brokerRestart() async throws {
        let redis = try servers.redisConnection()
        let bridge = try await RunningBridge.start(servers)
        let total = 1000
        let publisher = try await SteadyPublisher(servers, count: total)
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= 200 })
        try servers.broker.restart()
        let acknowledged = try await publisher.task.value
        #expect(acknowledged.count == total)
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= total })
        try await Task.sleep(for: .milliseconds(300))
        let stored = try eventIDs(redis, "events:jobs")
        #expect(stored.count == total, "no duplicates (publisher resends after the restart carry the same event_id)")
        let missing = Set(acknowledged).subtracting(stored).count
        #expect(missing == 0)
        await bridge.stop()
    }

    @Test("retained messages re-sent at each bridge start are mirrored once; new retained content is a new entry")
    func retainedAcrossRestarts() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let redis = try servers.redisConnection()
        let publisher = try await bridgeTestPublisher(servers)
        try await publisher.publish(topic: "raw/r", payload: Array("state-1".utf8), qos: .atLeastOnce, retain: true)
        var bridge = try await RunningBridge.start(servers, routes: ["raw/#=raw"], journal: journal)
        #expect(try await waitUntil { try xlen(redis, "raw") == 1 })
        await bridge.stop()
        bridge = try await RunningBridge.start(servers, routes: ["raw/#=raw"], journal: journal)
        #expect(try await waitUntil { try redis.command(["HGET", "opsbus:stats", "bridge_duplicates"]).int == 1 },
                "the re-sent retained message was recognised")
        try await publisher.publish(topic: "raw/r", payload: Array("state-2".utf8), qos: .atLeastOnce, retain: true)
        #expect(try await waitUntil { try xlen(redis, "raw") == 2 })
        #expect(try streamEntries(redis, "raw").map { text($0.fields["retain"]) } == ["1", "0"],
                "a retained message delivered live arrives with retain 0 (MQTT 3.1.1), at subscribe time with 1")
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("SIGTERM while Redis is down: exits 0 after the drain timeout; the next start writes the journal's rest")
    func sigtermWhileRedisDown() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        servers.redis.stop()
        let bridge = try await BridgeChild(servers, journal: journal, extra: ["--drain-timeout", "1"])
        let acknowledged = try await SteadyPublisher(servers, count: 100, pause: .zero).task.value
        bridge.child.signal(SIGTERM)
        #expect(try await bridge.child.wait(timeout: 30) == 0)
        #expect(bridge.child.stderr.contains("stopping with unwritten journal records"))
        try servers.redis.start()
        let restarted = try await BridgeChild(servers, journal: journal)
        let redis = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= 100 })
        let stored = try eventIDs(redis, "events:jobs")
        let inOrder = stored == acknowledged
        #expect(inOrder)
        restarted.child.signal(SIGTERM)
        #expect(try await restarted.child.wait(timeout: 30) == 0)
    }

    @Test("messages acknowledged while Redis is down live only in the journal: kill -9, restart, all written once")
    func journalSurvivesKillWhileRedisDown() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        servers.redis.stop()
        let bridge = try await BridgeChild(servers, journal: journal)
        let total = 300
        let acknowledged = try await SteadyPublisher(servers, count: total, pause: .zero).task.value
        #expect(acknowledged.count == total)
        // Every message was PUBACKed to the bridge, so the broker has nothing left for it: only the journal has them.
        #expect(try await waitUntil { bridge.child.stderr.contains("Redis write failed") })
        bridge.child.signal(SIGKILL)
        try await bridge.child.wait(timeout: 10)
        try servers.redis.start()
        let restarted = try await BridgeChild(servers, journal: journal)
        let redis = try servers.redisConnection()
        #expect(try await waitUntil(timeout: 60) { try xlen(redis, "events:jobs") >= total })
        try await Task.sleep(for: .milliseconds(300))
        let stored = try eventIDs(redis, "events:jobs")
        let inOrder = stored == acknowledged
        #expect(inOrder, "all \(total) events once, in order (got \(stored.count))")
        restarted.child.signal(SIGTERM)
        #expect(try await restarted.child.wait(timeout: 30) == 0)
    }
}

@Suite("opsbus replay and streams", .serialized)
struct BridgeCommandTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    func fill() async throws -> (envelopes: [EventEnvelope], binary: [UInt8]) {
        let bridge = try await RunningBridge.start(servers, routes: ["jobs/#=events:jobs", "raw/#=raw"])
        let publisher = try await bridgeTestPublisher(servers)
        let envelopes = (0..<5).map { bridgeEnvelope(job: "j-\($0 % 2)", seq: UInt64($0)) }
        for envelope in envelopes {
            try await publisher.publish(topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
        }
        let binary: [UInt8] = [0, 159, 146, 150, 10, 255]
        try await publisher.publish(topic: "raw/bin", payload: binary, qos: .atLeastOnce)
        let redis = try servers.redisConnection()
        #expect(try await waitUntil { try redis.command(["XLEN", "events:jobs"]).int == 5 && redis.command(["XLEN", "raw"]).int == 1 })
        await publisher.disconnect()
        await bridge.stop()
        return (envelopes, binary)
    }

    func opsbus(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(try opsbusExecutable(), arguments + ["--redis-url", servers.redisURL])
    }

    func parse(_ line: Substring) throws -> JSONObject {
        try #require(try JSONValue.parse(String(line)).objectValue)
    }

    @Test("replay --print writes JSON lines; --filter and --from/--to select; binary payloads come back as base64")
    func replayPrint() async throws {
        let (envelopes, binary) = try await fill()
        let all = try await opsbus(["replay", "--stream", "events:jobs", "--print"])
        #expect(all.status == 0, "\(all.stderr)")
        let lines = try all.stdout.split(separator: "\n").map(parse)
        #expect(lines.map { $0["payload"]?.stringValue } == envelopes.map { $0.encodedString() })
        #expect(lines.map { $0["event_id"]?.stringValue } == envelopes.map(\.eventID))
        let filtered = try await opsbus(["replay", "--stream", "events:jobs", "--print", "--filter", "jobs/j-1/#"])
        #expect(try filtered.stdout.split(separator: "\n").map(parse).map { $0["topic"]?.stringValue } == ["jobs/j-1/completed", "jobs/j-1/completed"])
        let ids = lines.compactMap { $0["id"]?.stringValue }
        let range = try await opsbus(["replay", "--stream", "events:jobs", "--print", "--from", ids[1], "--to", ids[3]])
        #expect(try range.stdout.split(separator: "\n").map(parse).compactMap { $0["id"]?.stringValue } == Array(ids[1...3]))
        let future = try await opsbus(["replay", "--stream", "events:jobs", "--print", "--from", "2999-01-01T00:00:00Z"])
        #expect(future.status == 0 && future.stdout.isEmpty)
        let raw = try await opsbus(["replay", "--stream", "raw", "--print"])
        let rawLine = try parse(try #require(raw.stdout.split(separator: "\n").first))
        #expect(rawLine["payload_base64"]?.stringValue == Base64.encode(binary))
        #expect(Base64.encode(Array("any carnal pleas".utf8)) == "YW55IGNhcm5hbCBwbGVhcw==")
        let bad = try await opsbus(["replay", "--stream", "events:jobs", "--print", "--from", "yesterday"])
        #expect(bad.status != 0 && bad.stderr.contains("yesterday"))
        let both = try await opsbus(["replay", "--stream", "events:jobs"])
        #expect(both.status != 0 && both.stderr.contains("--to-mqtt"))
        let missing = try await opsbus(["replay", "--stream", "nope", "--print"])
        #expect(missing.status != 0 && missing.stderr.contains("does not exist"))
    }

    @Test("replay --to-mqtt republishes the exact payloads on their topics, in order")
    func replayToMQTT() async throws {
        let (envelopes, _) = try await fill()
        let subscriber = try await MosquittoSub(port: servers.broker.port, filters: ["jobs/#"])
        let result = try await opsbus(["replay", "--stream", "events:jobs", "--to-mqtt", "--mqtt-url", servers.mqttURL])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("republished 5 entries"))
        let received = try await subscriber.waitForMessages(5)
        #expect(received.map(\.payload) == envelopes.map { $0.encodedString() })
        #expect(received.map(\.topic) == envelopes.map { "jobs/\($0.jobID!)/completed" })
        subscriber.stop()
    }

    @Test("routes come from --route, else --config, else OPSBUS_BRIDGE_ROUTES, else the defaults; bad ones are refused")
    func routeSources() async throws {
        func routes(_ arguments: [String], environment: [String: String] = [:]) async throws -> [String] {
            let result = try await run(try opsbusExecutable(), ["streams", "--json", "--redis-url", servers.redisURL] + arguments,
                                       environment: environment)
            #expect(result.status == 0, "\(result.stderr)")
            return try result.stdout.split(separator: "\n").map(parse).compactMap { $0["stream"]?.stringValue }
        }
        let config = bridgeTestDirectory() + ".json"
        defer { try? FileManager.default.removeItem(atPath: config) }
        try Data(#"{"routes": [{"filter": "cfg/#", "stream": "from-config"}]}"#.utf8).write(to: URL(fileURLWithPath: config))
        let environment = ["OPSBUS_BRIDGE_ROUTES": "env/#=from-env other/#=from-env-2;maxlen=5"]
        #expect(try await routes(["--route", "a/#=from-flag"], environment: environment) == ["from-flag", "bridge:deadletter"])
        #expect(try await routes(["--config", config], environment: environment) == ["from-config", "bridge:deadletter"])
        #expect(try await routes([], environment: environment) == ["from-env", "from-env-2", "bridge:deadletter"])
        #expect(try await routes([]) == ["bridge:deadletter"], "default template routes list only existing streams")
        let bad = try await run(try opsbusExecutable(), ["bridge", "--route", "jobs/#/x=s", "--redis-url", servers.redisURL])
        #expect(bad.status != 0 && bad.stderr.contains("jobs/#/x"))
        let badEnv = try await run(try opsbusExecutable(), ["streams", "--redis-url", servers.redisURL],
                                   environment: ["OPSBUS_BRIDGE_ROUTES": "nonsense"])
        #expect(badEnv.status != 0 && badEnv.stderr.contains("OPSBUS_BRIDGE_ROUTES"))
        let badFsync = try await run(try opsbusExecutable(), ["bridge", "--fsync", "sometimes"])
        #expect(badFsync.status != 0 && badFsync.stderr.contains("--fsync"))
    }

    @Test("streams lists routes, lengths, first/last ids and consumer groups with lag")
    func streams() async throws {
        _ = try await fill()
        let redis = try servers.redisConnection()
        try redis.command(["XGROUP", "CREATE", "events:jobs", "svc", "0"])
        _ = try redis.command(["XREADGROUP", "GROUP", "svc", "c", "COUNT", "2", "STREAMS", "events:jobs", ">"])
        let result = try await opsbus(["streams", "--route", "jobs/#=events:{1}", "--route", "raw/#=raw", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let rows = try result.stdout.split(separator: "\n").map(parse)
        #expect(rows.map { $0["stream"]?.stringValue } == ["events:jobs", "raw", "bridge:deadletter"])
        #expect(rows[0]["route"]?.stringValue == "jobs/#=events:{1};maxlen=1000000")
        #expect(rows[0]["length"]?.intValue == 5)
        #expect(rows[0]["first_id"]?.stringValue != nil)
        let group = try #require(rows[0]["groups"]?.arrayValue?.first?.objectValue)
        #expect(group["name"]?.stringValue == "svc")
        #expect(group["pending"]?.intValue == 2)
        #expect(group["lag"]?.intValue == 3)
        #expect(rows[2]["length"]?.intValue == 0)
        let table = try await opsbus(["streams", "--route", "jobs/#=events:{1}"])
        #expect(table.stdout.contains("events:jobs\t5\t"))
        #expect(table.stdout.contains("group svc: consumers 1, pending 2, lag 3"))
        // With the default routes (all events:{1}), each stream is attributed to the route its topics match.
        let publisher = try await bridgeTestPublisher(servers)
        let bridge = try await RunningBridge.start(servers)
        try await publisher.publish(topic: "workers/w-1/health", payload: Array("{}".utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { try redis.command(["XLEN", "events:workers"]).int == 1 })
        await bridge.stop()
        await publisher.disconnect()
        let defaults = try await opsbus(["streams", "--json"])
        let workers = try defaults.stdout.split(separator: "\n").map(parse).first { $0["stream"]?.stringValue == "events:workers" }
        #expect(workers?["route"]?.stringValue == "workers/+/+=events:{1};maxlen=1000000")
    }
}
