/// A topic decoded by `TopicScheme.parse`.
public struct ParsedTopic: Sendable, Hashable {
    public let eventType: EventType
    public let subject: Identifier

    public init(eventType: EventType, subject: Identifier) {
        self.eventType = eventType
        self.subject = subject
    }
}

/// Maps event types and subjects to MQTT topics and back.
///
/// Shapes (under an optional prefix such as `prod/eu`):
///
/// - `jobs/<job_id>/{received,started,progress,completed,failed}`
/// - `workers/<worker_id>/{registered,deregistered,health,heartbeat}`
/// - `resources/<worker_id>/{allocated,released}`
/// - `queues/<queue>/state`, `services/<service>/health`, `models/<model>/loaded`
/// - `triggers/{notification,retry,precache,workflow,scaling,failover,recommendation}/<subject_id>`
///
/// Subjects follow the id rule, so a subject is always exactly one topic level and never a wildcard.
public struct TopicScheme: Sendable, Hashable {
    /// Prefix levels joined by `/`, without a trailing `/`; `nil` for none.
    public let prefix: String?

    /// The scheme without a prefix (topics exactly as in `topics.md`).
    public static let unprefixed = TopicScheme(validatedPrefix: nil)

    private init(validatedPrefix: String?) {
        prefix = validatedPrefix
    }

    /// Validates the prefix: levels must be non-empty and free of `+`, `#`, NUL and control characters, and
    /// the prefix must not start with `$` (reserved for broker topics such as `$SYS`). An empty string means
    /// no prefix.
    public init(prefix: String? = nil) throws(TopicError) {
        guard let prefix, !prefix.isEmpty else {
            self.prefix = nil
            return
        }
        if prefix.utf8.first == UInt8(ascii: "$") {
            throw .invalidPrefix(prefix: prefix, reason: "must not start with '$' (reserved for broker topics)")
        }
        if prefix.utf8.count > 32_768 {
            throw .invalidPrefix(prefix: prefix, reason: "longer than 32768 bytes")
        }
        for level in prefix.split(separator: "/", omittingEmptySubsequences: false) {
            if level.isEmpty {
                throw .invalidPrefix(prefix: prefix, reason: "empty level (leading, trailing or double '/')")
            }
            for scalar in level.unicodeScalars {
                if scalar == "+" || scalar == "#" {
                    throw .invalidPrefix(prefix: prefix, reason: "contains the wildcard '\(scalar)'")
                }
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    throw .invalidPrefix(prefix: prefix, reason: "contains a control character")
                }
            }
        }
        self.prefix = prefix
    }

    private func prefixed(_ path: String) -> String {
        guard let prefix else { return path }
        return prefix + "/" + path
    }

    /// The topic for an event about `subject`.
    public func topic(for eventType: EventType, subject: Identifier) -> String {
        if eventType.subjectKind == .trigger {
            return prefixed("triggers/\(eventType.action)/\(subject.rawValue)")
        }
        return prefixed("\(eventType.topicFamily.rawValue)/\(subject.rawValue)/\(eventType.action)")
    }

    /// The end-to-end acknowledgement topic of one publisher session, `acks/<owner>/<session_id>` (retained; the
    /// bridge publishes `{"session_id":…,"seq":N,…}` there once `seq` 1…N are all in Redis). See `topics.md`.
    public func ackTopic(owner: Identifier, sessionID: String) -> String {
        prefixed("acks/\(owner.rawValue)/\(sessionID)")
    }

    /// The acknowledgement topic for `envelope`'s session.
    public func ackTopic(for envelope: EventEnvelope) -> String {
        ackTopic(owner: envelope.ackOwner, sessionID: envelope.sessionID)
    }

    /// The topic an envelope belongs on (its subject from `EventEnvelope.topicSubject()`).
    public func topic(for envelope: EventEnvelope) throws(EnvelopeError) -> String {
        topic(for: envelope.eventType, subject: try envelope.topicSubject())
    }

    /// `(family, action)` → event type.
    private static let eventTypesByLevels: [String: EventType] = {
        var table: [String: EventType] = [:]
        for type in EventType.allCases { table[type.topicFamily.rawValue + "/" + type.action] = type }
        return table
    }()

    /// Decodes a topic into event type and subject.
    public func parse(_ topic: String) throws(TopicError) -> ParsedTopic {
        var rest = Substring(topic)
        if let prefix {
            guard rest.hasPrefix(prefix), rest.dropFirst(prefix.count).first == "/" else {
                throw .wrongPrefix(topic: topic, expectedPrefix: prefix)
            }
            rest = rest.dropFirst(prefix.count + 1)
        }
        // Exactly three levels. Found by scanning the UTF-8 bytes: `split` built an array of substrings per message,
        // a twentieth of the processor's instructions per event (`Benchmarks/service_callgrind.py`).
        let utf8 = rest.utf8
        let slash = UInt8(ascii: "/")
        guard let first = utf8.firstIndex(of: slash),
              let second = utf8[utf8.index(after: first)...].firstIndex(of: slash),
              !utf8[utf8.index(after: second)...].contains(slash)
        else { throw .unknownTopic(topic) }
        let family = rest[..<first]
        let middle = rest[rest.index(after: first)..<second]
        let last = rest[rest.index(after: second)...]
        let eventType: EventType?
        let subjectLevel: Substring
        if family == "triggers" {
            eventType = Self.eventTypesByLevels["triggers/" + middle]
            subjectLevel = last
        } else {
            eventType = Self.eventTypesByLevels[family + "/" + last]
            subjectLevel = middle
        }
        guard let eventType else { throw .unknownTopic(topic) }
        do {
            let subject = try Identifier(validating: String(subjectLevel), field: eventType.subjectFieldName)
            return ParsedTopic(eventType: eventType, subject: subject)
        } catch {
            throw .invalidSubject(topic: topic, error: error)
        }
    }

    /// Refuses a topic whose event type or subject disagrees with the payload — a worker publishing
    /// `job.failed` for job A on `jobs/B/completed` must not be able to corrupt B's state.
    /// Returns the parsed topic, so callers need not parse it twice.
    @discardableResult
    public func check(topic: String, matches envelope: EventEnvelope) throws(TopicError) -> ParsedTopic {
        let parsed = try parse(topic)
        guard parsed.eventType == envelope.eventType else {
            throw .payloadMismatch(topic: topic, what: "event type", topicValue: parsed.eventType.rawValue,
                                   payloadValue: envelope.eventType.rawValue)
        }
        let subject: Identifier
        do {
            subject = try envelope.topicSubject()
        } catch {
            throw .payloadSubjectUnavailable(topic: topic, error: error)
        }
        guard parsed.subject == subject else {
            throw .payloadMismatch(topic: topic, what: envelope.eventType.subjectFieldName,
                                   topicValue: parsed.subject.rawValue, payloadValue: subject.rawValue)
        }
        return parsed
    }

    /// The filter matching every topic of one event type (`jobs/+/completed`, `triggers/retry/+`).
    public func filter(for eventType: EventType) -> String {
        if eventType.subjectKind == .trigger { return prefixed("triggers/\(eventType.action)/+") }
        return prefixed("\(eventType.topicFamily.rawValue)/+/\(eventType.action)")
    }

    /// The filter matching every topic of one family (`jobs/+/+`, `queues/+/state`, …).
    public func filter(for family: TopicFamily) -> String {
        switch family {
        case .jobs, .workers, .resources, .triggers: prefixed("\(family.rawValue)/+/+")
        case .queues: prefixed("queues/+/state")
        case .services: prefixed("services/+/health")
        case .models: prefixed("models/+/loaded")
        }
    }

    /// Filters covering all events whose subject is of one of `subjectKinds` (`.worker` covers worker and
    /// resource topics), in family order.
    public func subscriptionFilters(for subjectKinds: some Sequence<SubjectKind>) -> [String] {
        let kinds = Set(subjectKinds)
        return TopicFamily.allCases.filter { family in
            family.eventTypes.contains { kinds.contains($0.subjectKind) }
        }.map { filter(for: $0) }
    }

    /// Filters covering every opsbus event: `jobs/+/+`, `workers/+/+`, `resources/+/+`, `queues/+/state`,
    /// `services/+/health`, `models/+/loaded`, `triggers/+/+` (with the prefix).
    public func subscriptionFilters() -> [String] {
        TopicFamily.allCases.map { filter(for: $0) }
    }
}

extension EventType {
    /// Name of the id that is this event's topic subject, for error messages
    /// (`job_id`, `worker_id`, `queue`, `service`, `model`, `subject`).
    public var subjectFieldName: String {
        switch subjectKind {
        case .job: "job_id"
        case .worker: "worker_id"
        case .queue: "queue"
        case .service: "service"
        case .model: "model"
        case .trigger: "subject"
        }
    }
}
