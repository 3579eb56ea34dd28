import OpsBusCore

/// Limits the health verdict applies. The defaults follow the seed's checks; all are in one place so the HTTP
/// endpoint and the CLI judge alike.
public struct HealthThresholds: Sendable, Hashable {
    /// No event for this long while workers claim to be online → degraded (seconds).
    public var idleDegradedSeconds: Double
    /// No event for this long while workers claim to be online → unhealthy: the processor is likely down (seconds).
    public var idleUnhealthySeconds: Double
    /// Share of events dead-lettered above which the bus is degraded / unhealthy.
    public var deadLetterRateDegraded: Double
    public var deadLetterRateUnhealthy: Double
    /// Share of automated actions that succeeded below which the bus is degraded / unhealthy.
    public var actionSuccessDegraded: Double
    public var actionSuccessUnhealthy: Double
    /// Share of webhook attempts that were delivered below which notifications are degraded.
    public var webhookSuccessDegraded: Double
    /// Rates are judged only over at least this many events/actions, so one bad message out of three is no alarm.
    public var minimumSample: Int
    /// A worker claiming to be up (`online`, `busy`, `idle`, `degraded`) but silent for longer than this is stale (seconds).
    public var staleAfterSeconds: Double

    public init(
        idleDegradedSeconds: Double = 300, idleUnhealthySeconds: Double = 900, deadLetterRateDegraded: Double = 0.05,
        deadLetterRateUnhealthy: Double = 0.5, actionSuccessDegraded: Double = 0.95,
        actionSuccessUnhealthy: Double = 0.5, webhookSuccessDegraded: Double = 0.5, minimumSample: Int = 20,
        staleAfterSeconds: Double = 60
    ) {
        self.idleDegradedSeconds = idleDegradedSeconds
        self.idleUnhealthySeconds = idleUnhealthySeconds
        self.deadLetterRateDegraded = deadLetterRateDegraded
        self.deadLetterRateUnhealthy = deadLetterRateUnhealthy
        self.actionSuccessDegraded = actionSuccessDegraded
        self.actionSuccessUnhealthy = actionSuccessUnhealthy
        self.webhookSuccessDegraded = webhookSuccessDegraded
        self.minimumSample = minimumSample
        self.staleAfterSeconds = staleAfterSeconds
    }
}

/// The overall state, worst first in severity order.
public enum HealthStatus: String, Sendable, Hashable, Comparable, CaseIterable {
    case healthy, degraded, unhealthy

    /// Process exit code for checks (monitoring-plugin convention): 0 healthy, 1 degraded, 2 unhealthy.
    public var exitCode: Int32 {
        switch self {
        case .healthy: 0
        case .degraded: 1
        case .unhealthy: 2
        }
    }

    public static func < (lhs: HealthStatus, rhs: HealthStatus) -> Bool { lhs.exitCode < rhs.exitCode }
}

/// The verdict with the reasons for it (empty when healthy) and informational notes.
public struct HealthVerdict: Sendable, Hashable {
    public var status: HealthStatus
    /// Why the status is not healthy, one sentence each, worst first.
    public var reasons: [String]
    /// Facts worth knowing that are not problems (`no events yet`, `no actions yet`).
    public var notes: [String]

    public init(status: HealthStatus, reasons: [String] = [], notes: [String] = []) {
        self.status = status
        self.reasons = reasons
        self.notes = notes
    }
}

/// A success/failure pair of counters, e.g. actions succeeded/failed.
public struct SuccessCounts: Sendable, Hashable {
    public var succeeded: Int64
    public var failed: Int64

    public init(succeeded: Int64, failed: Int64) {
        self.succeeded = succeeded
        self.failed = failed
    }

    public var total: Int64 { succeeded + failed }
    /// succeeded / total; nil when nothing happened yet.
    public var rate: Double? { total > 0 ? Double(succeeded) / Double(total) : nil }
}

/// The processor's health as read from Redis: the seed's checks (events per minute, action success rate, last
/// event time, event types seen) plus dead letters, job and worker counts, and the verdict.
///
/// Every field has a default so tests (and the verdict's unit tests) can build exactly the situation they need.
public struct HealthReport: Sendable {
    /// When the report was made; ages are relative to it.
    public var generatedAt: EventTimestamp
    public var thresholds: HealthThresholds

    /// `events_received` since the stats began.
    public var eventsTotal: Int64 = 0
    /// Events in the current, still running minute.
    public var eventsCurrentMinute: Int64 = 0
    /// Events per complete minute, oldest first, the newest being the minute just finished (up to 15 entries).
    public var eventsPerRecentMinute: [Int64] = []
    /// Events and dead letters over the recent window (the complete minutes above plus the current one), for the
    /// dead-letter rate.
    public var recentEvents: Int64 = 0
    public var recentDeadLettered: Int64 = 0

    public var lastEventAt: EventTimestamp?
    public var lastEventType: String?

    /// `type:<event_type>` counters (all time), and `outcome:<outcome>` counters.
    public var eventTypes: [String: Int64] = [:]
    public var outcomes: [String: Int64] = [:]

    /// Automated actions (`actions_succeeded`/`actions_failed`); nil when the processor has not counted any yet.
    public var actions: SuccessCounts?
    /// Webhook deliveries (`webhooks_delivered`/`webhooks_failed_attempts`); nil when none yet.
    public var webhooks: SuccessCounts?
    /// Every `actions_*`/`webhooks_*` counter, shown as is (e.g. `webhooks_dead_lettered`).
    public var actionCounters: [String: Int64] = [:]

    /// Notifications given up after their last attempt (`webhooks_dead_lettered`, all time).
    public var webhooksDeadLettered: Int64 { actionCounters["webhooks_dead_lettered"] ?? 0 }

    /// Length of the dead-letter stream.
    public var deadLetters: Int64 = 0
    /// Jobs per status (SCARD of each status index), in lifecycle order.
    public var jobsByStatus: [(status: String, count: Int64)] = []
    /// Workers per registry status.
    public var workersByStatus: [String: Int] = [:]
    /// Workers claiming to be up (`WorkerRegistry.liveStatuses`), and how many of them are stale.
    public var liveWorkers: Int = 0
    public var staleWorkers: Int = 0
    /// Workers whose last will arrived and whose link grace is not over (`unreachable`).
    public var unreachableWorkers: Int { workersByStatus["unreachable"] ?? 0 }

    /// Gap detection over publisher sessions (all time, `HealthReport.sequenceCounterNames`): `gaps_opened`,
    /// `gaps_closed`, `gaps_expired`, `gaps_abandoned`, `declared_drops`, `sessions`.
    public var sequenceCounters: [String: Int64] = [:]
    /// Worker link events (all time, `HealthReport.linkCounterNames`): `link_downs`, `link_restores`,
    /// `worker_restarts`, `link_timeouts`, `stale_wills`.
    public var linkCounters: [String: Int64] = [:]
    /// Gaps reported as expired and still open, newest first.
    public var expiredGaps: [SequenceGap] = []
    /// Per publisher owner (worker, else machine), most recently active first.
    public var publishers: [PublisherSequenceCounts] = []

    /// The latest pattern analysis (`PatternAnalyzer`): nil before its first run or when it is off.
    public var patternAnalysis: PatternAnalysisResult?

    public static let sequenceCounterNames = ["gaps_opened", "gaps_closed", "gaps_expired", "gaps_abandoned",
                                              "declared_drops", "sessions"]
    public static let linkCounterNames = ["link_downs", "link_restores", "worker_restarts", "link_timeouts",
                                          "stale_wills"]

    public init(generatedAt: EventTimestamp, thresholds: HealthThresholds = HealthThresholds()) {
        self.generatedAt = generatedAt
        self.thresholds = thresholds
    }

    /// Events in the minute that just finished.
    public var eventsLastMinute: Int64 { eventsPerRecentMinute.last ?? 0 }
    /// Average events per minute over the last 5 and 15 complete minutes.
    public var eventsPerMinute5: Double { average(lastMinutes: 5) }
    public var eventsPerMinute15: Double { average(lastMinutes: 15) }

    private func average(lastMinutes count: Int) -> Double {
        Double(eventsPerRecentMinute.suffix(count).reduce(0, +)) / Double(count)
    }

    /// Seconds since the newest event; nil when there was none.
    public var lastEventAgeSeconds: Double? {
        lastEventAt.map { Double(generatedAt.millisecondsSinceEpoch - $0.millisecondsSinceEpoch) / 1000 }
    }

    public var verdict: HealthVerdict { ProcessorHealth.verdict(for: self) }

    /// The report as one JSON document (what `opsbus health --json` prints and an HTTP endpoint would serve).
    public func json() -> JSONValue {
        func rounded(_ value: Double) -> JSONValue { .double((value * 100).rounded() / 100) }
        func counts(_ dictionary: [String: Int64]) -> JSONValue {
            .object(JSONObject(pairs: dictionary.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.int($0.value)) }))
        }
        func successJSON(_ counts: SuccessCounts?, _ names: (String, String)) -> JSONValue {
            guard let counts else { return .null }
            return .object([
                names.0: .int(counts.succeeded), names.1: .int(counts.failed),
                "success_rate": counts.rate.map { rounded($0) } ?? .null,
            ])
        }
        let verdict = verdict
        var workers = JSONObject(
            pairs: workersByStatus.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.int(Int64($0.value))) })
        workers["live"] = .int(Int64(liveWorkers))
        workers["stale"] = .int(Int64(staleWorkers))
        return .object([
            "verdict": .string(verdict.status.rawValue),
            "reasons": .array(verdict.reasons.map(JSONValue.string)),
            "notes": .array(verdict.notes.map(JSONValue.string)),
            "generated_at": .string(generatedAt.iso8601),
            "events": .object([
                "total": .int(eventsTotal),
                "current_minute": .int(eventsCurrentMinute),
                "last_minute": .int(eventsLastMinute),
                "per_minute_avg_5m": rounded(eventsPerMinute5),
                "per_minute_avg_15m": rounded(eventsPerMinute15),
                "recent_minutes": .array(eventsPerRecentMinute.map(JSONValue.int)),
                "last_event_at": lastEventAt.map { .string($0.iso8601) } ?? .null,
                "last_event_age_seconds": lastEventAgeSeconds.map(rounded) ?? .null,
                "last_event_type": lastEventType.map(JSONValue.string) ?? .null,
                "types": counts(eventTypes),
                "outcomes": counts(outcomes),
            ]),
            "actions": successJSON(actions, ("succeeded", "failed")),
            "webhooks": successJSON(webhooks, ("delivered", "failed_attempts")),
            "action_counters": counts(actionCounters),
            "dead_letters": .object([
                "stream_length": .int(deadLetters),
                "recent_events": .int(recentEvents),
                "recent_dead_lettered": .int(recentDeadLettered),
            ]),
            "jobs": .object(JSONObject(pairs: jobsByStatus.map { ($0.status, JSONValue.int($0.count)) })),
            "workers": .object(workers),
            "links": .object(JSONObject(pairs: Self.linkCounterNames.map { ($0, JSONValue.int(linkCounters[$0] ?? 0)) })),
            "sequence": .object(JSONObject(
                pairs: Self.sequenceCounterNames.map { ($0, JSONValue.int(sequenceCounters[$0] ?? 0)) } + [
                    ("expired_gaps", .array(expiredGaps.map { $0.json() })),
                    ("publishers", .array(publishers.map { $0.json() })),
                ])),
            "recommendations": patternAnalysis?.json() ?? .null,
        ])
    }
}

/// A gap in a publisher session's `seq` that stayed open past the report delay: events that never arrived.
public struct SequenceGap: Sendable, Hashable {
    /// The publisher (worker id, else machine id, else `_`).
    public var owner: String
    public var sessionID: String
    /// The missing numbers, `first` … `last`.
    public var first: UInt64
    public var last: UInt64
    /// When the gap opened (a later number arrived).
    public var openedAt: EventTimestamp
    /// Seconds from `openedAt` to the report's time.
    public var ageSeconds: Double

    public init(owner: String, sessionID: String, first: UInt64, last: UInt64, openedAt: EventTimestamp,
                ageSeconds: Double) {
        self.owner = owner
        self.sessionID = sessionID
        self.first = first
        self.last = last
        self.openedAt = openedAt
        self.ageSeconds = ageSeconds
    }

    /// How many events are missing.
    public var count: UInt64 { last >= first ? last - first + 1 : 0 }
    /// `7` or `7…9`.
    public var range: String { first == last ? "\(first)" : "\(first)…\(last)" }

    public func json() -> JSONValue {
        .object([
            "owner": .string(owner), "session_id": .string(sessionID), "first_seq": .int(Int64(clamping: first)),
            "last_seq": .int(Int64(clamping: last)), "missing": .int(Int64(clamping: count)),
            "opened_at": .string(openedAt.iso8601), "age_seconds": .double((ageSeconds * 10).rounded() / 10),
        ])
    }
}

/// Gap-detection counters of one publisher owner (all its sessions).
public struct PublisherSequenceCounts: Sendable, Hashable {
    public var owner: String
    /// `gaps_opened`, `gaps_closed`, `gaps_expired`, `gaps_abandoned`, `declared_drops`, `sessions`.
    public var counters: [String: Int64]
    public var lastSessionID: String?
    public var lastSeq: Int64?

    public init(owner: String, counters: [String: Int64], lastSessionID: String? = nil, lastSeq: Int64? = nil) {
        self.owner = owner
        self.counters = counters
        self.lastSessionID = lastSessionID
        self.lastSeq = lastSeq
    }

    /// Gaps opened and not (yet) closed or given up: reordering in flight, or loss.
    public var openGaps: Int64 {
        max(0, (counters["gaps_opened"] ?? 0) - (counters["gaps_closed"] ?? 0) - (counters["gaps_abandoned"] ?? 0))
    }

    public func json() -> JSONValue {
        var object: JSONObject = ["owner": .string(owner)]
        for name in HealthReport.sequenceCounterNames { object[name] = .int(counters[name] ?? 0) }
        object["open_gaps"] = .int(openGaps)
        object["last_session_id"] = lastSessionID.map(JSONValue.string) ?? .null
        object["last_seq"] = lastSeq.map(JSONValue.int) ?? .null
        return .object(object)
    }
}
