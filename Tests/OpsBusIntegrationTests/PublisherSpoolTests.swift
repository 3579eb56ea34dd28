import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusPublisher
import OpsBusRedis
import OpsBusSpool
import Testing

/// The edge publisher's spool end to end, against real mosquitto, redis-server and an in-process bridge:
/// `publish` returns once an event is on disk, the spool empties only on the bridge's acknowledgement, a restart
/// re-sends under the original session and seq, and the broker being away never blocks the caller.
@Suite("Publisher spool and end-to-end acknowledgements")
struct PublisherSpoolTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    static func context(worker: String) throws -> PublisherContext {
        PublisherContext(
            machineID: try Identifier(validating: "edge-box"), workerID: try Identifier(validating: worker),
            serviceType: "comfyui")
    }

    static func options(_ directory: String, ack: AcknowledgementMode = .bridge, ackTimeout: Double = 2) -> SpoolOptions {
        var options = SpoolOptions(spool: SpoolConfiguration(directory: directory), acknowledgement: ack, ackTimeout: ackTimeout)
        options.spool.durability = .never
        return options
    }

    func publisher(worker: String, spool directory: String, ack: AcknowledgementMode = .bridge,
                   endpoint: MQTTEndpoint? = nil, announce: Bool = false) async throws -> EventPublisher {
        try await EventPublisher.connect(
            endpoint: endpoint ?? servers.mqttEndpoint, context: try Self.context(worker: worker),
            spool: Self.options(directory, ack: ack), connectTimeout: 2, logger: testLogger, announceWorker: announce)
    }

    /// Every stream entry of `stream` as (session_id, seq, event_id).
    func streamEvents(_ stream: String) throws -> [(session: String, seq: Int, eventID: String)] {
        let redis = try servers.redisConnection()
        let reply = try redis.command(["XRANGE", stream, "-", "+"])
        return (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2 else { return nil }
            let values = parts[1].hashDictionary()
            guard let session = values["session_id"], let seq = values["seq"].flatMap(Int.init),
                  let eventID = values["event_id"] else { return nil }
            return (session, seq, eventID)
        }
    }

    @Test func spooledEventsAreAcknowledgedByTheBridgeAndLeaveTheSpool() async throws {
        let bridge = try await RunningBridge.start(servers)
        defer { Task { await bridge.stop() } }
        let directory = bridgeTestDirectory()
        let publisher = try await publisher(worker: "edge-1", spool: directory)
        var accepted: [EventEnvelope] = []
        for index in 0..<50 {
            let job = try publisher.withJobContext("job-\(index)", attempt: 1)
            accepted.append(try await job.received())
            accepted.append(try await job.completed(processingTime: 1, outputSize: 10))
        }
        #expect(accepted.allSatisfy { $0.ack && $0.seq > 0 })
        #expect(accepted.map(\.seq) == Array(1...100))
        #expect(await publisher.drain(timeout: 30) == 0, "the bridge acknowledged everything")
        let events = try streamEvents("events:jobs").filter { $0.session == publisher.sessionID }
        #expect(events.map(\.seq) == Array(1...100), "in Redis once each, in seq order")
        #expect(Set(events.map(\.eventID)) == Set(accepted.map(\.eventID)))

        // The retained ack tells any late subscriber where the session stands …
        let retained = try await retainedMessages(under: "acks/edge-1/#")
        let ack = try #require(retained.first.flatMap { try? JSONValue.parse($0.payload).objectValue })
        #expect(ack["seq"]?.intValue == 100 && ack["session_id"]?.stringValue == publisher.sessionID)
        // … until the publisher stops cleanly with nothing left: then it clears it (no retained message per process
        // start piling up on the broker).
        await publisher.disconnect()
        #expect(try await retainedMessages(under: "acks/edge-1/#").isEmpty)
    }

    /// The retained messages under `filter`, read by subscribing together with a retained sentinel: the broker sends
    /// the retained messages filter by filter, so once the sentinel is there, every ack would have been too.
    func retainedMessages(under filter: String) async throws -> [(topic: String, payload: [UInt8])] {
        let client = try MQTTClient(
            configuration: MQTTClientConfiguration(endpoint: servers.mqttEndpoint, clientID: "retained-\(UUID().uuidString.prefix(8))"),
            logger: testLogger)
        try await client.connect()
        let sentinel = "sentinel/\(UUID().uuidString.prefix(8))"
        try await client.publish(topic: sentinel, payload: Array("end".utf8), qos: .atLeastOnce, retain: true)
        let stream = client.messages
        try await client.subscribe([filter, sentinel], qos: .atLeastOnce)
        var messages: [(topic: String, payload: [UInt8])] = []
        for await message in stream {
            if message.topic == sentinel { break }
            messages.append((message.topic, message.payload))
        }
        try await client.publish(topic: sentinel, payload: [], qos: .atLeastOnce, retain: true)
        await client.disconnect()
        return messages
    }

    @Test func publishingWhileTheBrokerIsAwayReturnsAtOnceAndDeliversLater() async throws {
        let directory = bridgeTestDirectory()
        // A port nobody listens on: the publisher must still accept events into its spool.
        let unreachable = try MQTTEndpoint(url: "mqtt://127.0.0.1:1")
        let offline = try await publisher(worker: "edge-2", spool: directory, ack: .broker, endpoint: unreachable)
        var accepted: [EventEnvelope] = []
        for index in 0..<20 {
            accepted.append(try await offline.withJobContext("job-off-\(index)").received())
        }
        #expect(offline.spoolStatistics?.records == 20)
        await offline.disconnect()  // like a crash: nothing was sent

        // The next start sends what the spool holds, under the original session and seq.
        let bridge = try await RunningBridge.start(servers)
        defer { Task { await bridge.stop() } }
        let online = try await publisher(worker: "edge-2", spool: directory)
        #expect(await online.drain(timeout: 30) == 0)
        let events = try streamEvents("events:jobs").filter { $0.session == offline.sessionID }
        #expect(events.map(\.seq) == Array(1...20))
        #expect(events.map(\.eventID) == accepted.map(\.eventID))
        await online.disconnect()
    }

    @Test func withoutABridgeBrokerModeEmptiesTheSpoolAtPuback() async throws {
        let directory = bridgeTestDirectory()
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["jobs/#"])
        let publisher = try await publisher(worker: "edge-3", spool: directory, ack: .broker)
        for index in 0..<10 { try await publisher.withJobContext("job-b-\(index)").received() }
        #expect(await publisher.drain(timeout: 20) == 0)
        let messages = try await sub.waitForMessages(10)
        sub.stop()
        #expect(messages.count == 10)
        await publisher.disconnect()
    }

    @Test func withoutAnAcknowledgementEventsStaySpooledAcrossRestarts() async throws {
        // No bridge runs: in bridge mode nothing may leave the spool, even though the broker took every message.
        let directory = bridgeTestDirectory()
        let first = try await publisher(worker: "edge-4", spool: directory)
        for index in 0..<5 { try await first.withJobContext("job-n-\(index)").received() }
        #expect(await first.drain(timeout: 3) == 5)
        await first.disconnect()
        let statistics = try Spool.inspect(directory: directory)
        #expect(statistics.records == 5)
        #expect(statistics.sessions.map(\.sessionID) == [first.sessionID])

        // Once a bridge is there, the next run's re-send is acknowledged and the spool empties.
        let bridge = try await RunningBridge.start(servers)
        defer { Task { await bridge.stop() } }
        let second = try await publisher(worker: "edge-4", spool: directory)
        #expect(await second.drain(timeout: 30) == 0)
        let events = try streamEvents("events:jobs").filter { $0.session == first.sessionID }
        #expect(events.map(\.seq) == [1, 2, 3, 4, 5], "sent at least twice, written once: \(events.map(\.seq))")
        await second.disconnect()
    }

    @Test func birthAndWillCarryAnIncreasingPersistedBdSeq() async throws {
        let directory = bridgeTestDirectory()
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["workers/edge-5/health"])
        // On a loaded box `connect` may return before the connection (and its bd_seq) exists: each run waits for its
        // birth before it closes.
        let first = try await publisher(worker: "edge-5", spool: directory, ack: .broker, announce: true)
        _ = try await sub.waitForMessages(1)
        await first.close(drainTimeout: 1)
        let firstBd = first.birthDeathSequence
        let second = try await publisher(worker: "edge-5", spool: directory, ack: .broker, announce: true)
        _ = try await sub.waitForMessages(3)
        await second.close(drainTimeout: 1)
        #expect(second.birthDeathSequence > firstBd, "bd_seq survives a restart and increases")
        // birth, offline, birth, offline
        let messages = try await sub.waitForMessages(4)
        sub.stop()
        let births = try messages.map { try EventEnvelope.decode(Array($0.payload.utf8)) }.filter { $0.fields["status"] == "online" }
        #expect(births.map { $0.fields["bd_seq"]?.intValue } == [Int64(firstBd), Int64(second.birthDeathSequence)])
        #expect(births.allSatisfy { $0.fields["spool_depth"]?.intValue != nil })
    }

    @Test func aFullSpoolRefusesTerminalEventsWithAnErrorTheCallerCanActOn() async throws {
        let directory = bridgeTestDirectory()
        var options = Self.options(directory)
        options.spool.maxBytes = 64 * 1024
        options.spool.segmentBytes = 16 * 1024
        let unreachable = try MQTTEndpoint(url: "mqtt://127.0.0.1:1")
        let publisher = try await EventPublisher.connect(
            endpoint: unreachable, context: try Self.context(worker: "edge-6"), spool: options, connectTimeout: 0.5,
            logger: testLogger, announceWorker: false)
        var refusal: EventPublisherError?
        for index in 0..<2_000 {
            do {
                try await publisher.withJobContext("job-full-\(index)").completed(processingTime: 1, outputSize: 1)
            } catch {
                refusal = error
                break
            }
        }
        let error = try #require(refusal, "a bounded spool must refuse at some point")
        guard case .spool(.full) = error else {
            Issue.record("expected a spool-full error, got \(error)")
            return
        }
        #expect("\(error)".contains("full"))
        #expect((publisher.spoolStatistics?.bytes ?? .max) <= options.spool.maxBytes)
        await publisher.disconnect()
    }
}
