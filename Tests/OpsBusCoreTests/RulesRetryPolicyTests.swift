import Testing

@testable import OpsBusCore

/// Draws spread over [0, 1), including both ends of the range.
private let draws: [Double] = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999_999]

@Suite("Retry policy and backoff")
struct RulesRetryPolicyTests {
    let policy = RetryPolicy()

    @Test func withoutJitterTheDelayIsBaseTimesFactorTimesGrowth() {
        let exact = RetryPolicy(baseDelay: 5, maxDelay: 900, multiplier: 2, jitter: 0)
        #expect(exact.delay(forAttempt: 1, failureType: .timeout, random: 0.3) == 5)
        #expect(exact.delay(forAttempt: 2, failureType: .timeout, random: 0.3) == 10)
        #expect(exact.delay(forAttempt: 3, failureType: .timeout, random: 0.3) == 20)
        #expect(exact.delay(forAttempt: 1, failureType: .network, random: 0.3) == 2.5)
        #expect(exact.delay(forAttempt: 1, failureType: .outOfMemory, random: 0.3) == 15)
        #expect(exact.delay(forAttempt: 2, failureType: .resourceExhausted, random: 0.3) == 40)
    }

    @Test func networkRetriesSoonerThanOutOfMemory() {
        for attempt in 1...3 {
            let network = policy.delay(forAttempt: attempt, failureType: .network, random: 0.5)
            let oom = policy.delay(forAttempt: attempt, failureType: .outOfMemory, random: 0.5)
            #expect(network < oom)
        }
    }

    @Test(arguments: FailureType.allCases)
    func delayIsMonotoneUntilTheCap(type: FailureType) {
        for random in draws {
            var previous = 0.0
            for attempt in 1...20 {
                let delay = policy.delay(forAttempt: attempt, failureType: type, random: random)
                #expect(delay >= previous, "\(type) attempt \(attempt) random \(random)")
                #expect(delay <= policy.maxDelay)
                previous = delay
            }
            // Twenty doublings of ≥ 2.5 s pass the 900 s cap: the cap is what stops the growth.
            let capped = policy.delay(forAttempt: 20, failureType: type, random: random)
            #expect(capped == policy.maxDelay * (1 + policy.jitter * (2 * random - 1)) || capped == policy.maxDelay)
        }
    }

    @Test func delayGrowsStrictlyBeforeTheCap() {
        let first = policy.delay(forAttempt: 1, failureType: .timeout, random: 0.5)
        let second = policy.delay(forAttempt: 2, failureType: .timeout, random: 0.5)
        let third = policy.delay(forAttempt: 3, failureType: .timeout, random: 0.5)
        #expect(first < second && second < third)
    }

    @Test func capHoldsForHugeAttemptsAndJitterAtTheTop() {
        #expect(policy.delay(forAttempt: Int.max, failureType: .resourceExhausted, random: 0.999_999) == 900)
        #expect(policy.delay(forAttempt: 10_000, failureType: .timeout, random: 0) == 900 * 0.8)
        let noBase = RetryPolicy(baseDelay: 0)
        #expect(noBase.delay(forAttempt: Int.max, failureType: .timeout, random: 0.5) == 0)
    }

    @Test(arguments: FailureType.allCases)
    func jitterStaysWithinTheFraction(type: FailureType) {
        for attempt in 1...4 {
            let center = policy.delay(forAttempt: attempt, failureType: type, random: 0.5)
            for random in draws {
                let delay = policy.delay(forAttempt: attempt, failureType: type, random: random)
                #expect(delay >= center * 0.8 - 1e-9)
                #expect(delay <= center * 1.2 + 1e-9)
            }
            #expect(policy.delay(forAttempt: attempt, failureType: type, random: 0) < center, "jitter is symmetric")
            #expect(policy.delay(forAttempt: attempt, failureType: type, random: 0.99) > center)
        }
    }

    @Test func outOfRangeInputsAreClamped() {
        #expect(policy.delay(forAttempt: 0, failureType: .timeout, random: 0.5) == 5)
        #expect(policy.delay(forAttempt: -3, failureType: .timeout, random: 0.5) == 5)
        #expect(policy.delay(forAttempt: 1, failureType: .timeout, random: .nan) == 5)
        #expect(policy.delay(forAttempt: 1, failureType: .timeout, random: 7) == 6)
        #expect(policy.delay(forAttempt: 1, failureType: .timeout, random: -7) == 4)

        let odd = RetryPolicy(baseDelay: -1, maxDelay: .nan, multiplier: 0.5, jitter: 3, maxAttempts: 0)
        #expect(odd.baseDelay == 0)
        #expect(odd.maxDelay == 900)
        #expect(odd.multiplier == 1)
        #expect(odd.jitter == 1)
        #expect(odd.maxAttempts == 1)
    }

    @Test func retriesUntilAttemptsAreExhausted() {
        let timeout = FailureAnalysis(errorType: .timeout)  // type ceiling 3, policy ceiling 3
        #expect(policy.shouldRetry(analysis: timeout, attempt: 1))
        #expect(policy.shouldRetry(analysis: timeout, attempt: 2))
        #expect(!policy.shouldRetry(analysis: timeout, attempt: 3))
        #expect(!policy.shouldRetry(analysis: timeout, attempt: 4))
    }

    @Test func theLowerCeilingWins() {
        let oom = FailureAnalysis(errorType: .outOfMemory)  // type ceiling 2
        #expect(policy.shouldRetry(analysis: oom, attempt: 1))
        #expect(!policy.shouldRetry(analysis: oom, attempt: 2))

        let strict = RetryPolicy(maxAttempts: 1)
        #expect(!strict.shouldRetry(analysis: FailureAnalysis(errorType: .network), attempt: 1))

        var generous = FailureAnalysis(errorType: .network)
        generous.maxAttempts = 10
        #expect(!policy.shouldRetry(analysis: generous, attempt: 3), "policy ceiling 3")
        #expect(RetryPolicy(maxAttempts: 10).shouldRetry(analysis: generous, attempt: 9))
    }

    @Test(arguments: [FailureType.validation, .permission, .modelMissing, .cancelled])
    func neverRetriesWhatRetryCannotFix(type: FailureType) {
        #expect(!RetryPolicy(maxAttempts: 100).shouldRetry(analysis: FailureAnalysis(errorType: type), attempt: 1))
    }

    // MARK: Backoff

    @Test func backoffWithoutJitterDoublesToTheCap() {
        let backoff = Backoff(initial: 0.5, maximum: 30, multiplier: 2, jitter: .none)
        let delays = (0...9).map { backoff.delay(afterFailures: $0, random: 0.5) }
        #expect(delays == [0, 0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        #expect(backoff.delay(afterFailures: Int.max, random: 0.5) == 30)
        #expect(backoff.delay(afterFailures: -1, random: 0.5) == 0)
    }

    @Test func fullJitterIsUniformBelowTheCeiling() {
        let backoff = Backoff(initial: 1, maximum: 30, jitter: .full)
        for failures in 1...10 {
            let ceiling = min(30, Double(1 << (failures - 1)))
            for random in draws {
                let delay = backoff.delay(afterFailures: failures, random: random)
                #expect(delay >= 0 && delay < ceiling, "\(failures) failures, random \(random)")
                #expect(delay == ceiling * random)
            }
        }
    }

    @Test func proportionalJitterStaysWithinTheFractionAndTheCap() {
        let backoff = Backoff(initial: 1, maximum: 30, jitter: .proportional(0.25))
        for failures in 1...10 {
            let ceiling = min(30, Double(1 << (failures - 1)))
            for random in draws {
                let delay = backoff.delay(afterFailures: failures, random: random)
                #expect(delay >= ceiling * 0.75 - 1e-9)
                #expect(delay <= min(30, ceiling * 1.25) + 1e-9)
            }
        }
        #expect(Backoff(jitter: .proportional(5)).jitter == .proportional(1))
        #expect(Backoff(jitter: .proportional(.nan)).jitter == .proportional(0))
    }

    @Test func backoffIsMonotoneForAFixedDraw() {
        for jitter in [Backoff.Jitter.none, .full, .proportional(0.3)] {
            let backoff = Backoff(initial: 0.2, maximum: 10, multiplier: 3, jitter: jitter)
            for random in draws {
                let delays = (1...12).map { backoff.delay(afterFailures: $0, random: random) }
                #expect(delays == delays.sorted(), "\(jitter) random \(random)")
                #expect(delays.allSatisfy { $0 <= 10 })
            }
        }
    }
}
