import Foundation
import OpsBusCore
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// Redis or the broker failing under a running processor: every event must end up applied exactly once.
///
/// Each test publishes `job.completed` for N distinct jobs, so "applied exactly once" is observable:
/// `SCARD jobs:status:completed == N` (every event applied) and every timeline has one entry (none applied twice;
/// a redelivered duplicate is dropped by event id before it reaches the timeline).
///
/// The `opsbus:stats` counters are deliberately not asserted exactly here: they are written after the job script,
/// in a separate pipeline, so a fault between the two can count a redelivered event again (or as a duplicate).
@Suite("Processor: Redis and broker faults mid-stream lose nothing and apply nothing twice", .serialized)
struct ProcessorFaultTests {
    typealias Kit = ProcessorTestKit

    /// A broker and a Redis with a configuration of the test's choice (TestServers uses the defaults).
    final class Servers: Sendable {
        let broker: ServerProcess
        let redis: ServerProcess
        init(redis configuration: RedisConfiguration = RedisConfiguration()) throws {
            broker = try LocalMosquitto.start()
            redis = try LocalRedis.start(configuration: configuration)
        }
        var mqttEndpoint: MQTTEndpoint { try! MQTTEndpoint(url: broker.url) }
        var redisEndpoint: RedisEndpoint { try! RedisEndpoint(url: redis.url) }
        deinit {
            broker.stop(timeout: 3)
            redis.stop(timeout: 3)
        }
    }

    /// `count` completed events of distinct jobs, from one worker.
    static func completions(_ prefix: String, count: Int) throws -> [EventFactory.Prepared] {
        let factory = EventFactory(context: PublisherContext(workerID: try Identifier(validating: "gpu-fault")))
        return try (0..<count).map { index in
            try factory.prepare(.jobCompleted, fields: ["processing_time": 1.0, "output_size": .int(Int64(index))],
                                options: .init(jobID: try Identifier(validating: "\(prefix)-\(index)")))
        }
    }

    /// Opens a fresh connection per poll: the servers restart under these tests.
    static func completedCount(_ endpoint: RedisEndpoint) -> Int {
        guard let redis = try? RedisConnection(endpoint: endpoint),
              let count = try? redis.command(["SCARD", Kit.keys.jobsByStatus("completed")]).int else { return -1 }
        return Int(count)
    }

    /// Waits for all `events` to be applied, then checks that each was applied exactly once.
    static func expectEachAppliedOnce(_ events: [EventFactory.Prepared], _ endpoint: RedisEndpoint,
                                      timeout: Double = 90) async throws {
        let complete = try await waitUntil(timeout: timeout) { completedCount(endpoint) == events.count }
        #expect(complete, "\(completedCount(endpoint)) of \(events.count) completed events applied")
        let redis = try RedisConnection(endpoint: endpoint)
        var wrong: [String] = []
        for event in events {
            let id = event.envelope.jobID!.rawValue
            let length = try Kit.timelineLength(id, redis)
            let state = try Kit.job(id, redis)
            if length != 1 || state["status"] != "completed" || state["last_event_id"] != event.envelope.eventID {
                wrong.append("\(id): timeline \(length), state \(state)")
            }
        }
        #expect(wrong.isEmpty, "\(wrong.count) jobs not applied exactly once: \(wrong.prefix(10))")
        #expect(try redis.command(["XLEN", Kit.keys.deadLetters]).int == 0, "a fault dead-lettered a good event")
    }

    /// Publishes in a background task (the processor blocks while Redis is down, and the broker queues for it).
    static func publishInBackground(_ events: ArraySlice<EventFactory.Prepared>, _ client: MQTTClient) -> Task<Void, Error> {
        Task { try await Kit.publish(Array(events), with: client) }
    }

    @Test("Redis stopped mid-stream for a few seconds: the processor rides it out")
    func redisStoppedBriefly() async throws {
        let servers = try Servers()
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-redis-stop"))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fault-pub-1")
        let events = try Self.completions("stop", count: 600)
        try await Kit.publish(Array(events[0..<200]), with: raw)
        _ = try await waitUntil(timeout: 30) { Self.completedCount(servers.redisEndpoint) >= 100 }
        servers.redis.stop()
        let publishing = Self.publishInBackground(events[200...], raw)
        #expect(Self.completedCount(servers.redisEndpoint) == -1, "Redis is down")
        try await Task.sleep(for: .seconds(3))
        try servers.redis.start()
        try await publishing.value
        try await Self.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(processor.counters.deadLettered == 0)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("Redis down longer than the retry window: messages go back to the broker and are redelivered")
    func redisDownPastRetryWindow() async throws {
        let servers = try Servers()
        var configuration = Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-redis-window",
            redisRetryWindow: 0.5)
        configuration.journal = nil  // the retry window belongs to the one-at-a-time path
        let processor = try await Kit.Processor(configuration: configuration)
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fault-pub-2")
        let events = try Self.completions("window", count: 300)
        try await Kit.publish(Array(events[0..<100]), with: raw)
        _ = try await waitUntil(timeout: 30) { Self.completedCount(servers.redisEndpoint) >= 50 }
        servers.redis.stop()
        let publishing = Self.publishInBackground(events[100...], raw)
        // Long enough for several retry windows to run out, so messages are really handed back.
        #expect(try await waitUntil(timeout: 30) { processor.counters.redelivered >= 2 },
                "the processor never handed a message back: \(processor.counters)")
        try servers.redis.start()
        try await publishing.value
        try await Self.expectEachAppliedOnce(events, servers.redisEndpoint)
        await raw.disconnect()
        await processor.stop()
    }

    /// SIGKILL gives Redis no chance to write anything more. With `appendfsync always` every write is in the AOF
    /// (fsynced) before its reply leaves, so a write the processor saw succeed (and acknowledged to the broker)
    /// survives; a write cut off before its reply is retried by the processor (a duplicate if it did land).
    /// With `everysec` this does NOT hold in general: when a background fsync is still running, Redis postpones
    /// the AOF write(2) by up to 2 s while it keeps replying, and a kill in that window loses acknowledged writes.
    /// Seen here on a loaded machine (one job of 600 missing entirely), so the guarantee is stated, and tested,
    /// for `appendfsync always` only (README, "Delivery guarantees").
    @Test("Redis killed (SIGKILL) mid-stream and restarted: nothing lost, nothing twice",
          arguments: ["always"])
    func redisKilled(appendFsync: String) async throws {
        var configuration = RedisConfiguration()
        configuration.appendFsync = appendFsync
        let servers = try Servers(redis: configuration)
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-redis-kill-\(appendFsync)"))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fault-pub-3-\(appendFsync)")
        let events = try Self.completions("kill", count: 600)
        let publishing = Self.publishInBackground(events[...], raw)
        _ = try await waitUntil(timeout: 30) { Self.completedCount(servers.redisEndpoint) >= 150 }
        let appliedAtKill = Self.completedCount(servers.redisEndpoint)
        servers.redis.kill()
        #expect(appliedAtKill < events.count, "the kill happened mid-stream")
        try await Task.sleep(for: .seconds(1))
        try servers.redis.start()
        try await publishing.value
        try await Self.expectEachAppliedOnce(events, servers.redisEndpoint)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("broker restarted mid-stream: the processor's persistent session gets every queued event")
    func brokerRestarted() async throws {
        let servers = try Servers()
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-broker-restart"))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fault-pub-4")
        let events = try Self.completions("broker", count: 600)
        try await Kit.publish(Array(events[0..<300]), with: raw)
        servers.broker.stop()  // SIGTERM: mosquitto saves its persistence file, queued messages included
        try servers.broker.start()
        try #require(try await waitUntil(timeout: 30) { raw.isConnected }, "the publisher did not reconnect")
        try await Kit.publish(Array(events[300...]), with: raw)
        try await Self.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(processor.counters.deadLettered == 0)
        await processor.stop()

        // Now with the events only in the broker: the processor is away, its session queues them, the broker
        // restarts, and the processor (same client id) comes back to all of them.
        let queued = try Self.completions("queued", count: 300)
        try await Kit.publish(queued, with: raw)
        servers.broker.stop()
        try servers.broker.start()
        let back = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-broker-restart"))
        try await Self.expectEachAppliedOnce(events + queued, servers.redisEndpoint)
        await raw.disconnect()
        await back.stop()
    }

    @Test("SCRIPT FLUSH mid-stream: the processor reloads its scripts and dead-letters nothing")
    func scriptFlush() async throws {
        let servers = try Servers()
        let processor = try await Kit.Processor(configuration: Kit.configuration(
            mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: "fault-script-flush"))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "fault-pub-5")
        let admin = try RedisConnection(endpoint: servers.redisEndpoint)
        let events = try Self.completions("flush", count: 600)
        // Deterministic part: the script cache is emptied between batches, so every batch starts with NOSCRIPT.
        for start in stride(from: 0, to: 300, by: 50) {
            try await Kit.publish(Array(events[start..<(start + 50)]), with: raw)
            _ = try await waitUntil(timeout: 30) { Self.completedCount(servers.redisEndpoint) >= start + 50 }
            _ = try admin.command(["SCRIPT", "FLUSH"])
        }
        // Racing part: flushes while the rest streams in.
        let publishing = Self.publishInBackground(events[300...], raw)
        var flushes = 0
        while flushes < 50, Self.completedCount(servers.redisEndpoint) < events.count {
            _ = try admin.command(["SCRIPT", "FLUSH"])
            flushes += 1
            try await Task.sleep(for: .milliseconds(20))
        }
        try await publishing.value
        try await Self.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(processor.counters.deadLettered == 0 && processor.counters.redelivered == 0, "\(processor.counters)")
        await raw.disconnect()
        await processor.stop()
    }
}
