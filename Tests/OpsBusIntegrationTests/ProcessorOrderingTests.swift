import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Synchronization
import Testing

// MARK: - Shared helpers of the processor ordering, scale-out, fault and fuzz suites

/// Helpers shared by `ProcessorOrderingTests`, `ProcessorScaleOutTests`, `ProcessorFaultTests` and
/// `ProcessorFuzzTests`: processors with a chosen configuration, a raw MQTT publisher that sends prepared
/// envelopes exactly in the order given (so tests control order and duplicates), and readers of the processor's
/// Redis state.
enum ProcessorTestKit {
    static let keys = RedisKeys()

    /// Job lifecycle event types: the processor's own trigger events (retries, notifications) are not among them,
    /// so counting these counts exactly what a test published.
    static let lifecycleTypes: [EventType] = [.jobReceived, .jobStarted, .jobProgress, .jobCompleted, .jobFailed]

    /// Hash fields whose value is "the last event applied": they depend on arrival order by design.
    static let arrivalOrderFields: Set<String> = ["last_event_id", "last_event_at"]

    /// A processor in this test process with the given configuration.
    final class Processor: Sendable {
        let processor: EventProcessor
        let task: Task<Void, Error>

        init(configuration: ProcessorConfiguration) async throws {
            let processor = try EventProcessor(configuration: configuration, logger: testLogger)
            self.processor = processor
            task = Task { try await processor.run() }
            try #require(try await waitUntil(timeout: 90) { processor.isSubscribed }, "processor did not subscribe")
        }

        var counters: ProcessorCounters { processor.counters }

        func stop() async {
            task.cancel()
            _ = try? await task.value
        }
    }

    static func configuration(
        mqtt: MQTTEndpoint, redis: RedisEndpoint, clientID: String, group: String? = nil,
        redisRetryWindow: Double = 20, maxPayloadBytes: Int = 262_144
    ) -> ProcessorConfiguration {
        var configuration = ProcessorConfiguration(
            mqtt: mqtt, redis: redis, clientID: clientID, group: group, maxPayloadBytes: maxPayloadBytes,
            redisRetryWindow: redisRetryWindow)
        configuration.journal = ProcessorJournal.forTests()
        return configuration
    }

    static func startProcessor(_ servers: TestServers, clientID: String, group: String? = nil) async throws -> Processor {
        try await Processor(configuration: configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: clientID, group: group))
    }

    /// A plain MQTT client that publishes exactly what it is given, in the order given.
    static func rawPublisher(_ endpoint: MQTTEndpoint, clientID: String) async throws -> MQTTClient {
        let client = try MQTTClient(configuration: .init(endpoint: endpoint, clientID: clientID), logger: testLogger)
        try await client.connect()
        return client
    }

    static func publish(_ events: [EventFactory.Prepared], with client: MQTTClient) async throws {
        for event in events {
            try await client.publish(topic: event.topic, payload: event.envelope.encoded(), qos: .atLeastOnce)
        }
    }

    static func stats(_ redis: RedisConnection) throws -> [String: String] {
        try redis.command(["HGETALL", keys.stats]).hashDictionary()
    }

    static func counter(_ stats: [String: String], _ field: String) -> Int { Int(stats[field] ?? "0") ?? 0 }

    /// Job lifecycle events the processor has taken in (applied, filled, ignored or duplicate).
    static func lifecycleEventsCounted(_ redis: RedisConnection) throws -> Int {
        let stats = try stats(redis)
        return lifecycleTypes.reduce(0) { $0 + counter(stats, "type:\($1.rawValue)") }
    }

    /// Waits until the processor has taken in `total` lifecycle events; fails the test (with the count) if not.
    static func awaitLifecycleEvents(_ total: Int, _ redis: RedisConnection, timeout: Double = 90) async throws {
        let reached = try await waitUntil(timeout: timeout) { try lifecycleEventsCounted(redis) >= total }
        let counted = try lifecycleEventsCounted(redis)
        try #require(reached, "the processor took in \(counted) of \(total) lifecycle events")
        #expect(counted == total, "the processor counted \(counted) lifecycle events, \(total) were published")
    }

    static func job(_ id: String, _ redis: RedisConnection) throws -> [String: String] {
        try redis.command(["HGETALL", keys.job(id)]).hashDictionary()
    }

    /// The job hash without the fields that depend on arrival order by design and without its own id, so the states
    /// of two jobs that saw the same events in different orders compare equal.
    static func comparableState(_ id: String, _ redis: RedisConnection) throws -> [String: String] {
        var state = try job(id, redis)
        for field in arrivalOrderFields { state[field] = nil }
        state["job_id"] = state["job_id"].map { $0 == id ? "<id>" : $0 }
        // Each job's events come from a publisher session of their own: compare that one is recorded, not which.
        state["worker_session"] = state["worker_session"].map { _ in "<session>" }
        return state
    }

    static func timelineLength(_ id: String, _ redis: RedisConnection) throws -> Int {
        Int(try redis.command(["LLEN", keys.jobTimeline(id)]).int ?? -1)
    }

    static func statusMembers(_ status: String, _ redis: RedisConnection) throws -> Set<String> {
        Set((try redis.command(["SMEMBERS", keys.jobsByStatus(status)]).array ?? []).compactMap(\.string))
    }

    /// The job-state oracle: folds lifecycle events through `JobStateMachine`, the statement of the rules the
    /// processor's Lua script implements.
    static func oracle(_ events: [EventFactory.Prepared]) -> JobSnapshot {
        let machine = JobStateMachine()
        var state = JobSnapshot.unknown
        for event in events {
            guard let lifecycle = lifecycleEvent(event.envelope.eventType) else { continue }
            state = machine.apply(
                lifecycle, attempt: event.envelope.attempt ?? 1,
                progress: event.envelope.fields["progress_percentage"]?.doubleValue, to: state
            ).newState
        }
        return state
    }

    static func lifecycleEvent(_ type: EventType) -> JobLifecycleEvent? {
        switch type {
        case .jobReceived: .received
        case .jobStarted: .started
        case .jobProgress: .progress
        case .jobCompleted: .completed
        case .jobFailed: .failed
        default: nil
        }
    }

    /// Stored statuses acceptable for an oracle status: after `failed` the processor may go on, in the same atomic
    /// step, to its own outcome of rank 3 (`retry_scheduled` or `dead_lettered`) when automation is on.
    static func acceptableStatuses(for status: JobStatus?, retryRecommended: Bool) -> Set<String> {
        guard let status else { return [] }
        if status == .failed { return ["failed", retryRecommended ? "retry_scheduled" : "dead_lettered"] }
        return [status.rawValue]
    }

    /// Every ordering of `elements` (n! of them), the identity first.
    static func permutations<T>(_ elements: [T]) -> [[T]] {
        guard elements.count > 1 else { return [elements] }
        var result: [[T]] = []
        for (index, first) in elements.enumerated() {
            var rest = elements
            rest.remove(at: index)
            for tail in permutations(rest) { result.append([first] + tail) }
        }
        return result
    }

    /// `order` (indices) with one extra copy of every element, each copy inserted at a random place after its
    /// original, so the order of first arrivals stays `order`.
    static func withEachDuplicated(_ order: [Int], using rng: inout SeededRandom) -> [Int] {
        var sequence = order
        for element in order {
            let original = sequence.firstIndex(of: element)!
            sequence.insert(element, at: Int.random(in: (original + 1)...sequence.count, using: &rng))
        }
        return sequence
    }
}

/// SplitMix64: a small seeded generator, so a failing random order or payload can be reproduced from its seed.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Ordering

/// Shared subscriptions and redelivery mean a job's events can arrive in any order and more than once; the final
/// state must not depend on it. Each ordering goes to its own job id, all through one processor, and every job must
/// end in the state the in-order job ends in, which must also be the state `JobStateMachine` predicts.
@Suite("Processor: every arrival order of a job's events ends in the same state", .serialized)
struct ProcessorOrderingTests {
    typealias Kit = ProcessorTestKit
    let servers: TestServers
    let baseTime = EventTimestamp.now().millisecondsSinceEpoch / 1000 * 1000 - 3_600_000
    init() throws { servers = try TestServers() }

    /// The lifecycle events of one attempt of one job, in the order a worker sends them.
    struct Lifecycle {
        var events: [EventFactory.Prepared]
        var jobID: String
        subscript(type: EventType) -> EventFactory.Prepared { events.first { $0.envelope.eventType == type }! }
    }

    func lifecycle(_ jobID: String, worker: String, attempt: Int = 1, failing: Bool = false,
                   retryRecommended: Bool = false, withReceived: Bool = true) throws -> Lifecycle {
        let factory = EventFactory(context: PublisherContext(
            machineID: try Identifier(validating: "box-order"), workerID: try Identifier(validating: worker),
            serviceType: "comfyui"))
        let options = EventFactory.Options(jobID: try Identifier(validating: jobID), attempt: attempt)
        var events: [EventFactory.Prepared] = []
        if withReceived {
            events.append(try factory.prepare(.jobReceived, fields: ["model_required": "sdxl", "input_size": 2048],
                                              options: options))
        }
        events.append(try factory.prepare(
            .jobStarted,
            fields: ["worker_assigned": .string(worker), "expected_duration": 30,
                     "resource_allocation": .object(["gpu_memory_mb": 4096])],
            options: options))
        if failing {
            events.append(try factory.prepare(.jobProgress, fields: ["progress_percentage": 45], options: options))
            events.append(try factory.prepare(
                .jobFailed,
                fields: ["error": "CUDA out of memory", "error_type": "gpu_oom",
                         "retry_recommended": .bool(retryRecommended)],
                options: options))
        } else {
            events.append(try factory.prepare(.jobProgress, fields: ["progress_percentage": 30], options: options))
            events.append(try factory.prepare(.jobProgress, fields: ["progress_percentage": 60], options: options))
            events.append(try factory.prepare(
                .jobCompleted, fields: ["processing_time": 12.5, "output_size": 4096, "cost_estimate": 0.25],
                options: options))
        }
        // Fixed timestamps, a second apart and a minute per attempt, the same for every job: jobs that saw the same
        // events in different orders then have byte-identical states.
        for index in events.indices {
            events[index].envelope.timestamp = EventTimestamp(
                millisecondsSinceEpoch: baseTime + Int64(attempt - 1) * 60_000 + Int64(index) * 1000)
        }
        return Lifecycle(events: events, jobID: jobID)
    }

    /// Publishes every order of `make(job)`'s events (and every order with each event duplicated) to its own job,
    /// then checks each job against the in-order job and the oracle.
    func checkAllOrders(prefix: String, failing: Bool) async throws {
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-\(prefix)")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-\(prefix)")
        let size = failing ? 4 : 5
        let orders = Kit.permutations(Array(0..<size))
        #expect(orders.count == (failing ? 24 : 120))
        var rng = SeededRandom(seed: failing ? 0xFA11 : 0xC0DE)

        var plans: [(jobID: String, lifecycle: Lifecycle, sequence: [EventFactory.Prepared])] = []
        for (index, order) in orders.enumerated() {
            let plain = try lifecycle("\(prefix)-\(index)", worker: "gpu-order", failing: failing)
            plans.append((plain.jobID, plain, order.map { plain.events[$0] }))
            let doubled = try lifecycle("\(prefix)-dup-\(index)", worker: "gpu-order", failing: failing)
            plans.append((doubled.jobID, doubled, Kit.withEachDuplicated(order, using: &rng).map { doubled.events[$0] }))
        }
        for plan in plans { try await Kit.publish(plan.sequence, with: raw) }
        let total = plans.reduce(0) { $0 + $1.sequence.count }
        try await Kit.awaitLifecycleEvents(total, redis)

        let duplicatesSent = plans.reduce(0) { $0 + $1.sequence.count - $1.lifecycle.events.count }
        #expect(Kit.counter(try Kit.stats(redis), "outcome:duplicate") == duplicatesSent)
        // The process counts a batch's outcomes once the batch's Redis call returns, a moment after Redis shows them.
        #expect(try await waitUntil(timeout: 10) { processor.counters.duplicates == duplicatesSent },
                "the processor counted \(processor.counters.duplicates) duplicates, \(duplicatesSent) were sent")

        // The in-order job (identity permutation, no duplicates) is the reference; it must match the oracle and the
        // events' own fields.
        let reference = plans[0]
        let referenceState = try Kit.comparableState(reference.jobID, redis)
        let oracle = Kit.oracle(reference.sequence)
        #expect(Kit.acceptableStatuses(for: oracle.status, retryRecommended: false)
                    .contains(referenceState["status"] ?? "nil"),
                "in order: status \(referenceState["status"] ?? "nil"), oracle \(String(describing: oracle.status))")
        let lifecycle = reference.lifecycle
        #expect(referenceState["attempt"] == "1")
        #expect(referenceState["worker_id"] == "gpu-order")
        #expect(referenceState["machine_id"] == "box-order")
        #expect(referenceState["received_at"] == lifecycle[.jobReceived].envelope.timestamp.iso8601)
        #expect(referenceState["started_at"] == lifecycle[.jobStarted].envelope.timestamp.iso8601)
        #expect(referenceState["model_required"] == "sdxl")
        #expect(referenceState["expected_duration"] == "30")
        if failing {
            #expect(Double(referenceState["progress"] ?? "") == 45)
            #expect(referenceState["failed_at"] == lifecycle[.jobFailed].envelope.timestamp.iso8601)
            #expect(referenceState["completed_at"] == nil)
            #expect(referenceState["error_type"] == "gpu_oom")
            #expect(referenceState["error_message"] == "CUDA out of memory")
        } else {
            #expect(referenceState["status"] == "completed")
            #expect(Double(referenceState["progress"] ?? "") == 100)
            #expect(referenceState["completed_at"] == lifecycle[.jobCompleted].envelope.timestamp.iso8601)
            #expect(referenceState["failed_at"] == nil)
            #expect(referenceState["processing_time"] == "12.5")
            #expect(referenceState["output_size"] == "4096")
        }

        let finalStatus = referenceState["status"] ?? "nil"
        var mismatches: [String] = []
        for plan in plans {
            let state = try Kit.comparableState(plan.jobID, redis)
            let order = plan.sequence.map { $0.envelope.eventType.action }.joined(separator: ",")
            let predicted = Kit.oracle(plan.sequence)
            if predicted != oracle { mismatches.append("\(plan.jobID) [\(order)]: oracle \(predicted) ≠ \(oracle)") }
            if Double(state["progress"] ?? "") != predicted.progress {
                mismatches.append("\(plan.jobID) [\(order)]: progress \(state["progress"] ?? "nil") ≠ oracle \(predicted.progress)")
            }
            if state != referenceState {
                let fields = Set(state.keys).union(referenceState.keys).filter { state[$0] != referenceState[$0] }.sorted()
                let diff = fields.map { "\($0): \(state[$0] ?? "nil") vs \(referenceState[$0] ?? "nil")" }
                mismatches.append("\(plan.jobID) [\(order)]: \(diff.joined(separator: "; "))")
            }
            let timeline = try Kit.timelineLength(plan.jobID, redis)
            if timeline != plan.lifecycle.events.count {
                mismatches.append("\(plan.jobID) [\(order)]: timeline \(timeline) ≠ \(plan.lifecycle.events.count)")
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) jobs differ from the in-order job:\n\(mismatches.prefix(12).joined(separator: "\n"))")

        // Status indexes: every job in exactly its final status' set.
        let members = try Kit.statusMembers(finalStatus, redis)
        #expect(members == Set(plans.map(\.jobID)))
        for status in JobStatus.allCases.map(\.rawValue) where status != finalStatus {
            #expect(try Kit.statusMembers(status, redis).isEmpty, "jobs left in \(status)")
        }
        // The worker's job-driven state: every job is over, whatever order its events came in.
        #expect(try redis.command(["SCARD", Kit.keys.workerInflight("gpu-order")]).int == 0, "jobs left in flight")
        #expect(try redis.command(["HLEN", Kit.keys.resources("gpu-order")]).int == 0, "resources left allocated")
        #expect(try redis.command(["HGET", Kit.keys.worker("gpu-order"), "current_job"]).string == nil)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("all 120 orders of received, started, progress 30, progress 60, completed (and with duplicates) end completed alike")
    func completedLifecycleInEveryOrder() async throws {
        try await checkAllOrders(prefix: "perm-ok", failing: false)
    }

    @Test("all 24 orders of received, started, progress, failed (and with duplicates) end failed alike")
    func failedLifecycleInEveryOrder() async throws {
        try await checkAllOrders(prefix: "perm-fail", failing: true)
    }

    @Test("two interleaved attempts (1 fails, 2 completes) in 200 seeded random orders end completed at attempt 2")
    func interleavedAttempts() async throws {
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-attempts")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-attempts")
        var rng = SeededRandom(seed: 0xA77E_4D75)
        var plans: [(jobID: String, first: Lifecycle, second: Lifecycle, sequence: [EventFactory.Prepared])] = []
        for index in 0..<200 {
            let jobID = "attempts-\(index)"
            let first = try lifecycle(jobID, worker: "gpu-a", attempt: 1, failing: true, retryRecommended: true)
            let second = try lifecycle(jobID, worker: "gpu-b", attempt: 2, withReceived: false)
            // The reference job gets the order in which things really happen; the rest a seeded shuffle.
            let ordered = first.events + second.events
            plans.append((jobID, first, second, index == 0 ? ordered : ordered.shuffled(using: &rng)))
        }
        for plan in plans { try await Kit.publish(plan.sequence, with: raw) }
        let total = plans.reduce(0) { $0 + $1.sequence.count }
        #expect(total == 200 * 8)
        try await Kit.awaitLifecycleEvents(total, redis)

        let reference = try Kit.comparableState(plans[0].jobID, redis)
        let second = plans[0].second
        #expect(reference["status"] == "completed")
        #expect(reference["attempt"] == "2")
        #expect(Double(reference["progress"] ?? "") == 100)
        #expect(reference["worker_id"] == "gpu-b")
        #expect(reference["started_at"] == second[.jobStarted].envelope.timestamp.iso8601)
        #expect(reference["completed_at"] == second[.jobCompleted].envelope.timestamp.iso8601)
        #expect(reference["failed_at"] == nil && reference["error_type"] == nil && reference["error_message"] == nil,
                "attempt 1's failure does not leak into attempt 2: \(reference)")

        var mismatches: [String] = []
        for plan in plans {
            let state = try Kit.comparableState(plan.jobID, redis)
            let order = plan.sequence.map { "\($0.envelope.eventType.action)/\($0.envelope.attempt ?? 0)" }
                .joined(separator: ",")
            let predicted = Kit.oracle(plan.sequence)
            if predicted.status != .completed || predicted.attempt != 2 || predicted.progress != 100 {
                mismatches.append("\(plan.jobID) [\(order)]: oracle says \(predicted)")
            }
            // The brief's final state: status, progress, worker, attempt, which timestamps are present.
            for field in ["status", "progress", "worker_id", "attempt", "started_at", "completed_at", "failed_at"]
            where state[field] != reference[field] {
                mismatches.append("\(plan.jobID) [\(order)]: \(field) \(state[field] ?? "nil") vs \(reference[field] ?? "nil")")
            }
            let timeline = try Kit.timelineLength(plan.jobID, redis)
            if timeline != 8 { mismatches.append("\(plan.jobID) [\(order)]: timeline \(timeline) ≠ 8") }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) differences:\n\(mismatches.prefix(12).joined(separator: "\n"))")
        #expect(try Kit.statusMembers("completed", redis) == Set(plans.map(\.jobID)))
        for status in ["received", "processing", "failed", "retry_scheduled", "dead_lettered"] {
            #expect(try Kit.statusMembers(status, redis).isEmpty, "jobs left in \(status)")
        }
        await raw.disconnect()
        await processor.stop()
    }

    @Test("two interleaved attempts: the whole job hash is the same whatever the order")
    func interleavedAttemptsWholeHash() async throws {
        // Stricter than the test above: every field, not only the ones the brief names. Kept separate so a
        // divergence in a secondary field (fields of attempt 1's `received`) is reported on its own.
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-hash")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-hash")
        var rng = SeededRandom(seed: 0x4A54)
        var plans: [(jobID: String, sequence: [EventFactory.Prepared])] = []
        for index in 0..<60 {
            let jobID = "hash-\(index)"
            let first = try lifecycle(jobID, worker: "gpu-a", attempt: 1, failing: true, retryRecommended: true)
            let second = try lifecycle(jobID, worker: "gpu-b", attempt: 2, withReceived: false)
            let ordered = first.events + second.events
            plans.append((jobID, index == 0 ? ordered : ordered.shuffled(using: &rng)))
        }
        for plan in plans { try await Kit.publish(plan.sequence, with: raw) }
        try await Kit.awaitLifecycleEvents(plans.count * 8, redis)
        let reference = try Kit.comparableState(plans[0].jobID, redis)
        var mismatches: [String] = []
        for plan in plans.dropFirst() {
            let state = try Kit.comparableState(plan.jobID, redis)
            if state != reference {
                let order = plan.sequence.map { "\($0.envelope.eventType.action)/\($0.envelope.attempt ?? 0)" }
                    .joined(separator: ",")
                let fields = Set(state.keys).union(reference.keys).filter { state[$0] != reference[$0] }.sorted()
                mismatches.append("[\(order)]: " + fields.map { "\($0): \(state[$0] ?? "nil") vs \(reference[$0] ?? "nil")" }
                    .joined(separator: "; "))
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) of \(plans.count - 1) orders differ:\n\(mismatches.prefix(8).joined(separator: "\n"))")
        await raw.disconnect()
        await processor.stop()
    }
    /// Attempt 1 started on worker A (allocation recorded), then attempt 2 began on worker B before attempt 1's
    /// failure was applied; the late failure is a stale attempt and is ignored. Attempt 1's allocation must still be
    /// released and A must no longer show the job as its current one: the job is over.
    @Test("a superseded attempt's worker releases the job's resources whatever the order")
    func supersededAttemptReleasesResources() async throws {
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-release")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-release")
        let allocation: JSONValue = .object(["gpu_memory_mb": 8192])
        let jobID = try Identifier(validating: "release-1")
        func factory(_ worker: String) throws -> EventFactory {
            EventFactory(context: PublisherContext(workerID: try Identifier(validating: worker)))
        }
        let (a, b) = (try factory("gpu-rel-a"), try factory("gpu-rel-b"))
        let started1 = try a.prepare(.jobStarted, fields: ["worker_assigned": "gpu-rel-a", "resource_allocation": allocation],
                                     options: .init(jobID: jobID, attempt: 1))
        let failed1 = try a.prepare(.jobFailed, fields: ["error": "lost", "error_type": "network", "retry_recommended": false],
                                    options: .init(jobID: jobID, attempt: 1))
        let started2 = try b.prepare(.jobStarted, fields: ["worker_assigned": "gpu-rel-b", "resource_allocation": allocation],
                                     options: .init(jobID: jobID, attempt: 2))
        let completed2 = try b.prepare(.jobCompleted, fields: ["processing_time": 1.0], options: .init(jobID: jobID, attempt: 2))
        try await Kit.publish([started1, started2, completed2, failed1], with: raw)
        try await Kit.awaitLifecycleEvents(4, redis)
        #expect(try Kit.job("release-1", redis)["status"] == "completed")
        for worker in ["gpu-rel-a", "gpu-rel-b"] {
            #expect(try redis.command(["HGETALL", Kit.keys.resources(worker)]).hashDictionary().isEmpty,
                    "\(worker) still holds the finished job's resources")
            #expect(try redis.command(["SCARD", Kit.keys.workerInflight(worker)]).int == 0)
            #expect(try redis.command(["HGET", Kit.keys.worker(worker), "current_job"]).string == nil,
                    "\(worker) still shows the finished job as its current one")
        }
        await raw.disconnect()
        await processor.stop()
    }
    /// A failure that schedules a retry of attempt 2 is overtaken when attempt 2 begins anyway (a replay, or the
    /// queue's own retry): the pending retry must go, or the scheduler later publishes `trigger.retry` for an attempt
    /// that already ran and the job runs a second time.
    @Test("a pending retry is dropped once the attempt it would start has begun")
    func pendingRetryDroppedWhenAttemptBegins() async throws {
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-retry")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-retry")
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-retry")))
        let jobID = try Identifier(validating: "retry-overtaken")
        let started1 = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-retry"],
                                           options: .init(jobID: jobID, attempt: 1))
        let failed1 = try factory.prepare(
            .jobFailed, fields: ["error": "Connection reset by peer", "error_type": "network", "retry_recommended": true],
            options: .init(jobID: jobID, attempt: 1))
        let started2 = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-retry"],
                                           options: .init(jobID: jobID, attempt: 2))
        let completed2 = try factory.prepare(.jobCompleted, fields: ["processing_time": 1.0],
                                             options: .init(jobID: jobID, attempt: 2))
        try await Kit.publish([started1, failed1], with: raw)
        try await Kit.awaitLifecycleEvents(2, redis)
        #expect(try Kit.job("retry-overtaken", redis)["status"] == "retry_scheduled")
        #expect(try redis.command(["ZSCORE", Kit.keys.retries, "retry-overtaken|2"]).string != nil, "retry scheduled")
        try await Kit.publish([started2, completed2], with: raw)
        try await Kit.awaitLifecycleEvents(4, redis)
        let state = try Kit.job("retry-overtaken", redis)
        #expect(state["status"] == "completed" && state["attempt"] == "2")
        #expect(try redis.command(["ZSCORE", Kit.keys.retries, "retry-overtaken|2"]).string == nil,
                "attempt 2 already ran, yet its retry is still scheduled")
        #expect(state["next_attempt"] == nil && state["retry_due_at"] == nil, "stale retry fields: \(state)")
        await raw.disconnect()
        await processor.stop()
    }
    /// A worker starts a job and then goes offline; with shared subscriptions (or the broker sending the will on
    /// its own) the offline report can be applied before the `job.started` that precedes it. The job must fail over
    /// (`worker_lost`) in both orders, not stay `processing` on a worker that is gone.
    @Test("a job in flight on a worker that goes offline fails over")
    func failoverInOrder() async throws {
        try await checkFailover(offlineFirst: false)
    }

    @Test("a job started on a worker whose offline report was applied first still fails over")
    func failoverOfflineFirst() async throws {
        try await checkFailover(offlineFirst: true)
    }

    func checkFailover(offlineFirst: Bool) async throws {
        let processor = try await Kit.startProcessor(servers, clientID: "order-processor-failover-\(offlineFirst)")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "order-pub-failover-\(offlineFirst)")
        let worker = "gpu-lost-\(offlineFirst)"
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: worker)))
        let jobID = "failover-\(offlineFirst)"
        let online = try factory.prepare(.workerHealth, fields: ["status": "online"])
        var started = try factory.prepare(.jobStarted, fields: ["worker_assigned": .string(worker)],
                                          options: .init(jobID: try Identifier(validating: jobID)))
        var offline = try factory.prepare(.workerHealth, fields: ["status": "offline", "reason": "connection lost"])
        let now = EventTimestamp.now().millisecondsSinceEpoch
        started.envelope.timestamp = EventTimestamp(millisecondsSinceEpoch: now + 1000)
        offline.envelope.timestamp = EventTimestamp(millisecondsSinceEpoch: now + 2000)
        try await Kit.publish(offlineFirst ? [online, offline, started] : [online, started, offline], with: raw)
        let failedOver = try await waitUntil(timeout: 20) {
            try Kit.job(jobID, redis)["error_type"] == "worker_lost"
        }
        let state = try Kit.job(jobID, redis)
        #expect(failedOver, "the job never failed over: \(state)")
        #expect(["retry_scheduled", "failed", "dead_lettered"].contains(state["status"] ?? "nil"), "\(state)")
        #expect(try redis.command(["SCARD", Kit.keys.workerInflight(worker)]).int == 0)
        #expect(try redis.command(["HGET", Kit.keys.worker(worker), "status"]).string == "offline")
        await raw.disconnect()
        await processor.stop()
    }
}
