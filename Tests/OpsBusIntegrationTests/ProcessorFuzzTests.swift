import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// Thousands of random and mutated payloads on valid topics. The processor must survive all of them, account for
/// every one (applied, duplicate or dead-lettered), dead-letter exactly the ones the event contract refuses (with
/// topic, size, reason and time, in arrival order), never let a refused one touch state, and still work afterwards.
@Suite("Processor: fuzzed payloads", .serialized)
struct ProcessorFuzzTests {
    typealias Kit = ProcessorTestKit

    struct FuzzCase {
        var category: String
        var topic: String
        var payload: [UInt8]
    }

    /// Valid events the mutations start from. None of them makes the processor publish anything of its own
    /// (no `notify`, no failure that schedules a retry, no health that fails a worker over, no queue or model
    /// figures that fire a trigger), so every event the processor counts is one this test sent.
    static func templates() throws -> [EventFactory.Prepared] {
        let factory = EventFactory(context: PublisherContext(
            machineID: try Identifier(validating: "box-fuzz"), workerID: try Identifier(validating: "fuzz-worker"),
            serviceType: "comfyui"))
        let job = EventFactory.Options(jobID: try Identifier(validating: "fuzz-job"), attempt: 1)
        return [
            try factory.prepare(.jobReceived, fields: ["model_required": "sdxl", "input_size": 10, "queue_position": 2],
                                options: job),
            try factory.prepare(.jobStarted, fields: ["worker_assigned": "fuzz-worker", "expected_duration": 5.5,
                                                      "resource_allocation": ["gpu_memory_mb": 1024]], options: job),
            try factory.prepare(.jobProgress, fields: ["progress_percentage": 40, "execution_step": "denoise"],
                                options: job),
            try factory.prepare(.jobCompleted, fields: ["processing_time": 3.5, "output_size": 2048,
                                                        "cost_estimate": 0.01, "model": "sdxl",
                                                        "resource_efficiency": 0.9], options: job),
            try factory.prepare(.jobFailed, fields: ["error": "bad input", "error_type": "validation",
                                                     "retry_recommended": false], options: job),
            try factory.prepare(.workerHealth, fields: ["status": "online"]),
            try factory.prepare(.workerHeartbeat, fields: [:]),
        ]
    }

    static let hostileIDs: [String] = [
        "", " ", "../../etc/passwd", "job id", "job\u{0}id", "{job}", "job}:seen", "*", "#", "+", "jobs/+/x",
        String(repeating: "x", count: 5000), "ジョブ", "job\nid", "-", ".", "job:{fuzz-job}", "\u{7F}", "%00",
    ]
    static let hostileStrings: [String] = hostileIDs + ["}{", "fuzz-worker}:inflight", "x\u{0}y", "\u{FEFF}", "\u{1F4A5}"]
    static let unknownTypes: [String] = [
        "job.exploded", "JOB.COMPLETED", "job.", ".completed", "job.completed ", "trigger", "", "null", "job.completed\u{0}",
        String(repeating: "job.", count: 300),
    ]
    static let hugeNumberLiterals: [String] = [
        "1e308", "-1e308", "1e400", "-1e400", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
        "123456789012345678901234567890", "1e-400", "0.0000000000000000000000001", "4294967296", "2147483648", "-0",
        "1E+2", "100.0000000001", "NaN", "Infinity",
    ]
    static let topics = [
        "jobs/fuzz-job/received", "jobs/fuzz-job/started", "jobs/fuzz-job/completed", "jobs/fuzz-job/failed",
        "workers/fuzz-worker/health", "workers/fuzz-worker/heartbeat", "queues/q1/state", "services/s1/health",
        "models/m1/loaded", "resources/fuzz-worker/allocated", "triggers/retry/fuzz-job",
    ]

    /// A JSON value of a different kind than `value`.
    static func otherKind(than value: JSONValue?, _ rng: inout SeededRandom) -> JSONValue {
        let choices: [JSONValue] = [.null, .bool(true), .int(7), .double(2.5), .string("text"), .array([.int(1)]),
                                    .object(["a": .int(1)])]
        let different = choices.filter { $0.kind != value?.kind }
        return different.randomElement(using: &rng)!
    }

    static func nested(depth: Int) -> [UInt8] {
        Array(String(repeating: "[", count: depth).utf8) + Array("1".utf8) + Array(String(repeating: "]", count: depth).utf8)
    }

    /// Replaces the JSON string `"__HOLE__"` in `object`'s serialisation with raw bytes.
    static func splice(_ object: JSONObject, raw: [UInt8]) -> [UInt8] {
        let text = JSONValue.object(object).serializedBytes()
        let hole = Array("\"__HOLE__\"".utf8)
        guard let start = (0...(text.count - hole.count)).first(where: { Array(text[$0..<($0 + hole.count)]) == hole }) else {
            return text
        }
        return Array(text[..<start]) + raw + Array(text[(start + hole.count)...])
    }

    static func makeCases(count: Int, seed: UInt64) throws -> [FuzzCase] {
        var rng = SeededRandom(seed: seed)
        let templates = try templates()
        var cases: [FuzzCase] = []
        for index in 0..<count {
            let template = templates.randomElement(using: &rng)!
            var object = template.envelope.jsonObject
            let keys = object.keys
            let key = keys.randomElement(using: &rng)!
            let category: String
            var topic = template.topic
            var payload: [UInt8]
            switch index % 14 {
            case 0:
                category = "random bytes"
                payload = (0..<Int.random(in: 0...400, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                topic = topics.randomElement(using: &rng)!
            case 1:
                category = "truncated"
                let full = template.envelope.encoded()
                payload = Array(full.prefix(Int.random(in: 0..<full.count, using: &rng)))
            case 2:
                category = "wrong type"
                object[key] = otherKind(than: object[key], &rng)
                payload = JSONValue.object(object).serializedBytes()
            case 3:
                category = "huge number"
                object[key] = .string("__HOLE__")
                payload = splice(object, raw: Array(hugeNumberLiterals.randomElement(using: &rng)!.utf8))
            case 4:
                category = "deep nesting"
                object[Bool.random(using: &rng) ? key : "extra"] = .string("__HOLE__")
                payload = splice(object, raw: nested(depth: [2, 10, 63, 64, 65, 100, 1000, 20_000].randomElement(using: &rng)!))
            case 5:
                category = "unknown event type"
                object["event_type"] = .string(unknownTypes.randomElement(using: &rng)!)
                payload = JSONValue.object(object).serializedBytes()
            case 6:
                category = "mismatched topic id"
                let parts = template.topic.split(separator: "/").map(String.init)
                topic = "\(parts[0])/victim-\(Int.random(in: 0..<5, using: &rng))/\(parts[2])"
                payload = template.envelope.encoded()
            case 7:
                category = "hostile id"
                let field = ["job_id", "worker_id", "machine_id", "event_id", "session_id", "worker_assigned", "model",
                             "service_type", "source"].randomElement(using: &rng)!
                object[field] = .string(hostileStrings.randomElement(using: &rng)!)
                payload = JSONValue.object(object).serializedBytes()
            case 8:
                category = "NUL bytes"
                if Bool.random(using: &rng) {
                    object[key] = .string("a\u{0}b")  // escaped in JSON: valid JSON, a NUL inside a string
                    payload = JSONValue.object(object).serializedBytes()
                } else {
                    payload = template.envelope.encoded()
                    payload.insert(0, at: Int.random(in: 0...payload.count, using: &rng))  // a raw NUL byte
                }
            case 9:
                category = "invalid UTF-8"
                object[key] = .string("__HOLE__")
                let bad: [[UInt8]] = [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xE2, 0x82]]
                let inside = Array("\"x".utf8) + bad.randomElement(using: &rng)! + Array("y\"".utf8)
                let escaped = Array(#""\ud800x""#.utf8)
                payload = splice(object, raw: Bool.random(using: &rng) ? inside : escaped)
            case 10:
                category = "not an object"
                payload = Array(["[]", "null", "42", "\"job\"", "true", "[{}]", "{}", " ", ""].randomElement(using: &rng)!.utf8)
            case 11:
                category = "missing or duplicate key"
                if Bool.random(using: &rng) {
                    object[key] = nil
                    payload = JSONValue.object(object).serializedBytes()
                } else {
                    var text = template.envelope.encoded()
                    text.removeLast()
                    payload = text + Array(",\"event_type\":\"job.completed\"}".utf8)
                }
            case 12:
                category = "valid (duplicate ids)"
                payload = template.envelope.encoded()
            default:
                category = "valid with unknown keys"
                var fresh = template.envelope
                fresh.eventID = EventID.make()
                fresh.fields["x_extra_\(index)"] = .array([.string("\u{1F600}"), .null, .double(-0.5)])
                payload = fresh.encoded()
            }
            cases.append(FuzzCase(category: category, topic: topic, payload: payload))
        }
        // A few oversize payloads (default limit 256 KiB).
        for size in [262_145, 300_000, 1_000_000] {
            var huge = Array(#"{"event_type":"job.completed","pad":""#.utf8)
            huge += Array(repeating: UInt8(ascii: "a"), count: size - huge.count - 2)
            huge += Array(#""}"#.utf8)
            cases.insert(FuzzCase(category: "oversize", topic: "jobs/fuzz-job/completed", payload: huge),
                         at: Int.random(in: 0...cases.count, using: &rng))
        }
        return cases
    }

    /// The contract's verdict on one message, computed in the test with OpsBusCore (what the processor must do).
    static func isRefused(_ fuzz: FuzzCase, maxBytes: Int) -> Bool {
        if fuzz.payload.count > maxBytes { return true }
        guard let envelope = try? EventEnvelope.decode(fuzz.payload, maxBytes: maxBytes) else { return true }
        let scheme = TopicScheme.unprefixed
        do {
            try scheme.check(topic: fuzz.topic, matches: envelope)
            _ = try scheme.parse(fuzz.topic)
            return false
        } catch {
            return true
        }
    }

    @Test("5000+ random and mutated payloads: all accounted for, refused ones dead-lettered with a reason, state intact")
    func fuzzedPayloads() async throws {
        let servers = try TestServers()
        let configuration = Kit.configuration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint,
                                              clientID: "fuzz-processor")
        let processor = try await Kit.Processor(configuration: configuration)
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fuzz-pub")

        let cases = try Self.makeCases(count: 5200, seed: 0xF022)
        let refused = cases.map { Self.isRefused($0, maxBytes: configuration.maxPayloadBytes) }
        let refusedCount = refused.filter { $0 }.count
        // The generator really produces both kinds.
        #expect(refusedCount > 3000 && cases.count - refusedCount > 300, "refused \(refusedCount) of \(cases.count)")
        for fuzz in cases {
            try await raw.publish(topic: fuzz.topic, payload: fuzz.payload, qos: .atLeastOnce)
        }

        let all = try await waitUntil(timeout: 120) { processor.counters.received >= cases.count }
        let counters = processor.counters
        try #require(all, "the processor took in \(counters.received) of \(cases.count) messages")
        #expect(processor.processor.isSubscribed, "the processor is still subscribed")
        #expect(counters.received == cases.count)
        #expect(counters.redelivered == 0)
        #expect(counters.deadLettered == refusedCount, "dead-lettered \(counters.deadLettered), contract refuses \(refusedCount)")
        #expect(counters.applied + counters.duplicates == cases.count - refusedCount)
        let stats = try Kit.stats(redis)
        #expect(Kit.counter(stats, "events_received") == cases.count, "stats: \(stats)")
        #expect(Kit.counter(stats, "outcome:dead_lettered") == refusedCount)

        // One dead letter per refused message, each with its topic, size, reason and time. Compared as a multiset:
        // the batching processor's writers apply consecutive batches concurrently, so the stream's order is the
        // arrival order only one event at a time.
        let entries = try redis.command(["XRANGE", Kit.keys.deadLetters, "-", "+"]).array ?? []
        #expect(entries.count == refusedCount)
        var problems: [String] = []
        var expected: [String: Int] = [:]
        for fuzz in zip(cases, refused).filter(\.1).map(\.0) { expected["\(fuzz.topic) \(fuzz.payload.count) bytes", default: 0] += 1 }
        var found: [String: Int] = [:]
        for entry in entries {
            let fields = entry.array?.last?.hashDictionary() ?? [:]
            let described = "\(fields["topic"] ?? "nil") \(fields["payload_bytes"] ?? "nil") bytes"
            found[described, default: 0] += 1
            if (fields["reason"] ?? "").isEmpty { problems.append("\(described): no reason") }
            if (fields["received_at"] ?? "").isEmpty { problems.append("\(described): no time") }
            if fields["payload"] == nil { problems.append("\(described): no payload") }
        }
        for key in Set(expected.keys).union(found.keys).sorted() where expected[key] != found[key] {
            problems.append("\(key): \(expected[key] ?? 0) refused, \(found[key] ?? 0) dead letters")
        }
        #expect(problems.isEmpty, "\(problems.count) dead letters wrong:\n\(problems.prefix(10).joined(separator: "\n"))")

        // Refused messages touched no state: the ids only refused messages named do not exist.
        for victim in (0..<5).map({ "victim-\($0)" }) {
            #expect(try redis.command(["EXISTS", Kit.keys.job(victim), Kit.keys.worker(victim)]).int == 0, "\(victim) exists")
        }

        // And valid events still work.
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "fuzz-worker-2")))
        let after = try Identifier(validating: "after-fuzz")
        let lifecycle = [
            try factory.prepare(.jobReceived, fields: [:], options: .init(jobID: after)),
            try factory.prepare(.jobStarted, fields: ["worker_assigned": "fuzz-worker-2"], options: .init(jobID: after)),
            try factory.prepare(.jobProgress, fields: ["progress_percentage": 50], options: .init(jobID: after)),
            try factory.prepare(.jobCompleted, fields: ["processing_time": 1.0], options: .init(jobID: after)),
        ]
        try await Kit.publish(lifecycle, with: raw)
        #expect(try await waitUntil(timeout: 30) { try Kit.job("after-fuzz", redis)["status"] == "completed" })
        let state = try Kit.job("after-fuzz", redis)
        #expect(state["progress"] == "100" && state["worker_id"] == "fuzz-worker-2" && state["started_at"] != nil)
        #expect(try Kit.timelineLength("after-fuzz", redis) == 4)
        await raw.disconnect()
        await processor.stop()
    }
    /// Figures the contract accepts (any JSON number) can still be extreme: three completions of 1e308 seconds on one
    /// model sum past the largest double in the model and pattern counters. A Lua script that fails at a command
    /// keeps the writes before it, so a refused sum would leave a half-applied job and a dead letter for a valid
    /// event; the events must be applied in full.
    @Test("extreme but valid figures are applied in full (no half-applied job, no dead letter)")
    func extremeFiguresApplyFully() async throws {
        let servers = try TestServers()
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fuzz-extreme"))
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fuzz-extreme-pub")
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-extreme")))
        var events: [EventFactory.Prepared] = []
        for index in 0..<3 {
            events.append(try factory.prepare(
                .jobCompleted,
                fields: ["processing_time": 1e308, "cost_estimate": 1e308, "resource_efficiency": 1e308,
                         "model": "m-extreme"],
                options: .init(jobID: try Identifier(validating: "extreme-\(index)"))))
        }
        try await Kit.publish(events, with: raw)
        try await Kit.awaitLifecycleEvents(events.count, redis)
        #expect(processor.counters.deadLettered == 0, "\(processor.counters)")
        let deadLetters = try redis.command(["XRANGE", Kit.keys.deadLetters, "-", "+"]).array ?? []
        #expect(deadLetters.isEmpty, "\(deadLetters.map { $0.array?.last?.hashDictionary()["reason"] ?? "?" })")
        for index in 0..<3 {
            let state = try Kit.job("extreme-\(index)", redis)
            #expect(state["status"] == "completed", "extreme-\(index): \(state)")
            #expect(try redis.command(["SISMEMBER", Kit.keys.jobsByStatus("completed"), "extreme-\(index)"]).int == 1,
                    "extreme-\(index) is missing from the completed index")
        }
        #expect(try redis.command(["HGET", Kit.keys.entity("model", "m-extreme"), "jobs_completed"]).string == "3")
        await raw.disconnect()
        await processor.stop()
    }
    /// `worker_assigned` names a worker; when the envelope has no `worker_id` the processor takes the worker from it
    /// and builds Redis keys and indexes from it (`worker:{…}`, `jobs:worker:…`, in-flight and resource keys). A value
    /// that breaks the id rule must be refused like an invalid `worker_id`, not become a worker.
    @Test("an invalid worker_assigned is refused, not used as a worker id",
          arguments: ["../../etc", "gpu 1", "gpu}:inflight", "gpu\u{0}1", String(repeating: "w", count: 3000)])
    func invalidWorkerAssignedIsRefused(worker: String) async throws {
        let servers = try TestServers()
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fuzz-worker-assigned"))
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fuzz-worker-assigned-pub")
        let factory = EventFactory(context: PublisherContext())  // no worker_id in the envelope
        let started = try factory.prepare(.jobStarted, fields: ["worker_assigned": .string(worker)],
                                          options: .init(jobID: try Identifier(validating: "assigned-1")))
        try await Kit.publish([started], with: raw)
        // Refused messages are counted as received but not as lifecycle events.
        #expect(try await waitUntil { Kit.counter(try Kit.stats(redis), "events_received") == 1 })
        // The in-memory counter is updated just after the Redis write, so it may lag the stats hash a moment.
        #expect(try await waitUntil { processor.counters.deadLettered == 1 }, "\(processor.counters)")
        #expect(try Kit.job("assigned-1", redis)["worker_id"] == nil)
        #expect(try redis.command(["EXISTS", Kit.keys.worker(worker), Kit.keys.jobsByWorker(worker),
                                   Kit.keys.workerInflight(worker)]).int == 0, "keys were made from the invalid id")
        await raw.disconnect()
        await processor.stop()
    }
}
