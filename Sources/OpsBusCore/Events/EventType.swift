/// Every event the bus carries. The raw value is the `event_type` string on the wire.
public enum EventType: String, CaseIterable, Sendable, Codable {
    case jobReceived = "job.received"
    case jobStarted = "job.started"
    case jobProgress = "job.progress"
    case jobCompleted = "job.completed"
    case jobFailed = "job.failed"
    case workerRegistered = "worker.registered"
    case workerDeregistered = "worker.deregistered"
    case workerHealth = "worker.health"
    case workerHeartbeat = "worker.heartbeat"
    case resourceAllocated = "resource.allocated"
    case resourceReleased = "resource.released"
    case queueState = "queue.state"
    case serviceHealth = "service.health"
    case modelLoaded = "model.loaded"
    case triggerNotification = "trigger.notification"
    case triggerRetry = "trigger.retry"
    case triggerPrecache = "trigger.precache"
    case triggerWorkflow = "trigger.workflow"
    case triggerScaling = "trigger.scaling"
    case triggerFailover = "trigger.failover"
    /// Advice from the processor's pattern analysis (longer timeout, more resources, a failure rate to look at).
    case triggerRecommendation = "trigger.recommendation"

    /// Which id is the subject of this event's topic (see `EventEnvelope.topicSubject()`).
    public var subjectKind: SubjectKind {
        switch self {
        case .jobReceived, .jobStarted, .jobProgress, .jobCompleted, .jobFailed: .job
        case .workerRegistered, .workerDeregistered, .workerHealth, .workerHeartbeat: .worker
        case .resourceAllocated, .resourceReleased: .worker
        case .queueState: .queue
        case .serviceHealth: .service
        case .modelLoaded: .model
        case .triggerNotification, .triggerRetry, .triggerPrecache, .triggerWorkflow, .triggerScaling,
             .triggerFailover, .triggerRecommendation: .trigger
        }
    }

    /// The first topic level for this event type.
    public var topicFamily: TopicFamily {
        switch self {
        case .jobReceived, .jobStarted, .jobProgress, .jobCompleted, .jobFailed: .jobs
        case .workerRegistered, .workerDeregistered, .workerHealth, .workerHeartbeat: .workers
        case .resourceAllocated, .resourceReleased: .resources
        case .queueState: .queues
        case .serviceHealth: .services
        case .modelLoaded: .models
        case .triggerNotification, .triggerRetry, .triggerPrecache, .triggerWorkflow, .triggerScaling,
             .triggerFailover, .triggerRecommendation: .triggers
        }
    }

    /// The part after the dot (`completed` for `job.completed`); it is the action level of the topic.
    public var action: String {
        switch self {
        case .jobReceived: "received"
        case .jobStarted: "started"
        case .jobProgress: "progress"
        case .jobCompleted: "completed"
        case .jobFailed: "failed"
        case .workerRegistered: "registered"
        case .workerDeregistered: "deregistered"
        case .workerHealth: "health"
        case .workerHeartbeat: "heartbeat"
        case .resourceAllocated: "allocated"
        case .resourceReleased: "released"
        case .queueState: "state"
        case .serviceHealth: "health"
        case .modelLoaded: "loaded"
        case .triggerNotification: "notification"
        case .triggerRetry: "retry"
        case .triggerPrecache: "precache"
        case .triggerWorkflow: "workflow"
        case .triggerScaling: "scaling"
        case .triggerFailover: "failover"
        case .triggerRecommendation: "recommendation"
        }
    }
}

extension EventType: CustomStringConvertible {
    public var description: String { rawValue }
}

/// What an event's topic is about.
public enum SubjectKind: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// `job_id`
    case job
    /// `worker_id` (worker and resource events)
    case worker
    /// the `queue` field
    case queue
    /// the `service` field
    case service
    /// the `model` field
    case model
    /// the `subject` field, else `job_id`
    case trigger

    public var description: String { rawValue }
}

/// The first level of a topic, one per group of event types.
public enum TopicFamily: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    case jobs, workers, resources, queues, services, models, triggers

    public var description: String { rawValue }

    public var eventTypes: [EventType] { EventType.allCases.filter { $0.topicFamily == self } }
}
