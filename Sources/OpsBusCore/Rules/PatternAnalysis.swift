/// One service type's job outcomes over the analysis window, summed from the processor's hourly pattern buckets
/// (`patterns:success:<hour>` / `patterns:failure:<hour>`).
public struct ServiceOutcomes: Sendable, Equatable {
    /// Completed jobs.
    public var completed: Int
    /// Failed attempts per `error_type` (`timeout`, `out_of_memory`, …, `unknown` when none was given).
    public var failuresByType: [String: Int]
    /// Processing seconds summed over the completions that reported a time, and how many did (for the mean).
    public var processingTimeTotal: Double
    public var timedCompletions: Int
    /// 95th percentile of the processing time of completions in the window, when the processor could sample them
    /// (the hourly buckets only hold sums).
    public var processingTimeP95: Double?

    public init(completed: Int = 0, failuresByType: [String: Int] = [:], processingTimeTotal: Double = 0,
                timedCompletions: Int = 0, processingTimeP95: Double? = nil) {
        self.completed = max(0, completed)
        self.failuresByType = failuresByType.filter { $0.value > 0 }
        self.processingTimeTotal = processingTimeTotal
        self.timedCompletions = max(0, timedCompletions)
        self.processingTimeP95 = processingTimeP95
    }

    public var failed: Int { failuresByType.values.reduce(0, +) }
    /// Finished attempts: the sample every rate of this service is over.
    public var total: Int { completed + failed }
    public var failureRate: Double { total > 0 ? Double(failed) / Double(total) : 0 }

    /// Mean processing time of the timed completions; nil without one (or with an unusable sum).
    public var meanProcessingTime: Double? {
        guard timedCompletions > 0, processingTimeTotal.isFinite, processingTimeTotal > 0 else { return nil }
        return processingTimeTotal / Double(timedCompletions)
    }
}

/// What the analysis looks at: the recent outcomes per service type and the usage of every model.
public struct PatternWindow: Sendable, Equatable {
    public var services: [String: ServiceOutcomes]
    /// Per model: loads, cache hits and load time (the `model:{id}` counters, all time: that is what the seed's
    /// precache rule judges too).
    public var models: [String: ModelUsageStats]

    public init(services: [String: ServiceOutcomes] = [:], models: [String: ModelUsageStats] = [:]) {
        self.services = services
        self.models = models
    }
}

/// One piece of advice for operators (or a resource manager), derived from the window's patterns.
public struct PatternRecommendation: Sendable, Hashable {
    /// What to do; the raw value is the wire string (`details.kind`).
    public enum Kind: String, Sendable, CaseIterable {
        /// A service type fails too often (any error type).
        case failureRate = "failure_rate"
        /// One error type makes up too large a share of all jobs, over every service type.
        case errorTypeRate = "error_type_rate"
        /// Jobs of a service type time out: give them longer (`suggestedTimeoutSeconds`).
        case longerTimeout = "longer_timeout"
        /// Jobs of a service type run out of (GPU) memory or resources: give them more.
        case moreResources = "more_resources"
        /// A model loads slowly and is rarely cached: keep it loaded (the seed's precache rule).
        case precacheModel = "precache_model"

        /// Tie-break order within one severity: the specific, actionable advice before the general alarms.
        var order: Int {
            switch self {
            case .longerTimeout: 0
            case .moreResources: 1
            case .failureRate: 2
            case .errorTypeRate: 3
            case .precacheModel: 4
            }
        }
    }

    /// How urgent it is, least first.
    public enum Severity: String, Sendable, CaseIterable, Comparable {
        case info, warning, critical

        var rank: Int {
            switch self {
            case .info: 0
            case .warning: 1
            case .critical: 2
            }
        }

        public static func < (lhs: Severity, rhs: Severity) -> Bool { lhs.rank < rhs.rank }
    }

    public var kind: Kind
    public var severity: Severity
    /// What it is about: a service type (`failure_rate`, `longer_timeout`, `more_resources`), an error type
    /// (`error_type_rate`) or a model (`precache_model`).
    public var scope: String
    /// The error type(s) the advice is about, when it is about one (`timeout`, `out_of_memory`, …).
    public var errorType: String?
    /// The events counted (failures, timeouts, resource failures, model loads) …
    public var count: Int
    /// … out of this many (finished jobs, or model loads) …
    public var samples: Int
    /// … which is this share (for `precache_model`: the cache hit rate).
    public var rate: Double
    /// `longer_timeout`: the timeout to configure (p95 of the processing time × `timeoutFactor`), and what it is
    /// based on: `p95` or `mean` of the observed processing time, in seconds. Nil when no time was observed.
    public var suggestedTimeoutSeconds: Double?
    public var observedSeconds: Double?
    public var observedBasis: String?
    /// `precache_model`: average load time (ms).
    public var averageLoadMs: Double?
    /// One sentence for people (`opsbus health`, dashboard, the event's `reason`).
    public var summary: String

    public init(kind: Kind, severity: Severity, scope: String, errorType: String? = nil, count: Int, samples: Int,
                rate: Double, suggestedTimeoutSeconds: Double? = nil, observedSeconds: Double? = nil,
                observedBasis: String? = nil, averageLoadMs: Double? = nil, summary: String) {
        self.kind = kind
        self.severity = severity
        self.scope = scope
        self.errorType = errorType
        self.count = count
        self.samples = samples
        self.rate = rate
        self.suggestedTimeoutSeconds = suggestedTimeoutSeconds
        self.observedSeconds = observedSeconds
        self.observedBasis = observedBasis
        self.averageLoadMs = averageLoadMs
        self.summary = summary
    }

    /// The topic subject (`triggers/recommendation/<subject>`): `<kind>.<scope>`, with characters outside the id
    /// alphabet replaced by `_` and cut to the id length limit, so any service or model name gives a valid topic.
    public var subject: String {
        let raw = "\(kind.rawValue).\(scope)"
        let bytes = raw.utf8.map { Identifier.isAllowed($0) ? $0 : UInt8(ascii: "_") }
        return String(decoding: bytes.prefix(Identifier.maximumLength), as: UTF8.self)
    }

    /// Same advice, same window, same severity → same key: the processor derives the event id from it, so an
    /// analysis that runs again over unchanged (or merely grown) data announces nothing new, while an escalation
    /// (warning → critical) or a new window does.
    public func derivationKey(window: String) -> String {
        "\(kind.rawValue)|\(scope)|\(errorType ?? "")|\(severity.rawValue)|\(window)"
    }

    /// The `details` object of the event and the stored entry.
    public func json() -> JSONValue {
        func rounded(_ value: Double, _ places: Double = 1000) -> JSONValue { .double((value * places).rounded() / places) }
        var object: JSONObject = [
            "kind": .string(kind.rawValue), "severity": .string(severity.rawValue), "scope": .string(scope),
            "subject": .string(subject), "count": .int(Int64(count)), "samples": .int(Int64(samples)),
            "rate": rounded(rate), "summary": .string(summary),
        ]
        if let errorType { object["error_type"] = .string(errorType) }
        if let suggestedTimeoutSeconds { object["suggested_timeout_seconds"] = rounded(suggestedTimeoutSeconds, 10) }
        if let observedSeconds { object["observed_seconds"] = rounded(observedSeconds, 10) }
        if let observedBasis { object["observed_basis"] = .string(observedBasis) }
        if let averageLoadMs { object["average_load_ms"] = rounded(averageLoadMs, 1) }
        return .object(object)
    }

    /// Reads an entry written by `json()`; nil when a required field is missing or unknown.
    public init?(json value: JSONValue) {
        guard let object = value.objectValue,
              let kind = object["kind"]?.stringValue.flatMap(Kind.init(rawValue:)),
              let severity = object["severity"]?.stringValue.flatMap(Severity.init(rawValue:)),
              let scope = object["scope"]?.stringValue, let summary = object["summary"]?.stringValue
        else { return nil }
        self.init(kind: kind, severity: severity, scope: scope, errorType: object["error_type"]?.stringValue,
                  count: Int(object["count"]?.intValue ?? 0), samples: Int(object["samples"]?.intValue ?? 0),
                  rate: object["rate"]?.doubleValue ?? 0,
                  suggestedTimeoutSeconds: object["suggested_timeout_seconds"]?.doubleValue,
                  observedSeconds: object["observed_seconds"]?.doubleValue,
                  observedBasis: object["observed_basis"]?.stringValue,
                  averageLoadMs: object["average_load_ms"]?.doubleValue, summary: summary)
    }
}

/// The pattern analysis of the seed's "next steps": turns a window of outcomes into recommendations. Pure: no I/O,
/// no clock; the processor reads the window from Redis and publishes what this returns.
///
/// Rules (every threshold is a property, the defaults in brackets). Rates are "at or above": a threshold is the
/// first value that alarms, so `0.2` alarms at exactly 20 %. Sample minimums keep one failure out of three from
/// looking like a 33 % failure rate.
/// - `failure_rate` per service type: at least `minimumSamples` [20] finished jobs and a failure rate of at least
///   `failureRateWarning` [0.2] → warning; at least `failureRateCritical` [0.5] → critical. Names the most
///   frequent error type.
/// - `error_type_rate` per error type over all service types: at least `minimumSamples` finished jobs in all, at
///   least `minimumErrorTypeFailures` [5] of that type, and a share of all jobs of at least `errorTypeRate` [0.2]
///   → warning (critical from `failureRateCritical`). Catches one cause spread thinly over many services.
/// - `longer_timeout` per service type: at least `minimumTimeouts` [5] `timeout` failures and a share of the
///   service's jobs of at least `timeoutShare` [0.1] → warning (critical from `failureRateCritical`). Suggests
///   `timeoutFactor` [1.5] × the p95 of the processing time of its completions, or × the mean when no p95 was
///   sampled, or nothing when no completion reported a time: jobs that finish within the p95 plus 50 % head-room
///   should no longer be cut off, while a hung job still is.
/// - `more_resources` per service type: at least `minimumResourceFailures` [3] failures of the
///   `resourceErrorTypes` [`out_of_memory`, `resource_exhausted`] and a share of at least `resourceShare` [0.1]
///   → warning (critical from `failureRateCritical`): more GPU memory per job (or smaller batches); retrying on
///   the same allocation fails the same way.
/// - `precache_model` per model: the seed's `PrecacheRule` (more than 10 loads, average load over 30 s, cache hit
///   rate under 0.8) → info. It is the same rule the model's own events apply (`trigger.precache`, once per model),
///   reused so both agree; the processor lists it but publishes no second event for it.
///
/// Order: severity (critical first), then kind (timeout, resources, failure rate, error type, precache), then the
/// higher rate, then scope, so the list and its events are deterministic.
public struct PatternAnalysisRules: Sendable, Equatable {
    public var minimumSamples: Int
    public var failureRateWarning: Double
    public var failureRateCritical: Double
    public var minimumErrorTypeFailures: Int
    public var errorTypeRate: Double
    public var minimumTimeouts: Int
    public var timeoutShare: Double
    public var timeoutFactor: Double
    public var minimumResourceFailures: Int
    public var resourceShare: Double
    public var resourceErrorTypes: Set<String>
    public var precache: PrecacheRule

    public init(minimumSamples: Int = 20, failureRateWarning: Double = 0.2, failureRateCritical: Double = 0.5,
                minimumErrorTypeFailures: Int = 5, errorTypeRate: Double = 0.2, minimumTimeouts: Int = 5,
                timeoutShare: Double = 0.1, timeoutFactor: Double = 1.5, minimumResourceFailures: Int = 3,
                resourceShare: Double = 0.1,
                resourceErrorTypes: Set<String> = [FailureType.outOfMemory.rawValue,
                                                   FailureType.resourceExhausted.rawValue],
                precache: PrecacheRule = PrecacheRule()) {
        self.minimumSamples = minimumSamples
        self.failureRateWarning = failureRateWarning
        self.failureRateCritical = failureRateCritical
        self.minimumErrorTypeFailures = minimumErrorTypeFailures
        self.errorTypeRate = errorTypeRate
        self.minimumTimeouts = minimumTimeouts
        self.timeoutShare = timeoutShare
        self.timeoutFactor = timeoutFactor
        self.minimumResourceFailures = minimumResourceFailures
        self.resourceShare = resourceShare
        self.resourceErrorTypes = resourceErrorTypes
        self.precache = precache
    }

    /// The recommendations for `window`, most severe first (see the type's doc comment for the rules and order).
    public func recommendations(for window: PatternWindow) -> [PatternRecommendation] {
        var found: [PatternRecommendation] = []
        for (service, outcomes) in window.services {
            if let advice = failureRate(service, outcomes) { found.append(advice) }
            if let advice = timeouts(service, outcomes) { found.append(advice) }
            if let advice = resources(service, outcomes) { found.append(advice) }
        }
        found += errorTypes(window.services)
        for (model, usage) in window.models where precache.shouldPrecache(usage) {
            found.append(PatternRecommendation(
                kind: .precacheModel, severity: .info, scope: model, count: usage.loads, samples: usage.loads,
                rate: usage.cacheHitRate, averageLoadMs: usage.averageLoadTimeMs,
                summary: "precache model \(model): \(usage.loads) loads averaging \(seconds(usage.averageLoadTimeMs / 1000)), "
                    + "cache hit rate \(percent(usage.cacheHitRate))"))
        }
        return found.sorted(by: Self.precedes)
    }

    /// The list order: severity, kind, rate, scope.
    static func precedes(_ a: PatternRecommendation, _ b: PatternRecommendation) -> Bool {
        if a.severity != b.severity { return a.severity > b.severity }
        if a.kind != b.kind { return a.kind.order < b.kind.order }
        if a.rate != b.rate { return a.rate > b.rate }
        if a.scope != b.scope { return a.scope < b.scope }
        return (a.errorType ?? "") < (b.errorType ?? "")
    }

    private func severity(rate: Double) -> PatternRecommendation.Severity {
        rate >= failureRateCritical ? .critical : .warning
    }

    private func failureRate(_ service: String, _ outcomes: ServiceOutcomes) -> PatternRecommendation? {
        let rate = outcomes.failureRate
        guard outcomes.total >= max(1, minimumSamples), rate >= failureRateWarning else { return nil }
        let top = outcomes.failuresByType.max { ($0.value, $1.key) < ($1.value, $0.key) }
        let detail = top.map { ", mostly \($0.key) (\($0.value))" } ?? ""
        return PatternRecommendation(
            kind: .failureRate, severity: severity(rate: rate), scope: service, errorType: top?.key,
            count: outcomes.failed, samples: outcomes.total, rate: rate,
            summary: "\(service) fails \(percent(rate)) of jobs (\(outcomes.failed) of \(outcomes.total))\(detail)")
    }

    private func timeouts(_ service: String, _ outcomes: ServiceOutcomes) -> PatternRecommendation? {
        let count = outcomes.failuresByType[FailureType.timeout.rawValue] ?? 0
        guard count >= max(1, minimumTimeouts), outcomes.total > 0 else { return nil }
        let share = Double(count) / Double(outcomes.total)
        guard share >= timeoutShare else { return nil }
        let observed: (seconds: Double, basis: String)? =
            if let p95 = outcomes.processingTimeP95, p95.isFinite, p95 > 0 { (p95, "p95") }
            else if let mean = outcomes.meanProcessingTime { (mean, "mean") }
            else { nil }
        let suggested = observed.map { $0.seconds * timeoutFactor }
        let advice = observed.map { o in
            "; completions take \(seconds(o.seconds)) (\(o.basis)): suggest a timeout of \(seconds(suggested!))"
        } ?? "; no completion reported a processing time to size it from"
        return PatternRecommendation(
            kind: .longerTimeout, severity: severity(rate: share), scope: service, errorType: FailureType.timeout.rawValue,
            count: count, samples: outcomes.total, rate: share, suggestedTimeoutSeconds: suggested,
            observedSeconds: observed?.seconds, observedBasis: observed?.basis,
            summary: "longer timeout for \(service): \(count) of \(outcomes.total) jobs timed out (\(percent(share)))"
                + advice)
    }

    private func resources(_ service: String, _ outcomes: ServiceOutcomes) -> PatternRecommendation? {
        let types = outcomes.failuresByType.filter { resourceErrorTypes.contains($0.key) }
        let count = types.values.reduce(0, +)
        guard count >= max(1, minimumResourceFailures), outcomes.total > 0 else { return nil }
        let share = Double(count) / Double(outcomes.total)
        guard share >= resourceShare else { return nil }
        let names = types.keys.sorted().joined(separator: ",")
        return PatternRecommendation(
            kind: .moreResources, severity: severity(rate: share), scope: service, errorType: names,
            count: count, samples: outcomes.total, rate: share,
            summary: "more GPU memory for \(service): \(count) of \(outcomes.total) jobs failed with \(names) "
                + "(\(percent(share)))")
    }

    private func errorTypes(_ services: [String: ServiceOutcomes]) -> [PatternRecommendation] {
        let total = services.values.reduce(0) { $0 + $1.total }
        guard total >= max(1, minimumSamples) else { return [] }
        var byType: [String: (count: Int, services: Set<String>)] = [:]
        for (service, outcomes) in services {
            for (type, count) in outcomes.failuresByType {
                byType[type, default: (0, [])].count += count
                byType[type]!.services.insert(service)
            }
        }
        return byType.compactMap { type, entry in
            let share = Double(entry.count) / Double(total)
            guard entry.count >= max(1, minimumErrorTypeFailures), share >= errorTypeRate else { return nil }
            return PatternRecommendation(
                kind: .errorTypeRate, severity: severity(rate: share), scope: type, errorType: type,
                count: entry.count, samples: total, rate: share,
                summary: "\(type) failures are \(percent(share)) of all jobs (\(entry.count) of \(total), "
                    + "\(entry.services.count) service \(entry.services.count == 1 ? "type" : "types"))")
        }
    }
}

private func percent(_ rate: Double) -> String {
    let value = (rate * 1000).rounded() / 10
    return value == value.rounded() ? "\(Int(value)) %" : "\(value) %"
}

private func seconds(_ value: Double) -> String {
    let rounded = (value * 10).rounded() / 10
    return rounded == rounded.rounded() ? "\(Int(rounded)) s" : "\(rounded) s"
}

extension ServiceOutcomes {
    /// The 95th percentile (nearest rank) of `values`; nil when empty. Non-finite and negative values are ignored.
    public static func percentile95(_ values: [Double]) -> Double? {
        let usable = values.filter { $0.isFinite && $0 >= 0 }.sorted()
        guard !usable.isEmpty else { return nil }
        let rank = Int((0.95 * Double(usable.count)).rounded(.up))
        return usable[max(0, min(usable.count - 1, rank - 1))]
    }
}
