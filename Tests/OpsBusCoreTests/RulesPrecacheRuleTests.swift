import Testing

@testable import OpsBusCore

@Suite("Precache rule")
struct RulesPrecacheRuleTests {
    let rule = PrecacheRule()

    /// Stats with the given loads, average load time and hit rate (hits rounded down).
    private func stats(loads: Int, averageMs: Double, hitRate: Double) -> ModelUsageStats {
        ModelUsageStats(loads: loads, cacheHits: Int(Double(loads) * hitRate), totalLoadTimeMs: averageMs * Double(loads))
    }

    @Test func derivedFigures() {
        let usage = ModelUsageStats(loads: 20, cacheHits: 5, totalLoadTimeMs: 800_000)
        #expect(usage.averageLoadTimeMs == 40_000)
        #expect(usage.cacheHitRate == 0.25)
        let unused = ModelUsageStats(loads: 0, cacheHits: 0, totalLoadTimeMs: 0)
        #expect(unused.averageLoadTimeMs == 0)
        #expect(unused.cacheHitRate == 0)
        #expect(ModelUsageStats(loads: 4, cacheHits: 9, totalLoadTimeMs: .nan).cacheHitRate == 1)
        #expect(ModelUsageStats(loads: 4, cacheHits: 9, totalLoadTimeMs: .nan).averageLoadTimeMs == 0)
    }

    @Test func precachesABusySlowRarelyCachedModel() {
        #expect(rule.shouldPrecache(stats(loads: 50, averageMs: 45_000, hitRate: 0.2)))
    }

    @Test func loadsMustExceedTen() {
        #expect(!rule.shouldPrecache(stats(loads: 10, averageMs: 60_000, hitRate: 0)))
        #expect(rule.shouldPrecache(stats(loads: 11, averageMs: 60_000, hitRate: 0)))
    }

    @Test func averageLoadMustExceedThirtySeconds() {
        #expect(!rule.shouldPrecache(ModelUsageStats(loads: 20, cacheHits: 0, totalLoadTimeMs: 20 * 30_000)))
        #expect(rule.shouldPrecache(ModelUsageStats(loads: 20, cacheHits: 0, totalLoadTimeMs: 20 * 30_000 + 1)))
    }

    @Test func hitRateMustBeBelowEightyPercent() {
        #expect(!rule.shouldPrecache(ModelUsageStats(loads: 20, cacheHits: 16, totalLoadTimeMs: 20 * 60_000)))  // 0.80
        #expect(rule.shouldPrecache(ModelUsageStats(loads: 20, cacheHits: 15, totalLoadTimeMs: 20 * 60_000)))  // 0.75
        #expect(!rule.shouldPrecache(ModelUsageStats(loads: 20, cacheHits: 20, totalLoadTimeMs: 20 * 60_000)))
    }

    @Test func customThresholdsApply() {
        let eager = PrecacheRule(minLoads: 0, minAverageLoadMs: 0, maxCacheHitRate: 1)
        #expect(eager.shouldPrecache(ModelUsageStats(loads: 1, cacheHits: 0, totalLoadTimeMs: 1)))
        #expect(!eager.shouldPrecache(ModelUsageStats(loads: 0, cacheHits: 0, totalLoadTimeMs: 0)))
    }
}
