/// Capped exponential backoff with jitter for reconnecting while Redis restarts.
///
/// Jitter spreads the reconnects of many processes that lost Redis at the same moment.
public struct RedisReconnectPolicy: Sendable, Hashable {
    /// Delay before the second attempt (the first is immediate), in seconds.
    public var initialDelay: Double
    /// Upper bound of any single delay, in seconds.
    public var maximumDelay: Double
    public var multiplier: Double
    /// Fraction of the delay that is randomized: 0.2 gives a delay in [0.8 d, 1.2 d] (still capped).
    public var jitter: Double

    public init(initialDelay: Double = 0.05, maximumDelay: Double = 2, multiplier: Double = 2, jitter: Double = 0.2) {
        self.initialDelay = max(0, initialDelay)
        self.maximumDelay = max(0, maximumDelay)
        self.multiplier = max(1, multiplier)
        self.jitter = min(max(0, jitter), 1)
    }

    /// The delay after failed attempt number `attempt` (0-based), in seconds.
    public func delay(afterAttempt attempt: Int) -> Double {
        var generator = SystemRandomNumberGenerator()
        return delay(afterAttempt: attempt, using: &generator)
    }

    public func delay(afterAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Double {
        let exponent = Double(min(max(0, attempt), 60))
        let base = min(maximumDelay, initialDelay * power(multiplier, exponent))
        guard jitter > 0, base > 0 else { return base }
        let factor = Double.random(in: (1 - jitter)...(1 + jitter), using: &generator)
        return min(maximumDelay, base * factor)
    }

    private func power(_ base: Double, _ exponent: Double) -> Double {
        var result = 1.0
        var remaining = Int(exponent)
        while remaining > 0 && result < 1e12 {
            result *= base
            remaining -= 1
        }
        return result
    }
}
