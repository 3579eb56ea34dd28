import OpsBusCore
import OpsBusMQTT
import OpsBusSpool

/// Why an event was not published. Nothing is sent when validation fails.
public enum EventPublisherError: Error, CustomStringConvertible, Sendable {
    /// A context variable (`WORKER_ID` …) holds an invalid value.
    case invalidContext(variable: String, reason: String)
    /// An id given to a publish call cannot become a topic level or Redis key.
    case invalidIdentifier(IdentifierError)
    /// The event misses a required field or has a wrong field type.
    case invalidEvent(EnvelopeError)
    /// The event needs a subject id the call did not give (e.g. a worker event without a worker id).
    case missingSubject(eventType: EventType, needed: String)
    /// The subject given for the topic is not the one the payload names (e.g. `--subject q1` with `queue: q2`).
    case subjectMismatch(eventType: EventType, given: String, payload: String)
    /// The broker did not take the message (not connected for QoS 0, timeout, refused …).
    case transport(MQTTError, topic: String)
    /// The spool could not take the event (full of events it must not drop, disk error, locked by another
    /// process). Nothing was accepted: the caller decides (retry later, fail the job, alert).
    case spool(SpoolError)

    public var description: String {
        switch self {
        case let .invalidContext(variable, reason): return "invalid \(variable): \(reason)"
        case let .invalidIdentifier(error): return error.description
        case let .invalidEvent(error): return "invalid event: \(error)"
        case let .missingSubject(eventType, needed):
            return "\(eventType.rawValue) needs a \(needed) (pass it, or set it in the publisher context)"
        case let .subjectMismatch(eventType, given, payload):
            return "\(eventType.rawValue): subject \"\(given)\" disagrees with the payload's \(eventType.subjectFieldName) \"\(payload)\""
        case let .transport(error, topic): return "publish to \(topic) failed: \(error)"
        case let .spool(error): return "spool: \(error)"
        }
    }
}
