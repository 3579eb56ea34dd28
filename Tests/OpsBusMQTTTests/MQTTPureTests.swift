import CMosquitto
import Testing

@testable import OpsBusMQTT

@Suite("MQTT endpoint URLs")
struct MQTTEndpointTests {
    @Test(arguments: [
        ("mqtt://broker.local", "broker.local", 1883, nil, nil, false),
        ("mqtt://broker.local:1884", "broker.local", 1884, nil, nil, false),
        ("mqtts://broker.local", "broker.local", 8883, nil, nil, true),
        ("MQTT://10.0.0.1:65535/", "10.0.0.1", 65535, nil, nil, false),
        ("mqtt://alice@h", "h", 1883, "alice", nil, false),
        ("mqtt://alice:s3cret@h:1", "h", 1, "alice", "s3cret", false),
        ("mqtt://al%40ice:p%3Aa%2Fss%25@h", "h", 1883, "al@ice", "p:a/ss%", false),
        ("mqtt://u:p@ss@h", "h", 1883, "u", "p@ss", false),
        ("mqtt://[::1]:1999", "::1", 1999, nil, nil, false),
        ("mqtts://u:pw@[fe80::1]", "fe80::1", 8883, "u", "pw", true),
    ] as [(String, String, Int, String?, String?, Bool)])
    func parsesValidURLs(url: String, host: String, port: Int, user: String?, password: String?, tls: Bool) throws {
        let endpoint = try MQTTEndpoint(url: url)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        #expect(endpoint.username == user)
        #expect(endpoint.password == password)
        #expect(endpoint.useTLS == tls)
    }

    @Test(arguments: [
        ("http://h", "scheme"),
        ("h:1883", "scheme"),
        ("redis://h:6379", "scheme"),
        ("mqtt://", "empty host"),
        ("mqtt://:1883", "empty host"),
        ("mqtt://u:pw@:1883", "empty host"),
        ("mqtt://h:0", "outside 1...65535"),
        ("mqtt://h:65536", "outside 1...65535"),
        ("mqtt://h:99999999999999999999", "not a number"),
        ("mqtt://h:abc", "not a number"),
        ("mqtt://h:", "empty port"),
        ("mqtt://h/topic", "path"),
        ("mqtt://h?x=1", "query"),
        ("mqtt://h#frag", "fragment"),
        ("mqtt://h ost", "whitespace"),
        (" mqtt://h", "whitespace"),
        ("mqtt://::1:1883", "brackets"),
        ("mqtt://[::1", "unterminated"),
        ("mqtt://u:p%zz@h", "percent-encoding"),
        ("", "empty"),
    ])
    func rejectsInvalidURLs(url: String, expectedReason: String) {
        #expect {
            try MQTTEndpoint(url: url)
        } throws: { error in
            guard case let .invalidURL(reported, reason) = error as? MQTTError else { return false }
            return reported == MQTTEndpoint.maskPassword(in: url) && reason.contains(expectedReason)
        }
    }

    @Test func passwordIsMaskedEverywhere() throws {
        let endpoint = try MQTTEndpoint(url: "mqtt://alice:hunter2@broker:1883")
        #expect(endpoint.description == "mqtt://alice:***@broker:1883")
        #expect(!endpoint.debugDescription.contains("hunter2"))
        #expect(!"\(endpoint)".contains("hunter2"))
        #expect(!String(reflecting: endpoint).contains("hunter2"))

        for bad in ["mqtt://alice:hunter2@broker:0", "mqtt://alice:hunter2@", "mqtt://alice:hunter2@h/path", "tcp://alice:hunter2@h"] {
            do {
                _ = try MQTTEndpoint(url: bad)
                Issue.record("\(bad) parsed")
            } catch {
                #expect(!error.description.contains("hunter2"), "\(error)")
                #expect(error.description.contains("alice:***@"), "\(error)")
            }
        }
    }

    @Test func ipv6HostIsBracketedInDescription() throws {
        #expect(try MQTTEndpoint(url: "mqtt://[::1]:1999").description == "mqtt://[::1]:1999")
    }
}

@Suite("MQTT errors")
struct MQTTErrorTests {
    /// libmosquitto 2.0.11's own strings are useless for several codes; our table must not be.
    @Test func libmosquittoStrerrorIsUnknownForKeepalive() {
        #expect(String(cString: mosquitto_strerror(MOSQ_ERR_KEEPALIVE.rawValue)) == "Unknown error.")
    }

    @Test func keepaliveErrorMentionsKeepalive() {
        let error = MQTTError.library(code: 19, operation: "connection", context: "client 'c' at h:1883")
        #expect(error.description.contains("keepalive"))
        #expect(error.description.contains("MOSQ_ERR_KEEPALIVE"))
        #expect(error.description.contains("h:1883"))
    }

    @Test func everyLibraryCodeHasItsNameAndAMessage() {
        let codes: [(mosq_err_t, String)] = [
            (MOSQ_ERR_AUTH_CONTINUE, "MOSQ_ERR_AUTH_CONTINUE"), (MOSQ_ERR_NO_SUBSCRIBERS, "MOSQ_ERR_NO_SUBSCRIBERS"),
            (MOSQ_ERR_SUB_EXISTS, "MOSQ_ERR_SUB_EXISTS"), (MOSQ_ERR_CONN_PENDING, "MOSQ_ERR_CONN_PENDING"),
            (MOSQ_ERR_SUCCESS, "MOSQ_ERR_SUCCESS"), (MOSQ_ERR_NOMEM, "MOSQ_ERR_NOMEM"),
            (MOSQ_ERR_PROTOCOL, "MOSQ_ERR_PROTOCOL"), (MOSQ_ERR_INVAL, "MOSQ_ERR_INVAL"),
            (MOSQ_ERR_NO_CONN, "MOSQ_ERR_NO_CONN"), (MOSQ_ERR_CONN_REFUSED, "MOSQ_ERR_CONN_REFUSED"),
            (MOSQ_ERR_NOT_FOUND, "MOSQ_ERR_NOT_FOUND"), (MOSQ_ERR_CONN_LOST, "MOSQ_ERR_CONN_LOST"),
            (MOSQ_ERR_TLS, "MOSQ_ERR_TLS"), (MOSQ_ERR_PAYLOAD_SIZE, "MOSQ_ERR_PAYLOAD_SIZE"),
            (MOSQ_ERR_NOT_SUPPORTED, "MOSQ_ERR_NOT_SUPPORTED"), (MOSQ_ERR_AUTH, "MOSQ_ERR_AUTH"),
            (MOSQ_ERR_ACL_DENIED, "MOSQ_ERR_ACL_DENIED"), (MOSQ_ERR_UNKNOWN, "MOSQ_ERR_UNKNOWN"),
            (MOSQ_ERR_ERRNO, "MOSQ_ERR_ERRNO"), (MOSQ_ERR_EAI, "MOSQ_ERR_EAI"), (MOSQ_ERR_PROXY, "MOSQ_ERR_PROXY"),
            (MOSQ_ERR_PLUGIN_DEFER, "MOSQ_ERR_PLUGIN_DEFER"), (MOSQ_ERR_MALFORMED_UTF8, "MOSQ_ERR_MALFORMED_UTF8"),
            (MOSQ_ERR_KEEPALIVE, "MOSQ_ERR_KEEPALIVE"), (MOSQ_ERR_LOOKUP, "MOSQ_ERR_LOOKUP"),
            (MOSQ_ERR_MALFORMED_PACKET, "MOSQ_ERR_MALFORMED_PACKET"),
            (MOSQ_ERR_DUPLICATE_PROPERTY, "MOSQ_ERR_DUPLICATE_PROPERTY"), (MOSQ_ERR_TLS_HANDSHAKE, "MOSQ_ERR_TLS_HANDSHAKE"),
            (MOSQ_ERR_QOS_NOT_SUPPORTED, "MOSQ_ERR_QOS_NOT_SUPPORTED"), (MOSQ_ERR_OVERSIZE_PACKET, "MOSQ_ERR_OVERSIZE_PACKET"),
            (MOSQ_ERR_OCSP, "MOSQ_ERR_OCSP"), (MOSQ_ERR_TIMEOUT, "MOSQ_ERR_TIMEOUT"),
            (MOSQ_ERR_RETAIN_NOT_SUPPORTED, "MOSQ_ERR_RETAIN_NOT_SUPPORTED"),
            (MOSQ_ERR_TOPIC_ALIAS_INVALID, "MOSQ_ERR_TOPIC_ALIAS_INVALID"),
            (MOSQ_ERR_ADMINISTRATIVE_ACTION, "MOSQ_ERR_ADMINISTRATIVE_ACTION"), (MOSQ_ERR_ALREADY_EXISTS, "MOSQ_ERR_ALREADY_EXISTS"),
        ]
        #expect(codes.count == 36)  // -4...31: the whole 2.0.11 enum
        for (code, name) in codes {
            let info = MQTTLibraryCode.describe(code.rawValue)
            #expect(info.name == name)
            #expect(!info.message.isEmpty)
            #expect(!info.message.lowercased().contains("unknown error"), "\(name): \(info.message)")
        }
    }

    @Test func connackRefusalsAreNamedAndClassified() {
        #expect(MQTTConnectRefusal(code: 4, protocolVersion: .v311).description.contains("bad user name or password"))
        #expect(MQTTConnectRefusal(code: 5, protocolVersion: .v311).isPermanent)
        #expect(!MQTTConnectRefusal(code: 3, protocolVersion: .v311).isPermanent)
        #expect(MQTTConnectRefusal(code: 0x86, protocolVersion: .v5).description.contains("bad user name or password"))
        #expect(MQTTConnectRefusal(code: 0x87, protocolVersion: .v5).isPermanent)
        #expect(!MQTTConnectRefusal(code: 0x89, protocolVersion: .v5).isPermanent)
        #expect(MQTTError.publishRejected(reasonCode: 0x87, topic: "a/b").description.contains("not authorized"))
    }

    @Test func subackFailureCodesBecomeSubscriptionRejected() throws {
        #expect(try MQTTClientCore.grantedQoS(filters: ["a", "b"], codes: [1, 0]) == [.atLeastOnce, .atMostOnce])
        for codes: [Int32] in [[1, 0x80], [1, 0x87], [1]] {
            #expect {
                try MQTTClientCore.grantedQoS(filters: ["a", "b"], codes: codes)
            } throws: { error in
                guard case let .subscriptionRejected(filter) = error as? MQTTError else { return false }
                return filter == "b"
            }
        }
    }

    @Test func connectTimeoutNamesTheBroker() {
        let error = MQTTError.connectTimeout(host: "::1", port: 1883, seconds: 2)
        #expect(error.description.contains("[::1]:1883"))
    }
}

@Suite("MQTT reconnect policy")
struct MQTTReconnectPolicyTests {
    let policy = MQTTReconnectPolicy(initialDelay: 0.5, maxDelay: 30, multiplier: 2, jitter: 0.2)

    @Test func withoutJitterItIsExponentialThenCapped() {
        let delays = (1...12).map { policy.delay(afterFailures: $0, random: 0.5) }
        #expect(Array(delays.prefix(7)) == [0.5, 1, 2, 4, 8, 16, 30])
        #expect(delays.allSatisfy { $0 <= 30 })
        #expect(delays.suffix(6).allSatisfy { $0 == 30 })
        // Monotone (non-decreasing), strictly increasing before the cap.
        for (a, b) in zip(delays, delays.dropFirst()) { #expect(a <= b) }
        for (a, b) in zip(delays.prefix(6), delays.prefix(7).dropFirst()) { #expect(a < b) }
    }

    @Test func jitterStaysWithinBounds() {
        for n in 1...10 {
            let base = policy.delay(afterFailures: n, random: 0.5)
            let low = policy.delay(afterFailures: n, random: 0)
            let high = policy.delay(afterFailures: n, random: 1)
            #expect(abs(low - base * 0.8) < 1e-9)
            #expect(abs(high - min(30, base * 1.2)) < 1e-9)
            for r in stride(from: 0.0, through: 1.0, by: 0.1) {
                let value = policy.delay(afterFailures: n, random: r)
                #expect(value >= low - 1e-9 && value <= high + 1e-9 && value <= 30)
            }
        }
    }

    @Test func hugeFailureCountsAndEdgeInputsStayFinite() {
        #expect(policy.delay(afterFailures: Int.max, random: 0.5) == 30)
        #expect(policy.delay(afterFailures: 0, random: 0.5) == 0.5)
        #expect(policy.delay(afterFailures: -3, random: 0.5) == 0.5)
        #expect(policy.delay(afterFailures: 3, random: 7) == policy.delay(afterFailures: 3, random: 1))
        let constant = MQTTReconnectPolicy(initialDelay: 1, maxDelay: 1, multiplier: 1, jitter: 0)
        #expect((1...5).map { constant.delay(afterFailures: $0, random: 0.9) } == [1, 1, 1, 1, 1])
    }
}

@Suite("MQTT configuration and pre-checks")
struct MQTTValidationTests {
    func configuration(_ change: (inout MQTTClientConfiguration) -> Void) -> MQTTClientConfiguration {
        var config = MQTTClientConfiguration(endpoint: MQTTEndpoint(host: "127.0.0.1", port: 1), clientID: "c")
        change(&config)
        return config
    }

    @Test func outOfRangeValuesAreRejected() {
        let bad: [(String, MQTTClientConfiguration)] = [
            ("maxOutstandingPublishes", configuration { $0.maxOutstandingPublishes = 0 }),
            ("maxOutstandingPublishes", configuration { $0.maxOutstandingPublishes = 60_001 }),
            ("keepAlive", configuration { $0.keepAlive = 2 }),
            ("clientID", configuration { $0.clientID = ""; $0.cleanSession = false }),
            ("sessionExpiryInterval", configuration { $0.sessionExpiryInterval = 10 }),
            ("publishTimeout", configuration { $0.publishTimeout = 0 }),
            ("connectTimeout", configuration { $0.connectTimeout = -1 }),
            ("reconnect.jitter", configuration { $0.reconnect.jitter = 2 }),
            ("maxInflightMessages", configuration { $0.maxInflightMessages = 0 }),
        ]
        for (field, config) in bad {
            #expect {
                try MQTTClient(configuration: config)
            } throws: { error in
                guard case let .invalidConfiguration(reported, _) = error as? MQTTError else { return false }
                return reported == field
            }
        }
        #expect(throws: Never.self) { try MQTTClient(configuration: configuration { $0.maxOutstandingPublishes = 60_000 }) }
    }

    @Test func invalidTopicsFailBeforeAnythingIsSent() async throws {
        let client = try MQTTClient(configuration: configuration { _ in })
        for topic in ["", "a/+/b", "a/#"] {
            await #expect {
                try await client.publish(topic: topic, payload: [], qos: .atLeastOnce)
            } throws: { error in
                if case .invalidTopic = error as? MQTTError { return true } else { return false }
            }
        }
        await #expect {
            try await client.publish(topic: "a/\u{0}/b", payload: [], qos: .atMostOnce)
        } throws: { error in
            if case .malformedUTF8 = error as? MQTTError { return true } else { return false }
        }
        for filter in ["a/#/b", "a/b+", "", "#/a"] {
            await #expect {
                try await client.subscribe([filter], qos: .atLeastOnce)
            } throws: { error in
                if case .invalidTopic = error as? MQTTError { return true } else { return false }
            }
        }
        #expect(client.outstandingPublishCount == 0)
    }

    @Test func qos0BeforeConnectThrowsNotConnected() async throws {
        let client = try MQTTClient(configuration: configuration { _ in })
        await #expect {
            try await client.publish(topic: "a/b", payload: [1], qos: .atMostOnce)
        } throws: { error in
            guard case let .notConnected(_, context) = error as? MQTTError else { return false }
            return context.contains("127.0.0.1:1") && context.contains("'c'")
        }
    }
}
