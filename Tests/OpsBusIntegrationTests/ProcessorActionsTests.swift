import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// The processor's automated actions (issue 3): retries, dead letters, failover, precache, scaling and failover
/// triggers, notifications. Triggers are checked where an operator would see them: on the broker.
@Suite("Processor automated actions")
struct ProcessorActionsTests {
    let servers: TestServers
    let keys = RedisKeys()
    init() throws { servers = try TestServers() }

    func publisher(worker: String) async throws -> EventPublisher {
        let context = PublisherContext(workerID: try Identifier(validating: worker), serviceType: "comfyui")
        return try await EventPublisher.connect(endpoint: servers.mqttEndpoint, context: context, logger: testLogger)
    }

    func job(_ id: String, _ redis: RedisConnection) throws -> [String: String] {
        try redis.command(["HGETALL", keys.job(id)]).hashDictionary()
    }

    @Test("a retryable failure is scheduled, and a trigger.retry is published when due")
    func retryIsScheduledAndTriggered() async throws {
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["triggers/retry/+"])
        let processor = try await RunningProcessor.start(servers) { configuration in
            configuration.retryPolicy = RetryPolicy(baseDelay: 0.2, maxDelay: 1, jitter: 0, maxAttempts: 3)
        }
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-r")
        let job = try publisher.withJobContext("job-r", attempt: 1)
        try await job.started()
        try await job.failed(error: "Timed out after 300 s waiting for the sampler")
        #expect(try await waitUntil { try self.job("job-r", redis)["status"] == "retry_scheduled" })
        let messages = try await sub.waitForMessages(1)
        sub.stop()
        try #require(messages.count == 1, "\(messages)")
        #expect(messages[0].topic == "triggers/retry/job-r")
        let trigger = try EventEnvelope.decode(Array(messages[0].payload.utf8))
        #expect(trigger.jobID?.rawValue == "job-r")
        #expect(trigger.attempt == 2)
        #expect(trigger.fields["details"]?.objectValue?["attempt"]?.intValue == 2)
        #expect(try redis.command(["ZCARD", keys.retries]).int == 0, "the due retry was claimed")
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("a failure not worth retrying, or the last attempt, is dead-lettered with the reason")
    func nonRetryableFailureIsDeadLettered() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-d")
        try await publisher.withJobContext("job-invalid").failed(error: "Invalid prompt: schema validation failed")
        try await publisher.withJobContext("job-last", attempt: 3).failed(error: "Connection reset by peer")
        #expect(try await waitUntil { try self.job("job-last", redis)["status"] == "dead_lettered" })
        #expect(try await waitUntil { try self.job("job-invalid", redis)["status"] == "dead_lettered" })
        #expect(try self.job("job-invalid", redis)["dead_letter_reason"]?.contains("not recommended for validation") == true)
        #expect(try self.job("job-last", redis)["dead_letter_reason"]?.contains("attempts exhausted") == true)
        let entries = try redis.command(["XRANGE", keys.jobDeadLetters, "-", "+"]).array ?? []
        #expect(entries.count == 2)
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("a worker whose last will arrived and that stays unreachable past the grace has its job failed over as worker_lost, which is then retried")
    func lastWillFailsOver() async throws {
        let processor = try await RunningProcessor.start(servers) { $0.workerLinkGrace = 1 }
        let redis = try servers.redisConnection()
        let simulator = try ChildProcess(try opsbusExecutable(), [
            "simulate", "--workers", "1", "--jobs", "3", "--worker-prefix", "dying", "--die-during-job", "2",
            "--job-prefix", "fo", "--mqtt-url", servers.mqttURL,
        ])
        _ = try await simulator.wait(timeout: 60)
        // job fo-1-2 was running when the worker died.
        #expect(try await waitUntil(timeout: 30) { try self.job("fo-1-2", redis)["status"] == "retry_scheduled" })
        let state = try self.job("fo-1-2", redis)
        #expect(state["error_type"] == "worker_lost", "\(state)")
        #expect(try redis.command(["HGET", keys.worker("dying-1"), "status"]).string == "offline")
        let reason = try redis.command(["HGET", keys.worker("dying-1"), "reason"]).string ?? ""
        #expect(reason.contains("after its link dropped"), "declared offline by the link grace, not otherwise: \(reason)")
        #expect(try redis.command(["HGET", keys.stats, "link_downs"]).int == 1)
        #expect(try redis.command(["HGET", keys.stats, "link_timeouts"]).int == 1)
        #expect(try redis.command(["SCARD", keys.workerInflight("dying-1")]).int == 0)
        #expect(try self.job("fo-1-1", redis)["status"] == "completed", "finished jobs are not failed over")
        await processor.stop()
    }

    @Test("slow, rarely cached model loads publish one precache trigger, not one per event")
    func precacheTriggerOnce() async throws {
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["triggers/precache/+"])
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-m")
        for index in 0..<14 {
            try await publisher.modelLoaded(model: "flux-dev", loadTimeMs: 42_000, cacheHit: index % 5 == 0)
        }
        #expect(try await waitUntil { try redis.command(["HGET", keys.entity("model", "flux-dev"), "loads"]).int == 14 })
        let messages = try await sub.waitForMessages(1)
        try await Task.sleep(for: .milliseconds(500))
        sub.stop()
        #expect(sub.messages.count == 1, "\(sub.messages)")
        #expect(messages.first?.topic == "triggers/precache/flux-dev")
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("queue thresholds publish scale up/down; an unhealthy service publishes failover, then recovery")
    func queueAndServiceTriggers() async throws {
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["triggers/scaling/+", "triggers/failover/+"])
        let processor = try await RunningProcessor.start(servers)
        let publisher = try await publisher(worker: "gpu-q")
        for depth in [10, 85, 90, 20, 5] {
            try await publisher.queueState(queue: "sdxl-queue", depth: depth, capacity: 100)
        }
        for status in ["healthy", "unhealthy", "unhealthy", "healthy"] {
            try await publisher.serviceHealth(service: "comfyui-api", status: status)
        }
        let messages = try await sub.waitForMessages(4)
        try await Task.sleep(for: .milliseconds(500))
        sub.stop()
        let reasons = try sub.messages.map { message in
            (message.topic, try EventEnvelope.decode(Array(message.payload.utf8)).fields["reason"]?.stringValue ?? "")
        }
        #expect(messages.count >= 4)
        #expect(reasons.filter { $0.0 == "triggers/scaling/sdxl-queue" }.map(\.1) == ["scale_up", "scale_down"])
        #expect(reasons.filter { $0.0 == "triggers/failover/comfyui-api" }.map(\.1) == ["unhealthy", "recovered"])
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("every non-job event type lands in its entity's state")
    func everyEventTypeHasAnEffect() async throws {
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-all")
        try await publisher.workerRegistered(capabilities: ["txt2img"], version: "2.0")
        try await publisher.workerHeartbeat(status: "idle", load: 0.25)
        try await publisher.resourceAllocated(jobID: "job-all", resources: ["gpu_memory_mb": 8192])
        try await publisher.resourceReleased(jobID: "job-other", resources: ["gpu_memory_mb": 4096])
        try await publisher.queueState(queue: "q-all", depth: 3, capacity: 50)
        try await publisher.serviceHealth(service: "svc-all", status: "degraded")
        try await publisher.modelLoaded(model: "m-all", loadTimeMs: 900, cacheHit: true)
        try await publisher.trigger(.triggerWorkflow, subject: "wf-1", reason: "upscale after txt2img")
        try await publisher.workerDeregistered(reason: "maintenance")
        #expect(try await waitUntil { try redis.command(["HGET", keys.stats, "events_received"]).int == 10 })
        func hash(_ key: String) throws -> [String: String] { try redis.command(["HGETALL", key]).hashDictionary() }
        let worker = try hash(keys.worker("gpu-all"))
        #expect(worker["registered_at"] != nil && worker["version"] == "2.0")
        #expect(worker["heartbeats"] == "1" && worker["last_heartbeat"] != nil)
        #expect(worker["status"] == "deregistered" && worker["reason"] == "maintenance")
        let resources = try hash(keys.resources("gpu-all"))
        #expect(resources["job:job-all"]?.contains("8192") == true)
        #expect(resources["job:job-other"] == "released")
        #expect(try hash(keys.entity("queue", "q-all"))["depth"] == "3")
        #expect(try hash(keys.entity("service", "svc-all"))["status"] == "degraded")
        let model = try hash(keys.entity("model", "m-all"))
        #expect(model["loads"] == "1" && model["cache_hits"] == "1" && model["total_load_time_ms"] == "900")
        #expect(try hash(keys.entity("trigger", "wf-1"))["reason"] == "upscale after txt2img")
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("a job that asked for notifications gets signed webhooks, through a flaky receiver, exactly once each")
    func notificationsReachTheWebhook() async throws {
        let receiver = try await WebhookReceiver(failFirst: 2, secret: "hook-secret")
        defer { receiver.stop() }
        let endpoint = try WebhookEndpoint(name: WebhookEndpoint.defaultName, url: receiver.url, secret: "hook-secret",
                                           timeout: 5, maxAttempts: 8)
        let processor = try await RunningProcessor.start(servers) { $0.webhooks = [endpoint] }
        let publisher = try await publisher(worker: "gpu-n")
        let job = try publisher.withJobContext("job-n")
        try await job.received(modelRequired: "sdxl", notify: true)
        try await job.started()
        try await job.completed(processingTime: 3.5, outputSize: 10, outputURLs: ["s3://out/job-n.png"])
        try await publisher.withJobContext("job-quiet").completed(processingTime: 1, outputSize: 1)  // did not ask
        #expect(try await waitUntil(timeout: 60) { receiver.accepted.count == 2 }, "\(receiver.requests.map(\.outcome))")
        try await Task.sleep(for: .milliseconds(500))
        let bodies = try receiver.accepted.map { try JSONValue.parse($0.body) }
        #expect(bodies.compactMap { $0.objectValue?["event"]?.stringValue }.sorted() == ["job.completed", "job.started"])
        #expect(bodies.allSatisfy { $0.objectValue?["job_id"]?.stringValue == "job-n" })
        let completed = bodies.first { $0.objectValue?["event"]?.stringValue == "job.completed" }
        #expect(completed?.objectValue?["output_urls"]?.arrayValue?.first?.stringValue == "s3://out/job-n.png")
        #expect(receiver.accepted.allSatisfy { $0.signatureValid == true })
        #expect(Set(receiver.accepted.compactMap { $0.headers["x-opsbus-notification-id"] }).count == 2)
        #expect(receiver.accepted.count == 2, "no duplicates after the retries")
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("--source stream: the processor applies what the bridge wrote, through a consumer group, at least once")
    func streamSource() async throws {
        let redis = try servers.redisConnection()
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-s")))
        let jobID = try Identifier(validating: "job-s")
        let events = try [
            factory.prepare(.jobStarted, fields: ["worker_assigned": "gpu-s"], options: .init(jobID: jobID)),
            factory.prepare(.jobCompleted, fields: ["processing_time": 2.5], options: .init(jobID: jobID)),
        ]
        // Entries as the bridge writes them (topic + exact payload), one of them twice, and one that is not an event.
        for event in events + [events[1]] {
            _ = try redis.command(["XADD", "events:jobs", "*", "topic", event.topic, "payload",
                                   String(decoding: event.envelope.encoded(), as: UTF8.self), "qos", "1"])
        }
        _ = try redis.command(["XADD", "events:jobs", "*", "topic", "jobs/job-s/completed", "payload", "not json"])
        let processor = try await RunningProcessor.start(servers) {
            $0.source = .stream(key: "events:jobs", group: "processors")
        }
        #expect(try await waitUntil { try redis.command(["HGET", keys.stats, "events_received"]).int == 4 })
        let state = try self.job("job-s", redis)
        #expect(state["status"] == "completed" && state["processing_time"] == "2.5")
        #expect(try redis.command(["LLEN", keys.jobTimeline("job-s")]).int == 2)
        #expect(try redis.command(["XLEN", keys.deadLetters]).int == 1)
        #expect(processor.processor.counters.duplicates == 1)
        let pending = try redis.command(["XPENDING", "events:jobs", "processors"]).array?.first?.int
        #expect(pending == 0, "every entry acknowledged")
        await processor.stop()
    }

    @Test("with automation off, the processor only records state")
    func automationOff() async throws {
        let processor = try await RunningProcessor.start(servers) { $0.automation = false }
        let redis = try servers.redisConnection()
        let publisher = try await publisher(worker: "gpu-off")
        try await publisher.withJobContext("job-off").failed(error: "Connection reset by peer")
        #expect(try await waitUntil { try self.job("job-off", redis)["status"] == "failed" })
        #expect(try redis.command(["ZCARD", keys.retries]).int == 0)
        await publisher.disconnect()
        await processor.stop()
    }
}
