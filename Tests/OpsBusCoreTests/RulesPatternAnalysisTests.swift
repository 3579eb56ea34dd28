import Testing

@testable import OpsBusCore

@Suite("Pattern analysis rules")
struct RulesPatternAnalysisTests {
    let rules = PatternAnalysisRules()

    private func window(_ services: [String: ServiceOutcomes], models: [String: ModelUsageStats] = [:]) -> PatternWindow {
        PatternWindow(services: services, models: models)
    }

    private func kinds(_ found: [PatternRecommendation]) -> [PatternRecommendation.Kind] { found.map(\.kind) }

    @Test func nothingToSayAboutAHealthyOrEmptyWindow() {
        #expect(rules.recommendations(for: PatternWindow()).isEmpty)
        #expect(rules.recommendations(for: window(["comfyui": ServiceOutcomes(completed: 500, failuresByType: ["network": 2])])).isEmpty)
    }

    @Test func tooFewSamplesGiveNoFailureRate() {
        // 19 jobs, all failed: a 100 % rate, but under the 20-job minimum.
        let found = rules.recommendations(for: window(["a": ServiceOutcomes(failuresByType: ["network": 19])]))
        #expect(!kinds(found).contains(.failureRate))
        #expect(!kinds(found).contains(.errorTypeRate))
        let twenty = rules.recommendations(for: window(["a": ServiceOutcomes(failuresByType: ["network": 20])]))
        #expect(kinds(twenty).contains(.failureRate))
    }

    @Test func failureRateAlarmsExactlyAtTheThreshold() throws {
        let at = rules.recommendations(for: window(["a": ServiceOutcomes(completed: 80, failuresByType: ["network": 20])]))
        let advice = try #require(at.first { $0.kind == .failureRate })
        #expect(advice.rate == 0.2)
        #expect(advice.severity == .warning)
        #expect(advice.count == 20 && advice.samples == 100)
        #expect(advice.errorType == "network")
        #expect(advice.summary == "a fails 20 % of jobs (20 of 100), mostly network (20)")
        let below = rules.recommendations(for: window(["a": ServiceOutcomes(completed: 81, failuresByType: ["network": 19])]))
        #expect(!kinds(below).contains(.failureRate))
    }

    @Test func failureRateTurnsCriticalAtHalf() throws {
        let found = rules.recommendations(for: window(["a": ServiceOutcomes(completed: 10, failuresByType: ["network": 10])]))
        #expect(try #require(found.first { $0.kind == .failureRate }).severity == .critical)
        let almost = rules.recommendations(for: window(["a": ServiceOutcomes(completed: 11, failuresByType: ["network": 9])]))
        #expect(try #require(almost.first { $0.kind == .failureRate }).severity == .warning)
    }

    @Test func timeoutsSuggestOneAndAHalfTimesTheP95() throws {
        let outcomes = ServiceOutcomes(completed: 40, failuresByType: ["timeout": 10], processingTimeTotal: 40 * 60,
                                       timedCompletions: 40, processingTimeP95: 84)
        let advice = try #require(rules.recommendations(for: window(["comfyui": outcomes])).first { $0.kind == .longerTimeout })
        #expect(advice.suggestedTimeoutSeconds == 126)
        #expect(advice.observedBasis == "p95")
        #expect(advice.observedSeconds == 84)
        #expect(advice.count == 10 && advice.samples == 50 && advice.rate == 0.2)
        #expect(advice.errorType == "timeout")
        #expect(advice.subject == "longer_timeout.comfyui")
    }

    @Test func timeoutsFallBackToTheMeanThenToNothing() throws {
        let mean = ServiceOutcomes(completed: 10, failuresByType: ["timeout": 5], processingTimeTotal: 200, timedCompletions: 10)
        let advice = try #require(rules.recommendations(for: window(["a": mean])).first { $0.kind == .longerTimeout })
        #expect(advice.observedBasis == "mean")
        #expect(advice.suggestedTimeoutSeconds == 30)
        let blind = ServiceOutcomes(failuresByType: ["timeout": 5])
        let none = try #require(rules.recommendations(for: window(["a": blind])).first { $0.kind == .longerTimeout })
        #expect(none.suggestedTimeoutSeconds == nil)
        #expect(none.summary.contains("no completion reported a processing time"))
    }

    @Test func timeoutsNeedEnoughOfThemAndAShare() {
        // 4 timeouts: under the minimum of 5.
        #expect(!kinds(rules.recommendations(for: window(["a": ServiceOutcomes(completed: 10, failuresByType: ["timeout": 4])])))
            .contains(.longerTimeout))
        // 5 timeouts in 51 jobs: under the 10 % share; in 50 jobs: exactly at it.
        #expect(!kinds(rules.recommendations(for: window(["a": ServiceOutcomes(completed: 46, failuresByType: ["timeout": 5])])))
            .contains(.longerTimeout))
        #expect(kinds(rules.recommendations(for: window(["a": ServiceOutcomes(completed: 45, failuresByType: ["timeout": 5])])))
            .contains(.longerTimeout))
    }

    @Test func memoryFailuresRecommendMoreResources() throws {
        let outcomes = ServiceOutcomes(completed: 20, failuresByType: ["out_of_memory": 2, "resource_exhausted": 1, "network": 7])
        let advice = try #require(rules.recommendations(for: window(["sdxl": outcomes])).first { $0.kind == .moreResources })
        #expect(advice.count == 3)
        #expect(advice.errorType == "out_of_memory,resource_exhausted")
        #expect(advice.summary.contains("more GPU memory for sdxl"))
        let two = ServiceOutcomes(completed: 5, failuresByType: ["out_of_memory": 2])
        #expect(!kinds(rules.recommendations(for: window(["sdxl": two]))).contains(.moreResources))
    }

    @Test func errorTypeRateCountsOverAllServices() throws {
        // Each service alone is under the 20-job minimum; together they are not, and network is 30 % of all jobs.
        let found = rules.recommendations(for: window([
            "a": ServiceOutcomes(completed: 7, failuresByType: ["network": 3]),
            "b": ServiceOutcomes(completed: 7, failuresByType: ["network": 3]),
        ]))
        #expect(!kinds(found).contains(.failureRate))
        let advice = try #require(found.first { $0.kind == .errorTypeRate })
        #expect(advice.scope == "network" && advice.count == 6 && advice.samples == 20)
        #expect(advice.summary.contains("2 service types"))
    }

    @Test func slowModelsReuseThePrecacheRule() throws {
        let slow = ModelUsageStats(loads: 11, cacheHits: 1, totalLoadTimeMs: 11 * 45_000)
        let cached = ModelUsageStats(loads: 50, cacheHits: 45, totalLoadTimeMs: 50 * 45_000)
        let tenLoads = ModelUsageStats(loads: 10, cacheHits: 0, totalLoadTimeMs: 10 * 45_000)
        let found = rules.recommendations(for: window([:], models: ["flux": slow, "sdxl": cached, "tiny": tenLoads]))
        #expect(found.count == 1)
        let advice = try #require(found.first)
        #expect(advice.kind == .precacheModel && advice.scope == "flux" && advice.severity == .info)
        #expect(advice.averageLoadMs == 45_000)
        // Same verdicts as the rule the model events apply.
        for stats in [slow, cached, tenLoads] {
            #expect(PrecacheRule().shouldPrecache(stats) == (stats == slow))
        }
    }

    @Test func severalRecommendationsAreOrderedBySeverityThenKind() {
        let found = rules.recommendations(for: window([
            "mild": ServiceOutcomes(completed: 70, failuresByType: ["timeout": 30]),
            "bad": ServiceOutcomes(completed: 10, failuresByType: ["out_of_memory": 30]),
        ], models: ["flux": ModelUsageStats(loads: 20, cacheHits: 0, totalLoadTimeMs: 20 * 60_000)]))
        #expect(found.map { "\($0.severity.rawValue) \($0.kind.rawValue) \($0.scope)" } == [
            "critical more_resources bad",
            "critical failure_rate bad",
            "warning longer_timeout mild",
            "warning failure_rate mild",
            "warning error_type_rate out_of_memory",  // 30 of 140 jobs each: equal rates, then by scope
            "warning error_type_rate timeout",
            "info precache_model flux",
        ])
        // Deterministic whatever the dictionary order.
        #expect(found == rules.recommendations(for: window([
            "bad": ServiceOutcomes(completed: 10, failuresByType: ["out_of_memory": 30]),
            "mild": ServiceOutcomes(completed: 70, failuresByType: ["timeout": 30]),
        ], models: ["flux": ModelUsageStats(loads: 20, cacheHits: 0, totalLoadTimeMs: 20 * 60_000)])))
    }

    @Test func thresholdsAreConfigurable() {
        var strict = PatternAnalysisRules(minimumSamples: 2, failureRateWarning: 0.5, minimumTimeouts: 1, timeoutShare: 0.5)
        let outcomes = ServiceOutcomes(completed: 1, failuresByType: ["timeout": 1])
        #expect(kinds(strict.recommendations(for: window(["a": outcomes]))).contains(.longerTimeout))
        #expect(kinds(strict.recommendations(for: window(["a": outcomes]))).contains(.failureRate))
        strict.timeoutShare = 0.6
        #expect(!kinds(strict.recommendations(for: window(["a": outcomes]))).contains(.longerTimeout))
    }

    @Test func derivationKeyChangesWithSeverityAndWindowOnly() throws {
        let base = try #require(rules.recommendations(for: window(["a": ServiceOutcomes(completed: 80, failuresByType: ["network": 20])])).first)
        var grown = base
        grown.count = 25
        grown.samples = 110
        grown.summary = "other words"
        #expect(base.derivationKey(window: "w1") == grown.derivationKey(window: "w1"))
        var worse = base
        worse.severity = .critical
        #expect(base.derivationKey(window: "w1") != worse.derivationKey(window: "w1"))
        #expect(base.derivationKey(window: "w1") != base.derivationKey(window: "w2"))
    }

    @Test func subjectIsAlwaysAValidTopicLevel() throws {
        let advice = PatternRecommendation(kind: .failureRate, severity: .warning, scope: "comfy ui/v2+#ünï", count: 1,
                                           samples: 1, rate: 1, summary: "x")
        #expect(Identifier(rawValue: advice.subject) != nil, "\(advice.subject)")
        #expect(advice.subject == "failure_rate.comfy_ui_v2____n__")
        let long = PatternRecommendation(kind: .failureRate, severity: .warning, scope: String(repeating: "s", count: 300),
                                         count: 1, samples: 1, rate: 1, summary: "x")
        #expect(long.subject.utf8.count == Identifier.maximumLength)
    }

    @Test func jsonRoundTrips() throws {
        let outcomes = ServiceOutcomes(completed: 40, failuresByType: ["timeout": 10], processingTimeP95: 84)
        for advice in rules.recommendations(for: window(["comfyui": outcomes])) {
            let decoded = try #require(PatternRecommendation(json: try JSONValue.parse(advice.json().serialized())))
            #expect(decoded == advice)
        }
        #expect(PatternRecommendation(json: .object(["kind": "nonsense"])) == nil)
    }

    @Test func percentile95() {
        #expect(ServiceOutcomes.percentile95([]) == nil)
        #expect(ServiceOutcomes.percentile95([7]) == 7)
        #expect(ServiceOutcomes.percentile95((1...100).map(Double.init)) == 95)
        #expect(ServiceOutcomes.percentile95((1...20).map(Double.init) + [.nan, -1, .infinity]) == 19)
    }
}
