import Foundation
@testable import OpsBusJournal
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import Synchronization
import Testing

@testable import OpsBusBridge

/// A sequenced, spooled envelope (`ack: true`) as a spooling publisher sends it.
func ackEnvelope(session: String, seq: UInt64, prevSeq: UInt64? = nil, worker: String? = "w-1", machine: String? = nil,
                 job: String = "j-1", eventID: String = EventID.make(), padding: Int = 0) -> EventEnvelope {
    var fields: JSONObject = ["processing_time": 1.5]
    if padding > 0 { fields["note"] = .string(String(repeating: "x", count: padding)) }
    return EventEnvelope(
        eventID: eventID, eventType: .jobCompleted, source: "test", jobID: try! Identifier(validating: job),
        machineID: machine.map { try! Identifier(validating: $0) }, workerID: worker.map { try! Identifier(validating: $0) },
        sessionID: session, seq: seq, prevSeq: prevSeq, ack: true, fields: fields)
}

/// A value shared between a test and the tasks it starts.
final class SharedValue<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// Subscribes to the ack topics with a plain client and keeps every message, in arrival order.
final class AckWatcher: Sendable {
    struct Ack: Sendable {
        var topic: String
        var seq: Int64
        var retain: Bool
        var object: JSONObject
    }

    let client: MQTTClient
    private let received = SharedValue<[Ack]>([])
    private let reader: Task<Void, Never>

    init(_ servers: TestServers, filter: String = "acks/#") async throws {
        client = try MQTTClient(
            configuration: MQTTClientConfiguration(endpoint: servers.mqttEndpoint, clientID: "ack-watch-\(UUID().uuidString.prefix(8))"),
            logger: testLogger)
        try await client.connect()
        let box = received
        let stream = client.messages  // before SUBSCRIBE, so the retained messages sent with the SUBACK are kept
        reader = Task {
            for await message in stream {
                guard let object = try? JSONValue.parse(message.payload).objectValue else { continue }
                let ack = Ack(topic: message.topic, seq: object["seq"]?.intValue ?? -1, retain: message.retain, object: object)
                box.withLock { $0.append(ack) }
            }
        }
        try await client.subscribe([filter], qos: .atLeastOnce)
    }

    var all: [Ack] { received.value }
    func seqs(_ topic: String) -> [Int64] { all.filter { $0.topic == topic }.map(\.seq) }
    func latest(_ topic: String) -> Int64? { seqs(topic).last }

    /// Waits until the newest ack on `topic` is `seq`.
    func wait(_ topic: String, seq: Int64, timeout: Double = 20) async throws -> Bool {
        try await waitUntil(timeout: timeout) { self.latest(topic) == seq }
    }

    func stop() async {
        await client.disconnect()
        reader.cancel()
    }
}

@Suite("Bridge end-to-end acknowledgements (ack: true sessions)", .serialized)
struct BridgeAckTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    func publish(_ client: MQTTClient, _ envelopes: [EventEnvelope]) async throws {
        for envelope in envelopes {
            try await client.publish(topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
        }
    }

    /// (seq, event_id) of the entries of a stream, in stream order.
    func sequence(_ redis: RedisConnection, _ stream: String = "events:jobs", session: String? = nil) throws -> [(seq: Int, id: String)] {
        try streamEntries(redis, stream).compactMap { entry in
            guard let seq = text(entry.fields["seq"]).flatMap({ Int($0) }), let id = text(entry.fields["event_id"]) else { return nil }
            if let session, text(entry.fields["session_id"]) != session { return nil }
            return (seq, id)
        }
    }

    func stat(_ redis: RedisConnection, _ field: String) throws -> Int64 {
        try redis.command(["HGET", "opsbus:stats", field]).int ?? 0
    }

    @Test("in order 1…N: each written once, in order; the retained ack reaches N, never goes back, and a new subscriber gets it at once")
    func inOrder() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let envelopes = (1...40).map { ackEnvelope(session: "s-in", seq: UInt64($0)) }
        try await publish(publisher, envelopes)
        #expect(try await watcher.wait("acks/w-1/s-in", seq: 40))
        #expect(try sequence(redis).map(\.id) == envelopes.map(\.eventID))
        let seqs = watcher.seqs("acks/w-1/s-in")
        #expect(seqs == seqs.sorted(), "acks of one session never go back: \(seqs)")
        #expect(seqs.allSatisfy { $0 >= 1 && $0 <= 40 })
        let last = try #require(watcher.all.last { $0.topic == "acks/w-1/s-in" })
        #expect(last.object["session_id"]?.stringValue == "s-in")
        #expect(last.object["bridge"]?.stringValue == "opsbus-bridge-t1", "the bridge's MQTT client id")
        #expect(EventTimestamp(iso8601: last.object["timestamp"]?.stringValue ?? "") != nil)
        #expect(last.object.keys == ["session_id", "seq", "bridge", "timestamp"])
        #expect(try redis.command(["GET", "opsbus:session:{s-in}:acked"]).string == "40")
        let ttl = try redis.command(["TTL", "opsbus:session:{s-in}:acked"]).int ?? -1
        #expect(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "the session key expires after 7 days by default (TTL \(ttl))")

        let late = try await AckWatcher(servers)
        #expect(try await waitUntil { late.latest("acks/w-1/s-in") == 40 }, "retained: a new subscriber gets the value at once")
        #expect(late.all.first?.retain == true)
        #expect(try await waitUntil { bridge.bridge.statistics.acksPublished >= 1 })
        #expect(bridge.bridge.statistics.entries == 40)
        await late.stop()
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
        #expect(try stat(redis, "bridge_acks_published") == Int64(bridge.bridge.statistics.acksPublished),
                "the stats hash counts the acks the broker confirmed")
    }

    @Test("an envelope without ack (seq or not) keeps today's behaviour: no session key, no ack")
    func nonAckUnchanged() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        // seq 5 then 3 without ack: both written (no ordering), the repeat of seq 5 is a duplicate by event id.
        let plain = [bridgeEnvelope(job: "j-1", seq: 5, session: "s-plain"), bridgeEnvelope(job: "j-1", seq: 3, session: "s-plain")]
        try await publish(publisher, plain + [plain[0]])
        // A marker session with acks, published after: once its ack is out, the plain ones were processed.
        try await publish(publisher, [ackEnvelope(session: "s-marker", seq: 1)])
        #expect(try await watcher.wait("acks/w-1/s-marker", seq: 1))
        #expect(try sequence(redis, session: "s-plain").map(\.seq) == [5, 3])
        #expect(try redis.command(["EXISTS", "opsbus:session:{s-plain}:acked"]).int == 0)
        #expect(!watcher.all.contains { $0.topic.hasSuffix("/s-plain") })
        #expect(try stat(redis, "bridge_duplicates") == 1)
        #expect(try stat(redis, "bridge_seq_duplicates") == 0)
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("duplicates by seq (same event, or the same seq with another event_id) are written once")
    func duplicatesBySeq() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let envelopes = (1...3).map { ackEnvelope(session: "s-dup", seq: UInt64($0)) }
        try await publish(publisher, envelopes)
        try await publish(publisher, [envelopes[1], ackEnvelope(session: "s-dup", seq: 3), envelopes[0]])
        #expect(try await waitUntil { try stat(redis, "bridge_seq_duplicates") == 3 })
        #expect(try sequence(redis).map(\.id) == envelopes.map(\.eventID))
        #expect(try await watcher.wait("acks/w-1/s-dup", seq: 3), "duplicates re-publish the current value")
        // The process counters follow the Redis ones once the batch's replies are read.
        #expect(try await waitUntil { bridge.bridge.statistics.sequenceDuplicates == 3 })
        #expect(bridge.bridge.statistics.duplicates == 3)
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("a gap holds later events back (not written, counted); re-sending from the gap completes the session in order")
    func gapThenResend() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let envelopes = (1...5).map { ackEnvelope(session: "s-gap", seq: UInt64($0)) }
        try await publish(publisher, [envelopes[0], envelopes[1], envelopes[3], envelopes[4]])
        #expect(try await waitUntil { try stat(redis, "bridge_out_of_order") == 2 })
        #expect(try await watcher.wait("acks/w-1/s-gap", seq: 2))
        #expect(try sequence(redis).map(\.seq) == [1, 2])
        #expect(try await waitUntil { bridge.bridge.statistics.outOfOrder == 2 })
        // Go-back-N: the publisher re-sends everything after the acknowledged 2.
        try await publish(publisher, Array(envelopes[2...]))
        #expect(try await watcher.wait("acks/w-1/s-gap", seq: 5))
        #expect(try sequence(redis).map(\.id) == envelopes.map(\.eventID))
        let seqs = watcher.seqs("acks/w-1/s-gap")
        #expect(seqs == seqs.sorted(), "\(seqs)")
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("a session that starts with a gap is answered with 0, so its publisher knows to re-send from 1")
    func gapAtStart() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        try await publish(publisher, [ackEnvelope(session: "s-zero", seq: 2)])
        #expect(try await watcher.wait("acks/w-1/s-zero", seq: 0))
        #expect(try sequence(redis).isEmpty)
        #expect(try redis.command(["EXISTS", "opsbus:session:{s-zero}:acked"]).int == 0, "nothing committed, no key")
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("prev_seq: seqs the publisher dropped count as filled (1, 2, then 5 with prev_seq 2)")
    func previousSeq() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let first = (1...2).map { ackEnvelope(session: "s-prev", seq: UInt64($0)) }
        let fifth = ackEnvelope(session: "s-prev", seq: 5, prevSeq: 2)
        // prev_seq above acked is a gap like any other: 8 with prev_seq 6 is held back.
        let early = ackEnvelope(session: "s-prev", seq: 8, prevSeq: 6)
        try await publish(publisher, first + [early, fifth])
        #expect(try await watcher.wait("acks/w-1/s-prev", seq: 5))
        #expect(try sequence(redis).map(\.id) == (first + [fifth]).map(\.eventID))
        #expect(try stat(redis, "bridge_out_of_order") == 1)
        // 4 (a late copy of a dropped one) is a duplicate now; 6 follows 5; then 8 with prev_seq 6 is accepted.
        try await publish(publisher, [ackEnvelope(session: "s-prev", seq: 4), ackEnvelope(session: "s-prev", seq: 6, prevSeq: 5)])
        #expect(try await watcher.wait("acks/w-1/s-prev", seq: 6))
        try await publish(publisher, [early])
        #expect(try await watcher.wait("acks/w-1/s-prev", seq: 8))
        #expect(try sequence(redis).map(\.seq) == [1, 2, 5, 6, 8])
        #expect(try stat(redis, "bridge_seq_duplicates") == 1)
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("resume_after: a session whose position expired resumes where its publisher says everything is settled")
    func resumeAfterExpiredPosition() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let first = (1...3).map { ackEnvelope(session: "s-resume", seq: UInt64($0)) }
        try await publish(publisher, first)
        #expect(try await watcher.wait("acks/w-1/s-resume", seq: 3))
        // The position expires (a session silent for longer than the TTL): 4 alone is now a gap ...
        _ = try redis.command(["DEL", "opsbus:session:{s-resume}:acked"])
        let fourth = ackEnvelope(session: "s-resume", seq: 4)
        try await publish(publisher, [fourth])
        #expect(try await waitUntil { try stat(redis, "bridge_out_of_order") == 1 })
        #expect(try sequence(redis).map(\.seq) == [1, 2, 3], "held back, not written")
        // ... until the publisher re-sends it marked with what it knows is settled. A resume point below the stored
        // position changes nothing, and one at or above seq is ignored, not trusted.
        var resumed = fourth
        resumed.resumeAfter = 3
        try await publish(publisher, [resumed])
        #expect(try await watcher.wait("acks/w-1/s-resume", seq: 4))
        var stale = ackEnvelope(session: "s-resume", seq: 6)
        stale.resumeAfter = 2
        try await publish(publisher, [stale])
        #expect(try await waitUntil { try stat(redis, "bridge_out_of_order") == 2 }, "5 is missing: 6 waits")
        var fifth = ackEnvelope(session: "s-resume", seq: 5)
        fifth.resumeAfter = 4
        try await publish(publisher, [fifth, stale])
        #expect(try await watcher.wait("acks/w-1/s-resume", seq: 6))
        #expect(try sequence(redis).map(\.seq) == [1, 2, 3, 4, 5, 6])
        #expect(try redis.command(["GET", "opsbus:session:{s-resume}:acked"]).string == "6")
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("interleaved sessions keep separate positions; the ack topic's owner is worker_id, else machine_id, else _")
    func sessionsAndOwners() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        var sent: [EventEnvelope] = []
        for seq in 1...6 {
            sent.append(ackEnvelope(session: "s-a", seq: UInt64(seq), worker: "w-7", machine: "m-1"))
            if seq <= 4 { sent.append(ackEnvelope(session: "s-b", seq: UInt64(seq), worker: nil, machine: "m-1")) }
            if seq <= 2 { sent.append(ackEnvelope(session: "s-c", seq: UInt64(seq), worker: nil, machine: nil)) }
        }
        // s-b also has a gap (6 before 5): it must not disturb the others.
        sent.append(ackEnvelope(session: "s-b", seq: 6, worker: nil, machine: "m-1"))
        try await publish(publisher, sent)
        #expect(try await watcher.wait("acks/w-7/s-a", seq: 6))
        #expect(try await watcher.wait("acks/m-1/s-b", seq: 4))
        #expect(try await watcher.wait("acks/_/s-c", seq: 2))
        #expect(Set(watcher.all.map(\.topic)) == ["acks/w-7/s-a", "acks/m-1/s-b", "acks/_/s-c"])
        #expect(try sequence(redis, session: "s-a").map(\.seq) == Array(1...6))
        #expect(try sequence(redis, session: "s-b").map(\.seq) == Array(1...4))
        #expect(try sequence(redis, session: "s-c").map(\.seq) == [1, 2])
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("the ack topic carries the topic prefix of the bridge's scheme")
    func prefixedAckTopic() async throws {
        let bridge = try await RunningBridge.start(servers, routes: ["prod/jobs/#=events:jobs"]) {
            $0.topicScheme = try! TopicScheme(prefix: "prod")
        }
        let watcher = try await AckWatcher(servers, filter: "prod/acks/#")
        let publisher = try await bridgeTestPublisher(servers)
        let envelope = ackEnvelope(session: "s-pfx", seq: 1)
        try await publisher.publish(topic: "prod/jobs/j-1/completed", payload: envelope.encoded(), qos: .atLeastOnce)
        #expect(try await watcher.wait("prod/acks/w-1/s-pfx", seq: 1))
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("a dead-lettered sequenced event (oversize, not JSON) still advances its session; later events are not held back")
    func deadLetterAdvances() async throws {
        let bridge = try await RunningBridge.start(servers, routes: ["jobs/#=events:jobs;json;maxbytes=1500"])
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        let oversize = ackEnvelope(session: "s-dl", seq: 2, padding: 5000)
        let envelopes = [ackEnvelope(session: "s-dl", seq: 1), oversize, ackEnvelope(session: "s-dl", seq: 3)]
        try await publish(publisher, envelopes)
        // Not JSON (cut short by its publisher) but its head names the session: dead-lettered, and seq 4 is filled.
        let broken = Array(ackEnvelope(session: "s-dl", seq: 4).encoded().dropLast(3))
        try await publisher.publish(topic: "jobs/j-1/completed", payload: broken, qos: .atLeastOnce)
        let fifth = ackEnvelope(session: "s-dl", seq: 5)
        try await publish(publisher, [fifth])
        #expect(try await watcher.wait("acks/w-1/s-dl", seq: 5))
        #expect(try sequence(redis).map(\.id) == [envelopes[0].eventID, envelopes[2].eventID, fifth.eventID])
        let letters = try streamEntries(redis, "bridge:deadletter")
        #expect(letters.count == 2)
        #expect(text(letters.first?.fields["reason"])?.hasPrefix("oversize") == true)
        #expect(text(letters.last?.fields["reason"])?.hasPrefix("not JSON") == true)
        // Re-sent (the publisher had no ack yet): not dead-lettered a second time.
        try await publish(publisher, [oversize])
        #expect(try await waitUntil { try stat(redis, "bridge_seq_duplicates") == 1 })
        #expect(try streamEntries(redis, "bridge:deadletter").count == 2)
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("an entry Redis refuses (WRONGTYPE) is dead-lettered in the same call and the session moves on")
    func refusedEntryAdvances() async throws {
        let redis = try servers.redisConnection()
        try redis.command(["SET", "events:bad", "not a stream"])
        let bridge = try await RunningBridge.start(servers, routes: ["bad/#=events:bad", "jobs/#=events:jobs"])
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let refused = ackEnvelope(session: "s-wt", seq: 2)
        try await publish(publisher, [ackEnvelope(session: "s-wt", seq: 1)])
        try await publisher.publish(topic: "bad/x", payload: refused.encoded(), qos: .atLeastOnce)
        try await publish(publisher, [ackEnvelope(session: "s-wt", seq: 3)])
        #expect(try await watcher.wait("acks/w-1/s-wt", seq: 3))
        #expect(try sequence(redis).map(\.seq) == [1, 3])
        let letter = try #require(try streamEntries(redis, "bridge:deadletter").first)
        #expect(text(letter.fields["reason"])?.contains("WRONGTYPE") == true)
        #expect(text(letter.fields["stream"]) == "events:bad")
        #expect(text(letter.fields["event_id"]) == refused.eventID)
        #expect(letter.fields["payload"] == refused.encoded())
        #expect(bridge.bridge.statistics.deadLettered == 1)
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("acknowledgements = false: nothing is published on acks/…, the session is still committed in order")
    func acknowledgementsOff() async throws {
        let bridge = try await RunningBridge.start(servers) { $0.acknowledgements = false }
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let redis = try servers.redisConnection()
        try await publish(publisher, [1, 2, 4].map { ackEnvelope(session: "s-off", seq: UInt64($0)) })
        #expect(try await waitUntil { try stat(redis, "bridge_out_of_order") == 1 && stat(redis, "bridge_entries") == 2 })
        try await Task.sleep(for: .milliseconds(500))
        #expect(watcher.all.isEmpty)
        let late = try await AckWatcher(servers)
        try await Task.sleep(for: .milliseconds(300))
        #expect(late.all.isEmpty, "no retained ack either")
        #expect(try sequence(redis).map(\.seq) == [1, 2])
        #expect(bridge.bridge.statistics.acksPublished == 0)
        await late.stop()
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("opsbus bridge --no-acks publishes no acks; without it the CLI bridge acks on the unprefixed topic")
    func commandLineFlag() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let redis = try servers.redisConnection()
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        var bridge = try await BridgeChild(servers, journal: journal, extra: ["--no-acks"])
        try await publish(publisher, [ackEnvelope(session: "s-cli", seq: 1)])
        #expect(try await waitUntil { try sequence(redis).count == 1 })
        try await Task.sleep(for: .milliseconds(500))
        #expect(watcher.all.isEmpty)
        bridge.child.signal(SIGTERM)
        #expect(try await bridge.child.wait(timeout: 30) == 0)
        #expect(bridge.child.stderr.contains("acknowledgements are off"), "the operator is told once")
        bridge = try await BridgeChild(servers, journal: journal)
        try await publish(publisher, [ackEnvelope(session: "s-cli", seq: 2)])
        #expect(try await watcher.wait("acks/w-1/s-cli", seq: 2))
        #expect(watcher.all.first?.object["bridge"]?.stringValue == "opsbus-bridge-child")
        bridge.child.signal(SIGTERM)
        #expect(try await bridge.child.wait(timeout: 30) == 0)
        await publisher.disconnect()
        await watcher.stop()
    }

    @Test("SCRIPT FLUSH and a Redis restart mid-stream: scripts are reloaded, the session stays exactly once and in order")
    func scriptFlushAndRedisRestart() async throws {
        let bridge = try await RunningBridge.start(servers)
        let watcher = try await AckWatcher(servers)
        let publisher = try await bridgeTestPublisher(servers)
        let envelopes = (1...90).map { ackEnvelope(session: "s-fl", seq: UInt64($0)) }
        try await publish(publisher, Array(envelopes[0..<30]))
        #expect(try await watcher.wait("acks/w-1/s-fl", seq: 30))
        try servers.redisConnection().command(["SCRIPT", "FLUSH"])
        try await publish(publisher, Array(envelopes[30..<60]))
        #expect(try await watcher.wait("acks/w-1/s-fl", seq: 60))
        servers.redis.stop()
        try await publish(publisher, Array(envelopes[60..<75]))  // journaled while Redis is down
        try servers.redis.start()
        try await publish(publisher, Array(envelopes[75...]))
        #expect(try await watcher.wait("acks/w-1/s-fl", seq: 90, timeout: 60))
        let redis = try servers.redisConnection()
        #expect(try sequence(redis).map(\.id) == envelopes.map(\.eventID))
        await watcher.stop()
        await publisher.disconnect()
        await bridge.stop()
    }

    @Test("opsbus bridge killed with SIGKILL twice while a publisher streams and goes back N: exactly once, in order, ack N")
    func killNine() async throws {
        let journal = bridgeTestDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let redis = try servers.redisConnection()
        let watcher = try await AckWatcher(servers)
        var bridge = try await BridgeChild(servers, journal: journal)
        let total = 800
        let envelopes = (1...total).map { ackEnvelope(session: "s-kill", seq: UInt64($0), job: "j-\($0 % 5)") }
        let topic = "acks/w-1/s-kill"
        // The publisher streams 1…total; when asked, it goes back and re-sends everything after the newest ack
        // (what a spooling publisher does after its timeout), with the same event ids.
        let goBack = SharedValue<Int64?>(nil)
        let client = try await bridgeTestPublisher(servers)
        let resent = SharedValue(0)
        let task = Task {
            var next = 0
            while next < total {
                if let from = goBack.withLock({ value -> Int64? in defer { value = nil }; return value }), Int(from) < next {
                    for envelope in envelopes[Int(from)..<next] {
                        try await client.publish(
                            topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
                    }
                    resent.withLock { $0 += next - Int(from) }
                }
                let envelope = envelopes[next]
                try await client.publish(topic: "jobs/\(envelope.jobID!)/completed", payload: envelope.encoded(), qos: .atLeastOnce)
                next += 1
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        for threshold in [150, 400] {
            #expect(try await waitUntil(timeout: 60) { (watcher.latest(topic) ?? 0) >= Int64(threshold) })
            bridge.child.signal(SIGKILL)
            try await bridge.child.wait(timeout: 10)
            try await Task.sleep(for: .milliseconds(300))
            bridge = try await BridgeChild(servers, journal: journal)
            let acked = watcher.latest(topic) ?? 0
            goBack.withLock { $0 = acked }
        }
        try await task.value
        #expect(resent.value > 0, "the publisher went back at least once")
        #expect(try await watcher.wait(topic, seq: Int64(total), timeout: 60))
        let stored = try sequence(redis)
        #expect(stored.count == total, "no duplicates: \(stored.count) entries for \(total) events")
        let inOrder = stored.map(\.id) == envelopes.map(\.eventID)
        #expect(inOrder, "every event once, in seq order")
        #expect(try redis.command(["GET", "opsbus:session:{s-kill}:acked"]).string == String(total))
        #expect(try stat(redis, "bridge_seq_duplicates") >= Int64(resent.value),
                "every re-sent event was recognised by its seq")
        bridge.child.signal(SIGTERM)
        #expect(try await bridge.child.wait(timeout: 30) == 0)
        await client.disconnect()
        await watcher.stop()
    }
}

@Suite("Bridge session keys from payloads")
struct SessionSequenceTests {
    func plan(_ payload: [UInt8], routes: [String] = ["jobs/#=events:jobs"], original: Int? = nil) throws -> PlannedWrite {
        let configuration = BridgeConfiguration(
            mqtt: try MQTTEndpoint(url: "mqtt://127.0.0.1:1"), redis: try RedisEndpoint(url: "redis://127.0.0.1:1"),
            routes: try routes.map { try BridgeRoute(parsing: $0) })
        let record = JournalRecord(
            topic: "jobs/j-1/completed", payload: payload, qos: 1, retain: false, receivedAtMilliseconds: 0,
            originalPayloadBytes: original)
        let entry = JournalEntry(
            position: JournalPosition(segment: 1, offset: 0), next: JournalPosition(segment: 1, offset: 10), record: record)
        return StreamEntryFormat.plan(entry, routes: RouteTable(configuration.routes), configuration: configuration)
    }

    @Test("plan: ack envelopes carry their session; others do not")
    func planned() throws {
        let envelope = ackEnvelope(session: "s-1", seq: 7, prevSeq: 4, worker: nil, machine: "m-2")
        let session = try #require(try plan(envelope.encoded()).session)
        #expect(session == SessionSequence(sessionID: "s-1", seq: 7, prevSeq: 4, owner: Identifier(rawValue: "m-2")!))
        #expect(try plan(bridgeEnvelope(job: "j-1", seq: 7).encoded()).session == nil, "no ack: no session")
        #expect(try plan(Array(#"{"ack":true,"session_id":"s","seq":0}"#.utf8)).session == nil, "seq 0 is unsequenced")
        #expect(try plan(Array(#"{"ack":true,"session_id":"a/b","seq":1}"#.utf8)).session == nil, "not an id")
        #expect(try plan(Array(#"{"ack":true,"session_id":"s","seq":3,"worker_id":"w+"}"#.utf8)).session == nil)
        #expect(try plan(Array(#"{"ack":true,"session_id":"s","seq":3,"prev_seq":3}"#.utf8)).session?.prevSeq == nil,
                "prev_seq not below seq is ignored")
        #expect(try plan(Array(#"{"ack":true,"session_id":"s","seq":3.0}"#.utf8)).session?.seq == 3)
    }

    @Test("configuration: acknowledgements and the session TTL from the file; a too short TTL is refused")
    func configuration() throws {
        let file = try BridgeConfigurationFile.parse(Array(#"""
            {"routes": [{"filter": "jobs/#", "stream": "s"}], "acknowledgements": false, "sessionTTLSeconds": 3600}
            """#.utf8))
        #expect(file.acknowledgements == false)
        #expect(file.sessionTTLSeconds == 3600)
        #expect(throws: BridgeError.self) {
            try BridgeConfigurationFile.parse(Array(#"{"routes": [{"filter": "a/#", "stream": "s"}], "acknowledgements": 1}"#.utf8))
        }
        var configuration = BridgeConfiguration(
            mqtt: try MQTTEndpoint(url: "mqtt://127.0.0.1:1"), redis: try RedisEndpoint(url: "redis://127.0.0.1:1"),
            routes: file.routes)
        #expect(configuration.acknowledgements && configuration.sessionTTLSeconds == 7 * 86_400)
        configuration.sessionTTLSeconds = 10
        #expect(throws: BridgeError.self) { try configuration.validate() }
    }

    @Test("dead letters: the session is read from the head of a truncated or broken payload")
    func scanned() throws {
        let envelope = ackEnvelope(session: "s-9", seq: 12, worker: "w-3", padding: 3000)
        let bytes = envelope.encoded()
        let head = Array(bytes.prefix(400))
        let oversize = try plan(head, routes: ["jobs/#=events:jobs;maxbytes=1000"], original: bytes.count)
        #expect(oversize.kind != .entry)
        #expect(oversize.session == SessionSequence(sessionID: "s-9", seq: 12, owner: Identifier(rawValue: "w-3")!))
        #expect(SessionSequence.scan(Array(#"{"nested":{"ack":true,"a":[1,"}"]},"ack":true,"session_id":"x\"y","seq":2}"#.utf8))
                == nil, "an escaped quote makes the session id invalid; nested keys are skipped")
        #expect(SessionSequence.scan(Array(#"{"nested":{"ack":false,"s":"}"},"ack":true,"session_id":"s","seq":2}"#.utf8))?.seq == 2)
        #expect(SessionSequence.scan(Array(#"{"ack":true,"session_id":"s","seq":12"#.utf8)) == nil,
                "a number at the cut may be incomplete (12 of 123)")
        #expect(SessionSequence.scan(Array(#"{"session_id":"s","seq":1,"ack":tr"#.utf8)) == nil)
        #expect(SessionSequence.scan(Array("not json".utf8)) == nil)
        #expect(SessionSequence.scan([]) == nil)
    }
}
