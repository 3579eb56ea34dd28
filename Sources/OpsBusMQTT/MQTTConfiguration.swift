import Foundation

public enum MQTTQoS: Int32, Sendable, Hashable, CaseIterable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2
}

public enum MQTTProtocolVersion: Sendable, Hashable {
    case v311
    case v5
}

/// TLS settings, used when the endpoint is `mqtts://`.
public struct MQTTTLSConfiguration: Sendable, Hashable {
    /// PEM file with the CA certificate(s). When nil, the system CA directory `/etc/ssl/certs` is used.
    public var caFile: String?
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    public var certFile: String?
    public var keyFile: String?
    /// Skips certificate and host-name verification. Only for tests against self-signed brokers.
    public var insecureSkipVerify: Bool

    public static let defaultCAPath = "/etc/ssl/certs"

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, insecureSkipVerify: Bool = false) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.insecureSkipVerify = insecureSkipVerify
    }
}

extension MQTTTLSConfiguration {
    /// The variables that configure TLS for an `mqtts://` broker, as the CLI and `connectFromEnvironment` read them.
    public static let variableNames = ["MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE"]

    /// A problem with one of `variableNames`: the variable and what was expected (paths only, never file content).
    public typealias VariableProblem = MQTTVariableProblem

    /// TLS files from `MQTT_CA_FILE` (CA certificates, PEM; default the system store), `MQTT_CERT_FILE` and
    /// `MQTT_KEY_FILE` (client certificate and key, both or neither). Nil when none is set (empty means unset).
    /// They need an `mqtts://` URL (`useTLS`): files next to a plain-text URL would be a silent downgrade.
    public static func fromVariables(_ values: [String: String?], useTLS: Bool) throws(VariableProblem)
        -> MQTTTLSConfiguration?
    {
        func value(_ name: String) -> String? { values[name].flatMap { $0 }.flatMap { $0.isEmpty ? nil : $0 } }
        let given = variableNames.filter { value($0) != nil }
        guard let first = given.first else { return nil }
        guard useTLS else {
            throw VariableProblem(variable: first, reason: "TLS files need an mqtts:// broker URL (MQTT_URL)")
        }
        for name in given {
            let path = value(name)!
            if !FileManager.default.isReadableFile(atPath: path) {
                throw VariableProblem(variable: name, reason: "cannot read '\(path)' (expected a PEM file)")
            }
        }
        let certFile = value("MQTT_CERT_FILE"), keyFile = value("MQTT_KEY_FILE")
        if (certFile == nil) != (keyFile == nil) {
            throw VariableProblem(variable: "MQTT_CERT_FILE and MQTT_KEY_FILE",
                                  reason: "a client certificate needs its key: give both or neither")
        }
        return MQTTTLSConfiguration(caFile: value("MQTT_CA_FILE"), certFile: certFile, keyFile: keyFile)
    }
}

/// The message the broker publishes for us when our connection ends without a clean DISCONNECT.
public struct MQTTWill: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool

    public init(topic: String, payload: [UInt8], qos: MQTTQoS = .atLeastOnce, retain: Bool = false) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
    }
}

/// Delay before each reconnect attempt: capped exponential backoff with jitter.
///
/// We schedule reconnects ourselves because libmosquitto's "exponential" backoff is really quadratic
/// (`delay * (n+1)^2`) and has no jitter, so a fleet of workers would reconnect in lock-step after a broker restart.
public struct MQTTReconnectPolicy: Sendable, Hashable {
    /// Seconds before the first reconnect attempt.
    public var initialDelay: Double = 0.5
    /// Upper bound of any delay, jitter included.
    public var maxDelay: Double = 30
    /// Growth factor per consecutive failure.
    public var multiplier: Double = 2
    /// Fraction (0...1) by which a delay is randomly shortened or lengthened: delay × (1 ± jitter).
    public var jitter: Double = 0.2

    public init(initialDelay: Double = 0.5, maxDelay: Double = 30, multiplier: Double = 2, jitter: Double = 0.2) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The delay before the next attempt after `n` consecutive failures (`n` ≤ 1 gives about `initialDelay`).
    /// `random` is a uniform number in 0...1 (0.5 means no jitter). The result is
    /// `min(maxDelay, min(maxDelay, initialDelay × multiplier^(n-1)) × (1 + jitter × (2·random − 1)))`, never negative.
    public func delay(afterFailures n: Int, random: Double) -> Double {
        var base = max(0, initialDelay)
        if multiplier > 1, base > 0 {
            var step = 1
            while step < n && base < maxDelay {  // stops at the cap, so a huge n costs nothing
                base *= multiplier
                step += 1
            }
        }
        base = min(base, maxDelay)
        let r = min(1, max(0, random))
        let jittered = base * (1 + min(1, max(0, jitter)) * (2 * r - 1))
        return max(0, min(maxDelay, jittered))
    }
}

/// Everything `MQTTClient` needs; validated by `MQTTClient.init`.
public struct MQTTClientConfiguration: Sendable {
    public var endpoint: MQTTEndpoint
    /// Fixed client id; required for durable sessions (cleanSession false).
    public var clientID: String
    /// Seconds; libmosquitto requires 5...65535.
    public var keepAlive: Int = 30
    /// false = durable session: the broker keeps our subscriptions and queues QoS ≥ 1 messages while we are away.
    public var cleanSession: Bool = true
    public var protocolVersion: MQTTProtocolVersion = .v311
    /// MQTT v5 only: how long the broker keeps the session after we disconnect. nil = 0 for cleanSession, "never
    /// expires" (0xFFFFFFFF) otherwise, so a v5 durable session behaves like a v3.1.1 one.
    public var sessionExpiryInterval: UInt32?
    public var will: MQTTWill?
    /// Called on the network thread before every connection attempt (the first and each reconnect); its will
    /// replaces `will` for that connection (nil clears it). Lets a publisher stamp each connection's will with a
    /// fresh birth/death counter (Sparkplug's `bdSeq`), so a late will of an old connection is recognisably stale.
    /// Keep it quick and non-blocking.
    public var willForConnection: (@Sendable () -> MQTTWill?)?
    public var tls: MQTTTLSConfiguration?
    public var reconnect: MQTTReconnectPolicy = .init()
    /// Seconds to wait for a CONNACK in `connect()`, and the bound of one reconnect attempt.
    public var connectTimeout: Double = 10
    /// Our own bound on unacknowledged QoS 1/2 publishes (libmosquitto's queue is unbounded and its message ids
    /// wrap at 65535, which would make acknowledgements ambiguous). 1...60000.
    public var maxOutstandingPublishes: Int = 10_000
    /// Seconds a QoS 1/2 publish waits for its acknowledgement (and for a free slot); also bounds SUBACK/UNSUBACK.
    public var publishTimeout: Double = 30
    /// QoS 1/2 messages libmosquitto keeps in flight at once (MQTT v3.1.1; with v5 the broker's Receive Maximum
    /// from CONNACK overrides it). 1...65535.
    public var maxInflightMessages: Int = 20

    public init(
        endpoint: MQTTEndpoint, clientID: String, keepAlive: Int = 30, cleanSession: Bool = true,
        protocolVersion: MQTTProtocolVersion = .v311, sessionExpiryInterval: UInt32? = nil, will: MQTTWill? = nil,
        tls: MQTTTLSConfiguration? = nil, reconnect: MQTTReconnectPolicy = .init(), connectTimeout: Double = 10,
        maxOutstandingPublishes: Int = 10_000, publishTimeout: Double = 30, maxInflightMessages: Int = 20
    ) {
        self.endpoint = endpoint
        self.clientID = clientID
        self.keepAlive = keepAlive
        self.cleanSession = cleanSession
        self.protocolVersion = protocolVersion
        self.sessionExpiryInterval = sessionExpiryInterval
        self.will = will
        self.tls = tls
        self.reconnect = reconnect
        self.connectTimeout = connectTimeout
        self.maxOutstandingPublishes = maxOutstandingPublishes
        self.publishTimeout = publishTimeout
        self.maxInflightMessages = maxInflightMessages
    }

    /// Throws `.invalidConfiguration` for the first out-of-range value.
    public func validate() throws(MQTTError) {
        func fail(_ field: String, _ reason: String) -> MQTTError { .invalidConfiguration(field: field, reason: reason) }
        if endpoint.host.isEmpty { throw fail("endpoint.host", "empty") }
        if !(1...65535).contains(endpoint.port) { throw fail("endpoint.port", "\(endpoint.port) is outside 1...65535") }
        if clientID.isEmpty && !cleanSession {
            throw fail("clientID", "a durable session (cleanSession false) needs a fixed client id")
        }
        if clientID.utf8.count > 65535 { throw fail("clientID", "longer than 65535 bytes") }
        if !MQTTValidation.isValidUTF8(clientID) { throw .malformedUTF8(field: "client id", value: clientID) }
        if !(5...65535).contains(keepAlive) { throw fail("keepAlive", "\(keepAlive) s is outside 5...65535") }
        if sessionExpiryInterval != nil && protocolVersion != .v5 {
            throw fail("sessionExpiryInterval", "only MQTT v5 has session expiry")
        }
        let policy = reconnect
        guard policy.initialDelay.isFinite, policy.initialDelay >= 0 else {
            throw fail("reconnect.initialDelay", "\(policy.initialDelay) must be ≥ 0")
        }
        guard policy.maxDelay.isFinite, policy.maxDelay > 0, policy.maxDelay >= policy.initialDelay else {
            throw fail("reconnect.maxDelay", "\(policy.maxDelay) must be > 0 and ≥ initialDelay")
        }
        guard policy.multiplier.isFinite, policy.multiplier >= 1 else {
            throw fail("reconnect.multiplier", "\(policy.multiplier) must be ≥ 1")
        }
        guard (0...1).contains(policy.jitter) else { throw fail("reconnect.jitter", "\(policy.jitter) must be in 0...1") }
        guard connectTimeout.isFinite, connectTimeout > 0 else {
            throw fail("connectTimeout", "\(connectTimeout) must be > 0")
        }
        guard (1...60_000).contains(maxOutstandingPublishes) else {
            throw fail("maxOutstandingPublishes", "\(maxOutstandingPublishes) is outside 1...60000 (message ids wrap at 65535)")
        }
        guard publishTimeout.isFinite, publishTimeout > 0 else {
            throw fail("publishTimeout", "\(publishTimeout) must be > 0")
        }
        guard (1...65535).contains(maxInflightMessages) else {
            throw fail("maxInflightMessages", "\(maxInflightMessages) is outside 1...65535")
        }
        if let will {
            try MQTTValidation.checkTopicName(will.topic)
            if will.payload.count > MQTTValidation.maxPayload {
                throw .payloadTooLarge(topic: will.topic, size: will.payload.count, limit: MQTTValidation.maxPayload)
            }
        }
        if let tls = tls ?? endpoint.tls, (tls.certFile == nil) != (tls.keyFile == nil) {
            throw fail("tls", "certFile and keyFile must be given together")
        }
        if let username = endpoint.username, !MQTTValidation.isValidUTF8(username) {
            throw .malformedUTF8(field: "user name", value: username)
        }
    }
}

/// An incoming PUBLISH.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    public var retain: Bool
    /// The MQTT packet id (0 for QoS 0). Only unique among the messages in flight at one time.
    public var messageID: Int32

    public init(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, messageID: Int32) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.messageID = messageID
    }
}

/// What a message handler decided. See `MQTTClient.setMessageHandler`.
public enum MQTTMessageDisposition: Sendable, Hashable {
    /// Processed: let the PUBACK go.
    case accept
    /// Not processed: drop the connection before the PUBACK leaves so the broker redelivers (QoS 1, durable session).
    case reject
}

public enum MQTTConnectionEvent: Sendable {
    /// CONNACK accepted. `sessionPresent` true means the broker still had our durable session.
    case connected(sessionPresent: Bool)
    /// The connection ended; nil after `disconnect()`, otherwise why it was lost.
    case disconnected(MQTTError?)
    /// The next connect attempt (1, 2, ...) starts after `delay` seconds.
    case reconnecting(attempt: Int, delay: Double)
}
