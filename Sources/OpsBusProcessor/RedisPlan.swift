import OpsBusCore
import OpsBusRedis

/// The Redis work for one message, decided before any I/O: which script with which keys and arguments, or a
/// dead-letter entry. Built once, run (and re-run after a reconnect) by `EventApplier`.
struct RedisPlan {
    enum Action {
        case jobEvent(keys: [String], arguments: [String])
        case entityEvent(keys: [String], arguments: [String])
        case deadLetter(entry: [String])
    }

    let topic: String
    let payload: [UInt8]
    let action: Action
    let eventType: String
    let keys: RedisKeys
    /// The dead-letter reason, for dead-letter plans.
    let reason: String?

    var isDeadLetter: Bool { reason != nil }

    init(deadLetter reason: RejectionReason, topic: String, payload: [UInt8], keys: RedisKeys) {
        self.topic = topic
        self.payload = payload
        self.reason = reason.description
        self.eventType = "invalid"
        self.keys = keys
        let shown = payload.count > 4096 ? Array(payload.prefix(4096)) : payload
        let text = String(decoding: shown, as: UTF8.self)
        self.action = .deadLetter(entry: [
            "XADD", keys.deadLetters, "MAXLEN", "~", "100000", "*",
            "topic", topic, "reason", reason.description, "payload", text,
            "payload_bytes", String(payload.count), "truncated", payload.count > shown.count ? "true" : "false",
            "received_at", EventTimestamp.now().iso8601,
        ])
    }

    /// `subject` is the id of the message's topic, already checked against the payload.
    init(envelope: EventEnvelope, subject: Identifier, topic: String, payload: [UInt8],
         configuration: ProcessorConfiguration) {
        let keys = configuration.keys
        self.topic = topic
        self.payload = payload
        self.reason = nil
        self.eventType = envelope.eventType.rawValue
        self.keys = keys
        let ttl = String(configuration.dedupWindowSeconds)
        let fields = envelope.fields

        if let lifecycle = Self.lifecycleEvent(envelope.eventType), let jobID = envelope.jobID?.rawValue {
            let worker = envelope.workerID?.rawValue ?? fields["worker_assigned"]?.stringValue ?? ""
            var jobKeys = [keys.job(jobID), keys.jobTimeline(jobID), keys.jobSeen(jobID)]
            jobKeys += JobEventScript.statuses.map(keys.jobsByStatus)
            jobKeys.append(worker.isEmpty ? keys.job(jobID) : keys.jobsByWorker(worker))
            var arguments = [
                envelope.eventID, lifecycle, String(envelope.attempt ?? 1),
                fields["progress_percentage"]?.doubleValue.map { String($0) } ?? "",
                envelope.timestamp.iso8601, String(decoding: payload, as: UTF8.self),
                String(configuration.timelineLimit), jobID, ttl, worker,
                JobActionContext.make(envelope, configuration: configuration).serialized(),
            ]
            arguments += Self.jobFields(envelope, worker: worker)
            action = .jobEvent(keys: jobKeys, arguments: arguments)
            return
        }

        let (kind, state, counters) = Self.entityUpdate(envelope)
        let id = subject.rawValue
        let isLastWill = envelope.eventType == .workerHealth && envelope.fields["last_will"]?.boolValue == true
        var arguments = [envelope.eventID, String(envelope.timestamp.millisecondsSinceEpoch), ttl, id,
                         String(state.count / 2), isLastWill ? envelope.sessionID : "",
                         Self.entityContext(kind: kind, envelope, configuration: configuration).serialized()]
        arguments += state + counters
        action = .entityEvent(keys: [keys.entity(kind, id), keys.entitySeen(kind, id), keys.entityIndex(kind)],
                              arguments: arguments)
    }

    /// Runs the script (or the dead-letter write): the part that must succeed before the message is acknowledged.
    func apply(on redis: RedisConnection) throws(RedisError) -> ApplyResult {
        let result: ApplyResult
        switch action {
        case let .jobEvent(keys, arguments):
            let reply = try redis.evaluate(JobEventScript.script, keys: keys, arguments: arguments)
            let outcome = reply.array?.first?.string ?? "applied"
            result = outcome == "duplicate" ? .duplicate : .applied(outcome: outcome)
        case let .entityEvent(keys, arguments):
            let reply = try redis.evaluate(EntityEventScript.script, keys: keys, arguments: arguments)
            let outcome = reply.string ?? "applied"
            result = outcome == "duplicate" ? .duplicate : .applied(outcome: outcome)
        case let .deadLetter(entry):
            _ = try redis.command(entry)
            result = .deadLettered(reason: reason ?? "rejected")
        }
        return result
    }

    /// Counts the outcome in the stats hashes. Best effort: the state is already applied, so a failure here is
    /// logged by the caller, never retried (a retry would count the event again as a duplicate).
    func recordStats(_ result: ApplyResult, on redis: RedisConnection) throws(RedisError) {
        let outcome: String
        switch result {
        case .applied(let name): outcome = name
        case .duplicate: outcome = "duplicate"
        case .deadLettered: outcome = "dead_lettered"
        case .retryLater: outcome = "retry"
        }
        let now = EventTimestamp.now()
        let minuteKey = keys.statsMinute(now.millisecondsSinceEpoch / 60_000)
        _ = try redis.pipeline([
            ["HINCRBY", keys.stats, "events_received", "1"],
            ["HINCRBY", keys.stats, "type:\(eventType)", "1"],
            ["HINCRBY", keys.stats, "outcome:\(outcome)", "1"],
            ["HSET", keys.stats, "last_event_at", now.iso8601, "last_event_type", eventType],
            ["HINCRBY", minuteKey, "events", "1"],
            ["HINCRBY", minuteKey, "type:\(eventType)", "1"],
            ["HINCRBY", minuteKey, "outcome:\(outcome)", "1"],
            ["EXPIRE", minuteKey, String(RedisKeys.minuteStatsRetention)],
        ])
    }

    // MARK: Mapping events to Redis fields

    private static func lifecycleEvent(_ type: EventType) -> String? {
        switch type {
        case .jobReceived: "received"
        case .jobStarted: "started"
        case .jobProgress: "progress"
        case .jobCompleted: "completed"
        case .jobFailed: "failed"
        default: nil
        }
    }

    /// Field/value pairs a job event writes into the job hash.
    private static func jobFields(_ envelope: EventEnvelope, worker: String) -> [String] {
        var pairs: [String] = []
        func add(_ name: String, _ value: String?) {
            if let value, !value.isEmpty { pairs += [name, value] }
        }
        func copy(_ field: String, as name: String? = nil) {
            add(name ?? field, envelope.fields[field].map(redisString))
        }
        let ts = envelope.timestamp.iso8601
        add("machine_id", envelope.machineID?.rawValue)
        add("service_type", envelope.serviceType)
        switch envelope.eventType {
        case .jobReceived:
            add("received_at", ts)
            copy("model_required")
            copy("input_size")
            copy("queue_position")
            copy("notify")
        case .jobStarted:
            add("started_at", ts)
            add("worker_id", worker)
            copy("expected_duration")
            copy("processing_priority")
            copy("resource_allocation")
        case .jobProgress:
            add("worker_id", worker)
            copy("execution_step")
        case .jobCompleted:
            add("completed_at", ts)
            add("worker_id", worker)
            for field in ["processing_time", "output_size", "cost_estimate", "resource_efficiency", "model",
                          "model_cache_hit", "output_urls"] { copy(field) }
        case .jobFailed:
            add("failed_at", ts)
            add("worker_id", worker)
            copy("error", as: "error_message")
            for field in ["error_type", "error_category", "retry_recommended", "error_recoverable",
                          "duration_before_failure"] { copy(field) }
        default:
            break
        }
        return pairs
    }

    /// The facts the entity script's actions need (see `EntityEventScript`).
    private static func entityContext(kind: String, _ envelope: EventEnvelope, configuration: ProcessorConfiguration)
        -> JSONValue
    {
        let fields = envelope.fields
        let status = envelope.eventType == .workerDeregistered ? "deregistered" : fields["status"]?.stringValue
        var context: JSONObject = [
            "prefix": .string(configuration.keys.prefix), "kind": .string(kind),
            "automation": .bool(configuration.automation), "model_tracking": .bool(configuration.modelUsageTracking),
        ]
        if let status { context["status"] = .string(status) }
        switch kind {
        case "worker":
            context["failover"] = .bool(status == "offline" || status == "deregistered")
            context["reason"] = .string(fields["reason"]?.stringValue ?? (status ?? "offline"))
        case "queue":
            if let depth = fields["depth"]?.doubleValue { context["depth"] = .double(depth) }
            if let capacity = fields["capacity"]?.doubleValue { context["capacity"] = .double(capacity) }
            context["high_watermark"] = .double(configuration.queueHighWatermark)
            context["low_watermark"] = .double(configuration.queueLowWatermark)
        case "model":
            context["precache_min_loads"] = .int(Int64(configuration.precacheRule.minLoads))
            context["precache_min_average_ms"] = .double(configuration.precacheRule.minAverageLoadMs)
            context["precache_max_hit_rate"] = .double(configuration.precacheRule.maxCacheHitRate)
        default:
            break
        }
        return .object(context)
    }

    /// Which entity hash a non-job event updates, with its state fields and counters.
    private static func entityUpdate(_ envelope: EventEnvelope) -> (kind: String, state: [String], counters: [String]) {
        let ts = envelope.timestamp.iso8601
        var state: [String] = []
        func set(_ name: String, _ value: String?) {
            if let value { state += [name, value] }
        }
        for (name, value) in envelope.fields { set(name, redisString(value)) }
        set("machine_id", envelope.machineID?.rawValue)
        set("last_event_id", envelope.eventID)
        set("last_event_type", envelope.eventType.rawValue)
        switch envelope.eventType {
        case .workerHealth:
            set("health_at", ts)
            // A health report without a job means the worker runs none now (an empty value, as absent keys
            // cannot be written last-writer-wins).
            if envelope.fields["current_job"] == nil { set("current_job", "") }
            set("session_id", envelope.sessionID)
            return ("worker", state, [])
        case .workerHeartbeat:
            set("last_heartbeat", ts)
            return ("worker", state, ["heartbeats", "1"])
        case .workerRegistered:
            set("registered_at", ts)
            return ("worker", state, ["registrations", "1"])
        case .workerDeregistered:
            set("status", "deregistered")
            set("deregistered_at", ts)
            return ("worker", state, [])
        case .resourceAllocated, .resourceReleased:
            let job = envelope.jobID?.rawValue ?? "unknown"
            let allocated = envelope.eventType == .resourceAllocated
            return ("resources", ["job:\(job)", allocated ? (envelope.fields["resources"].map(redisString) ?? "{}") : "released"],
                    [allocated ? "allocations" : "releases", "1"])
        case .queueState:
            return ("queue", state + ["updated_at", ts], [])
        case .serviceHealth:
            return ("service", state + ["updated_at", ts], [])
        case .modelLoaded:
            let hit = envelope.fields["cache_hit"]?.boolValue == true
            let loadTime = envelope.fields["load_time_ms"]?.doubleValue ?? 0
            return ("model", state + ["last_loaded_at", ts],
                    ["loads", "1", "cache_hits", hit ? "1" : "0", "total_load_time_ms", String(loadTime)])
        default:
            return ("trigger", state + ["triggered_at", ts], ["count", "1"])
        }
    }
}

/// A JSON value as a Redis hash field: strings as they are, everything else as compact JSON.
func redisString(_ value: JSONValue) -> String {
    if case .string(let text) = value { return text }
    return value.serialized()
}
