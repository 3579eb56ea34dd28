import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

extension ProcessorJournal {
    /// The journal the tests' processors use: none (the synchronous path), or with `OPSBUS_TEST_PROCESSOR_JOURNAL=1`
    /// a fresh temporary one, so every processor suite can be run on the batching path too.
    static func forTests() -> ProcessorJournal? {
        guard ProcessInfo.processInfo.environment["OPSBUS_TEST_PROCESSOR_JOURNAL"] == "1" else { return nil }
        return ProcessorJournal(directory: NSTemporaryDirectory() + "opsbus-test-journal-" + UUID().uuidString)
    }
}

/// A processor running in this test process, on the suite's own servers.
final class RunningProcessor: Sendable {
    let processor: EventProcessor
    let task: Task<Void, Error>

    private init(processor: EventProcessor) {
        self.processor = processor
        task = Task { try await processor.run() }
    }

    /// Starts a processor and waits until it has subscribed (so nothing published afterwards can miss it).
    static func start(_ servers: TestServers, clientID: String = "test-processor",
                      configure: (inout ProcessorConfiguration) -> Void = { _ in }) async throws -> RunningProcessor {
        var configuration = ProcessorConfiguration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: clientID, maxPayloadBytes: 4096)
        configuration.journal = ProcessorJournal.forTests()
        configure(&configuration)
        let running = RunningProcessor(processor: try EventProcessor(configuration: configuration, logger: testLogger))
        try #require(try await waitUntil { running.processor.isSubscribed }, "processor did not subscribe")
        return running
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

@Suite("Processor against real mosquitto and Redis")
struct ProcessorIntegrationTests {
    let servers: TestServers
    let keys = RedisKeys()
    init() throws { servers = try TestServers() }

    func publisher(worker: String = "gpu-1") async throws -> EventPublisher {
        let context = PublisherContext(
            machineID: try Identifier(validating: "box-1"), workerID: try Identifier(validating: worker),
            serviceType: "comfyui")
        return try await EventPublisher.connect(endpoint: servers.mqttEndpoint, context: context, logger: testLogger)
    }

    func job(_ id: String, _ redis: RedisConnection) throws -> [String: String] {
        try redis.command(["HGETALL", keys.job(id)]).hashDictionary()
    }

    @Test("a job's lifecycle becomes a job hash, status index and timeline")
    func lifecycleBecomesState() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let publisher = try await publisher()
        let job = try publisher.withJobContext("job-1")
        try await job.received(inputSize: 10, modelRequired: "sdxl")
        try await job.started(expectedDuration: 5)
        try await job.progress(percentage: 40)
        try await job.completed(processingTime: 4.5, outputSize: 999, expectedDuration: 5)
        #expect(try await waitUntil { try self.job("job-1", redis)["status"] == "completed" })
        let state = try self.job("job-1", redis)
        #expect(state["worker_id"] == "gpu-1")
        #expect(state["machine_id"] == "box-1")
        #expect(state["progress"] == "100")
        #expect(state["processing_time"] == "4.5")
        #expect(state["output_size"] == "999")
        #expect(state["started_at"] != nil && state["received_at"] != nil && state["completed_at"] != nil)
        #expect(try redis.command(["SISMEMBER", keys.jobsByStatus("completed"), "job-1"]).int == 1)
        #expect(try redis.command(["SISMEMBER", keys.jobsByStatus("processing"), "job-1"]).int == 0)
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-1")]).int == 4)
        // Job-driven worker state: busy while the job ran, idle after it, with its resources released.
        #expect(try redis.command(["HGET", keys.worker("gpu-1"), "status"]).string == "idle")
        #expect(try redis.command(["HGET", keys.worker("gpu-1"), "current_job"]).isNull)
        #expect(try redis.command(["SCARD", keys.workerInflight("gpu-1")]).int == 0)
        #expect(try redis.command(["HLEN", keys.resources("gpu-1")]).int == 0)
        // The hour's success pattern, kept 30 days from its first event.
        let buckets = try redis.command(["KEYS", keys.successPatterns("*")]).array?.compactMap(\.string) ?? []
        #expect(!buckets.isEmpty)
        for bucket in buckets {
            let ttl = try redis.command(["TTL", bucket]).int ?? -2
            #expect(ttl > 29 * 86_400 && ttl <= 30 * 86_400, "\(bucket): TTL \(ttl)")
        }
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("duplicates change nothing and late events never reopen a finished job")
    func duplicatesAndReordering() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let context = PublisherContext(workerID: try Identifier(validating: "gpu-2"))
        let factory = EventFactory(context: context)
        let jobID = try Identifier(validating: "job-2")
        let started = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-2"], options: .init(jobID: jobID))
        let progress = try factory.prepare(.jobProgress, fields: ["progress_percentage": 70], options: .init(jobID: jobID))
        let completed = try factory.prepare(.jobCompleted, fields: ["processing_time": 3.0], options: .init(jobID: jobID))
        let raw = try MQTTClient(configuration: .init(endpoint: servers.mqttEndpoint, clientID: "raw-pub"), logger: testLogger)
        try await raw.connect()
        // Completed first, then a duplicate of it, then the earlier events arriving late.
        for event in [completed, completed, started, progress, completed] {
            try await raw.publish(topic: event.topic, payload: event.envelope.encoded(), qos: .atLeastOnce)
        }
        #expect(try await waitUntil { try redis.command(["HGET", keys.stats, "events_received"]).int == 5 })
        let state = try self.job("job-2", redis)
        #expect(state["status"] == "completed")
        #expect(state["progress"] == "100")
        #expect(state["started_at"] != nil, "the late started event fills its fields")
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-2")]).int == 3, "duplicates are not recorded twice")
        #expect(try redis.command(["HGET", keys.stats, "outcome:duplicate"]).int == 2)
        // (Counted in the process once the Redis call returns, a moment after Redis shows it.)
        #expect(try await waitUntil(timeout: 10) { processor.processor.counters.duplicates == 2 })
        await raw.disconnect()
        await processor.stop()
    }

    @Test("a retry (higher attempt) starts a new attempt after a failure")
    func retryStartsNewAttempt() async throws {
        // A long backoff: the retry must still be scheduled when the test looks (a network failure's default of
        // about 2.5 s fired before the check on a loaded CI box, and the scheduler had claimed it).
        let processor = try await RunningProcessor.start(servers) { $0.retryPolicy = RetryPolicy(baseDelay: 600) }
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-3")
        let first = try publisher.withJobContext("job-3", attempt: 1)
        try await first.started()
        try await first.failed(error: "Connection reset by peer")
        // A network failure is worth a retry: the processor schedules attempt 2 with backoff.
        #expect(try await waitUntil { try self.job("job-3", redis)["status"] == "retry_scheduled" })
        #expect(try self.job("job-3", redis)["error_type"] == "network")
        #expect(try self.job("job-3", redis)["next_attempt"] == "2")
        #expect(try redis.command(["SISMEMBER", keys.jobsByStatus("retry_scheduled"), "job-3"]).int == 1)
        #expect(try redis.command(["ZSCORE", keys.retries, "job-3|2"]).string != nil)
        let second = try publisher.withJobContext("job-3", attempt: 2)
        try await second.started()
        #expect(try await waitUntil { try self.job("job-3", redis)["status"] == "processing" })
        let state = try self.job("job-3", redis)
        #expect(state["attempt"] == "2")
        #expect(state["error_type"] == nil, "the new attempt starts clean")
        #expect(try redis.command(["SISMEMBER", keys.jobsByStatus("retry_scheduled"), "job-3"]).int == 0)
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("bad input goes to the dead-letter stream with its reason, and valid events still work")
    func badInputIsDeadLettered() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let raw = try MQTTClient(configuration: .init(endpoint: servers.mqttEndpoint, clientID: "bad-pub"), logger: testLogger)
        try await raw.connect()
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-4")))
        let good = try factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-4"],
                                       options: .init(jobID: try Identifier(validating: "job-4")))
        var unknownType = good.envelope.jsonObject
        unknownType["event_type"] = "job.exploded"
        var hostileID = good.envelope.jsonObject
        hostileID["job_id"] = "../../etc"
        let cases: [(String, [UInt8], String)] = [
            ("jobs/job-4/started", Array(#"{"event_id": "x", "#.utf8), "invalid event"),
            ("jobs/job-4/started", JSONValue.object(unknownType).serializedBytes(), "job.exploded"),
            ("jobs/job-OTHER/started", good.envelope.encoded(), "job-OTHER"),
            ("jobs/job-4/started", JSONValue.object(hostileID).serializedBytes(), "job_id"),
            ("jobs/job-4/started", Array(repeating: UInt8(ascii: " "), count: 5000), "oversize"),
            ("jobs/job-4/started", [0xFF, 0xFE, 0x00], "invalid event"),
        ]
        for (topic, payload, _) in cases {
            try await raw.publish(topic: topic, payload: payload, qos: .atLeastOnce)
        }
        try await raw.publish(topic: good.topic, payload: good.envelope.encoded(), qos: .atLeastOnce)
        #expect(try await waitUntil { try self.job("job-4", redis)["status"] == "processing" })
        #expect(try await waitUntil { try redis.command(["XLEN", keys.deadLetters]).int == Int64(cases.count) })
        // One dead letter per case, with its topic and reason. Matched, not compared in order: the batching path's
        // writers keep each publisher session's order, and the malformed cases have no session.
        var unmatched = (try redis.command(["XRANGE", keys.deadLetters, "-", "+"]).array ?? [])
            .map { $0.array?[1].hashDictionary() ?? [:] }
        #expect(unmatched.allSatisfy { $0["received_at"] != nil })
        for (topic, _, reasonFragment) in cases {
            guard let index = unmatched.firstIndex(where: {
                $0["topic"] == topic && $0["reason"]?.contains(reasonFragment) == true
            }) else {
                Issue.record("no dead letter on \(topic) with a reason naming \(reasonFragment): \(unmatched)")
                continue
            }
            unmatched.remove(at: index)
        }
        #expect(try self.job("job-OTHER", redis).isEmpty, "a mismatched topic touches no job")
        #expect(processor.processor.counters.deadLettered == cases.count)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("a last will marks its own session unreachable, but never a newer live session")
    func lastWillRespectsSessions() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let context = PublisherContext(workerID: try Identifier(validating: "gpu-will"))
        let oldSession = EventFactory(context: context)
        let newSession = EventFactory(context: context)
        let willFields: JSONObject = ["status": "offline", "reason": "connection lost (last will)", "last_will": true]
        // Each will is built at connect time, before its session's other events.
        let oldWill = try oldSession.prepare(.workerHealth, fields: willFields)
        let oldBusy = try oldSession.prepare(.workerHealth, fields: ["status": "busy"])
        try await Task.sleep(for: .milliseconds(20))
        let newOnline = try newSession.prepare(.workerHealth, fields: ["status": "online"])
        let raw = try MQTTClient(configuration: .init(endpoint: servers.mqttEndpoint, clientID: "will-pub"), logger: testLogger)
        try await raw.connect()
        func send(_ event: EventFactory.Prepared) async throws {
            try await raw.publish(topic: event.topic, payload: event.envelope.encoded(), qos: .atLeastOnce)
        }
        func status() throws -> String? { try redis.command(["HGET", keys.worker("gpu-will"), "status"]).string }

        try await send(oldBusy)
        try await send(oldWill)  // the old session's link died: its own will applies despite its older timestamp
        #expect(try await waitUntil { try status() == "unreachable" })
        try await send(newOnline)
        #expect(try await waitUntil { try status() == "online" })
        #expect(try redis.command(["HGET", keys.worker("gpu-will"), "last_outage"]).string == "worker_restarted")
        try await send(oldWill)  // redelivered late: a duplicate, and from an older session anyway
        var stale = oldWill
        stale.envelope.eventID = EventID.make()  // the same old will re-published under a new id
        try await send(stale)
        #expect(try await waitUntil { try redis.command(["HGET", keys.stats, "events_received"]).int == 5 })
        #expect(try status() == "online", "an old session's will must not mark the new session unreachable")
        #expect(try redis.command(["HGET", keys.stats, "stale_wills"]).int == 1, "the re-published old will")
        await raw.disconnect()
        await processor.stop()
    }

    @Test("events published while the processor is down are applied when it returns (persistent session)")
    func persistentSession() async throws {
        let redis = try servers.redisConnection()
        var processor = try await RunningProcessor.start(servers, clientID: "durable-processor")
        let publisher = try await publisher(worker: "gpu-5")
        try await publisher.withJobContext("job-5a").started()
        #expect(try await waitUntil { try self.job("job-5a", redis)["status"] == "processing" })
        await processor.stop()
        for id in ["job-5b", "job-5c"] { try await publisher.withJobContext(id).completed(processingTime: 1, outputSize: 1) }
        processor = try await RunningProcessor.start(servers, clientID: "durable-processor")
        #expect(try await waitUntil { try self.job("job-5c", redis)["status"] == "completed" })
        #expect(try self.job("job-5b", redis)["status"] == "completed")
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("kill -9 of the processor mid-stream loses no event")
    func killNineLosesNothing() async throws {
        let redis = try servers.redisConnection()
        let executable = try opsbusExecutable()
        let arguments = ["processor", "--mqtt-url", servers.mqttURL, "--redis-url", servers.redisURL,
                         "--client-id", "crashy-processor", "--log-level", "info"]
        var processor = try ChildProcess(executable, arguments)
        // The broker keeps a session only once the processor has subscribed: wait for it before publishing.
        try #require(try await waitUntil { processor.stderr.contains("processor running") }, "\(processor.stderr)")
        let publisher = try await publisher(worker: "gpu-6")
        let total = 400
        let publishing = Task {
            for index in 0..<total {
                try await publisher.withJobContext("kill-\(index)").completed(processingTime: 1, outputSize: index)
            }
        }
        // Kill it while it is applying, then start it again with the same client id (same persistent session).
        _ = try await waitUntil { try redis.command(["SCARD", self.keys.jobsByStatus("completed")]).int ?? 0 >= 50 }
        processor.signal(SIGKILL)
        _ = try? await processor.wait(timeout: 10)
        let appliedAtKill = try redis.command(["SCARD", keys.jobsByStatus("completed")]).int ?? 0
        try await publishing.value
        processor = try ChildProcess(executable, arguments)
        let complete = try await waitUntil(timeout: 60) {
            try redis.command(["SCARD", self.keys.jobsByStatus("completed")]).int == Int64(total)
        }
        let completedCount = try redis.command(["SCARD", keys.jobsByStatus("completed")]).int ?? -1
        #expect(complete, "completed \(completedCount) of \(total); killed at \(appliedAtKill)")
        #expect(appliedAtKill < total, "the kill happened mid-stream")
        processor.signal(SIGTERM)
        _ = try? await processor.wait(timeout: 20)
        await publisher.disconnect()
    }
}
