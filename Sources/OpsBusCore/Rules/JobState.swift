/// Where a job stands, as stored in its Redis hash (`status` field; raw values are the stored strings).
///
/// Statuses are ordered by `rank` so that state only moves forward: MQTT delivers at least once and
/// not necessarily in order, so "latest message wins" would let a late `started` reopen a finished job.
public enum JobStatus: String, Sendable, CaseIterable {
    case received
    case processing
    case completed
    case failed
    case retryScheduled = "retry_scheduled"
    case deadLettered = "dead_lettered"

    /// Forward order within one attempt. `completed` and `failed` share rank 2 (first one wins);
    /// `retry_scheduled` and `dead_lettered` share rank 3 (processor outcomes decided after `failed`).
    ///
    ///     received 0 < processing 1 < completed = failed 2 < retry_scheduled = dead_lettered 3
    public var rank: Int {
        switch self {
        case .received: 0
        case .processing: 1
        case .completed, .failed: 2
        case .retryScheduled, .deadLettered: 3
        }
    }

    /// The attempt is over: no worker is executing it any more (rank ≥ 2). Events of the same attempt
    /// can no longer change the status except to the processor's outcome after `failed`.
    public var isTerminal: Bool { rank >= 2 }

    /// The job is over: no further attempt is planned by the platform (`completed`, `dead_lettered`).
    /// Only an explicit new attempt (e.g. a dead-letter replay, which carries a higher attempt number) changes it.
    public var isFinal: Bool { self == .completed || self == .deadLettered }

    /// `completed` is the success outcome; `failed`, `retry_scheduled` and `dead_lettered` are failure outcomes.
    /// Two terminal statuses of different outcomes (or both rank 3 but different) conflict: first wins.
    fileprivate func conflicts(with other: JobStatus) -> Bool {
        guard isTerminal, other.isTerminal, self != other else { return false }
        let selfSucceeded = self == .completed
        let otherSucceeded = other == .completed
        if selfSucceeded != otherSucceeded { return true }
        return rank == 3 && other.rank == 3
    }
}

/// The lifecycle messages of a job; raw values are the last topic level (`jobs/<job_id>/<event>`).
public enum JobLifecycleEvent: String, Sendable, CaseIterable {
    case received
    case started
    case progress
    case completed
    case failed
    case retryScheduled = "retry_scheduled"
    case deadLettered = "dead_lettered"

    /// The status this event asserts. `started` and `progress` both mean the job is `processing`.
    public var impliedStatus: JobStatus {
        switch self {
        case .received: .received
        case .started, .progress: .processing
        case .completed: .completed
        case .failed: .failed
        case .retryScheduled: .retryScheduled
        case .deadLettered: .deadLettered
        }
    }
}

/// The part of a job's state that decides whether an event may change it.
public struct JobSnapshot: Sendable, Equatable {
    /// `nil` = the job is unknown (no event applied yet).
    public var status: JobStatus?
    /// The attempt the status belongs to (1-based); 0 for an unknown job.
    public var attempt: Int
    /// Progress of the current attempt in percent, 0…100.
    public var progress: Double

    public init(status: JobStatus?, attempt: Int, progress: Double = 0) {
        self.status = status
        self.attempt = attempt
        self.progress = progress
    }

    /// The state of a job no event has been applied to.
    public static let unknown = JobSnapshot(status: nil, attempt: 0, progress: 0)
}

/// What applying one event did, and therefore what the store must write.
///
/// Exactly one of these holds: `statusChanged`, `fillOnly`, or `ignoredReason != nil`.
public struct JobTransition: Sendable, Equatable {
    /// The job's state after the event (equal to the old state when ignored).
    public var newState: JobSnapshot
    /// The status or the attempt changed: write the status and overwrite the event's fields.
    public var statusChanged: Bool
    /// The event belongs to the current attempt but does not move the status (duplicate or late):
    /// write its fields only where the job has none yet (HSETNX), and store `newState.progress`.
    public var fillOnly: Bool
    /// Set when the event must not touch the job's state at all; it is still recorded in the timeline.
    public var ignoredReason: String?
    /// The event opened an attempt newer than the stored one (also true for a job's first event):
    /// the fields of the previous attempt (progress, worker, timestamps) are to be reset, history kept.
    public var startedNewAttempt: Bool

    public init(
        newState: JobSnapshot, statusChanged: Bool, fillOnly: Bool, ignoredReason: String?,
        startedNewAttempt: Bool = false
    ) {
        self.newState = newState
        self.statusChanged = statusChanged
        self.fillOnly = fillOnly
        self.ignoredReason = ignoredReason
        self.startedNewAttempt = startedNewAttempt
    }

    /// True when the event changed the stored progress.
    public func progressChanged(from old: JobSnapshot) -> Bool { newState.progress != old.progress }
}

/// The forward-only rules for a job's state. This is the single statement of those rules:
/// the processor's Redis Lua script implements exactly this decision, in this order.
///
/// Inputs: the stored snapshot `(status, attempt, progress)` — an unknown job is `(nil, 0, 0)` —
/// and an event `(event, attempt, progress?)`.
///
/// 0. Sanitize: `attempt < 1` → ignored ("invalid attempt"). A non-finite `progress` is dropped;
///    a finite one is clamped to 0…100.
/// 1. Older attempt (`attempt < stored.attempt`) → ignored ("stale attempt"): a retry has
///    superseded it, so nothing it says is about the current run. Timeline only.
/// 2. Newer attempt (`attempt > stored.attempt`, including the job's first event) → start the
///    attempt from `(nil, attempt, 0)` and continue with rule 3 on that; the transition has
///    `statusChanged` and `startedNewAttempt`. A higher attempt always wins, even over
///    `completed`/`dead_lettered`, because only the scheduler numbers attempts (a new number
///    means a deliberate re-run such as a dead-letter replay); this also makes the final state
///    independent of arrival order: it is the state of the highest attempt.
/// 3. Same attempt. Let `target = event.impliedStatus`, `current = stored.status`.
///    Progress first: `progress = max(stored.progress, event progress ?? stored.progress)`, and
///    `completed` sets progress to 100 (workers often skip the last progress message).
///    Progress is raised this way for every event that is not ignored, whatever its status rule,
///    so the final progress is the maximum seen regardless of order.
///    a. `current == nil` → status = target (status changed).
///    b. `target == current` → duplicate → fill-only.
///    c. Both terminal and conflicting — `completed` vs any failure outcome, or `retry_scheduled`
///       vs `dead_lettered` → ignored ("conflicting outcome"): the first terminal outcome wins,
///       because consumers may already have acted on it (retry queued, user notified).
///       The loser's fields are not written (an error message on a completed job would mislead).
///    d. `target.rank > current.rank` → status = target (status changed).
///    e. otherwise (a late event of lower rank, e.g. `started` after `completed`) → fill-only:
///       it does not reopen the job, but its fields (worker, started_at) fill any gaps.
public struct JobStateMachine: Sendable {
    public init() {}

    public func apply(_ event: JobLifecycleEvent, attempt: Int, progress: Double?, to state: JobSnapshot)
        -> JobTransition
    {
        guard attempt >= 1 else {
            return Self.ignored(state, reason: "invalid attempt \(attempt): attempts are numbered from 1")
        }
        if attempt < state.attempt {
            return Self.ignored(
                state, reason: "stale attempt \(attempt): job is at attempt \(state.attempt)")
        }

        let startsNewAttempt = attempt > state.attempt
        let base = startsNewAttempt ? JobSnapshot(status: nil, attempt: attempt, progress: 0) : state
        let target = event.impliedStatus

        var next = base
        if let reported = Self.sanitizedProgress(progress) {
            next.progress = max(next.progress, reported)
        }
        if target == .completed {
            next.progress = 100
        }

        guard let current = base.status else {
            next.status = target
            return JobTransition(
                newState: next, statusChanged: true, fillOnly: false, ignoredReason: nil,
                startedNewAttempt: startsNewAttempt)
        }
        if target == current {
            return JobTransition(newState: next, statusChanged: false, fillOnly: true, ignoredReason: nil)
        }
        if current.conflicts(with: target) {
            return Self.ignored(
                state,
                reason: "conflicting outcome \(target.rawValue): attempt \(attempt) already \(current.rawValue)")
        }
        if target.rank > current.rank {
            next.status = target
            return JobTransition(newState: next, statusChanged: true, fillOnly: false, ignoredReason: nil)
        }
        return JobTransition(newState: next, statusChanged: false, fillOnly: true, ignoredReason: nil)
    }

    private static func ignored(_ state: JobSnapshot, reason: String) -> JobTransition {
        JobTransition(newState: state, statusChanged: false, fillOnly: false, ignoredReason: reason)
    }

    /// Progress is a percentage; anything else is clamped, and non-numbers are dropped rather than
    /// poisoning `max` (NaN compares false both ways).
    private static func sanitizedProgress(_ value: Double?) -> Double? {
        guard let value, value.isFinite else { return nil }
        return min(100, max(0, value))
    }
}
