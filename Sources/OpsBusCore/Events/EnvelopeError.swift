/// Why an event envelope was refused. Every case names the offending key and, where useful, the value.
public enum EnvelopeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The payload is larger than the decode limit.
    case oversize(bytes: Int, limit: Int)
    /// The payload is not valid JSON.
    case invalidJSON(JSONParseError)
    /// The payload is valid JSON but not an object.
    case notAnObject(got: JSONValue.Kind)
    /// A required envelope key (`event_id`, `event_type`, `timestamp`, `source`, `session_id`, `seq`, `schema`)
    /// is absent.
    case missingEnvelopeField(String)
    /// An envelope key or event field has the wrong JSON kind.
    case wrongFieldType(field: String, expected: FieldKind, got: JSONValue.Kind)
    /// `event_type` is not one of `EventType`.
    case unknownEventType(String)
    /// `schema` is not a version this code understands.
    case unsupportedSchemaVersion(Int64, supported: Int)
    /// An id (`job_id`, `worker_id`, `event_id`, the topic subject, …) breaks the id rule.
    case invalidIdentifier(IdentifierError)
    /// `timestamp` is not ISO 8601.
    case invalidTimestamp(TimestampError)
    /// A key has the right kind but an impossible value (negative `seq`, progress above 100, unknown status, …).
    case invalidFieldValue(field: String, value: String, reason: String)
    /// A field the event type requires is absent (including the subject id, e.g. `job_id` for job events).
    case missingField(eventType: EventType, field: String)
    /// An outgoing envelope carries an envelope key name inside `fields` (only from `validate()`).
    case reservedFieldName(String)

    public var description: String {
        switch self {
        case .oversize(let bytes, let limit):
            return "event payload is \(bytes) bytes, limit is \(limit)"
        case .invalidJSON(let error):
            return "event payload is not valid JSON: \(error)"
        case .notAnObject(let kind):
            return "event payload must be a JSON object, got \(kind)"
        case .missingEnvelopeField(let field):
            return "event envelope is missing required key \"\(field)\""
        case .wrongFieldType(let field, let expected, let got):
            return "event key \"\(EscapedText.escape(field))\" must be \(expected), got \(got)"
        case .unknownEventType(let type):
            return "unknown event_type \"\(EscapedText.escape(type))\""
        case .unsupportedSchemaVersion(let version, let supported):
            return "unsupported schema version \(version) (this build understands 1...\(supported))"
        case .invalidIdentifier(let error):
            return error.description
        case .invalidTimestamp(let error):
            return error.description
        case .invalidFieldValue(let field, let value, let reason):
            return "invalid \(EscapedText.escape(field)) \(EscapedText.escape(value)): \(reason)"
        case .missingField(let eventType, let field):
            return "\(eventType) event is missing required field \"\(field)\""
        case .reservedFieldName(let name):
            return "event field \"\(EscapedText.escape(name))\" clashes with an envelope key"
        }
    }
}
