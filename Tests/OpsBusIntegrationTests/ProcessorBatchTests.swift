import Foundation
import OpsBusCore
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// The batching processor (`--journal`): messages are journaled by the handler and applied in batches by one
/// script call (`BatchApplyScript`). The other processor suites run on this path too with
/// `OPSBUS_TEST_PROCESSOR_JOURNAL=1` (scripts/test does both); these tests cover what only this path has: the
/// journal across a `kill -9`, Redis down with the journal absorbing, a full journal, and one refused event inside a
/// batch.
@Suite("Processor batching behind a journal", .serialized)
struct ProcessorBatchTests {
    typealias Kit = ProcessorTestKit
    typealias Faults = ProcessorFaultTests

    static func batchConfiguration(_ servers: Faults.Servers, clientID: String, journal: String,
                                   maxBytes: Int64 = 1 << 30) -> ProcessorConfiguration {
        var configuration = Kit.configuration(mqtt: servers.mqttEndpoint, redis: servers.redisEndpoint, clientID: clientID)
        var settings = ProcessorJournal(directory: journal)
        settings.maxBytes = maxBytes
        configuration.journal = settings
        return configuration
    }

    static func stat(_ field: String, _ endpoint: RedisEndpoint) throws -> Int {
        let redis = try RedisConnection(endpoint: endpoint)
        return Int(try redis.command(["HGET", Kit.keys.stats, field]).string ?? "0") ?? 0
    }

    @Test("kill -9 mid-stream with a journal: every event applied once and counted as applied once")
    func killNine() async throws {
        let servers = try Faults.Servers()
        let journal = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let executable = try opsbusExecutable()
        let arguments = ["processor", "--mqtt-url", servers.broker.url, "--redis-url", servers.redis.url,
                         "--client-id", "batch-crashy", "--journal", journal, "--log-level", "info"]
        var processor = try ChildProcess(executable, arguments)
        try #require(try await waitUntil { processor.stderr.contains("processor running") }, "\(processor.stderr)")
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "batch-pub-1")
        let events = try Faults.completions("batch-kill", count: 800)
        let publishing = Faults.publishInBackground(events[...], raw)
        _ = try await waitUntil(timeout: 30) { Faults.completedCount(servers.redisEndpoint) >= 100 }
        processor.signal(SIGKILL)
        _ = try? await processor.wait(timeout: 10)
        let appliedAtKill = Faults.completedCount(servers.redisEndpoint)
        try await publishing.value
        processor = try ChildProcess(executable, arguments)
        try await Faults.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(appliedAtKill < events.count, "the kill happened mid-stream")
        // Journal replays after the crash are not counted again; broker redeliveries count as duplicates.
        #expect(try Self.stat("outcome:applied", servers.redisEndpoint) == events.count)
        processor.signal(SIGTERM)
        #expect(try await processor.wait(timeout: 30) == 0, "\(processor.stderr.suffix(2000))")
        await raw.disconnect()
    }

    @Test("Redis down: the journal absorbs the messages (none refused), and all are applied once when it returns")
    func redisDownJournalAbsorbs() async throws {
        let servers = try Faults.Servers()
        let journal = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let processor = try await Kit.Processor(configuration: Self.batchConfiguration(
            servers, clientID: "batch-redis-down", journal: journal))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "batch-pub-2")
        let events = try Faults.completions("batch-down", count: 400)
        try await Kit.publish(Array(events[0..<100]), with: raw)
        _ = try await waitUntil(timeout: 30) { Faults.completedCount(servers.redisEndpoint) == 100 }
        servers.redis.stop()
        try await Kit.publish(Array(events[100...]), with: raw)
        #expect(Faults.completedCount(servers.redisEndpoint) == -1, "Redis is down")
        #expect(try await waitUntil { (processor.processor.journalBytes?.pendingBytes ?? 0) > 50_000 },
                "300 events of ~500 B wait in the journal (/metrics opsbus_processor_journal_pending_bytes)")
        try await Task.sleep(for: .seconds(2))
        try servers.redis.start()
        try await Faults.expectEachAppliedOnce(events, servers.redisEndpoint)
        #expect(processor.processor.counters.redelivered == 0, "\(processor.processor.counters)")
        #expect(try await waitUntil { processor.processor.journalBytes?.pendingBytes == 0 }, "the journal drained")
        await raw.disconnect()
        await processor.stop()
    }

    @Test("a full journal refuses messages, the broker keeps them, and all are applied once after Redis returns")
    func fullJournalRefuses() async throws {
        let servers = try Faults.Servers()
        let journal = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let processor = try await Kit.Processor(configuration: Self.batchConfiguration(
            servers, clientID: "batch-full", journal: journal, maxBytes: 64 * 1024))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "batch-pub-3")
        let events = try Faults.completions("batch-full", count: 500)  // ~250 KB: four times the journal
        servers.redis.stop()
        let publishing = Faults.publishInBackground(events[...], raw)
        #expect(try await waitUntil(timeout: 30) { processor.processor.counters.redelivered > 0 },
                "the journal never filled: \(processor.processor.counters)")
        try servers.redis.start()
        try await publishing.value
        try await Faults.expectEachAppliedOnce(events, servers.redisEndpoint, timeout: 120)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("Redis refusing writes (OOM) dead-letters nothing: the events wait and apply once the limit is raised",
          arguments: [true, false])
    func outOfMemoryWaits(batching: Bool) async throws {
        let servers = try Faults.Servers()
        let journal = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        var configuration = Self.batchConfiguration(servers, clientID: "oom-\(batching)", journal: journal)
        if !batching { configuration.journal = nil }
        let processor = try await Kit.Processor(configuration: configuration)
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "oom-pub-\(batching)")
        let admin = try RedisConnection(endpoint: servers.redisEndpoint)
        _ = try admin.command(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        _ = try admin.command(["CONFIG", "SET", "maxmemory", "1"])  // below what Redis uses: every write is refused
        let events = try Faults.completions("oom-\(batching)", count: 50)
        try await Kit.publish(events, with: raw)
        try await Task.sleep(for: .seconds(2))
        _ = try admin.command(["CONFIG", "SET", "maxmemory", "0"])
        try await Faults.expectEachAppliedOnce(events, servers.redisEndpoint)
        await raw.disconnect()
        await processor.stop()
    }

    @Test("an event Redis refuses inside a batch is dead-lettered with Redis's reason; the rest apply")
    func refusedEventInBatch() async throws {
        let servers = try Faults.Servers()
        let journal = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let admin = try RedisConnection(endpoint: servers.redisEndpoint)
        _ = try admin.command(["SET", Kit.keys.job("batch-poison-5"), "not a hash"])
        let processor = try await Kit.Processor(configuration: Self.batchConfiguration(
            servers, clientID: "batch-poison", journal: journal))
        let raw = try await Kit.rawPublisher(servers.mqttEndpoint, clientID: "batch-pub-4")
        let events = try Faults.completions("batch-poison", count: 10)
        // Paused writes make the journal collect the events, so they go to Redis as one batch.
        _ = try admin.command(["CLIENT", "PAUSE", "1500", "WRITE"])
        try await Kit.publish(events, with: raw)
        #expect(try await waitUntil(timeout: 30) { processor.processor.counters.received == events.count },
                "\(processor.processor.counters)")
        #expect(processor.processor.counters.deadLettered == 1)
        #expect(processor.processor.counters.applied == events.count - 1)
        #expect(Faults.completedCount(servers.redisEndpoint) == events.count - 1)
        let entries = try admin.command(["XRANGE", Kit.keys.deadLetters, "-", "+"]).array ?? []
        #expect(entries.count == 1)
        let reason = entries.first?.array?.last?.array?.map { $0.string ?? "" }.joined(separator: " ") ?? ""
        #expect(reason.contains("WRONGTYPE"), "\(reason)")
        await raw.disconnect()
        await processor.stop()
    }
}

private func temporaryDirectory() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-processor-journal-\(UUID().uuidString)").path
}
