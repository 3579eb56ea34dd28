import OpsBusCore
import Synchronization

/// Builds envelopes for one publisher session: stamps ids, context, `session_id` and a gap-free `seq`, and works out
/// the topic and delivery policy. Pure (no I/O), so the whole envelope logic is unit-tested without a broker.
public final class EventFactory: Sendable {
    public let context: PublisherContext
    public let scheme: TopicScheme
    public let policy: QoSPolicy
    /// One per connection of a publisher process; receivers detect gaps with (`session_id`, `seq`).
    public let sessionID: String
    private let sequence = Mutex<UInt64>(0)

    public init(context: PublisherContext, scheme: TopicScheme = .unprefixed, policy: QoSPolicy = .default,
                sessionID: String = EventID.make()) {
        self.context = context
        self.scheme = scheme
        self.policy = policy
        self.sessionID = sessionID
    }

    /// The last `seq` handed out (0 before the first event).
    public var lastSequence: UInt64 { sequence.withLock { $0 } }

    /// An event ready to send: its envelope, topic and delivery policy.
    public struct Prepared: Sendable {
        public var envelope: EventEnvelope
        public var topic: String
        public var delivery: DeliveryPolicy
    }

    /// Options that travel with one event, beyond its fields.
    public struct Options: Sendable {
        public var jobID: Identifier?
        public var attempt: Int?
        public var traceID: String?
        public var correlationID: String?
        public init(jobID: Identifier? = nil, attempt: Int? = nil, traceID: String? = nil, correlationID: String? = nil) {
            self.jobID = jobID
            self.attempt = attempt
            self.traceID = traceID
            self.correlationID = correlationID
        }
    }

    /// Validates and stamps an event. The topic is derived from the envelope itself (`TopicScheme.topic(for:)`),
    /// so the topic and the payload can never disagree: job events use the job id, worker and resource events the
    /// context's worker id, queue/service/model events their `queue`/`service`/`model` field, triggers their
    /// `subject` field (filled from `subject` when absent). A `subject` that disagrees with the payload is refused.
    /// A `seq` is consumed only by events that pass validation, so receivers never see a gap for a refused event.
    public func prepare(_ eventType: EventType, fields: JSONObject, subject: Identifier? = nil,
                        options: Options = Options()) throws(EventPublisherError) -> Prepared {
        var fields = fields
        if eventType.subjectKind == .trigger, let subject, fields["subject"] == nil {
            fields["subject"] = .string(subject.rawValue)
        }
        var envelope = EventEnvelope(
            eventID: EventID.make(), eventType: eventType, timestamp: .now(), source: context.source,
            jobID: options.jobID, machineID: context.machineID, workerID: context.workerID,
            serviceType: context.serviceType, connectorID: context.connectorID, sessionID: sessionID, seq: 0,
            traceID: options.traceID, correlationID: options.correlationID, attempt: options.attempt, fields: fields)
        do {
            try envelope.validate()
        } catch {
            throw .invalidEvent(error)
        }
        let topicSubject: Identifier
        do {
            topicSubject = try envelope.topicSubject()
        } catch {
            throw .missingSubject(eventType: eventType, needed: eventType.subjectFieldName)
        }
        if let subject, subject != topicSubject {
            throw .subjectMismatch(eventType: eventType, given: subject.rawValue, payload: topicSubject.rawValue)
        }
        envelope.seq = sequence.withLock { value in
            value += 1
            return value
        }
        return Prepared(
            envelope: envelope, topic: scheme.topic(for: eventType, subject: topicSubject),
            delivery: policy.policy(for: eventType))
    }

    /// Parses a caller-given id, mapping the validation error into the publisher's error type.
    public static func identifier(_ value: String, field: String) throws(EventPublisherError) -> Identifier {
        do {
            return try Identifier(validating: value, field: field)
        } catch {
            throw .invalidIdentifier(error)
        }
    }
}
