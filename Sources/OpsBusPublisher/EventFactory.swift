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

    /// Validates and stamps an event. `subject` is the id that becomes the topic's second level; for job events it
    /// defaults to the job id, for worker and resource events to the context's worker id.
    /// A `seq` is consumed only by events that pass validation, so receivers never see a gap for a refused event.
    public func prepare(_ eventType: EventType, fields: JSONObject, subject: Identifier? = nil,
                        options: Options = Options()) throws(EventPublisherError) -> Prepared {
        let subjectID = try resolveSubject(eventType, explicit: subject, jobID: options.jobID)
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
        envelope.seq = sequence.withLock { value in
            value += 1
            return value
        }
        return Prepared(
            envelope: envelope, topic: scheme.topic(for: eventType, subject: subjectID),
            delivery: policy.policy(for: eventType))
    }

    private func resolveSubject(_ eventType: EventType, explicit: Identifier?, jobID: Identifier?)
        throws(EventPublisherError) -> Identifier
    {
        if let explicit { return explicit }
        switch eventType.subjectKind {
        case .job:
            if let jobID { return jobID }
            throw .missingSubject(eventType: eventType, needed: "job id")
        case .worker:
            if let worker = context.workerID { return worker }
            throw .missingSubject(eventType: eventType, needed: "worker id")
        default:
            throw .missingSubject(eventType: eventType, needed: "\(eventType.subjectKind) id")
        }
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
