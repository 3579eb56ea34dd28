/// When and whether to retry a failed job attempt.
///
/// Delays are capped exponential with symmetric jitter; the random draw is a parameter so the
/// policy stays pure and tests are deterministic. Jitter spreads retries of jobs that failed together
/// (a worker lost, a dependency down) so they do not return in one burst.
public struct RetryPolicy: Sendable, Equatable {
    /// Delay in seconds before the second attempt, before the per-type factor.
    public let baseDelay: Double
    /// No delay ever exceeds this, jitter included.
    public let maxDelay: Double
    /// Growth per further attempt (≥ 1).
    public let multiplier: Double
    /// Fraction of the delay added or removed at random (0…1): 0.2 means ±20 %.
    public let jitter: Double
    /// The platform's ceiling on attempts per job, first run included (≥ 1).
    public let maxAttempts: Int

    /// Out-of-range values are clamped rather than rejected (negative delays to 0, `multiplier` to
    /// ≥ 1, `jitter` to 0…1, `maxAttempts` to ≥ 1, NaN to the default) so a bad configuration
    /// still yields a sane policy.
    public init(baseDelay: Double = 5, maxDelay: Double = 900, multiplier: Double = 2, jitter: Double = 0.2, maxAttempts: Int = 3) {
        self.baseDelay = baseDelay.isNaN ? 5 : max(0, baseDelay)
        self.maxDelay = maxDelay.isNaN ? 900 : max(0, maxDelay)
        self.multiplier = multiplier.isNaN ? 2 : max(1, multiplier)
        self.jitter = jitter.isNaN ? 0.2 : min(1, max(0, jitter))
        self.maxAttempts = max(1, maxAttempts)
    }

    /// Scales `baseDelay` per failure type: a network blip clears in seconds; memory, capacity and
    /// an unavailable dependency need time (or a different worker) before another try can succeed.
    ///
    /// | type                                     | factor |
    /// |------------------------------------------|--------|
    /// | network                                  | 0.5    |
    /// | worker_lost                              | 0.5    |
    /// | timeout, unknown (and non-retried types) | 1      |
    /// | dependency                               | 2      |
    /// | out_of_memory                            | 3      |
    /// | resource_exhausted                       | 4      |
    public static func delayFactor(for type: FailureType) -> Double {
        switch type {
        case .network, .workerLost: 0.5
        case .dependency: 2
        case .outOfMemory: 3
        case .resourceExhausted: 4
        case .timeout, .unknown, .validation, .modelMissing, .permission, .cancelled: 1
        }
    }

    /// Seconds to wait before the attempt after `attempt` (the 1-based attempt that just failed):
    /// `c = min(maxDelay, baseDelay × factor(type) × multiplier^(attempt−1))`, then
    /// `min(maxDelay, c × (1 + jitter × (2·random − 1)))`. Capping before the jitter keeps capped
    /// retries spread out (in [c·(1−jitter), maxDelay]) instead of all landing on the cap.
    /// `random` is a uniform draw from [0, 1) (clamped; NaN means no jitter); `attempt < 1` counts as 1.
    public func delay(forAttempt attempt: Int, failureType: FailureType, random: Double) -> Double {
        let capped = min(maxDelay, exponential(
            baseDelay * Self.delayFactor(for: failureType), multiplier: multiplier, steps: max(1, attempt) - 1))
        let jittered = capped * (1 + jitter * (2 * unitDraw(random) - 1))
        return min(maxDelay, max(0, jittered))
    }

    /// Retry when the failure type recommends it and the attempt that just failed (1-based) is below
    /// both ceilings: the policy's `maxAttempts` and the type's `analysis.maxAttempts`.
    public func shouldRetry(analysis: FailureAnalysis, attempt: Int) -> Bool {
        analysis.retryRecommended && attempt < min(maxAttempts, analysis.maxAttempts)
    }
}

/// Capped exponential backoff for reconnect loops (MQTT, Redis), independent of jobs.
public struct Backoff: Sendable, Equatable {
    public enum Jitter: Sendable, Equatable {
        /// Exactly the capped exponential delay.
        case none
        /// Uniform in [0, ceiling): best at spreading many clients that lost the same server.
        case full
        /// The ceiling ± this fraction (0…1), then capped.
        case proportional(Double)
    }

    /// Delay after the first failure, in seconds.
    public let initial: Double
    /// Upper bound on any delay, in seconds.
    public let maximum: Double
    public let multiplier: Double
    public let jitter: Jitter

    /// Out-of-range values are clamped as in `RetryPolicy.init`.
    public init(initial: Double = 0.5, maximum: Double = 30, multiplier: Double = 2, jitter: Jitter = .full) {
        self.initial = initial.isNaN ? 0.5 : max(0, initial)
        self.maximum = maximum.isNaN ? 30 : max(0, maximum)
        self.multiplier = multiplier.isNaN ? 2 : max(1, multiplier)
        if case .proportional(let fraction) = jitter {
            self.jitter = .proportional(fraction.isNaN ? 0 : min(1, max(0, fraction)))
        } else {
            self.jitter = jitter
        }
    }

    /// Seconds to wait after `n` consecutive failures; 0 when `n ≤ 0` (nothing failed yet).
    /// `random` is a uniform draw from [0, 1) (clamped; NaN counts as 0.5).
    public func delay(afterFailures n: Int, random: Double) -> Double {
        guard n > 0 else { return 0 }
        let ceiling = min(maximum, exponential(initial, multiplier: multiplier, steps: n - 1))
        let draw = unitDraw(random)
        switch jitter {
        case .none:
            return ceiling
        case .full:
            return ceiling * draw
        case .proportional(let fraction):
            return min(maximum, max(0, ceiling * (1 + fraction * (2 * draw - 1))))
        }
    }
}

/// `start × multiplier^steps` by repeated squaring (no libm needed; O(log steps)). Overflow gives
/// +inf, which callers cap; a zero start stays 0 instead of becoming NaN (0 × inf).
private func exponential(_ start: Double, multiplier: Double, steps: Int) -> Double {
    guard start != 0, steps > 0 else { return start }
    var result = start
    var factor = multiplier
    var remaining = steps
    while remaining > 0 && result.isFinite {
        if remaining & 1 == 1 { result *= factor }
        factor *= factor
        remaining >>= 1
    }
    return result
}

/// A caller-supplied uniform draw, forced into [0, 1]; NaN becomes 0.5 (the centre: no jitter).
private func unitDraw(_ random: Double) -> Double {
    random.isNaN ? 0.5 : min(1, max(0, random))
}
