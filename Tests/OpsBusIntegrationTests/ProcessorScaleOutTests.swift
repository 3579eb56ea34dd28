import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// Several processor instances in one MQTT 5 shared-subscription group split the events between them, so one job's
/// events land on different instances, concurrently and in any order. Nothing may be applied twice and the final
/// state must be the one a single instance reaches.
@Suite("Processor: two instances in one shared-subscription group", .serialized)
struct ProcessorScaleOutTests {
    typealias Kit = ProcessorTestKit
    static let workers = ["gpu-s1", "gpu-s2", "gpu-s3"]
    static let receivedOnlyFields = ["received_at", "model_required", "input_size"]

    /// One job's planned events (every event once) and what the job is.
    struct JobPlan {
        enum Kind { case completes, failsForGood, retriedThenCompletes }
        var jobID: String
        var kind: Kind
        var events: [EventFactory.Prepared]
    }

    /// `count` jobs of three kinds with fixed timestamps (so states compare byte for byte across Redis servers).
    static func plans(count: Int, baseTime: Int64, rng: inout SeededRandom) throws -> [JobPlan] {
        var plans: [JobPlan] = []
        for index in 0..<count {
            let jobID = try Identifier(validating: "scale-\(index)")
            let kind: JobPlan.Kind = switch index % 4 {
            case 0, 1: .completes
            case 2: .failsForGood
            default: .retriedThenCompletes
            }
            var events: [EventFactory.Prepared] = []
            var clock = baseTime + Int64(index) * 100_000
            func add(_ factory: EventFactory, _ type: EventType, _ fields: JSONObject, attempt: Int) throws {
                var event = try factory.prepare(type, fields: fields, options: .init(jobID: jobID, attempt: attempt))
                clock += 1000
                event.envelope.timestamp = EventTimestamp(millisecondsSinceEpoch: clock)
                events.append(event)
            }
            func factory(_ worker: String) throws -> EventFactory {
                EventFactory(context: PublisherContext(
                    machineID: try Identifier(validating: "box-scale"), workerID: try Identifier(validating: worker),
                    serviceType: "comfyui"))
            }
            let first = try factory(workers[index % workers.count])
            let allocation: JSONValue = .object(["gpu_memory_mb": 8192, "cpu_cores": 4])
            try add(first, .jobReceived, ["model_required": "sdxl", "input_size": .int(Int64(index))], attempt: 1)
            try add(first, .jobStarted, ["worker_assigned": .string(first.context.workerID!.rawValue),
                                         "resource_allocation": allocation], attempt: 1)
            try add(first, .jobProgress, ["progress_percentage": .int(Int64.random(in: 1...50, using: &rng))], attempt: 1)
            switch kind {
            case .completes:
                try add(first, .jobProgress, ["progress_percentage": 80], attempt: 1)
                try add(first, .jobCompleted, ["processing_time": 2.5, "output_size": 100, "cost_estimate": 0.5,
                                               "model": "sdxl"], attempt: 1)
            case .failsForGood:
                try add(first, .jobFailed, ["error": "invalid prompt", "error_type": "validation",
                                            "retry_recommended": false], attempt: 1)
            case .retriedThenCompletes:
                try add(first, .jobFailed, ["error": "input rejected", "error_type": "validation",
                                            "retry_recommended": false], attempt: 1)
                let second = try factory(workers[(index + 1) % workers.count])
                try add(second, .jobStarted, ["worker_assigned": .string(second.context.workerID!.rawValue),
                                              "resource_allocation": allocation], attempt: 2)
                try add(second, .jobProgress, ["progress_percentage": 60], attempt: 2)
                try add(second, .jobCompleted, ["processing_time": 1.5, "output_size": 50, "cost_estimate": 0.25,
                                                "model": "sdxl"], attempt: 2)
            }
            plans.append(JobPlan(jobID: jobID.rawValue, kind: kind, events: events))
        }
        return plans
    }

    @Test("both instances take work, nothing is applied twice, and the final states equal a single instance's")
    func sharedSubscriptionSplitsWork() async throws {
        var rng = SeededRandom(seed: 0x5CA1E)
        let baseTime = EventTimestamp.now().millisecondsSinceEpoch / 1000 * 1000 - 7_200_000
        let plans = try Self.plans(count: 400, baseTime: baseTime, rng: &rng)
        // Every event once, about a quarter of them twice more (redelivery, publisher retries), all jobs interleaved
        // and each job's events in random order.
        var stream: [EventFactory.Prepared] = []
        for plan in plans {
            for event in plan.events {
                stream.append(event)
                if Double.random(in: 0..<1, using: &rng) < 0.25 { stream.append(event) }
            }
        }
        stream.shuffle(using: &rng)
        let unique = plans.reduce(0) { $0 + $1.events.count }
        let duplicatesSent = stream.count - unique
        #expect(stream.count > 2500 && duplicatesSent > 400)

        // Two instances in group g1.
        let servers = try TestServers()
        let one = try await Kit.startProcessor(servers, clientID: "scale-instance-1", group: "g1")
        let two = try await Kit.startProcessor(servers, clientID: "scale-instance-2", group: "g1")
        #expect(one.processor.configuration.subscriptionFilters.allSatisfy { $0.hasPrefix("$share/g1/") })
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "scale-pub")
        try await Kit.publish(stream, with: raw)
        try await Kit.awaitLifecycleEvents(stream.count, redis, timeout: 120)

        // The single-instance oracle: the same stream through one processor on servers of its own.
        let referenceServers = try TestServers()
        let single = try await Kit.startProcessor(referenceServers, clientID: "scale-single")
        let referenceRedis = try referenceServers.redisConnection()
        let referenceRaw = try await Kit.rawPublisher(referenceServers.mqttEndpoint, clientID: "scale-ref-pub")
        try await Kit.publish(stream, with: referenceRaw)
        try await Kit.awaitLifecycleEvents(stream.count, referenceRedis, timeout: 120)

        // Both instances received work; together they saw every message exactly once.
        let (first, second) = (one.counters, two.counters)
        #expect(first.received > 0 && second.received > 0, "instance 1: \(first), instance 2: \(second)")
        #expect(first.received + second.received == stream.count, "instance 1: \(first), instance 2: \(second)")
        #expect(first.deadLettered + second.deadLettered == 0)
        #expect(first.duplicates + second.duplicates == duplicatesSent)
        #expect(Kit.counter(try Kit.stats(redis), "outcome:duplicate") == duplicatesSent)

        var problems: [String] = []
        for plan in plans {
            var state = try Kit.comparableState(plan.jobID, redis)
            var reference = try Kit.comparableState(plan.jobID, referenceRedis)
            if plan.kind == .retriedThenCompletes {
                // Known ordering defect (ProcessorOrderingTests.interleavedAttemptsWholeHash): attempt 1's `received`
                // fields are dropped when it arrives after attempt 2 began, and two instances see a different order
                // than one. Compared there; here the rest of the state must match.
                for field in Self.receivedOnlyFields { state[field] = nil; reference[field] = nil }
            }
            if state != reference {
                let fields = Set(state.keys).union(reference.keys).filter { state[$0] != reference[$0] }.sorted()
                problems.append("\(plan.jobID): " + fields.map { "\($0): \(state[$0] ?? "nil") vs single \(reference[$0] ?? "nil")" }
                    .joined(separator: "; "))
            }
            // JobStateMachine over the order of first arrivals (the single instance's order).
            var firstArrivals: [EventFactory.Prepared] = []
            var seen: Set<String> = []
            for event in stream where event.envelope.jobID?.rawValue == plan.jobID {
                if seen.insert(event.envelope.eventID).inserted { firstArrivals.append(event) }
            }
            let oracle = Kit.oracle(firstArrivals)
            let expectedAttempt = plan.kind == .retriedThenCompletes ? 2 : 1
            let expected: String = plan.kind == .failsForGood ? "failed" : "completed"
            if oracle.status?.rawValue != expected || oracle.attempt != expectedAttempt {
                problems.append("\(plan.jobID): oracle \(oracle)")
            }
            let acceptable = Kit.acceptableStatuses(for: oracle.status, retryRecommended: false)
            if !acceptable.contains(state["status"] ?? "nil") || state["attempt"] != String(expectedAttempt) {
                problems.append("\(plan.jobID): status \(state["status"] ?? "nil") attempt \(state["attempt"] ?? "nil"), oracle \(oracle)")
            }
            if Double(state["progress"] ?? "") != oracle.progress {
                problems.append("\(plan.jobID): progress \(state["progress"] ?? "nil"), oracle \(oracle.progress)")
            }
            let timeline = try Kit.timelineLength(plan.jobID, redis)
            if timeline != plan.events.count {
                problems.append("\(plan.jobID): timeline has \(timeline) entries for \(plan.events.count) distinct events")
            }
        }
        #expect(problems.isEmpty, "\(problems.count) problems:\n\(problems.prefix(15).joined(separator: "\n"))")

        // Effects counted once per transition: one model completion and one success pattern per completed job, and
        // the same figures as the single instance.
        let completedJobs = plans.filter { $0.kind != .failsForGood }.count
        let model = Kit.keys.entity("model", "sdxl")
        #expect(try redis.command(["HGET", model, "jobs_completed"]).string == String(completedJobs))
        #expect(try redis.command(["HGET", model, "jobs_completed"]) == referenceRedis.command(["HGET", model, "jobs_completed"]))
        #expect(try successPatternCount(redis) == completedJobs)
        #expect(try successPatternCount(referenceRedis) == completedJobs)
        // One job dead letter per job that failed for good; none twice.
        let deadLetters = try jobDeadLetterCounts(redis)
        for plan in plans where plan.kind == .failsForGood {
            #expect(deadLetters[plan.jobID] == 1, "\(plan.jobID): \(deadLetters[plan.jobID] ?? 0) dead letters")
        }
        #expect(deadLetters.values.allSatisfy { $0 == 1 }, "a job was dead-lettered twice: \(deadLetters.filter { $0.value > 1 })")
        // Every job is over: no worker still holds one in flight or keeps resources for it. Retried jobs are left
        // out of the resource check: a known defect (ProcessorOrderingTests.supersededAttemptReleasesResources)
        // keeps attempt 1's allocation when attempt 2 begins before attempt 1's failure is applied.
        let retried = Set(plans.filter { $0.kind == .retriedThenCompletes }.map { "job:\($0.jobID)" })
        for worker in Self.workers {
            #expect(try redis.command(["SCARD", Kit.keys.workerInflight(worker)]).int == 0, "\(worker) in flight")
            let held = try redis.command(["HGETALL", Kit.keys.resources(worker)]).hashDictionary().keys
                .filter { !retried.contains($0) }.sorted()
            let kinds = held.map { field in
                let job = String(field.dropFirst("job:".count))
                return "\(field) (\(plans.first { $0.jobID == job }.map { "\($0.kind)" } ?? "?"))"
            }
            #expect(held.isEmpty, "\(worker) still holds resources of finished jobs: \(kinds.prefix(10))")
        }

        await raw.disconnect()
        await referenceRaw.disconnect()
        await one.stop()
        await two.stop()
        await single.stop()
    }

    /// One instance of the group is killed (SIGKILL) mid-stream and comes back with the same client id. Its
    /// unacknowledged messages and whatever the broker queued for its session must still be applied, each once.
    @Test("an instance killed mid-stream loses nothing: every event applied exactly once after it returns")
    func instanceKilledMidStream() async throws {
        let servers = try TestServers()
        let executable = try opsbusExecutable()
        let arguments = ["processor", "--mqtt-url", servers.mqttURL, "--redis-url", servers.redisURL, "--group", "g1",
                         "--client-id", "group-crashy", "--log-level", "info"]
        let steady = try await Kit.startProcessor(servers, clientID: "group-steady", group: "g1")
        var crashy = try ChildProcess(executable, arguments)
        try #require(try await waitUntil { crashy.stderr.contains("processor running") }, "\(crashy.stderr)")
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "group-crash-pub")
        let events = try ProcessorFaultTests.completions("group-kill", count: 1000)
        let publishing = ProcessorFaultTests.publishInBackground(events[...], raw)
        _ = try await waitUntil(timeout: 30) { ProcessorFaultTests.completedCount(servers.redisEndpoint) >= 200 }
        crashy.signal(SIGKILL)
        _ = try? await crashy.wait(timeout: 10)
        let appliedAtKill = ProcessorFaultTests.completedCount(servers.redisEndpoint)
        try await publishing.value
        #expect(appliedAtKill < events.count, "the kill happened mid-stream")
        crashy = try ChildProcess(executable, arguments)
        try await ProcessorFaultTests.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(try await waitUntil(timeout: 10) { steady.counters.received > 0 })
        crashy.signal(SIGTERM)
        _ = try? await crashy.wait(timeout: 20)
        await raw.disconnect()
        await steady.stop()
    }

    /// Scaling down: one instance stops for good (graceful shutdown, as on SIGTERM) and never returns. Events
    /// published afterwards must still be applied by the instances that remain.
    @Test("after an instance leaves the group for good, the remaining instance applies every new event")
    func scaleDownStrandsNothing() async throws {
        let servers = try TestServers()
        let staying = try await Kit.startProcessor(servers, clientID: "group-staying", group: "g1")
        let leaving = try await Kit.startProcessor(servers, clientID: "group-leaving", group: "g1")
        await leaving.stop()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "group-scale-down-pub")
        let events = try ProcessorFaultTests.completions("scale-down", count: 200)
        try await Kit.publish(events, with: raw)
        try await ProcessorFaultTests.expectEachAppliedOnce(events, servers.redisEndpoint, timeout: 20)
        // (The process counts a batch once its Redis call returns, a moment after Redis shows it.)
        #expect(try await waitUntil(timeout: 10) { staying.counters.received == events.count },
                "\(staying.counters)")
        await raw.disconnect()
        await staying.stop()
    }

    /// The actions that leave Redis go through the outbox, which both instances relay: a lost worker's jobs must each
    /// fail over once, and each due retry must be published once, whichever instance relays or claims it.
    @Test("in a group, a lost worker's jobs fail over once each and each retry is triggered once")
    func failoverAndRetriesOnceInAGroup() async throws {
        let servers = try TestServers()
        let one = try await Kit.startProcessor(servers, clientID: "group-fo-1", group: "g1")
        let two = try await Kit.startProcessor(servers, clientID: "group-fo-2", group: "g1")
        let redis = try servers.redisConnection()
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "group-fo-pub")
        let worker = "gpu-fo"
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: worker)))
        let jobs = (0..<40).map { "fo-\($0)" }
        var events = [try factory.prepare(.workerHealth, fields: ["status": "online"])]
        for job in jobs {
            events.append(try factory.prepare(.jobStarted, fields: ["worker_assigned": .string(worker)],
                                              options: .init(jobID: try Identifier(validating: job))))
        }
        try await Kit.publish(events, with: raw)
        try await Kit.awaitLifecycleEvents(jobs.count, redis)
        #expect(try await waitUntil { try redis.command(["SCARD", Kit.keys.workerInflight(worker)]).int == Int64(jobs.count) })
        try await Kit.publish([try factory.prepare(.workerHealth, fields: ["status": "offline", "reason": "lost"])], with: raw)

        // Each job fails over once: exactly one job.failed per job reaches the processors.
        let failedOver = try await waitUntil(timeout: 30) {
            try jobs.allSatisfy { try Kit.job($0, redis)["error_type"] == "worker_lost" }
        }
        #expect(failedOver, "not every job failed over")
        #expect(try await waitUntil(timeout: 10) { Kit.counter(try Kit.stats(redis), "type:job.failed") >= jobs.count })
        // worker_lost retries are due after a few seconds; each is claimed and published once.
        let triggered = try await waitUntil(timeout: 40) {
            let pending = try redis.command(["ZCARD", Kit.keys.retries]).int ?? -1
            return try Kit.counter(Kit.stats(redis), "type:trigger.retry") >= jobs.count && pending == 0
        }
        let pending = try redis.command(["ZCARD", Kit.keys.retries])
        let statsNow = try Kit.stats(redis)
        #expect(triggered, "retries pending: \(pending), stats: \(statsNow)")
        try await Task.sleep(for: .seconds(2))  // room for a second, wrong copy to show up
        let stats = try Kit.stats(redis)
        #expect(Kit.counter(stats, "type:job.failed") == jobs.count, "\(stats)")
        #expect(Kit.counter(stats, "type:trigger.retry") == jobs.count, "\(stats)")
        #expect(Kit.counter(stats, "outcome:duplicate") == 0, "an action was sent twice: \(stats)")
        for job in jobs {
            let state = try Kit.job(job, redis)
            #expect(state["status"] == "retry_scheduled" && state["attempt"] == "1", "\(job): \(state)")
            #expect(try Kit.timelineLength(job, redis) == 2, "\(job): started and one failover")
            #expect(try redis.command(["HGET", Kit.keys.entity("trigger", job), "count"]).string == "1", "\(job) retry count")
        }
        #expect(try await waitUntil(timeout: 10) { try redis.command(["XLEN", Kit.keys.outbox]).int == 0 }, "outbox drained")
        #expect(try await waitUntil(timeout: 10) { one.counters.received > 0 && two.counters.received > 0 })
        await raw.disconnect()
        await one.stop()
        await two.stop()
    }

    /// Sum of the `…:count` fields of every hourly success-pattern bucket (fixed timestamps: a couple of hours).
    func successPatternCount(_ redis: RedisConnection) throws -> Int {
        var total = 0
        var cursor = "0"
        repeat {
            let reply = try redis.command(["SCAN", cursor, "MATCH", Kit.keys.successPatterns("*"), "COUNT", "1000"])
            cursor = reply.array?.first?.string ?? "0"
            for key in reply.array?.last?.array?.compactMap(\.string) ?? [] {
                for (field, value) in try redis.command(["HGETALL", key]).hashDictionary() where field.hasSuffix(":count") {
                    total += Int(value) ?? 0
                }
            }
        } while cursor != "0"
        return total
    }

    func jobDeadLetterCounts(_ redis: RedisConnection) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for entry in try redis.command(["XRANGE", Kit.keys.jobDeadLetters, "-", "+"]).array ?? [] {
            if let job = entry.array?.last?.hashDictionary()["job_id"] { counts[job, default: 0] += 1 }
        }
        return counts
    }
}
