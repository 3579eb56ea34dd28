import OpsBusCore
import OpsBusRedis

/// The processor's health checks: reads the counters the processor keeps in Redis into a `HealthReport`, and
/// judges it (`verdict(for:)`, a pure function). Used by `opsbus health`; an HTTP endpoint can serve the same JSON.
public enum ProcessorHealth {
    /// Complete minutes read for the per-minute rates (the 15-minute average needs 15).
    public static let recentMinutes = 15

    /// Reads everything the report needs in a handful of pipelined round trips (no KEYS/SCAN).
    /// - Parameter now: the time the report is made at; per-minute buckets and ages are relative to it.
    /// - Throws: `InspectionError.redis` when Redis is unreachable or refuses a read.
    public static func read(redis: RedisConnection, keys: RedisKeys, now: EventTimestamp = .now(),
                            thresholds: HealthThresholds = HealthThresholds()) throws(InspectionError) -> HealthReport
    {
        var report = HealthReport(generatedAt: now, thresholds: thresholds)
        let currentMinute = now.millisecondsSinceEpoch / 60_000
        // Oldest complete minute first, then the current one.
        let minutes = ((currentMinute - Int64(recentMinutes))...currentMinute).map { $0 }
        var commands: [[String]] = [["HGETALL", keys.stats], ["XLEN", keys.deadLetters]]
        commands += minutes.map { ["HMGET", keys.statsMinute($0), "events", "outcome:dead_lettered"] }
        commands += JobIndex.statuses.map { ["SCARD", keys.jobsByStatus($0)] }
        let replies = try chunkedPipeline(redis, commands, reading: "processor statistics")

        let stats = replies[0].hashDictionary()
        apply(stats: stats, to: &report)
        report.deadLetters = replies[1].int ?? 0

        var minuteCounts: [(events: Int64, deadLettered: Int64)] = []
        for reply in replies[2..<(2 + minutes.count)] {
            let values = reply.array ?? []
            let events = values.first?.int ?? 0
            let deadLettered = values.count > 1 ? values[1].int ?? 0 : 0
            minuteCounts.append((events, deadLettered))
        }
        report.eventsPerRecentMinute = minuteCounts.dropLast().map(\.events)
        report.eventsCurrentMinute = minuteCounts.last?.events ?? 0
        report.recentEvents = minuteCounts.reduce(0) { $0 + $1.events }
        report.recentDeadLettered = minuteCounts.reduce(0) { $0 + $1.deadLettered }

        let jobCounts = replies[(2 + minutes.count)...].map { $0.int ?? 0 }
        report.jobsByStatus = zip(JobIndex.statuses, jobCounts).map { (status: $0, count: $1) }

        let workers = try WorkerRegistry.read(redis: redis, keys: keys, now: now, staleAfter: thresholds.staleAfterSeconds)
        for worker in workers { report.workersByStatus[worker.status, default: 0] += 1 }
        report.liveWorkers = workers.filter { WorkerRegistry.liveStatuses.contains($0.status) }.count
        report.staleWorkers = workers.filter(\.isStale).count
        try readSequence(redis: redis, keys: keys, now: now, into: &report)
        report.patternAnalysis = try PatternStore.read(redis: redis, keys: keys)
        return report
    }

    /// Expired gaps listed (the newest) and publisher owners read (the most recently active).
    public static let listedGaps = 100
    public static let listedPublishers = 200

    /// Reads the expired gaps still open and the per-owner gap counters (two pipelined round trips).
    static func readSequence(redis: RedisConnection, keys: RedisKeys, now: EventTimestamp, into report: inout HealthReport)
        throws(InspectionError)
    {
        let indexes = try chunkedPipeline(redis, [
            ["ZREVRANGE", keys.gapsReported, "0", String(listedGaps - 1), "WITHSCORES"],
            ["ZREVRANGE", keys.publishers, "0", String(listedPublishers - 1)],
        ], reading: "sequence gap indexes")
        var gapMembers: [(session: String, first: String, opened: Int64)] = []
        let flat = indexes[0].array ?? []
        for index in stride(from: 0, to: flat.count - 1, by: 2) {
            guard let member = flat[index].string, let separator = member.lastIndex(of: "|"),
                  let opened = flat[index + 1].string.flatMap({ Double($0) }) else { continue }
            gapMembers.append((String(member[..<separator]), String(member[member.index(after: separator)...]),
                               Int64(opened)))
        }
        let owners = (indexes[1].array ?? []).compactMap(\.string)
        var commands: [[String]] = []
        for gap in gapMembers {
            commands.append(["ZRANGEBYSCORE", keys.sequenceGaps(gap.session), gap.first, gap.first, "LIMIT", "0", "1"])
            commands.append(["HGET", keys.sequence(gap.session), "owner"])
        }
        commands += owners.map { ["HGETALL", keys.publisher($0)] }
        let replies = try chunkedPipeline(redis, commands, reading: "sequence gaps")
        for (index, gap) in gapMembers.enumerated() {
            // The session's own entry, `<first>|<last>|<opened>|<reported>`; gone when its state expired.
            guard let entry = replies[2 * index].array?.first?.string else { continue }
            let parts = entry.split(separator: "|")
            guard parts.count == 4, let first = UInt64(parts[0]), let last = UInt64(parts[1]) else { continue }
            let opened = EventTimestamp(millisecondsSinceEpoch: gap.opened)
            report.expiredGaps.append(SequenceGap(
                owner: replies[2 * index + 1].string ?? "_", sessionID: gap.session, first: first, last: last,
                openedAt: opened, ageSeconds: Double(now.millisecondsSinceEpoch - gap.opened) / 1000))
        }
        for (owner, reply) in zip(owners, replies[(2 * gapMembers.count)...]) {
            let fields = reply.hashDictionary()
            guard !fields.isEmpty else { continue }
            var counters: [String: Int64] = [:]
            for name in HealthReport.sequenceCounterNames { counters[name] = fields[name].flatMap(number) ?? 0 }
            report.publishers.append(PublisherSequenceCounts(
                owner: owner, counters: counters, lastSessionID: fields["last_session"],
                lastSeq: fields["last_seq"].flatMap(number)))
        }
    }

    /// Fills the report from the `opsbus:stats` hash.
    static func apply(stats: [String: String], to report: inout HealthReport) {
        func count(_ field: String) -> Int64? { stats[field].flatMap(number) }
        report.eventsTotal = count("events_received") ?? 0
        report.lastEventAt = stats["last_event_at"].flatMap(EventTimestamp.init(iso8601:))
        report.lastEventType = stats["last_event_type"]
        for (field, value) in stats {
            guard let value = number(value) else { continue }
            if field.hasPrefix("type:") {
                report.eventTypes[String(field.dropFirst(5))] = value
            } else if field.hasPrefix("outcome:") {
                report.outcomes[String(field.dropFirst(8))] = value
            } else if field.hasPrefix("actions_") || field.hasPrefix("webhooks_") {
                report.actionCounters[field] = value
            } else if HealthReport.sequenceCounterNames.contains(field) {
                report.sequenceCounters[field] = value
            } else if HealthReport.linkCounterNames.contains(field) {
                report.linkCounters[field] = value
            }
        }
        let succeeded = count("actions_succeeded"), failed = count("actions_failed")
        if succeeded != nil || failed != nil {
            report.actions = SuccessCounts(succeeded: succeeded ?? 0, failed: failed ?? 0)
        }
        let delivered = count("webhooks_delivered"), failedAttempts = count("webhooks_failed_attempts")
        if delivered != nil || failedAttempts != nil {
            report.webhooks = SuccessCounts(succeeded: delivered ?? 0, failed: failedAttempts ?? 0)
        }
    }

    /// Counters are written with HINCRBY (integers) or HINCRBYFLOAT ("3" or "2.5"); both read as whole numbers.
    private static func number(_ text: String) -> Int64? {
        if let value = Int64(text) { return value }
        guard let value = Double(text), value.isFinite, abs(value) < 9e18 else { return nil }
        return Int64(value)
    }

    /// Judges a report. Pure: the same report always gives the same verdict.
    ///
    /// - unhealthy: no event for `idleUnhealthySeconds` while workers claim to be online (the processor or the
    ///   broker is likely down); dead-letter rate above `deadLetterRateUnhealthy`; action success rate below
    ///   `actionSuccessUnhealthy`.
    /// - degraded: no event for `idleDegradedSeconds` while workers are online; dead-letter rate above
    ///   `deadLetterRateDegraded`; action success below `actionSuccessDegraded`; webhook delivery below
    ///   `webhookSuccessDegraded`; workers that claim to be alive but are stale; sequence gaps reported (open past
    ///   the report delay) that opened within the last `recentMinutes` (older ones are a note: they stay listed
    ///   until they close or their session's state expires, and must not keep the bus degraded for days).
    ///
    /// Rates are judged over the recent window when it holds `minimumSample` events, else over all time when that
    /// does; smaller samples are not judged. (Redis unreachable is unhealthy too, but then there is no report:
    /// see `unreachableVerdict(endpoint:error:)`.)
    public static func verdict(for report: HealthReport) -> HealthVerdict {
        let limits = report.thresholds
        var unhealthy: [String] = []
        var degraded: [String] = []
        var notes: [String] = []

        // Silence while workers claim to be online.
        if report.liveWorkers > 0 {
            let workers = report.liveWorkers == 1 ? "1 worker claims" : "\(report.liveWorkers) workers claim"
            if let age = report.lastEventAgeSeconds {
                let silence = "no events for \(describe(seconds: age)) while \(workers) to be up"
                if age >= limits.idleUnhealthySeconds {
                    unhealthy.append(silence + " (is the processor running and connected to the broker?)")
                } else if age >= limits.idleDegradedSeconds {
                    degraded.append(silence)
                }
            } else {
                unhealthy.append("no event was ever counted while \(workers) to be up (processor statistics missing?)")
            }
        }
        if report.lastEventAt == nil && report.eventsTotal == 0 { notes.append("no events yet") }

        // Dead letters.
        let sample = Int64(limits.minimumSample)
        let deadLetterBasis: (dead: Int64, total: Int64, window: String)?
        if report.recentEvents >= sample {
            deadLetterBasis = (report.recentDeadLettered, report.recentEvents, "in the last \(recentMinutes) minutes")
        } else if report.eventsTotal >= sample {
            deadLetterBasis = (report.outcomes["dead_lettered"] ?? 0, report.eventsTotal, "of all events")
        } else {
            deadLetterBasis = nil
        }
        if let basis = deadLetterBasis, basis.total > 0 {
            let rate = Double(basis.dead) / Double(basis.total)
            let text = "\(percent(rate)) of events dead-lettered \(basis.window) (\(basis.dead) of \(basis.total))"
            if rate > limits.deadLetterRateUnhealthy {
                unhealthy.append(text)
            } else if rate > limits.deadLetterRateDegraded {
                degraded.append(text + ", above \(percent(limits.deadLetterRateDegraded))")
            }
        }

        // Automated actions and webhooks.
        if let actions = report.actions, let rate = actions.rate {
            if actions.total >= sample {
                let text = "action success rate \(percent(rate)) (\(actions.failed) of \(actions.total) failed)"
                if rate < limits.actionSuccessUnhealthy {
                    unhealthy.append(text)
                } else if rate < limits.actionSuccessDegraded {
                    degraded.append(text + ", below \(percent(limits.actionSuccessDegraded))")
                }
            }
        } else {
            notes.append("no actions yet")
        }
        if let webhooks = report.webhooks, let rate = webhooks.rate, webhooks.total >= sample,
           rate < limits.webhookSuccessDegraded {
            degraded.append(
                "webhook delivery rate \(percent(rate)) (\(webhooks.failed) failed attempts of \(webhooks.total))")
        }

        if report.webhooksDeadLettered > 0 {
            // All-time, so a note: one lost notification last week must not keep the bus "degraded" forever.
            notes.append(
                "\(report.webhooksDeadLettered) webhook notifications dead-lettered after their last attempt (all time)")
        }

        // Workers that should be heartbeating but are not.
        if report.staleWorkers > 0 {
            let workers = report.staleWorkers == 1 ? "1 worker claims" : "\(report.staleWorkers) workers claim"
            degraded.append("\(workers) to be up but sent nothing for over \(describe(seconds: limits.staleAfterSeconds))")
        }

        // Events that never arrived: gaps in publisher sessions still open past the report delay.
        if !report.expiredGaps.isEmpty {
            let recent = report.expiredGaps.filter { $0.ageSeconds <= Double(recentMinutes * 60) }
            let missing = report.expiredGaps.reduce(UInt64(0)) { $0 + $1.count }
            let owners = Set(report.expiredGaps.map(\.owner)).sorted().joined(separator: ", ")
            let text = "\(report.expiredGaps.count) sequence \(report.expiredGaps.count == 1 ? "gap" : "gaps") still open "
                + "(\(missing) events never arrived from \(owners))"
            if recent.isEmpty { notes.append(text + ", all older than \(recentMinutes) min") } else { degraded.append(text) }
        }
        if report.unreachableWorkers > 0 {
            let workers = report.unreachableWorkers == 1 ? "1 worker is" : "\(report.unreachableWorkers) workers are"
            notes.append("\(workers) unreachable (link down; in-flight jobs fail over when the link grace is over)")
        }

        let status: HealthStatus = !unhealthy.isEmpty ? .unhealthy : (!degraded.isEmpty ? .degraded : .healthy)
        return HealthVerdict(status: status, reasons: unhealthy + degraded, notes: notes)
    }

    /// The verdict when Redis cannot be read at all: unhealthy, with the (password-masked) endpoint and the error.
    public static func unreachableVerdict(endpoint: RedisEndpoint, error: RedisError) -> HealthVerdict {
        HealthVerdict(status: .unhealthy, reasons: [unreachableReason(endpoint: endpoint, error: error)])
    }

    /// `Redis unreachable at redis://:***@host:6379/0: Connection refused` (no endpoint repeated twice), or, for a
    /// Redis that answers but refuses the reads, `cannot read Redis at …: <error>`.
    public static func unreachableReason(endpoint: RedisEndpoint, error: RedisError) -> String {
        switch error {
        case let .connectFailed(_, reason):
            return "Redis unreachable at \(endpoint): \(reason)"
        case let .authenticationFailed(_, reason):
            return "Redis refused the credentials at \(endpoint): \(reason)"
        default:
            return error.isConnectionFailure || error == .closed
                ? "Redis unreachable at \(endpoint): \(error)" : "cannot read Redis at \(endpoint): \(error)"
        }
    }

    /// `42 s`, `5 min`, `2 h 5 min`, `3 d 4 h`: durations for reasons and ages.
    public static func describe(seconds: Double) -> String {
        let total = Int(max(0, seconds).rounded())
        if total < 60 { return "\(total) s" }
        if total < 3600 { return "\(total / 60) min" }
        if total < 86_400 { return "\(total / 3600) h \(total % 3600 / 60) min" }
        return "\(total / 86_400) d \(total % 86_400 / 3600) h"
    }

    private static func percent(_ rate: Double) -> String {
        let value = (rate * 1000).rounded() / 10
        return value == value.rounded() ? "\(Int(value)) %" : "\(value) %"
    }
}
