import Foundation
import OpsBusLocalServers
import Testing

@testable import OpsBusMQTT

/// Pins the libmosquitto 2.0.11 behaviour the wrapper relies on, against a real mosquitto per test.
/// Serialized: starting/stopping brokers blocks a thread, and the machine has two cores.
@Suite("MQTT client against a real broker", .serialized)
struct MQTTClientBrokerTests {
    // 1. QoS 1 publish returns after the PUBACK, and an independent peer (mosquitto_sub) gets exactly the payloads.
    @Test func qos1PublishReachesAnIndependentSubscriber() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let subscriber = try MosquittoSubProcess(port: broker.port, topic: "jobs/#", count: 3, clientID: uniqueID("sub"))
        defer { subscriber.terminate() }
        #expect(await eventually { subscriber.isSubscribed }, "mosquitto_sub never subscribed: \(subscriber.output)")

        let client = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        try await client.connect()
        #expect(client.isConnected)
        for payload in ["first", "second", "third"] {
            try await client.publish(topic: "jobs/j1/completed", payload: bytes(payload), qos: .atLeastOnce)
        }
        #expect(client.outstandingPublishCount == 0)
        #expect(await eventually { subscriber.hasExited }, "mosquitto_sub did not get 3 messages: \(subscriber.output)")
        #expect(subscriber.messageLines(topicPrefix: "jobs/") == [
            "jobs/j1/completed first", "jobs/j1/completed second", "jobs/j1/completed third",
        ])
        await client.disconnect()
        #expect(!client.isConnected)
    }

    // 1b. Many tasks publishing QoS 1 and QoS 0 on one client at once: every QoS 1 publish returns only after its own
    // PUBACK. libmosquitto is called outside the client's lock, so an acknowledgement can beat the publish's
    // registration; a QoS 0 message's completion with a recycled message id must never count as a QoS 1 ack.
    @Test func concurrentMixedQoSPublishesEachGetTheirOwnAcknowledgement() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let consumer = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("consumer")))
        let received = Collector<String>()
        consumer.setMessageHandler { message in
            if message.topic == "mixed/q1" { received.append(text(message.payload)) }
            return .accept
        }
        try await consumer.connect()
        try await consumer.subscribe(["mixed/#"], qos: .atLeastOnce)
        let client = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        try await client.connect()
        let tasks = 32, perTask = 400
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for index in 0..<perTask {
                        try await client.publish(topic: "mixed/q0", payload: bytes("\(task)-\(index)"), qos: .atMostOnce)
                        try await client.publish(topic: "mixed/q1", payload: bytes("\(task)-\(index)"), qos: .atLeastOnce)
                    }
                }
            }
            try await group.waitForAll()
        }
        // Every QoS 1 publish has returned: the broker has them all, and none is still outstanding.
        #expect(client.outstandingPublishCount == 0)
        #expect(await eventually { received.all.count >= tasks * perTask }, "\(received.all.count) delivered")
        #expect(Set(received.all).count == tasks * perTask)
        await client.disconnect()
        await consumer.disconnect()
    }

    // 2. A handler that rejects m3 makes the broker redeliver it after the automatic reconnect: nothing is lost.
    @Test func rejectedQoS1MessageIsRedeliveredOnTheDurableSession() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let consumer = try MQTTClient(
            configuration: testConfiguration(port: broker.port, clientID: uniqueID("consumer"), cleanSession: false))
        let events = EventRecorder(consumer)
        let handled = Collector<String>()
        consumer.setMessageHandler { message in
            let payload = text(message.payload)
            handled.append(payload)
            let seenBefore = handled.all.filter { $0 == payload }.count > 1
            return payload == "m3" && !seenBefore ? .reject : .accept
        }
        try await consumer.connect()
        try await consumer.subscribe(["work/#"], qos: .atLeastOnce)

        let producer = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("producer")))
        try await producer.connect()
        for index in 1...5 {
            try await producer.publish(topic: "work/items", payload: bytes("m\(index)"), qos: .atLeastOnce)
        }

        let all = Set((1...5).map { "m\($0)" })
        #expect(await eventually { Set(handled.all).isSuperset(of: all) && handled.all.filter { $0 == "m3" }.count >= 2 },
                "handled: \(handled.all)")
        #expect(await eventually { events.connectedCount >= 2 }, "events: \(events.events.all)")
        // The reconnect found the session (that is why the broker could redeliver), and the loss was reported.
        #expect(events.sessionPresentFlags.dropFirst().contains(true), "events: \(events.events.all)")
        #expect(events.disconnectedCount >= 1)
        await producer.disconnect()
        await consumer.disconnect()
    }

    // 3. A durable subscriber gets what was published while it was away, without subscribing again.
    @Test func durableSubscriberGetsMessagesPublishedWhileAway() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let id = uniqueID("durable")
        let first = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: id, cleanSession: false))
        try await first.connect()
        try await first.subscribe(["workers/+/health"], qos: .atLeastOnce)
        await first.disconnect()  // the process "dies"; a v3.1.1 durable session outlives the connection

        let producer = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("producer")))
        try await producer.connect()
        for index in 1...3 {
            try await producer.publish(topic: "workers/w\(index)/health", payload: bytes("h\(index)"), qos: .atLeastOnce)
        }

        let second = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: id, cleanSession: false))
        let events = EventRecorder(second)
        let received = Collector<String>()
        second.setMessageHandler { message in
            received.append("\(message.topic) \(text(message.payload))")
            return .accept
        }
        try await second.connect()
        #expect(await eventually { received.count >= 3 }, "received: \(received.all)")
        #expect(received.all == ["workers/w1/health h1", "workers/w2/health h2", "workers/w3/health h3"])
        #expect(await eventually { events.sessionPresentFlags == [true] }, "events: \(events.events.all)")
        await producer.disconnect()
        await second.disconnect()
    }

    // 4. QoS 1 while the broker is down completes after the restart, exactly once; QoS 0 throws .notConnected.
    @Test func qos1PublishedWhileBrokerIsDownIsDeliveredOnceAfterRestart() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let subscriber = try MQTTClient(
            configuration: testConfiguration(port: broker.port, clientID: uniqueID("sub"), cleanSession: false))
        let received = Collector<String>()
        subscriber.setMessageHandler { message in
            received.append(text(message.payload))
            return .accept
        }
        try await subscriber.connect()
        try await subscriber.subscribe(["offline/#"], qos: .atLeastOnce)

        let publisher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        try await publisher.connect()
        broker.stop()  // SIGTERM: the broker saves the subscriber's durable session
        #expect(await eventually { !publisher.isConnected })

        await #expect {
            try await publisher.publish(topic: "offline/q0", payload: bytes("dropped"), qos: .atMostOnce)
        } throws: { error in
            guard case let .notConnected(_, context) = error as? MQTTError else { return false }
            return context.contains("127.0.0.1:\(broker.port)")
        }

        let pending = Task { try await publisher.publish(topic: "offline/q1", payload: bytes("queued"), qos: .atLeastOnce) }
        #expect(await eventually { publisher.outstandingPublishCount == 1 })
        try broker.startAgain()
        try await pending.value
        #expect(publisher.outstandingPublishCount == 0)

        // A sentinel published after it: once it arrived, any duplicate of "queued" would have arrived too.
        try await publisher.publish(topic: "offline/q1", payload: bytes("sentinel"), qos: .atLeastOnce)
        #expect(await eventually { received.all.contains("sentinel") }, "received: \(received.all)")
        #expect(received.all.filter { $0 == "queued" }.count == 1, "received: \(received.all)")
        #expect(!received.all.contains("dropped"))
        await publisher.disconnect()
        await subscriber.disconnect()
    }

    // 5a. A client created before its broker exists connects once the broker appears.
    @Test func connectWaitsForABrokerThatStartsLater() async throws {
        let port = try LoopbackPort.allocate()
        let client = try MQTTClient(configuration: testConfiguration(port: port, clientID: uniqueID("early")))
        let events = EventRecorder(client)
        let connecting = Task { try await client.connect(waitForBroker: true) }
        #expect(await eventually { events.reconnectingCount >= 2 }, "events: \(events.events.all)")
        #expect(!client.isConnected)

        let broker = try FixedPortBroker(port: port)
        defer { broker.stop() }
        #expect(await broker.waitUntilListening())
        try await connecting.value
        #expect(client.isConnected)
        try await client.publish(topic: "late/broker", payload: bytes("hello"), qos: .atLeastOnce)
        await client.disconnect()
    }

    // 5b. Without waiting, a closed port fails within connectTimeout, naming the broker; attempts then stop.
    @Test func connectWithoutWaitingFailsWithTheBrokerAddress() async throws {
        let port = try LoopbackPort.allocate()
        var configuration = testConfiguration(port: port, clientID: uniqueID("nobroker"))
        configuration.connectTimeout = 1
        let client = try MQTTClient(configuration: configuration)
        let events = EventRecorder(client)
        await #expect {
            try await client.connect()
        } throws: { error in
            guard case let .connectTimeout(host, reportedPort, seconds) = error as? MQTTError else { return false }
            return host == "127.0.0.1" && reportedPort == Int(port) && seconds == 1
                && error.localizedDescription.isEmpty == false
                && "\(error)".contains("127.0.0.1:\(port)")
        }
        // No background retrying after connect() gave up.
        let attempts = events.reconnectingCount
        try await Task.sleep(for: .seconds(1))
        #expect(events.reconnectingCount == attempts)
        #expect(!client.isConnected)
    }

    // 6. Broker restart: the events show disconnected then connected, and the subscription works again.
    @Test func brokerRestartReconnectsAndResubscribes() async throws {
        var brokerConfiguration = MosquittoConfiguration()
        brokerConfiguration.persistence = false  // the restarted broker knows nothing: we must re-subscribe
        let broker = try startBroker(brokerConfiguration)
        defer { broker.stop() }
        let subscriber = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("sub")))
        let events = EventRecorder(subscriber)
        let received = Collector<String>()
        subscriber.setMessageHandler { message in
            received.append(text(message.payload))
            return .accept
        }
        try await subscriber.connect()
        try await subscriber.subscribe(["restart/#"], qos: .atLeastOnce)
        #expect(await eventually { events.connectedCount == 1 })

        broker.stop()
        try broker.startAgain()
        #expect(await eventually { events.connectedCount >= 2 }, "events: \(events.events.all)")
        let kinds = events.events.all.map { event -> String in
            switch event {
            case .connected: return "connected"
            case .disconnected: return "disconnected"
            case .reconnecting: return "reconnecting"
            }
        }
        let firstDisconnect = try #require(kinds.firstIndex(of: "disconnected"), "events: \(kinds)")
        #expect(kinds[firstDisconnect...].contains("connected"), "events: \(kinds)")
        #expect(events.sessionPresentFlags.last == false)

        let publisher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        try await publisher.connect()
        // The re-subscribe races our publish on the broker: publish until one arrives.
        let deadline = ContinuousClock.now + .seconds(30)
        var attempt = 0
        while received.count == 0 && ContinuousClock.now < deadline {
            attempt += 1
            try await publisher.publish(topic: "restart/x", payload: bytes("after-\(attempt)"), qos: .atLeastOnce)
            _ = await eventually(timeout: 0.2) { received.count > 0 }
        }
        #expect(received.count > 0, "no message after the restart; events: \(events.events.all)")
        await publisher.disconnect()
        await subscriber.disconnect()
    }

    // 7. Back-pressure: with 5 unacknowledged publishes outstanding, the 6th waits, then fails.
    @Test func sixthOutstandingPublishFailsWithLimitReached() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        var configuration = testConfiguration(port: broker.port, clientID: uniqueID("bounded"))
        configuration.maxOutstandingPublishes = 5
        configuration.publishTimeout = 1.5
        let client = try MQTTClient(configuration: configuration)
        try await client.connect()
        broker.stop()
        #expect(await eventually { !client.isConnected })

        let firstFive = (1...5).map { index in
            Task {
                try await client.publish(topic: "bound/\(index)", payload: bytes("p\(index)"), qos: .atLeastOnce)
            }
        }
        #expect(await eventually { client.outstandingPublishCount == 5 })
        await #expect {
            try await client.publish(topic: "bound/6", payload: bytes("p6"), qos: .atLeastOnce)
        } throws: { error in
            guard case let .outstandingLimitReached(limit, topic) = error as? MQTTError else { return false }
            return limit == 5 && topic == "bound/6"
        }
        for task in firstFive {
            await #expect {
                try await task.value
            } throws: { error in
                if case .publishTimeout(_, 1.5) = error as? MQTTError { return true } else { return false }
            }
        }
        // Timed-out messages are still queued in libmosquitto, so they keep their slots.
        #expect(client.outstandingPublishCount == 5)
        await client.disconnect()
        #expect(client.outstandingPublishCount == 0)
        await #expect {
            try await client.publish(topic: "bound/7", payload: bytes("p7"), qos: .atLeastOnce)
        } throws: { error in
            if case .disconnectedByClient = error as? MQTTError { return true } else { return false }
        }
    }

    // 9. Last will: published when the connection dies, not after a clean disconnect().
    @Test func willIsPublishedWhenTheConnectionDiesButNotOnDisconnect() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let watcher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("watcher")))
        let received = Collector<String>()
        watcher.setMessageHandler { message in
            received.append("\(message.topic) \(text(message.payload))")
            return .accept
        }
        try await watcher.connect()
        try await watcher.subscribe(["wills/#", "sentinel"], qos: .atLeastOnce)

        var dyingConfiguration = testConfiguration(port: broker.port, clientID: uniqueID("dying"))
        dyingConfiguration.will = MQTTWill(topic: "wills/dying", payload: bytes("gone"), qos: .atLeastOnce)
        let dying = try MQTTClient(configuration: dyingConfiguration)
        // Killing the socket from inside: a rejected message shuts the connection down without DISCONNECT.
        dying.setMessageHandler { _ in .reject }
        try await dying.connect()
        try await dying.subscribe(["kill/dying"], qos: .atLeastOnce)

        var cleanConfiguration = testConfiguration(port: broker.port, clientID: uniqueID("clean"))
        cleanConfiguration.will = MQTTWill(topic: "wills/clean", payload: bytes("gone"), qos: .atLeastOnce)
        let clean = try MQTTClient(configuration: cleanConfiguration)
        try await clean.connect()
        await clean.disconnect()

        try await watcher.publish(topic: "kill/dying", payload: bytes("die"), qos: .atLeastOnce)
        #expect(await eventually { received.all.contains("wills/dying gone") }, "received: \(received.all)")
        try await watcher.publish(topic: "sentinel", payload: bytes("end"), qos: .atLeastOnce)
        #expect(await eventually { received.all.contains("sentinel end") })
        #expect(!received.all.contains("wills/clean gone"), "received: \(received.all)")
        await dying.disconnect()
        await watcher.disconnect()
    }

    // Subscribe / unsubscribe round trip and the messages stream.
    @Test func messagesStreamAndUnsubscribe() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let client = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("stream")))
        try await client.connect()
        let granted = try await client.subscribe(["s/a", "s/b"], qos: .atLeastOnce)
        #expect(granted == [.atLeastOnce, .atLeastOnce])
        try await client.publish(topic: "s/a", payload: bytes("one"), qos: .atLeastOnce, retain: false)
        var iterator = client.messages.makeAsyncIterator()
        let first = await iterator.next()
        #expect(first?.topic == "s/a")
        #expect(first.map { text($0.payload) } == "one")
        #expect(first?.qos == .atLeastOnce)

        try await client.unsubscribe(["s/a"])
        try await client.publish(topic: "s/a", payload: bytes("ignored"), qos: .atLeastOnce)
        try await client.publish(topic: "s/b", payload: bytes("two"), qos: .atLeastOnce)
        let second = await iterator.next()
        #expect(second.map { "\($0.topic) \(text($0.payload))" } == "s/b two")
        await client.disconnect()
        #expect(await iterator.next() == nil)  // finished by disconnect()
    }
}


@Suite("MQTT client edge cases", .serialized)
struct MQTTClientEdgeCaseTests {
    // A broker that accepts TCP but never answers CONNECT: each attempt is bounded by connectTimeout.
    @Test func unansweredConnectTimesOutAndAttemptsAreBounded() async throws {
        let listener = try SilentListener()
        var configuration = testConfiguration(port: listener.port, clientID: uniqueID("silent"))
        configuration.connectTimeout = 1
        let client = try MQTTClient(configuration: configuration)
        await #expect {
            try await client.connect()
        } throws: { error in
            guard case let .connectTimeout(_, port, _) = error as? MQTTError else { return false }
            return port == Int(listener.port)
        }

        // With waitForBroker the attempts go on (each one abandoned after connectTimeout) until cancelled.
        let events = EventRecorder(client)
        let waiting = Task { try await client.connect(waitForBroker: true) }
        #expect(await eventually { events.reconnectingCount >= 2 }, "events: \(events.events.all)")
        waiting.cancel()
        await #expect {
            try await waiting.value
        } throws: { error in
            if case .cancelled = error as? MQTTError { return true } else { return false }
        }
        #expect(!client.isConnected)
    }

    // MQTT v5 with a session expiry uses the blocking connect with properties; the session must survive.
    @Test func v5DurableSessionWithExpirySurvivesReconnect() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let id = uniqueID("v5")
        func v5Configuration() -> MQTTClientConfiguration {
            var configuration = testConfiguration(port: broker.port, clientID: id, cleanSession: false)
            configuration.protocolVersion = .v5
            configuration.sessionExpiryInterval = 300
            return configuration
        }
        let first = try MQTTClient(configuration: v5Configuration())
        try await first.connect()
        #expect(try await first.subscribe(["v5/#"], qos: .atLeastOnce) == [.atLeastOnce])
        await first.disconnect()

        let producer = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("producer")))
        try await producer.connect()
        try await producer.publish(topic: "v5/a", payload: bytes("kept"), qos: .atLeastOnce)

        let second = try MQTTClient(configuration: v5Configuration())
        let events = EventRecorder(second)
        let received = Collector<String>()
        second.setMessageHandler { message in
            received.append(text(message.payload))
            return .accept
        }
        try await second.connect()
        #expect(await eventually { received.all == ["kept"] }, "received: \(received.all)")
        #expect(await eventually { events.sessionPresentFlags == [true] }, "events: \(events.events.all)")
        try await second.publish(topic: "v5/b", payload: bytes("own"), qos: .atLeastOnce)
        #expect(await eventually { received.all.contains("own") })
        await producer.disconnect()
        await second.disconnect()
    }

    // Pins a broker fact: mosquitto 2.0.11 grants ACL-denied subscriptions (v3.1.1 and v5 alike) and then delivers
    // nothing, so a wrong ACL shows up as silence, not as a SUBACK failure. Granted QoS are passed through as is.
    @Test func aclDeniedSubscriptionIsGrantedByMosquitto2011() async throws {
        let aclFile = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("acl-\(UUID().uuidString)")
        try "topic readwrite allowed/#\n".write(to: aclFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: aclFile) }
        var brokerConfiguration = MosquittoConfiguration()
        brokerConfiguration.extraLines = ["acl_file \(aclFile.path)"]
        let broker = try startBroker(brokerConfiguration)
        defer { broker.stop() }
        let client = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("acl")))
        try await client.connect()
        #expect(try await client.subscribe(["allowed/x", "denied/x"], qos: .atLeastOnce) == [.atLeastOnce, .atLeastOnce])
        #expect(try await client.subscribe(["allowed/q0"], qos: .atMostOnce) == [.atMostOnce])
        try await client.publish(topic: "allowed/x", payload: bytes("ok"), qos: .atLeastOnce)
        var iterator = client.messages.makeAsyncIterator()
        #expect(await iterator.next().map { text($0.payload) } == "ok")
        await client.disconnect()
    }

    // Publishing before connect(): QoS 1 is queued by libmosquitto and delivered once connected.
    @Test func qos1PublishedBeforeConnectIsDeliveredAfterConnect() async throws {
        let broker = try startBroker()
        defer { broker.stop() }
        let subscriber = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("sub")))
        try await subscriber.connect()
        try await subscriber.subscribe(["early/#"], qos: .atLeastOnce)

        let publisher = try MQTTClient(configuration: testConfiguration(port: broker.port, clientID: uniqueID("pub")))
        let pending = Task { try await publisher.publish(topic: "early/x", payload: bytes("before"), qos: .atLeastOnce) }
        #expect(await eventually { publisher.outstandingPublishCount == 1 })
        try await publisher.connect()
        try await pending.value
        var iterator = subscriber.messages.makeAsyncIterator()
        #expect(await iterator.next().map { text($0.payload) } == "before")
        await publisher.disconnect()
        await subscriber.disconnect()
    }
}

@Suite("MQTT client authentication and TLS", .serialized)
struct MQTTClientSecurityTests {
    /// A broker that requires user "alice" with password "s3cret:@/".
    func startAuthBroker() throws -> (ServerProcess, URL) {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mqtt-auth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let passwordFile = directory.appendingPathComponent("passwd")
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_passwd")
        tool.arguments = ["-b", "-c", passwordFile.path, "alice", "s3cret:@/"]
        try ChildLauncher.run(tool)
        tool.waitUntilExit()
        var configuration = MosquittoConfiguration()
        configuration.extraLines = ["allow_anonymous false", "password_file \(passwordFile.path)"]
        return (try startBroker(configuration), directory)
    }

    @Test func badCredentialsAreRefusedAtOnceAndNotRetried() async throws {
        let (broker, directory) = try startAuthBroker()
        defer {
            broker.stop()
            try? FileManager.default.removeItem(at: directory)
        }
        for waitForBroker in [false, true] {
            var configuration = testConfiguration(port: broker.port, clientID: uniqueID("intruder"))
            configuration.endpoint = try MQTTEndpoint(url: "mqtt://alice:wrong@127.0.0.1:\(broker.port)")
            let client = try MQTTClient(configuration: configuration)
            let events = EventRecorder(client)
            await #expect {
                try await client.connect(waitForBroker: waitForBroker)
            } throws: { error in
                guard case let .connectionRefused(reason, context) = error as? MQTTError else { return false }
                return (reason.code == 4 || reason.code == 5) && reason.isPermanent
                    && context.contains("127.0.0.1:\(broker.port)") && !"\(error)".contains("wrong")
            }
            #expect(!client.isConnected)
            try await Task.sleep(for: .milliseconds(500))
            #expect(events.reconnectingCount == 0, "events: \(events.events.all)")
        }
    }

    @Test func percentEncodedCredentialsLogIn() async throws {
        let (broker, directory) = try startAuthBroker()
        defer {
            broker.stop()
            try? FileManager.default.removeItem(at: directory)
        }
        var configuration = testConfiguration(port: broker.port, clientID: uniqueID("alice"))
        configuration.endpoint = try MQTTEndpoint(url: "mqtt://alice:s3cret%3A%40%2F@127.0.0.1:\(broker.port)")
        let client = try MQTTClient(configuration: configuration)
        try await client.connect()
        try await client.publish(topic: "auth/ok", payload: bytes("in"), qos: .atLeastOnce)
        await client.disconnect()
    }

    @Test func tlsWithOwnCAConnectsAndUnverifiableCertificateFailsAtOnce() async throws {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mqtt-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificate = directory.appendingPathComponent("cert.pem")
        let key = directory.appendingPathComponent("key.pem")
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.path, "-out", certificate.path, "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ]
        openssl.standardOutput = FileHandle.nullDevice
        openssl.standardError = FileHandle.nullDevice
        try ChildLauncher.run(openssl)
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)

        let tlsPort = try LoopbackPort.allocate()
        var brokerConfiguration = MosquittoConfiguration()
        brokerConfiguration.extraLines = [
            "listener \(tlsPort) 127.0.0.1", "certfile \(certificate.path)", "keyfile \(key.path)",
        ]
        let broker = try startBroker(brokerConfiguration)
        defer { broker.stop() }
        #expect(await eventually { LoopbackPort.isAcceptingConnections(tlsPort) })

        var configuration = testConfiguration(port: tlsPort, clientID: uniqueID("tls"))
        configuration.endpoint = try MQTTEndpoint(url: "mqtts://127.0.0.1:\(tlsPort)")
        configuration.tls = MQTTTLSConfiguration(caFile: certificate.path)
        let client = try MQTTClient(configuration: configuration)
        try await client.connect()
        try await client.subscribe(["tls/#"], qos: .atLeastOnce)
        try await client.publish(topic: "tls/x", payload: bytes("secret"), qos: .atLeastOnce)
        var iterator = client.messages.makeAsyncIterator()
        #expect(await iterator.next().map { text($0.payload) } == "secret")
        await client.disconnect()

        // The system CA store does not know our self-signed certificate: verification fails, no connection.
        var untrusted = testConfiguration(port: tlsPort, clientID: uniqueID("untrusted"))
        untrusted.endpoint = try MQTTEndpoint(url: "mqtts://127.0.0.1:\(tlsPort)")
        untrusted.connectTimeout = 1
        let untrustedClient = try MQTTClient(configuration: untrusted)
        await #expect {
            try await untrustedClient.connect(waitForBroker: true)  // not retried: a certificate problem is permanent
        } throws: { error in
            guard case let .library(code, _, context) = error as? MQTTError else { return false }
            return code == 8 && context.contains("127.0.0.1:\(tlsPort)") && "\(error)".contains("TLS")
        }
        #expect(!untrustedClient.isConnected)
    }
}
