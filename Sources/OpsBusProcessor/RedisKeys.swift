/// The processor's Redis key layout, in one place (documented in the README, "Redis key layout").
///
/// Keys of one job share the hash tag `{<job_id>}` so that a Redis Cluster keeps them in one slot.
public struct RedisKeys: Sendable {
    /// Prepended to every key, for several opsbus deployments on one Redis.
    public let prefix: String

    public init(prefix: String = "") {
        self.prefix = prefix
        stats = "\(prefix)opsbus:stats"
        gapsPending = "\(prefix)opsbus:gaps:pending"
        gapsReported = "\(prefix)opsbus:gaps:reported"
        publishers = "\(prefix)publishers"
        jobStatusSets = JobEventScript.statuses.map { "\(prefix)jobs:status:\($0)" }
    }

    /// The keys every event's script call names are built once here, not per event (issue 6: string building was
    /// a tenth of the processor's plan).
    /// `jobsByStatus` of each of `JobEventScript.statuses`, in that order.
    public let jobStatusSets: [String]

    /// Hash with the job's state (`status`, `attempt`, `progress`, `worker_id`, timestamps, metrics, errors).
    public func job(_ id: String) -> String { "\(prefix)job:{\(id)}" }
    /// List of the job's events (JSON, oldest first), trimmed to the newest `timelineLimit`.
    public func jobTimeline(_ id: String) -> String { "\(prefix)job:{\(id)}:timeline" }
    /// Set of event ids already applied to the job: makes redelivered duplicates no-ops.
    public func jobSeen(_ id: String) -> String { "\(prefix)job:{\(id)}:seen" }
    /// Set of job ids whose current status is `status` ("all failed jobs" without SCAN).
    public func jobsByStatus(_ status: String) -> String { "\(prefix)jobs:status:\(status)" }
    /// Set of job ids a worker has run.
    public func jobsByWorker(_ workerID: String) -> String { "\(prefix)jobs:worker:\(workerID)" }
    /// Hash with a worker's registry entry (`status`, `last_seen`, `current_job`, `machine_id` …).
    public func worker(_ id: String) -> String { "\(prefix)worker:{\(id)}" }
    /// Sorted set of every worker id seen, scored by its last event time (ms).
    public var workers: String { entityIndex("worker") }
    /// Hash with the current state of a queue, service or model (`kind` is `queue`, `service`, `model`).
    public func entity(_ kind: String, _ id: String) -> String { "\(prefix)\(kind):{\(id)}" }
    /// Set of event ids already applied to a non-job entity.
    public func entitySeen(_ kind: String, _ id: String) -> String { "\(prefix)\(kind):{\(id)}:seen" }
    /// Sorted set of ids of one kind (`queues`, `services`, `models`), scored by last update time.
    public func entityIndex(_ kind: String) -> String { "\(prefix)\(kind)s" }
    /// Hash of counters: events received, applied, duplicates, dead-lettered, per type and reason.
    public let stats: String
    /// Hash of counters for one UTC minute (`minute` is minutes since the epoch): `events`, `type:<event_type>`,
    /// `outcome:<outcome>`; expires after `minuteStatsRetention` seconds. Events per minute come from here.
    public func statsMinute(_ minute: Int64) -> String { "\(prefix)opsbus:stats:minute:\(minute)" }
    public static let minuteStatsRetention = 2 * 3600
    /// Stream of actions recorded by the scripts and sent by `OutboxRelay` (MQTT triggers, webhook notifications).
    public var outbox: String { "\(prefix)opsbus:outbox" }
    /// Sorted set of scheduled retries, `<job_id>|<next attempt>` scored by due time (ms).
    public var retries: String { "\(prefix)retries" }
    /// Stream of jobs that failed for good (no retry recommended, or attempts exhausted), with the reason.
    public var jobDeadLetters: String { "\(prefix)jobs:deadletter" }
    /// Set of job ids a worker is running now (the failover list when it goes offline).
    public func workerInflight(_ workerID: String) -> String { "\(prefix)worker:{\(workerID)}:inflight" }
    /// Hash of a worker's current resource allocations, `job:<id>` → allocation JSON.
    public func resources(_ workerID: String) -> String { "\(prefix)resources:{\(workerID)}" }
    /// Hourly success/failure pattern counters (`hour` like `2026-11-29T01`).
    public func successPatterns(_ hour: String) -> String { "\(prefix)patterns:success:\(hour)" }
    public func failurePatterns(_ hour: String) -> String { "\(prefix)patterns:failure:\(hour)" }
    /// Set of workers marked for investigation (high-resource-impact failures).
    public var workersToInvestigate: String { "\(prefix)workers:investigate" }
    /// Stream of rejected messages with topic, payload (truncated), reason and time.
    public var deadLetters: String { "\(prefix)opsbus:deadletter" }

    // MARK: Links and publisher sessions

    /// Sorted set of workers whose in-flight jobs wait for the link grace period, scored by the time it started
    /// (ms): workers whose last will arrived (`unreachable`), and workers that restarted with jobs of the old
    /// process still in flight. The sweep fails those jobs over once the grace is over.
    public var workersLinkDown: String { "\(prefix)workers:link_down" }
    /// Hash of one publisher session's sequence state: `owner`, `max` (highest `seq` seen), `first_seq`,
    /// `created_ms`, `updated_ms`. Keys of one session share the hash tag `{<session_id>}`.
    public func sequence(_ sessionID: String) -> String { "\(prefix)seq:{\(sessionID)}" }
    /// Sorted set of a session's open gaps, `<first>|<last>|<opened ms>|<reported 0/1>` scored by `first`.
    public func sequenceGaps(_ sessionID: String) -> String { "\(prefix)seq:{\(sessionID)}:gaps" }
    /// Sorted set of open gaps not yet reported, `<session_id>|<first>` scored by the time they opened (ms).
    public let gapsPending: String
    /// Sorted set of gaps reported as expired and still open, `<session_id>|<first>` scored by opening time (ms).
    public let gapsReported: String
    /// Hash of one publisher owner's sequence counters (`gaps_opened`, `gaps_closed`, `gaps_expired`,
    /// `gaps_abandoned`, `declared_drops`, `sessions`, `last_session`, `last_seq`, `updated_ms`).
    public func publisher(_ owner: String) -> String { "\(prefix)publisher:{\(owner)}" }
    /// Sorted set of publisher owners, scored by their newest sequenced event (ms).
    public let publishers: String
}
