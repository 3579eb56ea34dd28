/// Everything that can go wrong in the MQTT client, with the context (broker, client id, topic) needed to act on it.
///
/// libmosquitto error codes are described by our own table (`MQTTLibraryCode`), not `mosquitto_strerror`: the
/// 2.0.11 version answers "Unknown error." for several codes we meet in practice (19 keepalive, 20 lookup, ...).
public enum MQTTError: Error, CustomStringConvertible, Sendable {
    /// The broker URL could not be parsed. `url` has any password replaced by `***`.
    case invalidURL(url: String, reason: String)
    /// A configuration value is out of range (checked by `MQTTClient.init`).
    case invalidConfiguration(field: String, reason: String)
    /// A libmosquitto call returned an error code. `operation` names the call, `context` the client and broker.
    case library(code: Int32, operation: String, context: String)
    /// The broker answered CONNECT with a refusal (bad credentials, not authorised, ...).
    case connectionRefused(reason: MQTTConnectRefusal, context: String)
    /// No CONNACK within `seconds` (broker down, unreachable, or too slow).
    case connectTimeout(host: String, port: Int, seconds: Double)
    /// The operation needs a live connection and there is none (QoS 0 publishes are dropped, never queued).
    case notConnected(operation: String, context: String)
    /// `disconnect()` was called; the client does not connect again.
    case disconnectedByClient(operation: String, context: String)
    /// The connection dropped while waiting for a SUBACK/UNSUBACK (the request is not resent).
    case connectionLost(operation: String, context: String)
    /// An MQTT v5 broker answered a QoS 1/2 PUBLISH with a failure reason code (≥ 0x80); the message is not retried.
    case publishRejected(reasonCode: Int, topic: String)
    /// A QoS 1/2 PUBLISH was not acknowledged in time. The message stays queued in libmosquitto and may still be
    /// delivered later (it keeps its slot in `maxOutstandingPublishes` until then).
    case publishTimeout(topic: String, seconds: Double)
    /// `maxOutstandingPublishes` QoS 1/2 messages were unacknowledged for the whole `publishTimeout`.
    case outstandingLimitReached(limit: Int, topic: String)
    /// The broker granted 0x80 (failure) for this filter.
    case subscriptionRejected(filter: String)
    /// A SUBSCRIBE/UNSUBSCRIBE was not acknowledged in time.
    case requestTimeout(operation: String, seconds: Double, context: String)
    /// Topic name or filter is not valid MQTT (empty, wildcards in a topic name, misplaced `#`/`+`, too long).
    case invalidTopic(topic: String, reason: String)
    /// A string that MQTT transmits is not valid MQTT UTF-8 (e.g. contains U+0000 or control characters).
    case malformedUTF8(field: String, value: String)
    /// The payload exceeds the MQTT maximum (268 435 455 bytes) or the broker's maximum packet size.
    case payloadTooLarge(topic: String, size: Int, limit: Int)
    /// The calling task was cancelled. For a publish, the message may still be delivered.
    case cancelled(operation: String)

    public var description: String {
        switch self {
        case let .invalidURL(url, reason):
            return "invalid MQTT URL '\(url)': \(reason)"
        case let .invalidConfiguration(field, reason):
            return "invalid MQTT client configuration, \(field): \(reason)"
        case let .library(code, operation, context):
            let info = MQTTLibraryCode.describe(code)
            return "\(operation) failed for \(context): \(info.name) (\(code)): \(info.message)"
        case let .connectionRefused(reason, context):
            return "broker refused the connection of \(context): \(reason)"
        case let .connectTimeout(host, port, seconds):
            return "could not connect to the MQTT broker at \(MQTTEndpoint.hostPort(host, port)) within \(seconds) s "
                + "(broker not running, not reachable, or not answering CONNECT)"
        case let .notConnected(operation, context):
            return "\(operation) failed for \(context): not connected to the broker"
        case let .disconnectedByClient(operation, context):
            return "\(operation) failed for \(context): the client was disconnected with disconnect()"
        case let .connectionLost(operation, context):
            return "\(operation) failed for \(context): the connection was lost before the broker answered"
        case let .publishRejected(reasonCode, topic):
            return "broker rejected the publish to '\(topic)': \(MQTTReasonCode.describe(reasonCode))"
        case let .publishTimeout(topic, seconds):
            return "publish to '\(topic)' was not acknowledged within \(seconds) s "
                + "(it stays queued and may still be delivered)"
        case let .outstandingLimitReached(limit, topic):
            return "publish to '\(topic)' gave up: \(limit) QoS 1/2 messages already await acknowledgement "
                + "(maxOutstandingPublishes) and no slot freed up within the publish timeout"
        case let .subscriptionRejected(filter):
            return "broker rejected the subscription to '\(filter)' (granted 0x80)"
        case let .requestTimeout(operation, seconds, context):
            return "\(operation) for \(context) was not acknowledged within \(seconds) s"
        case let .invalidTopic(topic, reason):
            return "invalid MQTT topic '\(topic)': \(reason)"
        case let .malformedUTF8(field, value):
            return "\(field) '\(value)' is not valid MQTT UTF-8 (no U+0000, control characters or non-characters)"
        case let .payloadTooLarge(topic, size, limit):
            return "payload of \(size) bytes for '\(topic)' exceeds the limit of \(limit) bytes"
        case let .cancelled(operation):
            return "\(operation) was cancelled"
        }
    }
}

/// Why the broker refused a CONNECT: an MQTT v3.1.1 CONNACK return code (1–5) or an MQTT v5 reason code (≥ 0x80).
public struct MQTTConnectRefusal: Sendable, Hashable, CustomStringConvertible {
    public let code: Int
    public let protocolVersion: MQTTProtocolVersion

    public init(code: Int, protocolVersion: MQTTProtocolVersion) {
        self.code = code
        self.protocolVersion = protocolVersion
    }

    /// Refusals that retrying cannot fix (credentials, authorisation, protocol, client id, ban). `connect()` gives
    /// up on these at once; "server unavailable"/"busy"/"quota" style refusals are retried.
    public var isPermanent: Bool {
        switch protocolVersion {
        case .v311:
            return code != 3
        case .v5:
            return ![0x88, 0x89, 0x97, 0x9F, 0x80, 0x83].contains(code)
        }
    }

    public var description: String {
        switch protocolVersion {
        case .v311:
            let text: String
            switch code {
            case 1: text = "unacceptable protocol version"
            case 2: text = "client identifier rejected"
            case 3: text = "server unavailable"
            case 4: text = "bad user name or password"
            case 5: text = "not authorised"
            default: text = "unknown CONNACK return code"
            }
            return "CONNACK \(code) (\(text))"
        case .v5:
            return MQTTReasonCode.describe(code)
        }
    }
}

/// Names of the MQTT v5 reason codes (spec table 2-6), used for CONNACK, PUBACK, SUBACK and DISCONNECT.
public enum MQTTReasonCode {
    public static func name(_ code: Int) -> String {
        switch code {
        case 0x00: return "success"
        case 0x01: return "granted QoS 1"
        case 0x02: return "granted QoS 2"
        case 0x04: return "disconnect with will message"
        case 0x10: return "no matching subscribers"
        case 0x11: return "no subscription existed"
        case 0x18: return "continue authentication"
        case 0x19: return "re-authenticate"
        case 0x80: return "unspecified error"
        case 0x81: return "malformed packet"
        case 0x82: return "protocol error"
        case 0x83: return "implementation specific error"
        case 0x84: return "unsupported protocol version"
        case 0x85: return "client identifier not valid"
        case 0x86: return "bad user name or password"
        case 0x87: return "not authorized"
        case 0x88: return "server unavailable"
        case 0x89: return "server busy"
        case 0x8A: return "banned"
        case 0x8B: return "server shutting down"
        case 0x8C: return "bad authentication method"
        case 0x8D: return "keep alive timeout"
        case 0x8E: return "session taken over"
        case 0x8F: return "topic filter invalid"
        case 0x90: return "topic name invalid"
        case 0x91: return "packet identifier in use"
        case 0x92: return "packet identifier not found"
        case 0x93: return "receive maximum exceeded"
        case 0x94: return "topic alias invalid"
        case 0x95: return "packet too large"
        case 0x96: return "message rate too high"
        case 0x97: return "quota exceeded"
        case 0x98: return "administrative action"
        case 0x99: return "payload format invalid"
        case 0x9A: return "retain not supported"
        case 0x9B: return "QoS not supported"
        case 0x9C: return "use another server"
        case 0x9D: return "server moved"
        case 0x9E: return "shared subscriptions not supported"
        case 0x9F: return "connection rate exceeded"
        case 0xA0: return "maximum connect time"
        case 0xA1: return "subscription identifiers not supported"
        case 0xA2: return "wildcard subscriptions not supported"
        default: return "unknown reason code"
        }
    }

    public static func describe(_ code: Int) -> String {
        "reason code 0x\(String(code, radix: 16, uppercase: true)) (\(name(code)))"
    }
}

/// Our table of libmosquitto 2.0.11 `MOSQ_ERR_*` codes: name and a message that says what it means for the caller.
public enum MQTTLibraryCode {
    public static func describe(_ code: Int32) -> (name: String, message: String) {
        switch code {
        case -4: return ("MOSQ_ERR_AUTH_CONTINUE", "extended authentication continues")
        case -3: return ("MOSQ_ERR_NO_SUBSCRIBERS", "no subscribers matched the message")
        case -2: return ("MOSQ_ERR_SUB_EXISTS", "the subscription already exists")
        case -1: return ("MOSQ_ERR_CONN_PENDING", "the TCP connection is still being established")
        case 0: return ("MOSQ_ERR_SUCCESS", "success")
        case 1: return ("MOSQ_ERR_NOMEM", "out of memory")
        case 2: return ("MOSQ_ERR_PROTOCOL", "MQTT protocol error (the broker sent something unexpected, or refused "
            + "the connection with an MQTT v5 reason code)")
        case 3: return ("MOSQ_ERR_INVAL", "invalid argument passed to libmosquitto")
        case 4: return ("MOSQ_ERR_NO_CONN", "the client is not connected to a broker")
        case 5: return ("MOSQ_ERR_CONN_REFUSED", "the broker refused the connection (CONNACK return code ≠ 0)")
        case 6: return ("MOSQ_ERR_NOT_FOUND", "message or packet id not found")
        case 7: return ("MOSQ_ERR_CONN_LOST", "the connection to the broker was lost (closed by the peer)")
        case 8: return ("MOSQ_ERR_TLS", "TLS error (certificate, key or handshake failure)")
        case 9: return ("MOSQ_ERR_PAYLOAD_SIZE", "payload too large (MQTT maximum is 268 435 455 bytes)")
        case 10: return ("MOSQ_ERR_NOT_SUPPORTED", "feature not supported by this libmosquitto build or protocol "
            + "version")
        case 11: return ("MOSQ_ERR_AUTH", "authentication failed")
        case 12: return ("MOSQ_ERR_ACL_DENIED", "access denied by the broker's ACL")
        case 13: return ("MOSQ_ERR_UNKNOWN", "unspecified libmosquitto error")
        case 14: return ("MOSQ_ERR_ERRNO", "operating-system error (see errno; e.g. connection refused, network "
            + "unreachable)")
        case 15: return ("MOSQ_ERR_EAI", "host name lookup failed (getaddrinfo)")
        case 16: return ("MOSQ_ERR_PROXY", "SOCKS5 proxy error")
        case 17: return ("MOSQ_ERR_PLUGIN_DEFER", "plugin deferred the decision")
        case 18: return ("MOSQ_ERR_MALFORMED_UTF8", "a string is not valid MQTT UTF-8")
        case 19: return ("MOSQ_ERR_KEEPALIVE", "keepalive timeout: nothing was received from the broker within the "
            + "keepalive interval (link down or broker hung)")
        case 20: return ("MOSQ_ERR_LOOKUP", "DNS lookup of the broker host failed")
        case 21: return ("MOSQ_ERR_MALFORMED_PACKET", "received a malformed MQTT packet")
        case 22: return ("MOSQ_ERR_DUPLICATE_PROPERTY", "an MQTT v5 property was given twice")
        case 23: return ("MOSQ_ERR_TLS_HANDSHAKE", "TLS handshake failed")
        case 24: return ("MOSQ_ERR_QOS_NOT_SUPPORTED", "the broker does not support this QoS")
        case 25: return ("MOSQ_ERR_OVERSIZE_PACKET", "packet larger than the broker's maximum packet size")
        case 26: return ("MOSQ_ERR_OCSP", "OCSP certificate status check failed")
        case 27: return ("MOSQ_ERR_TIMEOUT", "operation timed out")
        case 28: return ("MOSQ_ERR_RETAIN_NOT_SUPPORTED", "the broker does not support retained messages")
        case 29: return ("MOSQ_ERR_TOPIC_ALIAS_INVALID", "invalid MQTT v5 topic alias")
        case 30: return ("MOSQ_ERR_ADMINISTRATIVE_ACTION", "the broker disconnected the client by administrative "
            + "action")
        case 31: return ("MOSQ_ERR_ALREADY_EXISTS", "the item already exists")
        default: return ("MOSQ_ERR_\(code)", "libmosquitto error code \(code) not known to this wrapper")
        }
    }
}
