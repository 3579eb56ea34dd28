/// Why a topic, topic prefix or subscription filter was refused, or why a topic does not fit its payload.
public enum TopicError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The configured prefix breaks the prefix rules (no wildcards, no empty levels, no leading `$`, no NUL or
    /// control characters).
    case invalidPrefix(prefix: String, reason: String)
    /// The topic does not start with the scheme's prefix.
    case wrongPrefix(topic: String, expectedPrefix: String)
    /// The topic is not one of the documented shapes (`jobs/<job_id>/completed`, …).
    case unknownTopic(String)
    /// The topic's subject level is not a valid id.
    case invalidSubject(topic: String, error: IdentifierError)
    /// The topic and the payload disagree; `what` is `event type` or `subject`.
    case payloadMismatch(topic: String, what: String, topicValue: String, payloadValue: String)
    /// The payload does not carry the id its topic subject must come from.
    case payloadSubjectUnavailable(topic: String, error: EnvelopeError)
    /// Subscription filter is empty.
    case emptyFilter
    /// Subscription filter is longer than MQTT allows (65535 bytes of UTF-8).
    case filterTooLong(bytes: Int)
    /// Subscription filter contains U+0000.
    case nulInFilter
    /// `#` appears somewhere other than as the whole last level.
    case misplacedMultiLevelWildcard(filter: String)
    /// `+` shares a level with other characters (`a+/b`).
    case partialLevelWildcard(filter: String, level: String)
    /// `$share/<group>/<filter>` is malformed.
    case invalidSharedSubscription(filter: String, reason: String)

    public var description: String {
        switch self {
        case .invalidPrefix(let prefix, let reason):
            return "invalid topic prefix \"\(EscapedText.escape(prefix))\": \(reason)"
        case .wrongPrefix(let topic, let expectedPrefix):
            return "topic \"\(EscapedText.escape(topic, limit: 200))\" does not start with the prefix \"\(EscapedText.escape(expectedPrefix))/\""
        case .unknownTopic(let topic):
            return "topic \"\(EscapedText.escape(topic, limit: 200))\" is not an opsbus event topic "
                + "(expected e.g. jobs/<job_id>/completed, workers/<worker_id>/health, triggers/retry/<subject_id>)"
        case .invalidSubject(let topic, let error):
            return "topic \"\(EscapedText.escape(topic, limit: 200))\" has an invalid subject: \(error)"
        case .payloadMismatch(let topic, let what, let topicValue, let payloadValue):
            return "topic \"\(EscapedText.escape(topic, limit: 200))\" says \(what) \"\(EscapedText.escape(topicValue))\" "
                + "but the payload says \"\(EscapedText.escape(payloadValue))\""
        case .payloadSubjectUnavailable(let topic, let error):
            return "cannot check topic \"\(EscapedText.escape(topic, limit: 200))\" against its payload: \(error)"
        case .emptyFilter:
            return "subscription filter must not be empty"
        case .filterTooLong(let bytes):
            return "subscription filter is \(bytes) bytes, at most 65535 allowed"
        case .nulInFilter:
            return "subscription filter must not contain NUL"
        case .misplacedMultiLevelWildcard(let filter):
            return "subscription filter \"\(EscapedText.escape(filter, limit: 200))\": '#' must be the whole last level"
        case .partialLevelWildcard(let filter, let level):
            return "subscription filter \"\(EscapedText.escape(filter, limit: 200))\": '+' must be a whole level, "
                + "not part of \"\(EscapedText.escape(level))\""
        case .invalidSharedSubscription(let filter, let reason):
            return "shared subscription \"\(EscapedText.escape(filter, limit: 200))\": \(reason)"
        }
    }
}
