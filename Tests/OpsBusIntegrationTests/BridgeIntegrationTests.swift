import Foundation
@testable import OpsBusBridge
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import Testing

/// A bridge running in this test process, on the suite's own servers.
final class RunningBridge: Sendable {
    let bridge: Bridge
    let task: Task<Void, Error>

    private init(bridge: Bridge) {
        self.bridge = bridge
        task = Task { try await bridge.run() }
    }

    static func start(_ servers: TestServers, routes: [String]? = nil, journal: String? = nil,
                      configure: (inout BridgeConfiguration) -> Void = { _ in }) async throws -> RunningBridge {
        var configuration = BridgeConfiguration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint,
            routes: try routes.map { try $0.map { try BridgeRoute(parsing: $0) } } ?? BridgeRoute.defaults(),
            instance: "t1", journalDirectory: journal ?? bridgeTestDirectory())
        configuration.drainTimeout = 5
        configure(&configuration)
        let running = RunningBridge(bridge: try Bridge(configuration: configuration, logger: testLogger))
        try #require(try await waitUntil { running.bridge.isSubscribed }, "bridge did not subscribe")
        return running
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

func bridgeTestDirectory() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-bridge-test-\(UUID().uuidString)").path
}

/// A plain publisher (clean session) for raw payloads and hand-made envelopes.
func bridgeTestPublisher(_ servers: TestServers) async throws -> MQTTClient {
    let client = try MQTTClient(
        configuration: MQTTClientConfiguration(endpoint: servers.mqttEndpoint, clientID: "bridge-pub-\(UUID().uuidString.prefix(8))"),
        logger: testLogger)
    try await client.connect()
    return client
}

func bridgeEnvelope(job: String, type: EventType = .jobCompleted, seq: UInt64, session: String = "sess-1",
                    eventID: String = EventID.make()) -> EventEnvelope {
    // Valid envelopes (the required fields of their type), so consumers can decode what the bridge stored.
    var fields = JSONObject()
    switch type {
    case .jobCompleted: fields = ["processing_time": 1.5]
    case .jobProgress: fields = ["progress_percentage": .int(Int64(seq % 100))]
    default: break
    }
    return EventEnvelope(
        eventID: eventID, eventType: type, source: "test", jobID: try! Identifier(validating: job),
        workerID: try! Identifier(validating: "w-1"), sessionID: session, seq: seq, fields: fields)
}

/// The entries of a stream as field dictionaries (text fields only), in order.
func streamEntries(_ redis: RedisConnection, _ stream: String) throws -> [(id: String, fields: [String: [UInt8]])] {
    let reply = try redis.command(["XRANGE", stream, "-", "+"])
    return (reply.array ?? []).compactMap { entry in
        guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let values = parts[1].array else { return nil }
        var fields: [String: [UInt8]] = [:]
        var index = 0
        while index + 1 < values.count {
            if let name = values[index].string { fields[name] = values[index + 1].bytes ?? [] }
            index += 2
        }
        return (id, fields)
    }
}

func text(_ bytes: [UInt8]?) -> String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

@Suite("Bridge against real mosquitto and Redis", .serialized)
struct BridgeIntegrationTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    func xlen(_ redis: RedisConnection, _ stream: String) throws -> Int {
        Int(try redis.command(["XLEN", stream]).int ?? -1)
    }

    @Test("default routes map each family to events:<family>; entries carry the documented fields")
    func defaultMapping() async throws {
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let job = bridgeEnvelope(job: "j-1", seq: 1)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: job.encoded(), qos: .atLeastOnce)
        let health = #"{"event_id":"h-1","event_type":"worker.health","session_id":"s2","seq":4}"#
        try await publisher.publish(topic: "workers/w-1/health", payload: Array(health.utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { try xlen(redis, "events:jobs") == 1 && xlen(redis, "events:workers") == 1 })
        let entry = try #require(try streamEntries(redis, "events:jobs").first)
        #expect(entry.fields["payload"] == job.encoded(), "payload is the exact bytes published")
        #expect(text(entry.fields["topic"]) == "jobs/j-1/completed")
        #expect(text(entry.fields["event_id"]) == job.eventID)
        #expect(text(entry.fields["event_type"]) == "job.completed")
        #expect(text(entry.fields["session_id"]) == "sess-1")
        #expect(text(entry.fields["seq"]) == "1")
        #expect(text(entry.fields["qos"]) == "1")
        #expect(text(entry.fields["retain"]) == "0")
        #expect(text(entry.fields["bridge"]) == "t1")
        #expect(EventTimestamp(iso8601: text(entry.fields["received_at"]) ?? "") != nil)
        let worker = try #require(try streamEntries(redis, "events:workers").first)
        #expect(text(worker.fields["event_id"]) == "h-1")
        #expect(try redis.command(["HGET", "opsbus:stats", "bridge_entries"]).int == 2)
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("templates pick topic levels; binary payloads are kept byte for byte; order is kept")
    func templatesAndBinary() async throws {
        let bridge = try await RunningBridge.start(servers, routes: ["raw/+/+=raw:{2}:{3}", "fixed/#=fixed-stream"])
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let binary: [UInt8] = [0, 1, 2, 255, 0, 10, 13, 0x80]
        try await publisher.publish(topic: "raw/a/b", payload: binary, qos: .atLeastOnce)
        for index in 0..<50 {
            try await publisher.publish(topic: "fixed/x/\(index % 3)", payload: Array("m\(index)".utf8), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try xlen(redis, "raw:a:b") == 1 && xlen(redis, "fixed-stream") == 50 })
        #expect(try streamEntries(redis, "raw:a:b").first?.fields["payload"] == binary)
        #expect(try streamEntries(redis, "fixed-stream").map { text($0.fields["payload"]) } == (0..<50).map { "m\($0)" })
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("the same envelope published twice gives one entry; the duplicate is counted")
    func duplicatesSuppressed() async throws {
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let first = bridgeEnvelope(job: "j-1", seq: 1)
        let second = bridgeEnvelope(job: "j-1", seq: 2)
        var sameSessionSeq = bridgeEnvelope(job: "j-1", seq: 3)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: first.encoded(), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: first.encoded(), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: second.encoded(), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: sameSessionSeq.encoded(), qos: .atLeastOnce)
        // A raw payload with only session_id + seq: the pair is the dedup id.
        let raw = #"{"session_id":"raw-s","seq":1}"#
        try await publisher.publish(topic: "jobs/j-2/progress", payload: Array(raw.utf8), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-2/progress", payload: Array(raw.utf8), qos: .atLeastOnce)
        let originalThird = sameSessionSeq.eventID
        sameSessionSeq.eventID = EventID.make()  // a different event id is a different event, whatever its seq
        try await publisher.publish(topic: "jobs/j-1/completed", payload: sameSessionSeq.encoded(), qos: .atLeastOnce)
        #expect(try await waitUntil { try redis.command(["HGET", "opsbus:stats", "bridge_duplicates"]).int == 2 })
        #expect(try await waitUntil { try xlen(redis, "events:jobs") == 5 })
        let ids = try streamEntries(redis, "events:jobs").compactMap { text($0.fields["event_id"]) }
        #expect(ids == [first.eventID, second.eventID, originalThird, sameSessionSeq.eventID])
        #expect(try redis.command(["ZCARD", "bridge:dedup:events:jobs"]).int == 5)
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("retention: MAXLEN ~ and MINID ~ trim the stream; the dedup window is bounded by size")
    func retention() async throws {
        let redis = try servers.redisConnection()
        // Small stream nodes, so approximate trimming ('~', whole nodes only) is visible with few entries.
        try redis.command(["CONFIG", "SET", "stream-node-max-entries", "4"])
        let bridge = try await RunningBridge.start(servers, routes: ["len/#=len;maxlen=10", "age/#=age;maxage=1;maxlen=none"]) {
            $0.dedupWindow = DedupWindow(seconds: 3600, size: 20)
        }
        let publisher = try await bridgeTestPublisher(servers)
        for index in 0..<100 {
            let payload = #"{"event_id":"len-\#(index)"}"#
            try await publisher.publish(topic: "len/x", payload: Array(payload.utf8), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try redis.command(["HGET", "opsbus:stats", "bridge_entries"]).int == 100 })
        let length = try xlen(redis, "len")
        #expect(length >= 10 && length < 20, "MAXLEN ~ 10 with 4-entry nodes keeps 10 to 13 (got \(length))")
        #expect(try redis.command(["ZCARD", "bridge:dedup:len"]).int == 20, "the dedup window keeps the newest 20 ids")
        let newest = try redis.command(["ZRANGE", "bridge:dedup:len", "-1", "-1"]).array?.first?.string
        #expect(newest == "e:len-99")

        for index in 0..<8 {
            try await publisher.publish(topic: "age/x", payload: Array("old-\(index)".utf8), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try xlen(redis, "age") == 8 })
        try await Task.sleep(for: .milliseconds(2500))
        for index in 0..<8 {
            try await publisher.publish(topic: "age/x", payload: Array("new-\(index)".utf8), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try redis.command(["HGET", "opsbus:stats", "bridge_entries"]).int == 116 })
        let remaining = try streamEntries(redis, "age").compactMap { text($0.fields["payload"]) }
        #expect(remaining.allSatisfy { $0.hasPrefix("new-") }, "entries older than maxAge are trimmed: \(remaining)")
        #expect(remaining.count == 8)
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("payloads failing validation go to bridge:deadletter with the reason and are counted")
    func deadLetters() async throws {
        let bridge = try await RunningBridge.start(servers, routes: ["jobs/#=events:jobs;json;maxbytes=200", "short/#=s:{3}"])
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        try await publisher.publish(topic: "jobs/j-1/completed", payload: Array("not json".utf8), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: Array(repeating: 65, count: 5000), qos: .atLeastOnce)
        try await publisher.publish(topic: "short/x", payload: Array("too few levels".utf8), qos: .atLeastOnce)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: Array(#"{"ok":true}"#.utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { try xlen(redis, "bridge:deadletter") == 3 && xlen(redis, "events:jobs") == 1 })
        let letters = try streamEntries(redis, "bridge:deadletter")
        #expect(text(letters[0].fields["reason"])?.hasPrefix("not JSON") == true)
        #expect(text(letters[0].fields["payload"]) == "not json")
        #expect(text(letters[0].fields["route"]) == "jobs/#")
        #expect(text(letters[1].fields["reason"])?.hasPrefix("oversize") == true)
        #expect(text(letters[1].fields["payload_bytes"]) == "5000")
        #expect((letters[1].fields["payload"]?.count ?? 0) <= 200, "the dead letter keeps only the head of the payload")
        #expect(text(letters[2].fields["reason"])?.contains("fewer levels") == true)
        #expect(try redis.command(["HGET", "opsbus:stats", "bridge_dead_lettered"]).int == 3)
        #expect(try await waitUntil { bridge.bridge.statistics.deadLettered == 3 }, "counted after the batch's replies are read")
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("a stream key holding another type: the entry is dead-lettered with Redis's error, the bridge goes on")
    func wrongType() async throws {
        let redis = try servers.redisConnection()
        try redis.command(["SET", "events:jobs", "not a stream"])
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        try await publisher.publish(topic: "jobs/j-1/completed", payload: bridgeEnvelope(job: "j-1", seq: 1).encoded(), qos: .atLeastOnce)
        try await publisher.publish(topic: "workers/w-1/health", payload: Array("{}".utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { try xlen(redis, "bridge:deadletter") == 1 && xlen(redis, "events:workers") == 1 })
        #expect(text(try streamEntries(redis, "bridge:deadletter").first?.fields["reason"])?.contains("WRONGTYPE") == true)
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("appendBatch: per record an entry id, a duplicate or Redis's error; one bad key fails only its records")
    func appendBatchScript() throws {
        let redis = try servers.redisConnection()
        try redis.command(["SET", "bad-stream", "not a stream"])
        try redis.command(["SET", StreamEntryFormat.dedupKey(stream: "bad-dedup"), "not a sorted set"])
        func write(_ stream: String, _ id: String, _ payload: String, maxLength: Int? = nil) -> PlannedWrite {
            PlannedWrite(kind: .entry, stream: stream, dedupID: id, maxLength: maxLength, maxAgeSeconds: nil,
                         fields: [("topic", Array("t/\(id)".utf8)), ("payload", Array(payload.utf8))], session: nil)
        }
        var letter = write("dead", "j:1", "letter")
        letter.kind = .deadLetter(reason: "test")
        let writes = [
            write("good", "e:1", "one"), write("bad-stream", "e:2", "two"), write("good", "e:1", "again"),
            write("bad-dedup", "e:3", "three"), write("other", "", "no id", maxLength: 1000), letter,
            write("good", "e:4", "four"),
        ]
        let (keys, arguments) = BridgeScripts.batchArguments(writes[...], statsKey: "opsbus:stats")
        #expect(keys.map { String(decoding: $0, as: UTF8.self) } == [
            "opsbus:stats", "good", "bridge:dedup:good", "bad-stream", "bridge:dedup:bad-stream", "bad-dedup",
            "bridge:dedup:bad-dedup", "other", "bridge:dedup:other", "dead", "bridge:dedup:dead",
        ], "each stream once, in order of first use")
        let replies = try #require(try redis.evaluate(BridgeScripts.appendBatch, keys: RedisArguments(keys), arguments: arguments).array)
            .map(BridgeScripts.recordReply)
        try #require(replies.count == writes.count, "\(replies)")
        #expect(replies[0].string?.contains("-") == true, "an entry id: \(replies[0])")
        #expect(replies[1].errorCode == "WRONGTYPE", "the stream key holds a string: \(replies[1])")
        #expect(replies[2] == .null, "the same dedup id earlier in the same call: a duplicate")
        #expect(replies[3].errorCode == "WRONGTYPE", "the dedup set holds a string: \(replies[3])")
        #expect(replies[4].string != nil && replies[5].string != nil && replies[6].string != nil, "\(replies)")
        #expect(try streamEntries(redis, "good").compactMap { text($0.fields["payload"]) } == ["one", "four"])
        #expect(try xlen(redis, "other") == 1 && xlen(redis, "dead") == 1)
        #expect(try redis.command(["ZRANGE", "bridge:dedup:good", "0", "-1"]).array?.compactMap(\.string) == ["e:1", "e:4"])
        #expect(try redis.command(["EXISTS", "bridge:dedup:other"]).int == 0, "no dedup id, nothing remembered")
        let stats = try redis.command(["HGETALL", "opsbus:stats"]).hashDictionary()
        #expect(stats == ["bridge_entries": "3", "bridge_dead_lettered": "1", "bridge_duplicates": "1"], "\(stats)")
        // The same call again (a retried batch): every record written with a dedup id is now a duplicate, the one
        // without an id is written again, the refused ones are refused again.
        let again = try #require(try redis.evaluate(BridgeScripts.appendBatch, keys: RedisArguments(keys), arguments: arguments).array)
            .map(BridgeScripts.recordReply)
        #expect(again.enumerated().filter { $0.element == .null }.map(\.offset) == [0, 2, 5, 6])
        #expect(again[1].errorCode == "WRONGTYPE" && again[3].errorCode == "WRONGTYPE")
        #expect(try xlen(redis, "good") == 2 && xlen(redis, "other") == 2 && xlen(redis, "dead") == 1)
    }

    @Test("Redis refusing writes (OOM) dead-letters nothing: the records wait in the journal, then are written once",
          arguments: [false, true])
    func outOfMemoryWaits(acknowledged: Bool) async throws {
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        try redis.command(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        try redis.command(["CONFIG", "SET", "maxmemory", "1"])  // below what Redis uses: every write is refused
        defer { _ = try? redis.command(["CONFIG", "SET", "maxmemory", "0"]) }
        // `ack: true` envelopes go through the session script, one call each; the others through `appendBatch`.
        let events = (1...30).map {
            acknowledged ? ackEnvelope(session: "oom-s", seq: UInt64($0)) : bridgeEnvelope(job: "oom-\($0)", seq: UInt64($0))
        }
        for (index, event) in events.enumerated() {
            try await publisher.publish(topic: "jobs/oom-\(index + 1)/completed", payload: event.encoded(), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { bridge.bridge.statistics.journaled == 30 && bridge.bridge.statistics.redisFailures > 0 },
                "\(bridge.bridge.statistics)")
        #expect(try xlen(redis, "events:jobs") == 0 && xlen(redis, "bridge:deadletter") == 0, "nothing written while OOM")
        try redis.command(["CONFIG", "SET", "maxmemory", "0"])
        #expect(try await waitUntil { try xlen(redis, "events:jobs") == 30 })
        #expect(try streamEntries(redis, "events:jobs").compactMap { text($0.fields["event_id"]) } == events.map(\.eventID))
        #expect(try xlen(redis, "bridge:deadletter") == 0)
        #expect(bridge.bridge.statistics.deadLettered == 0)
        if acknowledged {
            #expect(try redis.command(["GET", StreamEntryFormat.sessionKey(sessionID: "oom-s")]).string == "30")
        }
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("StreamGroupConsumer: read, crash, own pending after restart, claim from a dead peer, acknowledge")
    func groupConsumer() async throws {
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let envelopes = (1...8).map { bridgeEnvelope(job: "j-\($0)", seq: UInt64($0)) }
        for envelope in envelopes {
            try await publisher.publish(topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
        }
        let redis = try servers.redisConnection()
        #expect(try await waitUntil { try xlen(redis, "events:jobs") == 8 })
        func eventIDs(_ entries: [StreamEntry]) throws -> [String] {
            try entries.map { try EventEnvelope.decode(try #require($0["payload"])).eventID }
        }
        let a = try StreamGroupConsumer(connection: redis, stream: "events:jobs", group: "svc", consumer: "a")
        let first = try a.read(count: 3)
        #expect(try eventIDs(first) == envelopes[0..<3].map(\.eventID))
        try a.acknowledge([first[0].id])
        // "a" crashes; a new "a" (same name) finds its two unacknowledged entries first.
        let aAgain = try StreamGroupConsumer(
            connection: try servers.redisConnection(), stream: "events:jobs", group: "svc", consumer: "a")
        #expect(try aAgain.readOwnPending(count: 10).map(\.id) == first[1...].map(\.id))
        // "b" reads the rest, then claims what "a" still holds.
        let b = try StreamGroupConsumer(connection: try servers.redisConnection(), stream: "events:jobs", group: "svc", consumer: "b")
        let rest = try b.read(count: 10, blockMilliseconds: 100)
        #expect(try eventIDs(rest) == envelopes[3...].map(\.eventID))
        try b.acknowledge(rest.map(\.id))
        #expect(try b.read(count: 10, blockMilliseconds: 50).isEmpty, "nothing new: BLOCK times out with an empty list")
        let claimed = try b.claimStale(minIdleMilliseconds: 0, count: 10)
        #expect(claimed.map(\.id) == first[1...].map(\.id))
        #expect(try b.acknowledge(claimed.map(\.id)) == 2)
        #expect(try b.pendingCount() == 0)
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("a consumer group reads what the bridge wrote (XREADGROUP, XACK, XAUTOCLAIM after a consumer crash)")
    func consumerGroup() async throws {
        let redis = try servers.redisConnection()
        try redis.command(["XGROUP", "CREATE", "events:jobs", "svc", "$", "MKSTREAM"])
        let bridge = try await RunningBridge.start(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let envelopes = (1...6).map { bridgeEnvelope(job: "j-\($0)", seq: UInt64($0)) }
        for envelope in envelopes {
            try await publisher.publish(topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try xlen(redis, "events:jobs") == 6 })
        // Consumer a reads 3 and crashes without XACK; consumer b reads and acknowledges the other 3.
        let readA = try redis.command(["XREADGROUP", "GROUP", "svc", "a", "COUNT", "3", "STREAMS", "events:jobs", ">"])
        let readB = try redis.command(["XREADGROUP", "GROUP", "svc", "b", "COUNT", "10", "STREAMS", "events:jobs", ">"])
        func ids(_ reply: RedisReply) -> [String] {
            (reply.array?.first?.array?[1].array ?? []).compactMap { $0.array?.first?.string }
        }
        #expect(ids(readA).count == 3)
        #expect(ids(readB).count == 3)
        try redis.command(["XACK", "events:jobs", "svc"] + ids(readB))
        // b claims a's pending entries (min idle 0 for the test; use the crash-detection time in production).
        let claimed = try redis.command(["XAUTOCLAIM", "events:jobs", "svc", "b", "0", "0-0"])
        let claimedIDs = (claimed.array?[1].array ?? []).compactMap { $0.array?.first?.string }
        #expect(claimedIDs == ids(readA))
        try redis.command(["XACK", "events:jobs", "svc"] + claimedIDs)
        #expect(try redis.command(["XPENDING", "events:jobs", "svc"]).array?.first?.int == 0)
        let groups = try redis.command(["XINFO", "GROUPS", "events:jobs"]).array?.first?.hashDictionary() ?? [:]
        #expect(groups["lag"] == "0")
        await publisher.disconnect()
        await bridge.stop()
    }
}
