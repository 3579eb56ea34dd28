/// JSON kind an event field must have.
public enum FieldKind: String, Sendable, Hashable, CustomStringConvertible {
    case string
    /// An integer (`3`; an integral double like `3.0` is accepted too).
    case int
    /// Any number, integer or not.
    case number
    case bool
    case object
    case array
    /// An array whose elements are all strings.
    case stringArray = "string[]"

    public var description: String { rawValue }

    /// Whether `value` has this kind.
    public func accepts(_ value: JSONValue) -> Bool {
        switch (self, value) {
        case (.string, .string), (.number, .int), (.number, .double), (.bool, .bool), (.object, .object),
             (.array, .array), (.int, .int):
            return true
        case (.int, .double):
            return value.intValue != nil
        case (.stringArray, .array(let elements)):
            return elements.allSatisfy { $0.stringValue != nil }
        default:
            return false
        }
    }
}

/// One event field in the catalog.
public struct FieldSpec: Sendable, Hashable {
    public let name: String
    public let kind: FieldKind
    public let required: Bool
    public let doc: String
    /// For string fields with a closed vocabulary (e.g. health status); `nil` = any string.
    public let allowedValues: [String]?
    /// For number fields with a meaningful range (e.g. a percentage); `nil` = any finite number.
    public let range: ClosedRange<Double>?

    public init(
        _ name: String, _ kind: FieldKind, required: Bool = false, doc: String,
        allowedValues: [String]? = nil, range: ClosedRange<Double>? = nil
    ) {
        self.name = name
        self.kind = kind
        self.required = required
        self.doc = doc
        self.allowedValues = allowedValues
        self.range = range
    }
}

/// The event-specific fields of one event type. Fields live at the top level of the envelope JSON next to the
/// envelope keys. Producers may add fields that are not listed; consumers keep them.
public struct EventSchema: Sendable, Hashable {
    public let eventType: EventType
    public let fields: [FieldSpec]
    public let doc: String

    public var requiredFields: [FieldSpec] { fields.filter(\.required) }

    public func field(named name: String) -> FieldSpec? { fields.first { $0.name == name } }
}

/// The catalog of event schemas — the single source for validation and for `topics.md`.
public enum EventCatalog {
    public static func schema(for eventType: EventType) -> EventSchema {
        schemas[eventType]!
    }

    /// Worker health states.
    public static let workerStatuses = ["online", "busy", "idle", "degraded", "offline"]
    /// Service health states.
    public static let serviceStatuses = ["healthy", "degraded", "unhealthy"]

    private static let triggerFields: [FieldSpec] = [
        FieldSpec("reason", .string, required: true, doc: "Why the trigger fired."),
        FieldSpec("subject", .string, doc: "Id the trigger is about; it is the topic's last level. Defaults to `job_id` when absent."),
        FieldSpec("target", .string, doc: "What the trigger should act on (user, queue, workflow step, …)."),
        FieldSpec("details", .object, doc: "Free-form trigger parameters."),
    ]

    private static let schemas: [EventType: EventSchema] = {
        var all: [EventType: EventSchema] = [:]
        func add(_ type: EventType, _ doc: String, _ fields: [FieldSpec]) {
            all[type] = EventSchema(eventType: type, fields: fields, doc: doc)
        }
        add(.jobReceived, "A job was accepted into a queue.", [
            FieldSpec("input_size", .int, doc: "Input size in bytes."),
            FieldSpec("model_required", .string, doc: "Model the job needs."),
            FieldSpec("queue_position", .int, doc: "Position in the queue at submission."),
            FieldSpec("estimated_wait_time", .number, doc: "Estimated wait before start, seconds."),
            FieldSpec("resource_requirements", .object, doc: "Requested resources, e.g. `gpu_memory_mb`."),
            FieldSpec("notify", .bool, doc: "The submitter asks to be notified on completion."),
            FieldSpec("user_id", .string, doc: "Submitting user."),
        ])
        add(.jobStarted, "A worker began processing a job.", [
            FieldSpec("worker_assigned", .string, required: true, doc: "Worker that took the job."),
            FieldSpec("resource_allocation", .object, doc: "Resources granted to the job."),
            FieldSpec("processing_priority", .int, doc: "Priority the job runs at."),
            FieldSpec("expected_duration", .number, doc: "Expected run time, seconds."),
        ])
        add(.jobProgress, "Progress of a running job; each event supersedes the previous one.", [
            FieldSpec("progress_percentage", .number, required: true, doc: "Progress, 0–100.", range: 0...100),
            FieldSpec("execution_step", .string, doc: "Current step name."),
            FieldSpec("current_operation", .string, doc: "Human-readable current operation."),
            FieldSpec("elapsed_time", .number, doc: "Seconds since the job started."),
            FieldSpec("estimated_remaining", .number, doc: "Estimated seconds to completion."),
        ])
        add(.jobCompleted, "A job finished successfully.", [
            FieldSpec("processing_time", .number, required: true, doc: "Run time, seconds."),
            FieldSpec("output_size", .int, doc: "Output size in bytes."),
            FieldSpec("resource_efficiency", .number, doc: "Fraction of allocated resources actually used."),
            FieldSpec("cost_estimate", .number, doc: "Estimated cost of the run."),
            FieldSpec("model_cache_hit", .bool, doc: "The model was already loaded."),
            FieldSpec("user_satisfaction_score", .number, doc: "Score reported by the user, if any."),
            FieldSpec("output_urls", .stringArray, doc: "Where the outputs are."),
            FieldSpec("model", .string, doc: "Model that ran the job."),
        ])
        add(.jobFailed, "A job attempt failed.", [
            FieldSpec("error", .string, required: true, doc: "Error message."),
            FieldSpec("error_type", .string, required: true, doc: "Machine-readable error class, e.g. `gpu_oom`."),
            FieldSpec("error_category", .string, doc: "Broad category, e.g. `resource`, `input`, `infrastructure`."),
            FieldSpec("error_recoverable", .bool, doc: "The worker believes the failure is transient."),
            FieldSpec("retry_recommended", .bool, required: true, doc: "The worker recommends a retry."),
            FieldSpec("resource_impact", .string, doc: "Effect on the worker's resources."),
            FieldSpec("user_impact", .string, doc: "Effect on the user."),
            FieldSpec("duration_before_failure", .number, doc: "Seconds the attempt ran before failing."),
        ])
        add(.workerRegistered, "A worker joined the pool.", [
            FieldSpec("capabilities", .stringArray, doc: "What the worker can run."),
            FieldSpec("gpu", .object, doc: "GPU description, e.g. `model`, `memory_mb`."),
            FieldSpec("version", .string, doc: "Worker software version."),
        ])
        add(.workerDeregistered, "A worker left the pool.", [
            FieldSpec("reason", .string, doc: "Why it left (shutdown, scale-in, eviction, …)."),
        ])
        add(.workerHealth, "Current health of a worker; retained so new subscribers see it at once.", [
            FieldSpec("status", .string, required: true, doc: "One of online, busy, idle, degraded, offline.",
                      allowedValues: workerStatuses),
            FieldSpec("current_job", .string, doc: "Job the worker is running, if any."),
            FieldSpec("session_counter", .int, doc: "The publisher's session number (grows with every connection, like Sparkplug's bdSeq)."),
            FieldSpec("reason", .string, doc: "Why the status changed."),
            FieldSpec("last_will", .bool, doc: "True on the `offline` message the broker publishes as the connection's last will."),
            FieldSpec("bd_seq", .int, doc: "Birth/death counter of the connection (Sparkplug's bdSeq): persisted by the publisher, one more on every connect; the birth (`online`) and the last will of one connection carry the same value.",
                      range: 0...9_007_199_254_740_991),
            FieldSpec("spool_depth", .int, doc: "Events still waiting in the publisher's spool (on the birth).",
                      range: 0...9_007_199_254_740_991),
        ])
        add(.workerHeartbeat, "Periodic liveness signal; each supersedes the previous one.", [
            FieldSpec("status", .string, doc: "One of online, busy, idle, degraded, offline.",
                      allowedValues: workerStatuses),
            FieldSpec("load", .number, doc: "Load, 0–1 per core or as the worker defines."),
            FieldSpec("gpu_memory_used_mb", .number, doc: "GPU memory in use, MiB."),
        ])
        add(.resourceAllocated, "Resources on a worker were allocated to a job (`job_id` envelope key).", [
            FieldSpec("resources", .object, required: true, doc: "What was allocated, e.g. `gpu_memory_mb`, `cpu_cores`."),
        ])
        add(.resourceReleased, "Resources on a worker were released by a job (`job_id` envelope key).", [
            FieldSpec("resources", .object, required: true, doc: "What was released, e.g. `gpu_memory_mb`, `cpu_cores`."),
        ])
        add(.queueState, "Current depth of a queue; retained.", [
            FieldSpec("queue", .string, required: true, doc: "Queue id; it is the topic subject."),
            FieldSpec("depth", .int, required: true, doc: "Jobs waiting."),
            FieldSpec("capacity", .int, required: true, doc: "Maximum jobs the queue holds."),
        ])
        add(.serviceHealth, "Current health of a service; retained.", [
            FieldSpec("service", .string, required: true, doc: "Service id; it is the topic subject."),
            FieldSpec("status", .string, required: true, doc: "One of healthy, degraded, unhealthy.",
                      allowedValues: serviceStatuses),
            FieldSpec("details", .object, doc: "Service-specific details."),
        ])
        add(.modelLoaded, "A model was loaded on a worker.", [
            FieldSpec("model", .string, required: true, doc: "Model id; it is the topic subject."),
            FieldSpec("load_time_ms", .number, required: true, doc: "Load time, milliseconds."),
            FieldSpec("cache_hit", .bool, required: true, doc: "Loaded from the local cache."),
            FieldSpec("model_size_mb", .number, doc: "Model size, MiB."),
        ])
        add(.triggerNotification, "Ask for a user notification.", triggerFields)
        add(.triggerRetry, "Ask for a job to be retried.", triggerFields)
        add(.triggerPrecache, "Ask for a model to be pre-loaded.", triggerFields)
        add(.triggerWorkflow, "Advance a workflow.", triggerFields)
        add(.triggerScaling, "Ask for capacity to be scaled.", triggerFields)
        add(.triggerFailover, "Ask for a failover.", triggerFields)
        add(.triggerRecommendation, "Advice from the processor's pattern analysis.", triggerFields)
        return all
    }()
}
