import Testing

@testable import OpsBusCore

/// One lifecycle message as the processor sees it.
private struct Step: Equatable, CustomStringConvertible {
    var event: JobLifecycleEvent
    var attempt: Int = 1
    var progress: Double? = nil

    var description: String {
        "\(event.rawValue)@\(attempt)" + (progress.map { "(\($0))" } ?? "")
    }
}

private func run(_ steps: [Step], from start: JobSnapshot = .unknown) -> JobSnapshot {
    let machine = JobStateMachine()
    return steps.reduce(start) { state, step in
        machine.apply(step.event, attempt: step.attempt, progress: step.progress, to: state).newState
    }
}

/// All orderings of `items` (Heap's algorithm, iterative). 6 items → 720, 7 → 5040.
private func permutations<T>(_ items: [T]) -> [[T]] {
    var items = items
    var result = [items]
    var counters = Array(repeating: 0, count: items.count)
    var index = 1
    while index < items.count {
        if counters[index] < index {
            items.swapAt(index % 2 == 0 ? 0 : counters[index], index)
            result.append(items)
            counters[index] += 1
            index = 1
        } else {
            counters[index] = 0
            index += 1
        }
    }
    return result
}

private let successfulRun: [Step] = [
    Step(event: .received), Step(event: .started),
    Step(event: .progress, progress: 25), Step(event: .progress, progress: 50), Step(event: .progress, progress: 75),
    Step(event: .completed),
]

private let failedRun: [Step] = [
    Step(event: .received), Step(event: .started),
    Step(event: .progress, progress: 25), Step(event: .progress, progress: 50), Step(event: .progress, progress: 75),
    Step(event: .failed),
]

@Suite("Job state machine")
struct RulesJobStateTests {
    let machine = JobStateMachine()

    @Test func permutationHelperProducesEveryOrderOnce() {
        let all = permutations([1, 2, 3, 4])
        #expect(all.count == 24)
        #expect(Set(all.map { $0.map(String.init).joined() }).count == 24)
    }

    @Test func ranksOrderTheStatuses() {
        #expect(JobStatus.received.rank < JobStatus.processing.rank)
        #expect(JobStatus.processing.rank < JobStatus.completed.rank)
        #expect(JobStatus.completed.rank == JobStatus.failed.rank)
        #expect(JobStatus.failed.rank < JobStatus.retryScheduled.rank)
        #expect(JobStatus.retryScheduled.rank == JobStatus.deadLettered.rank)
        #expect(JobStatus.allCases.filter(\.isTerminal) == [.completed, .failed, .retryScheduled, .deadLettered])
        #expect(JobStatus.allCases.filter(\.isFinal) == [.completed, .deadLettered])
        #expect(JobStatus(rawValue: "retry_scheduled") == .retryScheduled)
        #expect(JobLifecycleEvent(rawValue: "dead_lettered") == .deadLettered)
    }

    @Test func everyOrderOfASuccessfulRunEndsCompleted() {
        let expected = JobSnapshot(status: .completed, attempt: 1, progress: 100)
        for order in permutations(successfulRun) {
            #expect(run(order) == expected, "order: \(order)")
        }
    }

    @Test func everyOrderOfAFailedRunEndsFailedWithHighestProgress() {
        let expected = JobSnapshot(status: .failed, attempt: 1, progress: 75)
        for order in permutations(failedRun) {
            #expect(run(order) == expected, "order: \(order)")
        }
    }

    @Test func everyInterleavingOfARetriedJobEndsAtTheLastAttempt() {
        let steps = [
            Step(event: .received, attempt: 1), Step(event: .started, attempt: 1),
            Step(event: .failed, attempt: 1, progress: 40), Step(event: .retryScheduled, attempt: 1),
            Step(event: .received, attempt: 2), Step(event: .started, attempt: 2),
            Step(event: .completed, attempt: 2),
        ]
        let expected = JobSnapshot(status: .completed, attempt: 2, progress: 100)
        for order in permutations(steps) {
            #expect(run(order) == expected, "order: \(order)")
        }
    }

    @Test func duplicatesChangeNothing() {
        for step in successfulRun + failedRun {
            let once = run(successfulRun.prefix(while: { $0 != step }) + [step])
            let transition = machine.apply(step.event, attempt: step.attempt, progress: step.progress, to: once)
            #expect(transition.newState == once, "duplicate \(step)")
            #expect(!transition.statusChanged, "duplicate \(step)")
        }
        // The whole run delivered twice, second copy after the first.
        #expect(run(successfulRun + successfulRun) == run(successfulRun))
        #expect(run(failedRun + failedRun) == run(failedRun))
    }

    @Test func duplicateIsFillOnly() {
        let processing = JobSnapshot(status: .processing, attempt: 1, progress: 10)
        let transition = machine.apply(.started, attempt: 1, progress: nil, to: processing)
        #expect(transition == JobTransition(newState: processing, statusChanged: false, fillOnly: true, ignoredReason: nil))
    }

    @Test func progressOnlyIncreases() {
        let state = run([Step(event: .started), Step(event: .progress, progress: 60)])
        let lower = machine.apply(.progress, attempt: 1, progress: 30, to: state)
        #expect(lower.newState.progress == 60)
        #expect(!lower.progressChanged(from: state))
        let higher = machine.apply(.progress, attempt: 1, progress: 80, to: state)
        #expect(higher.newState == JobSnapshot(status: .processing, attempt: 1, progress: 80))
        #expect(higher.fillOnly)
        #expect(higher.progressChanged(from: state))
    }

    @Test func progressIsClampedAndNonNumbersDropped() {
        let state = JobSnapshot(status: .processing, attempt: 1, progress: 20)
        #expect(machine.apply(.progress, attempt: 1, progress: 250, to: state).newState.progress == 100)
        #expect(machine.apply(.progress, attempt: 1, progress: -5, to: state).newState.progress == 20)
        #expect(machine.apply(.progress, attempt: 1, progress: .nan, to: state).newState.progress == 20)
        #expect(machine.apply(.progress, attempt: 1, progress: .infinity, to: state).newState.progress == 20)
    }

    @Test func progressMovesAReceivedJobToProcessing() {
        let received = run([Step(event: .received)])
        let transition = machine.apply(.progress, attempt: 1, progress: 5, to: received)
        #expect(transition.statusChanged)
        #expect(transition.newState == JobSnapshot(status: .processing, attempt: 1, progress: 5))
    }

    @Test func firstEventOfAnUnknownJobStartsItsAttempt() {
        let transition = machine.apply(.started, attempt: 1, progress: nil, to: .unknown)
        #expect(transition.statusChanged)
        #expect(transition.startedNewAttempt)
        #expect(!transition.fillOnly)
        #expect(transition.ignoredReason == nil)
        #expect(transition.newState == JobSnapshot(status: .processing, attempt: 1, progress: 0))
    }

    @Test func higherAttemptResetsStatusAndProgress() {
        let failed = JobSnapshot(status: .retryScheduled, attempt: 1, progress: 90)
        let transition = machine.apply(.received, attempt: 2, progress: nil, to: failed)
        #expect(transition.statusChanged)
        #expect(transition.startedNewAttempt)
        #expect(transition.newState == JobSnapshot(status: .received, attempt: 2, progress: 0))
    }

    @Test func higherAttemptReplaysAFinalJob() {
        let deadLettered = JobSnapshot(status: .deadLettered, attempt: 3, progress: 40)
        let transition = machine.apply(.started, attempt: 4, progress: nil, to: deadLettered)
        #expect(transition.newState == JobSnapshot(status: .processing, attempt: 4, progress: 0))
        #expect(transition.startedNewAttempt)
    }

    @Test(arguments: JobLifecycleEvent.allCases)
    func olderAttemptIsIgnored(event: JobLifecycleEvent) throws {
        let current = JobSnapshot(status: .processing, attempt: 2, progress: 30)
        let transition = machine.apply(event, attempt: 1, progress: 99, to: current)
        #expect(transition.newState == current)
        #expect(!transition.statusChanged)
        #expect(!transition.fillOnly)
        let reason = try #require(transition.ignoredReason)
        #expect(reason.contains("stale attempt 1"))
    }

    @Test(arguments: [0, -1])
    func invalidAttemptIsIgnored(attempt: Int) {
        let transition = machine.apply(.completed, attempt: attempt, progress: nil, to: .unknown)
        #expect(transition.newState == .unknown)
        #expect(transition.ignoredReason?.contains("invalid attempt") == true)
    }

    @Test(arguments: [JobLifecycleEvent.received, .started, .progress])
    func terminalIsNeverReopened(event: JobLifecycleEvent) {
        for terminal in JobStatus.allCases where terminal.isTerminal {
            let state = JobSnapshot(status: terminal, attempt: 1, progress: 50)
            let transition = machine.apply(event, attempt: 1, progress: 70, to: state)
            #expect(transition.newState.status == terminal, "\(event) after \(terminal)")
            #expect(!transition.statusChanged)
            #expect(transition.fillOnly, "late \(event) fills missing fields")
        }
    }

    @Test func startedAfterCompletedIsFillOnly() {
        let completed = run([Step(event: .received), Step(event: .completed)])
        let transition = machine.apply(.started, attempt: 1, progress: nil, to: completed)
        #expect(transition == JobTransition(newState: completed, statusChanged: false, fillOnly: true, ignoredReason: nil))
    }

    @Test func firstTerminalOutcomeWins() throws {
        let completed = run([Step(event: .started), Step(event: .completed)])
        let lateFailure = machine.apply(.failed, attempt: 1, progress: nil, to: completed)
        #expect(lateFailure.newState == completed)
        #expect(!lateFailure.fillOnly, "a losing outcome writes no fields")
        #expect(try #require(lateFailure.ignoredReason).contains("conflicting outcome failed"))

        let failed = run([Step(event: .started), Step(event: .failed, progress: 30)])
        let lateSuccess = machine.apply(.completed, attempt: 1, progress: nil, to: failed)
        #expect(lateSuccess.newState == failed)
        #expect(lateSuccess.ignoredReason != nil)

        for outcome in [JobLifecycleEvent.retryScheduled, .deadLettered] {
            #expect(machine.apply(outcome, attempt: 1, progress: nil, to: completed).ignoredReason != nil)
        }
    }

    @Test func retryAndDeadLetterFollowFailure() {
        let failed = JobSnapshot(status: .failed, attempt: 2, progress: 10)
        let retry = machine.apply(.retryScheduled, attempt: 2, progress: nil, to: failed)
        #expect(retry.statusChanged)
        #expect(retry.newState.status == .retryScheduled)
        let dead = machine.apply(.deadLettered, attempt: 2, progress: nil, to: failed)
        #expect(dead.newState.status == .deadLettered)

        // Both are rank 3: whichever came first stands.
        #expect(machine.apply(.deadLettered, attempt: 2, progress: nil, to: retry.newState).ignoredReason != nil)
        #expect(machine.apply(.retryScheduled, attempt: 2, progress: nil, to: dead.newState).ignoredReason != nil)
        // The `failed` that arrives after its own outcome only fills gaps.
        let lateFailed = machine.apply(.failed, attempt: 2, progress: nil, to: dead.newState)
        #expect(lateFailed.fillOnly)
        #expect(lateFailed.newState.status == .deadLettered)
    }

    @Test func exactlyOneOutcomePerTransition() {
        let states: [JobSnapshot] = [.unknown] + JobStatus.allCases.flatMap { status in
            [1, 2].map { JobSnapshot(status: status, attempt: $0, progress: 50) }
        }
        for state in states {
            for event in JobLifecycleEvent.allCases {
                for attempt in 0...3 {
                    let transition = machine.apply(event, attempt: attempt, progress: 60, to: state)
                    let flags = [transition.statusChanged, transition.fillOnly, transition.ignoredReason != nil]
                    #expect(flags.filter { $0 }.count == 1, "\(event)@\(attempt) on \(state)")
                    if transition.ignoredReason != nil {
                        #expect(transition.newState == state)
                    }
                }
            }
        }
    }
}
