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
    /// The script argument (1-based ARGV index) that says whether an earlier attempt may have run (`EventStatsScript`).
    static let jobRetriedArgument = 18
    static let entityRetriedArgument = 10
    /// How much of a refused payload its dead-letter entry keeps.
    static let deadLetterPayloadBytes = 4096

    let topic: String
    let payload: [UInt8]
    let action: Action
    /// Gap detection for a sequenced event (`seq` ≥ 1): `SequenceScript`'s keys and arguments, run in the same
    /// round trip as the action.
    let sequence: (keys: [String], arguments: [String])?
    let eventType: String
    let keys: RedisKeys
    /// The dead-letter reason, for dead-letter plans.
    let reason: String?
    /// When the message was taken: its minute of the per-minute stats and `last_event_at`.
    let now: EventTimestamp

    var isDeadLetter: Bool { reason != nil }

    /// `sequence`: a refused message that still was a sequenced event (e.g. on a topic that does not match it) did
    /// arrive, so it counts for gap detection like an applied one, not as lost.
    /// `originalBytes`: the message's size when `payload` is only its start (the journal keeps no more of an
    /// oversize message than its dead letter shows).
    init(deadLetter reason: RejectionReason, topic: String, payload: [UInt8], keys: RedisKeys,
         sequence: (keys: [String], arguments: [String])? = nil, originalBytes: Int? = nil) {
        self.topic = topic
        self.payload = payload
        self.reason = reason.description
        self.eventType = "invalid"
        self.keys = keys
        self.sequence = sequence
        let shown = payload.count > Self.deadLetterPayloadBytes ? Array(payload.prefix(Self.deadLetterPayloadBytes)) : payload
        let text = String(decoding: shown, as: UTF8.self)
        self.now = EventTimestamp.now()
        self.action = .deadLetter(entry: [
            "XADD", keys.deadLetters, "MAXLEN", "~", "100000", "*",
            "topic", topic, "reason", reason.description, "payload", text,
            "payload_bytes", String(originalBytes ?? payload.count),
            "truncated", (originalBytes ?? payload.count) > shown.count ? "true" : "false",
            "received_at", EventTimestamp.now().iso8601,
        ])
    }

    /// When messages are taken, with what the plans write of it, formatted once: a batch's plans share one (issue 6;
    /// formatting the time and the minute's key per event was 2 % of the processor's instructions).
    struct Clock {
        let now: EventTimestamp
        let iso8601: String
        let statsMinuteKey: String

        init(keys: RedisKeys, now: EventTimestamp = .now()) {
            self.now = now
            iso8601 = now.iso8601
            statsMinuteKey = keys.statsMinute(now.millisecondsSinceEpoch / 60_000)
        }
    }

    /// `subject` is the id of the message's topic, already checked against the payload.
    init(envelope: EventEnvelope, subject: Identifier, topic: String, payload: [UInt8],
         configuration: ProcessorConfiguration, clock: Clock? = nil) {
        let keys = configuration.keys
        self.topic = topic
        self.payload = payload
        self.reason = nil
        self.eventType = envelope.eventType.rawValue
        self.keys = keys
        let ttl = String(configuration.dedupWindowSeconds)
        let fields = envelope.fields
        let clock = clock ?? Clock(keys: keys)
        let now = clock.now
        sequence = Self.sequenceTracking(envelope, configuration: configuration, now: now)
        self.now = now
        let ts = envelope.timestamp.iso8601
        let statsKeys = [keys.stats, clock.statsMinuteKey]

        if let lifecycle = Self.lifecycleEvent(envelope.eventType), let jobID = envelope.jobID?.rawValue {
            let worker = envelope.workerID?.rawValue ?? fields["worker_assigned"]?.stringValue ?? ""
            var jobKeys = [keys.job(jobID), keys.jobTimeline(jobID), keys.jobSeen(jobID)]
            jobKeys += keys.jobStatusSets
            jobKeys.append(worker.isEmpty ? keys.job(jobID) : keys.jobsByWorker(worker))
            jobKeys += statsKeys
            var arguments = [
                envelope.eventID, lifecycle, String(envelope.attempt ?? 1),
                fields["progress_percentage"]?.doubleValue.map { String($0) } ?? "",
                ts, String(decoding: payload, as: UTF8.self),
                String(configuration.timelineLimit), jobID, ttl, worker,
                JobActionContext.make(envelope, configuration: configuration, ts: ts, now: now),
                keys.prefix, configuration.automation ? "1" : "", String(envelope.timestamp.millisecondsSinceEpoch),
                JobActionContext.workerSession(envelope) ?? "", envelope.eventType.rawValue, clock.iso8601, "",
            ]
            assert(arguments.count + 1 == JobEventScript.firstFieldArgument)
            arguments += Self.jobFields(envelope, worker: worker, ts: ts)
            action = .jobEvent(keys: jobKeys, arguments: arguments)
            return
        }

        let isLastWill = envelope.eventType == .workerHealth && envelope.fields["last_will"]?.boolValue == true
        let (kind, state, counters) = Self.entityUpdate(envelope, isLastWill: isLastWill)
        let id = subject.rawValue
        var arguments = [envelope.eventID, String(envelope.timestamp.millisecondsSinceEpoch), ttl, id,
                         String(state.count / 2), isLastWill ? envelope.sessionID : "",
                         Self.entityContext(kind: kind, envelope, isLastWill: isLastWill,
                                            configuration: configuration).serialized(),
                         envelope.eventType.rawValue, clock.iso8601, ""]
        assert(arguments.count + 1 == EntityEventScript.firstStateArgument)
        arguments += state + counters
        action = .entityEvent(keys: [keys.entity(kind, id), keys.entitySeen(kind, id), keys.entityIndex(kind)] + statsKeys,
                              arguments: arguments)
    }

    /// What `apply(on:)` did: the event's outcome, and a gap-tracking failure that must not hold the event up.
    struct Applied {
        var result: ApplyResult
        /// The sequence script's error reply when it failed for good (the event itself is applied).
        var sequenceError: String?
    }

    /// Runs the script (or the dead-letter write), with gap tracking and the stats count in the same round trip:
    /// the part that must succeed before the message is acknowledged. A transient error in either call throws, and
    /// the whole plan is retried (both calls are idempotent); a permanent error of gap tracking alone is returned, not
    /// thrown. `retried`: an earlier attempt of this plan may have reached Redis (see `EventStatsScript`).
    func apply(on redis: RedisConnection, retried: Bool = false) throws(RedisError) -> Applied {
        let script: RedisScript
        let scriptKeys: [String]
        var scriptArguments: [String]
        switch action {
        case let .jobEvent(keys, arguments):
            (script, scriptKeys, scriptArguments) = (JobEventScript.script, keys, arguments)
            if retried { scriptArguments[Self.jobRetriedArgument - 1] = "1" }
        case let .entityEvent(keys, arguments):
            (script, scriptKeys, scriptArguments) = (EntityEventScript.script, keys, arguments)
            if retried { scriptArguments[Self.entityRetriedArgument - 1] = "1" }
        case .deadLetter:
            // Counted with the entry; a retry may write the entry (and count it) again, as the entry has no id.
            var pipeline = redis.makePipeline()
            for command in deadLetterCommands ?? [] { pipeline.append(command) }
            if let sequence {
                pipeline.appendEvaluate(SequenceScript.script, keys: sequence.keys, arguments: sequence.arguments)
            }
            let replies = try pipeline.execute()
            if let message = replies[0].errorMessage { throw .server(message: message, command: "XADD") }
            return Applied(result: .deadLettered(reason: reason ?? "rejected"),
                           sequenceError: sequence == nil ? nil : try Self.sequenceFailure(replies[replies.count - 1]))
        }
        var pipeline = redis.makePipeline()
        pipeline.appendEvaluate(script, keys: scriptKeys, arguments: scriptArguments)
        if let sequence { pipeline.appendEvaluate(SequenceScript.script, keys: sequence.keys, arguments: sequence.arguments) }
        let replies = try pipeline.execute()
        if let message = replies[0].errorMessage { throw .server(message: message, command: "EVALSHA \(script.name)") }
        let sequenceError = sequence == nil ? nil : try Self.sequenceFailure(replies[1])
        return Applied(result: outcome(fromBatchResult: replies[0]), sequenceError: sequenceError)
    }

    // MARK: Batches (`BatchApplyScript`)

    /// One script call inside a batch: `kind` is `BatchApplyScript`'s `j`, `e` or `s`.
    struct BatchCall {
        let kind: String
        let keys: [String]
        let arguments: [String]
    }

    /// What every job and sequence call of a batch shares, sent once per batch call ahead of the calls
    /// (`BatchApplyScript`): the status sets, the stats and gap-index keys, limits and flags, the batch's clock and
    /// whether it is a retry. Redis makes every argument an object and then a Lua string; sent per event, these were
    /// 14 of a job call's 30 keys and fixed arguments, and 7 of a sequence call's 15 (issue 6).
    /// KEYS: 1–6 the status sets (`JobEventScript.statuses` order), 7 stats, 8 stats of the minute, 9 publishers
    ///       (owners) index, 10 pending gaps, 11 reported gaps.
    /// ARGV: 1 timeline limit, 2 seen-set TTL, 3 key prefix, 4 automation, 5 now (ISO 8601), 6 retried, 7 now (ms),
    ///       8 open gaps kept per session.
    static func batchConstants(configuration: ProcessorConfiguration, clock: Clock, retried: Bool)
        -> (keys: [String], arguments: [String])
    {
        let keys = configuration.keys
        return (keys: keys.jobStatusSets + [keys.stats, clock.statsMinuteKey, keys.publishers, keys.gapsPending,
                                            keys.gapsReported],
                arguments: [String(configuration.timelineLimit), String(configuration.dedupWindowSeconds), keys.prefix,
                            configuration.automation ? "1" : "", clock.iso8601, retried ? "1" : "",
                            String(clock.now.millisecondsSinceEpoch), String(configuration.maxOpenGapsPerSession)])
    }

    /// The positions (0-based) of a job call's keys and arguments that a batch sends per event, before the event's
    /// fields; `BatchApplyScript` puts the constants back in the others. A test checks the two agree.
    static let batchJobKeyPositions = [0, 1, 2, 9]
    static let batchJobArgumentPositions = [0, 1, 2, 3, 4, 5, 7, 9, 10, 13, 14, 15]
    /// The same for a sequence call (it has no fields).
    static let batchSequenceKeyPositions = [0, 1, 3]
    static let batchSequenceArgumentPositions = [0, 1, 2, 3, 5]

    /// The plan's event script as a batch call (nil for a dead letter, whose entry is a plain `XADD`): a job call
    /// without the batch's constants (`batchConstants`), an entity call whole.
    func eventCall(retried: Bool) -> BatchCall? {
        switch action {
        case let .jobEvent(keys, arguments):
            return BatchCall(
                kind: "j", keys: Self.batchJobKeyPositions.map { keys[$0] },
                arguments: Self.batchJobArgumentPositions.map { arguments[$0] }
                    + arguments[(JobEventScript.firstFieldArgument - 1)...])
        case let .entityEvent(keys, arguments):
            var arguments = arguments
            if retried { arguments[Self.entityRetriedArgument - 1] = "1" }
            return BatchCall(kind: "e", keys: keys, arguments: arguments)
        case .deadLetter:
            return nil
        }
    }

    /// The plan's gap tracking as a batch call, without the batch's constants.
    var sequenceCall: BatchCall? {
        guard let sequence else { return nil }
        return BatchCall(kind: "s", keys: Self.batchSequenceKeyPositions.map { sequence.keys[$0] },
                         arguments: Self.batchSequenceArgumentPositions.map { sequence.arguments[$0] })
    }

    /// The dead-letter entry and its stats as plain commands (nil for an event plan).
    var deadLetterCommands: [[String]]? {
        guard case let .deadLetter(entry) = action else { return nil }
        return [entry] + EventStatsScript.commands(keys: keys, eventType: eventType, outcome: "dead_lettered", now: now)
    }

    /// The outcome of the plan's event call from its reply: `{outcome, …}` from a job script call, the outcome alone
    /// from a batch (`BatchApplyScript`) and from the entity script.
    func outcome(fromBatchResult reply: RedisReply) -> ApplyResult {
        let outcome: String
        if case .jobEvent = action, let parts = reply.array {
            outcome = parts.first?.string ?? "applied"
        } else {
            outcome = reply.string ?? "applied"
        }
        return outcome == "duplicate" ? .duplicate : .applied(outcome: outcome)
    }

    /// The sequence script's error, thrown when it is transient (the plan is retried), returned otherwise.
    private static func sequenceFailure(_ reply: RedisReply) throws(RedisError) -> String? {
        guard let message = reply.errorMessage else { return nil }
        let error = RedisError.server(message: message, command: "EVALSHA \(SequenceScript.script.name)")
        if error.isTransientServerError { throw error }
        return "\(error)"
    }

    /// The sequence script's call for a sequenced event, nil for `seq` 0 (best effort, outside any sequence).
    static func sequenceTracking(_ envelope: EventEnvelope, configuration: ProcessorConfiguration,
                                 now: EventTimestamp = .now()) -> (keys: [String], arguments: [String])?
    {
        guard envelope.seq >= 1 else { return nil }
        let keys = configuration.keys
        let session = envelope.sessionID
        let owner = envelope.ackOwner.rawValue
        return (
            keys: [keys.sequence(session), keys.sequenceGaps(session), keys.stats, keys.publisher(owner),
                   keys.publishers, keys.gapsPending, keys.gapsReported],
            arguments: [
                session, owner, String(envelope.seq), envelope.prevSeq.map { String($0) } ?? "",
                String(now.millisecondsSinceEpoch),
                EventID.timestamp(of: session).map { String($0.millisecondsSinceEpoch) } ?? "",
                String(configuration.dedupWindowSeconds), String(configuration.maxOpenGapsPerSession),
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
    private static func jobFields(_ envelope: EventEnvelope, worker: String, ts: String) -> [String] {
        var pairs: [String] = []
        func add(_ name: String, _ value: String?) {
            if let value, !value.isEmpty { pairs += [name, value] }
        }
        func copy(_ field: String, as name: String? = nil) {
            add(name ?? field, envelope.fields[field].map(redisString))
        }
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
    private static func entityContext(kind: String, _ envelope: EventEnvelope, isLastWill: Bool,
                                      configuration: ProcessorConfiguration) -> JSONValue
    {
        let fields = envelope.fields
        let status = envelope.eventType == .workerDeregistered ? "deregistered"
            : isLastWill ? "unreachable" : fields["status"]?.stringValue
        var context: JSONObject = [
            "prefix": .string(configuration.keys.prefix), "kind": .string(kind),
            "automation": .bool(configuration.automation), "model_tracking": .bool(configuration.modelUsageTracking),
        ]
        if let status { context["status"] = .string(status) }
        switch kind {
        case "worker":
            context["failover"] = .bool(status == "offline" || status == "deregistered")
            context["reason"] = .string(fields["reason"]?.stringValue ?? (status ?? "offline"))
            if envelope.eventType == .workerHealth {
                let now = EventTimestamp.now()
                context["health"] = true
                context["will"] = .bool(isLastWill)
                context["birth"] = .bool(!isLastWill && status == "online")
                context["session"] = .string(envelope.sessionID)
                context["now_ms"] = .int(now.millisecondsSinceEpoch)
                context["now_iso"] = .string(now.iso8601)
                if let bdSeq = fields["bd_seq"]?.intValue, bdSeq >= 0 { context["bd_seq"] = .int(bdSeq) }
            }
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
    private static func entityUpdate(_ envelope: EventEnvelope, isLastWill: Bool)
        -> (kind: String, state: [String], counters: [String])
    {
        let ts = envelope.timestamp.iso8601
        var state: [String] = []
        func set(_ name: String, _ value: String?) {
            if let value { state += [name, value] }
        }
        // `bd_seq` is kept by the script (the maximum, not the last written); a will's status is `unreachable`.
        let managed: Set<String> = envelope.eventType == .workerHealth ? (isLastWill ? ["bd_seq", "status"] : ["bd_seq"]) : []
        for (name, value) in envelope.fields where !managed.contains(name) { set(name, redisString(value)) }
        set("machine_id", envelope.machineID?.rawValue)
        set("last_event_id", envelope.eventID)
        set("last_event_type", envelope.eventType.rawValue)
        switch envelope.eventType {
        case .workerHealth:
            set("health_at", ts)
            // A health report without a job means the worker runs none now (an empty value, as absent keys
            // cannot be written last-writer-wins). A will says nothing about the job: the worker may finish it.
            if isLastWill {
                set("status", "unreachable")
            } else if envelope.fields["current_job"] == nil {
                set("current_job", "")
            }
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
