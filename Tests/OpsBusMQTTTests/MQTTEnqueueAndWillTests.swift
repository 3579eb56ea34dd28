import Foundation
import OpsBusLocalServers
import Synchronization
import Testing

@testable import OpsBusMQTT

/// The two client features the edge spool builds on: ordered hand-off without waiting (`enqueuePublish`) and a
/// fresh will per connection (`willForConnection`, for the `bd_seq` birth/death counter).
@Suite("MQTT enqueuePublish and per-connection wills", .serialized)
struct MQTTEnqueueAndWillTests {
    @Test func enqueuedMessagesArriveInCallOrderAndEachCompletionFiresOnce() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let subscriber = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("sub")))
        let received = Collector<String>()
        subscriber.setMessageHandler { message in
            received.append(text(message.payload))
            return .accept
        }
        try await subscriber.connect()
        try await subscriber.subscribe(["order/#"], qos: .atLeastOnce)

        let publisher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        try await publisher.connect()
        let completions = Collector<Int>()
        let count = 2_000
        for index in 0..<count {
            try publisher.enqueuePublish(topic: "order/\(index % 7)", payload: bytes("\(index)"), qos: .atLeastOnce) { result in
                if case .success = result { completions.append(index) }
            }
        }
        #expect(await eventually { completions.count == count }, "completions: \(completions.count)")
        #expect(await eventually { received.count == count }, "received: \(received.count)")
        #expect(received.all == (0..<count).map(String.init), "order on the wire must be call order")
        #expect(Set(completions.all).count == count)
        #expect(publisher.outstandingPublishCount == 0)
        await publisher.disconnect()
        await subscriber.disconnect()
    }

    @Test func enqueueBeyondTheOutstandingLimitThrowsWithoutQueueing() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        var configuration = testConfiguration(port: broker.port, clientID: uniqueID("pub"))
        configuration.maxOutstandingPublishes = 3
        let publisher = try MQTTClient(configuration: configuration)
        // Never connected: nothing is acknowledged, so the slots stay taken.
        for index in 0..<3 {
            try publisher.enqueuePublish(topic: "t", payload: bytes("\(index)"), qos: .atLeastOnce) { _ in }
        }
        #expect(throws: MQTTError.self) {
            try publisher.enqueuePublish(topic: "t", payload: bytes("4"), qos: .atLeastOnce) { _ in }
        }
        #expect(publisher.outstandingPublishCount == 3)
        // A QoS 0 message without a connection is refused, not queued.
        #expect(throws: MQTTError.self) {
            try publisher.enqueuePublish(topic: "t", payload: bytes("q0"), qos: .atMostOnce) { _ in }
        }
        await publisher.disconnect()
    }

    @Test func disconnectFailsPendingCompletions() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let publisher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        let failures = Collector<String>()
        try publisher.enqueuePublish(topic: "t", payload: bytes("x"), qos: .atLeastOnce) { result in
            if case .failure(let error) = result { failures.append("\(error)") }
        }
        await publisher.disconnect()
        #expect(await eventually { failures.count == 1 }, "the never-sent message's completion must report failure")
    }

    @Test func eachConnectionCarriesTheWillItsProviderReturned() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let watcher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("watcher")))
        let wills = Collector<String>()
        watcher.setMessageHandler { message in
            wills.append(text(message.payload))
            return .accept
        }
        try await watcher.connect()
        try await watcher.subscribe(["wills/#"], qos: .atLeastOnce)

        let counter = Mutex(0)
        var configuration = testConfiguration(port: broker.port, clientID: uniqueID("dying"))
        configuration.willForConnection = {
            let value = counter.withLock { value in
                value += 1
                return value
            }
            return MQTTWill(topic: "wills/dying", payload: bytes("bd_seq=\(value)"), qos: .atLeastOnce)
        }
        let dying = try MQTTClient(configuration: configuration)
        dying.setMessageHandler { _ in .reject }  // a rejected message kills the socket without DISCONNECT
        try await dying.connect()
        try await dying.subscribe(["kill/dying"], qos: .atLeastOnce)

        try await watcher.publish(topic: "kill/dying", payload: bytes("die"), qos: .atLeastOnce)
        #expect(await eventually { wills.all.contains("bd_seq=1") }, "wills: \(wills.all)")
        // The client reconnects by itself, with the provider's next will; kill that connection too.
        #expect(await eventually { counter.withLock { $0 } >= 2 && dying.isConnected })
        try await dying.subscribe(["kill/dying"], qos: .atLeastOnce)
        try await watcher.publish(topic: "kill/dying", payload: bytes("die again"), qos: .atLeastOnce)
        #expect(await eventually { wills.all.contains { $0 != "bd_seq=1" } }, "wills: \(wills.all)")
        let second = wills.all.first { $0 != "bd_seq=1" }
        #expect(second.flatMap { Int($0.dropFirst("bd_seq=".count)) }.map { $0 >= 2 } == true,
                "the second connection's will is a later one: \(wills.all)")
        await dying.disconnect()
        await watcher.disconnect()
    }
}
