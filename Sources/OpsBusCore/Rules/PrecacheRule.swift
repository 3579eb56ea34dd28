/// How a model has been used, accumulated per model (e.g. from completion events).
public struct ModelUsageStats: Sendable, Equatable {
    /// Times the model was needed by a job, cache hits included.
    public var loads: Int
    /// Of those, times it was already in a worker's cache.
    public var cacheHits: Int
    /// Total milliseconds spent making the model ready, over all `loads`.
    public var totalLoadTimeMs: Double

    public init(loads: Int, cacheHits: Int, totalLoadTimeMs: Double) {
        self.loads = loads
        self.cacheHits = cacheHits
        self.totalLoadTimeMs = totalLoadTimeMs
    }

    /// Mean load time per use; 0 before any use (and when the total is not a usable number).
    public var averageLoadTimeMs: Double {
        guard loads > 0, totalLoadTimeMs.isFinite, totalLoadTimeMs > 0 else { return 0 }
        return totalLoadTimeMs / Double(loads)
    }

    /// Share of uses served from cache, 0…1; 0 before any use (nothing was ever served from cache).
    public var cacheHitRate: Double {
        guard loads > 0 else { return 0 }
        return min(1, max(0, Double(cacheHits) / Double(loads)))
    }
}

/// Decides which models to keep loaded on workers ahead of demand.
///
/// Precache a model only when all three hold, each strictly:
/// used more than `minLoads` times (enough demand to be worth a slot), average load slower than
/// `minAverageLoadMs` (the wait is long enough to hurt), and cache hit rate below
/// `maxCacheHitRate` (the cache is not already doing the job). Caching costs GPU memory on every
/// worker, so a model must clear every bar.
public struct PrecacheRule: Sendable, Equatable {
    public var minLoads: Int
    public var minAverageLoadMs: Double
    public var maxCacheHitRate: Double

    public init(minLoads: Int = 10, minAverageLoadMs: Double = 30_000, maxCacheHitRate: Double = 0.8) {
        self.minLoads = minLoads
        self.minAverageLoadMs = minAverageLoadMs
        self.maxCacheHitRate = maxCacheHitRate
    }

    public func shouldPrecache(_ stats: ModelUsageStats) -> Bool {
        stats.loads > minLoads
            && stats.averageLoadTimeMs > minAverageLoadMs
            && stats.cacheHitRate < maxCacheHitRate
    }
}
