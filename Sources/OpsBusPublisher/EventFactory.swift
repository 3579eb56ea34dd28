import OpsBusCore
import Synchronization

/// Builds envelopes for one publisher session: stamps ids, context, `session_id` and a gap-free `seq`, and works out
/// the topic and delivery policy. Pure (no I/O), so the whole envelope logic is unit-tested without a broker.
public final class EventFactory: Sendable {
    public let context: PublisherContext
    public let scheme: TopicScheme
    public let policy: QoSPolicy
    /// One per publisher process start; receivers detect gaps with (`session_id`, `seq`).
    public let sessionID: String
    /// The event types this session spools (and so sequences with `ack: true`), or nil without a spool, when the
    /// session sequences its QoS ≥ 1 events. Everything else goes out with `seq` 0 (best effort, outside the
    /// sequence), so a lost QoS 0 heartbeat never looks like a gap.
    public let spooledTypes: Set<EventType>?
    private let sequence = Mutex<UInt64>(0)

    public init(context: PublisherContext, scheme: TopicScheme = .unprefixed, policy: QoSPolicy = .default,
                sessionID: String = EventID.make(), spooledTypes: Set<EventType>? = nil) {
        self.context = context
        self.scheme = scheme
        self.policy = policy
        self.sessionID = sessionID
        self.spooledTypes = spooledTypes
    }

    /// The default spooled class: every event type the policy sends at QoS ≥ 1 without retain (job lifecycle
    /// and failure, resources, models, worker registration, triggers). Retained current-state events
    /// (`worker.health`, `queue.state`, `service.health`) are superseded by the next one instead, and QoS 0
    /// events (`job.progress`, `worker.heartbeat`) are best effort.
    public static func defaultSpooledTypes(policy: QoSPolicy) -> Set<EventType> {
        Set(EventType.allCases.filter { type in
            let delivery = policy.policy(for: type)
            return delivery.qos != .atMostOnce && !delivery.retain
        })
    }

    /// Whether events of `eventType` get a `seq` ≥ 1.
    public func isSequenced(_ eventType: EventType) -> Bool {
        if let spooledTypes { return spooledTypes.contains(eventType) }
        return policy.policy(for: eventType).qos != .atMostOnce
    }

    /// Whether events of `eventType` go through the spool.
    public func isSpooled(_ eventType: EventType) -> Bool { spooledTypes?.contains(eventType) ?? false }

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
    /// A `seq` is consumed only by sequenced events that pass validation, so receivers never see a gap for a refused
    /// event. Callers that spool must append in `seq` order (the publisher takes the `seq` and appends under one lock).
    public func prepare(_ eventType: EventType, fields: JSONObject, subject: Identifier? = nil,
                        options: Options = Options()) throws(EventPublisherError) -> Prepared {
        var prepared = try prepareUnnumbered(eventType, fields: fields, subject: subject, options: options)
        if isSequenced(eventType) { prepared.envelope.seq = takeSequence() }
        return prepared
    }

    /// `prepare` without the `seq`: the envelope of a sequenced event has `seq` 0 (and its `ack` flag) until the
    /// caller sets `takeSequence()`, so a spooling publisher validates and encodes outside its ordering lock.
    func prepareUnnumbered(_ eventType: EventType, fields: JSONObject, subject: Identifier?,
                           options: Options) throws(EventPublisherError) -> Prepared {
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
        if isSequenced(eventType) { envelope.ack = isSpooled(eventType) }
        return Prepared(
            envelope: envelope, topic: scheme.topic(for: eventType, subject: topicSubject),
            delivery: policy.policy(for: eventType))
    }

    /// The next `seq` of the session.
    func takeSequence() -> UInt64 {
        sequence.withLock { value in
            value += 1
            return value
        }
    }

    /// Gives back the last `seq` handed out when its event could not be stored, so the sequence stays gap-free.
    /// Only valid while the caller still holds the ordering lock it prepared the event under.
    func returnSequence(_ seq: UInt64) {
        sequence.withLock { value in if value == seq { value -= 1 } }
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
