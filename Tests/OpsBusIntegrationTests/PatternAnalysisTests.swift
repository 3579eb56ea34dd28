import Foundation
import OpsBusCore
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// Pattern analysis on a real processor (issue 7): a burst of timeouts becomes recommendations on the broker, in
/// Redis and in `opsbus health --json`, and later runs over the same data announce nothing again.
@Suite("Pattern analysis against a real processor")
struct PatternAnalysisTests {
    let keys = RedisKeys()

    @Test("a burst of timeouts is published once as trigger.recommendation, stored in Redis and shown by opsbus health")
    func timeoutBurstBecomesRecommendations() async throws {
        let servers = try TestServers()
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["triggers/recommendation/+"])
        let processor = try await RunningProcessor.start(servers) { configuration in
            configuration.patternAnalysisInterval = 1
            // Thresholds that only the complete data reaches: an analysis that runs while the events are still
            // arriving (every second, on a busy machine) must not announce a partial count first.
            configuration.patternRules = PatternAnalysisRules(minimumSamples: 16, minimumTimeouts: 6)
            // Dead-letter at once: no retry triggers to wait for.
            configuration.retryPolicy = RetryPolicy(baseDelay: 0.2, maxDelay: 1, jitter: 0, maxAttempts: 1)
        }
        let redis = try servers.redisConnection()
        let context = PublisherContext(workerID: try Identifier(validating: "gpu-p"), serviceType: "comfyui")
        let publisher = try await EventPublisher.connect(endpoint: servers.mqttEndpoint, context: context, logger: testLogger)
        // 10 completions taking 10 … 19 s (p95 19 s) and 6 timeouts: 37.5 % of 16 jobs.
        for index in 0..<10 {
            let job = try publisher.withJobContext("ok-\(index)")
            try await job.started()
            _ = try await job.completed(processingTime: Double(10 + index), outputSize: 100)
        }
        for index in 0..<6 {
            let job = try publisher.withJobContext("slow-\(index)")
            try await job.started()
            _ = try await job.failed(error: "Timed out after 30 s waiting for the sampler", declaredType: "timeout")
        }
        #expect(try await waitUntil {
            try redis.command(["SCARD", keys.jobsByStatus("completed")]).int == 10
                && redis.command(["SCARD", keys.jobsByStatus("dead_lettered")]).int == 6
        })

        // On the broker: longer timeout, failure rate of the service, the timeout share of all jobs.
        let messages = try await sub.waitForMessages(3, timeout: 30)
        let topics = Set(messages.map(\.topic))
        #expect(topics == ["triggers/recommendation/longer_timeout.comfyui", "triggers/recommendation/failure_rate.comfyui",
                           "triggers/recommendation/error_type_rate.timeout"], "\(messages)")
        let timeoutMessage = try #require(messages.first { $0.topic.hasSuffix("longer_timeout.comfyui") })
        let event = try EventEnvelope.decode(Array(timeoutMessage.payload.utf8))
        #expect(event.eventType == .triggerRecommendation)
        #expect(event.eventID.hasPrefix("pa-"))
        #expect(event.source == "opsbus-processor")
        #expect(event.fields["target"]?.stringValue == "operators")
        let details = try #require(event.fields["details"]?.objectValue)
        #expect(details["kind"]?.stringValue == "longer_timeout")
        #expect(details["severity"]?.stringValue == "warning")
        #expect(details["count"]?.intValue == 6 && details["samples"]?.intValue == 16)
        #expect(details["observed_basis"]?.stringValue == "p95")
        #expect(details["suggested_timeout_seconds"]?.doubleValue == 28.5, "1.5 × the p95 of 19 s: \(details)")
        #expect(event.fields["reason"]?.stringValue?.contains("suggest a timeout of 28.5 s") == true)

        // In Redis, most severe first (all warnings here: the specific advice first).
        let stored = try #require(try PatternStore.read(redis: redis, keys: keys))
        #expect(stored.recommendations.map(\.kind) == [.longerTimeout, .failureRate, .errorTypeRate])
        #expect(stored.recommendations.first?.suggestedTimeoutSeconds == 28.5)

        // Runs over unchanged data announce nothing again: wait for two more analyses.
        let runs = try redis.command(["HGET", keys.stats, "pattern_analyses"]).string.flatMap { Int($0) } ?? 0
        #expect(try await waitUntil(timeout: 30) {
            (try redis.command(["HGET", keys.stats, "pattern_analyses"]).string.flatMap { Int($0) } ?? 0) >= runs + 2
        })
        try await Task.sleep(for: .milliseconds(500))  // let the relay send anything (wrongly) queued by those runs
        var perWindow: [String: Int] = [:]
        for message in sub.messages {
            let envelope = try EventEnvelope.decode(Array(message.payload.utf8))
            let window = envelope.fields["details"]?.objectValue?["window"]?.stringValue ?? "?"
            perWindow["\(message.topic) \(window)", default: 0] += 1
        }
        #expect(perWindow.values.allSatisfy { $0 == 1 }, "one event per recommendation and window: \(perWindow)")
        #expect(try redis.command(["XLEN", keys.outbox]).int == 0, "nothing left unsent in the outbox")

        // opsbus health --json lists them.
        let health = try await run(try opsbusExecutable(), ["health", "--json", "--redis-url", servers.redisURL])
        let report = try JSONValue.parse(health.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let listed = report["recommendations"]?.objectValue?["recommendations"]?.arrayValue ?? []
        #expect(listed.compactMap { $0.objectValue?["subject"]?.stringValue }
            == ["longer_timeout.comfyui", "failure_rate.comfyui", "error_type_rate.timeout"], "\(health.stdout)")
        let text = try await run(try opsbusExecutable(), ["health", "--no-colour", "--redis-url", servers.redisURL])
        #expect(text.stdout.contains("warning longer timeout for comfyui: 6 of 16 jobs timed out"), "\(text.stdout)")

        sub.stop()
        await publisher.disconnect()
        await processor.stop()
    }

    @Test("with PATTERN_ANALYSIS_INTERVAL 0 nothing is analysed")
    func intervalZeroTurnsItOff() async throws {
        let servers = try TestServers()
        let processor = try await RunningProcessor.start(servers) { configuration in
            configuration.patternAnalysisInterval = 0
        }
        let redis = try servers.redisConnection()
        // The scheduled actions run every second; give the analysis the same chance it had above.
        try await Task.sleep(for: .seconds(2))
        #expect(try redis.command(["HGET", keys.stats, "pattern_analyses"]).string == nil)
        #expect(try PatternStore.read(redis: redis, keys: keys) == nil)
        await processor.stop()
    }
}
