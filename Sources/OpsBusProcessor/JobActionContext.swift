import OpsBusCore

/// The facts the job script's automated actions need, decided in Swift before the script runs (see
/// `JobEventScript`): feature flags, the figures of a completion, and for a failure the retry decision.
///
/// The retry decision is made here, not in Lua, because it uses the shared rules (`FailureAnalysis`,
/// `RetryPolicy`) and randomness (jitter); the script only applies it if this event really is the attempt's failure.
enum JobActionContext {
    /// The context as the JSON text the script decodes (written directly: built per event, it was 6 % of the
    /// processor's instructions as a `JSONObject`). `ts`: the event's timestamp in ISO 8601, already formatted.
    static func make(_ envelope: EventEnvelope, configuration: ProcessorConfiguration, ts: String? = nil,
                     now: EventTimestamp = .now(), random: Double? = nil) -> String {
        let fields = envelope.fields
        var context = JSONObjectWriter()
        context.add("prefix", .string(configuration.keys.prefix))
        context.add("automation", .bool(configuration.automation))
        context.add("model_tracking", .bool(configuration.modelUsageTracking))
        context.add("notifications", .bool(configuration.userNotifications))
        context.add("ts_ms", .int(envelope.timestamp.millisecondsSinceEpoch))
        // 2026-11-29T01, the pattern bucket
        context.add("hour", .string(String((ts ?? envelope.timestamp.iso8601).prefix(13))))
        func copy(_ field: String, as name: String? = nil) {
            if let value = fields[field], value != .null { context.add(name ?? field, value) }
        }
        if let serviceType = envelope.serviceType { context.add("service_type", .string(serviceType)) }
        if let session = workerSession(envelope) { context.add("session_id", .string(session)) }
        switch envelope.eventType {
        case .jobStarted:
            if let allocation = fields["resource_allocation"], case .object = allocation {
                context.add("resource_allocation", .string(allocation.serialized()))
            }
        case .jobCompleted:
            for field in ["processing_time", "cost_estimate", "resource_efficiency", "model", "model_cache_hit",
                          "output_urls"] { copy(field) }
        case .jobFailed:
            copy("error_type")
            copy("resource_impact")
            copy("error", as: "error_message")
            // Drawn only here: a `getrandom` per event showed up in `strace -c` of the processor.
            let decision = retryDecision(envelope, policy: configuration.retryPolicy, now: now,
                                         random: random ?? Double.random(in: 0..<1))
            if let due = decision.due {
                context.add("retry_due_ms", .int(due.millisecondsSinceEpoch))
                context.add("retry_due_at", .string(due.iso8601))
                context.add("next_attempt", .int(Int64((envelope.attempt ?? 1) + 1)))
            }
            context.add("retry_reason", .string(decision.reason))
        default:
            break
        }
        return context.text()
    }

    /// The session of the worker process that sent the event: the worker's own events say which of its processes
    /// runs the job (see `JobEventScript`, `worker_session`); nil for events of others (e.g. the processor's own).
    static func workerSession(_ envelope: EventEnvelope) -> String? {
        envelope.workerID != nil && envelope.source != EventFactoryLite.source ? envelope.sessionID : nil
    }

    /// When to retry a failed attempt, or why not.
    struct RetryDecision: Equatable {
        var due: EventTimestamp?
        var reason: String
    }

    static func retryDecision(_ envelope: EventEnvelope, policy: RetryPolicy, now: EventTimestamp, random: Double)
        -> RetryDecision
    {
        let fields = envelope.fields
        let declared = fields["error_type"]?.stringValue
        let failureType = declared.flatMap(FailureType.init(rawValue:))
            ?? FailureClassifier().type(message: fields["error"]?.stringValue ?? "", declaredType: declared)
        var analysis = FailureAnalysis(errorType: failureType)
        if let recommended = fields["retry_recommended"]?.boolValue { analysis.retryRecommended = recommended }
        let attempt = envelope.attempt ?? 1
        guard analysis.retryRecommended else {
            return RetryDecision(due: nil, reason: "retry not recommended for \(failureType.rawValue)")
        }
        guard policy.shouldRetry(analysis: analysis, attempt: attempt) else {
            let limit = min(policy.maxAttempts, analysis.maxAttempts)
            return RetryDecision(due: nil, reason: "attempts exhausted (\(attempt) of \(limit)) for \(failureType.rawValue)")
        }
        let seconds = policy.delay(forAttempt: attempt, failureType: failureType, random: random)
        let due = EventTimestamp(millisecondsSinceEpoch: now.millisecondsSinceEpoch + Int64(seconds * 1000))
        return RetryDecision(due: due, reason: "retry \(attempt + 1) in \(Int(seconds.rounded())) s after \(failureType.rawValue)")
    }
}
