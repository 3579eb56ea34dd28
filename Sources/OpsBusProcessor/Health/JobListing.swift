import OpsBusCore
import OpsBusRedis

/// One job's row in a listing: the fields operators scan for, read from `job:{<id>}`.
public struct JobSummary: Sendable, Hashable {
    public var id: String
    public var status: String
    public var attempt: Int?
    public var progress: Double?
    public var workerID: String?
    public var errorType: String?
    public var errorMessage: String?
    /// Time of the job's newest applied event (`last_event_at`), as stored (ISO 8601).
    public var updatedAt: String?

    public init(id: String, status: String, attempt: Int? = nil, progress: Double? = nil, workerID: String? = nil,
                errorType: String? = nil, errorMessage: String? = nil, updatedAt: String? = nil) {
        self.id = id
        self.status = status
        self.attempt = attempt
        self.progress = progress
        self.workerID = workerID
        self.errorType = errorType
        self.errorMessage = errorMessage
        self.updatedAt = updatedAt
    }

    /// `updatedAt` parsed; nil when absent or not a timestamp.
    public var updated: EventTimestamp? { updatedAt.flatMap(EventTimestamp.init(iso8601:)) }

    public func json() -> JSONValue {
        func text(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }
        return .object([
            "job_id": .string(id), "status": .string(status),
            "attempt": attempt.map { .int(Int64($0)) } ?? .null,
            "progress": progress.map(JSONValue.double) ?? .null,
            "worker_id": text(workerID), "error_type": text(errorType), "error_message": text(errorMessage),
            "updated_at": text(updatedAt),
        ])
    }
}

/// Which jobs to list. Without a status or worker every indexed job is a candidate.
public struct JobQuery: Sendable, Hashable {
    public var status: String?
    public var worker: String?
    /// At most this many jobs are returned (newest first); 0 means no limit.
    public var limit: Int

    public init(status: String? = nil, worker: String? = nil, limit: Int = 50) {
        self.status = status
        self.worker = worker
        self.limit = limit
    }
}

/// A listing: the jobs shown and how many matched before the limit.
public struct JobListing: Sendable, Hashable {
    public var jobs: [JobSummary]
    public var matched: Int

    public func json(query: JobQuery) -> JSONValue {
        .object([
            "status": query.status.map(JSONValue.string) ?? .null,
            "worker": query.worker.map(JSONValue.string) ?? .null,
            "matched": .int(Int64(matched)), "shown": .int(Int64(jobs.count)),
            "jobs": .array(jobs.map { $0.json() }),
        ])
    }
}

/// Lists jobs through the processor's index sets (`jobs:status:<s>`, `jobs:worker:<w>`), never KEYS/SCAN.
///
/// Sets have no order, so every candidate's hash is read (HMGET, pipelined in chunks) and the newest activity is
/// sorted first; intersections of a status and a worker are done here rather than with SINTER, whose keys would
/// live in different Redis Cluster slots.
public enum JobIndex {
    /// Every status a job hash can have, in lifecycle order (the processor keeps one index set per status).
    public static var statuses: [String] { JobEventScript.statuses }

    public static func list(redis: RedisConnection, keys: RedisKeys, query: JobQuery) throws(InspectionError)
        -> JobListing
    {
        if let status = query.status, !statuses.contains(status) {
            throw .invalidQuery("unknown job status '\(status)'; expected one of: \(statuses.joined(separator: ", "))")
        }
        if query.limit < 0 { throw .invalidQuery("the limit must be 0 (no limit) or positive, not \(query.limit)") }

        let sources: [String]
        if let worker = query.worker {
            sources = [keys.jobsByWorker(worker)]
        } else if let status = query.status {
            sources = [keys.jobsByStatus(status)]
        } else {
            sources = statuses.map(keys.jobsByStatus)
        }
        let memberReplies = try chunkedPipeline(redis, sources.map { ["SMEMBERS", $0] }, reading: "job index sets")
        var seen = Set<String>()
        var ids: [String] = []
        for reply in memberReplies {
            for id in (reply.array ?? []).compactMap(\.string) where seen.insert(id).inserted { ids.append(id) }
        }

        let fields = ["status", "attempt", "progress", "worker_id", "error_type", "error_message", "last_event_at"]
        let replies = try chunkedPipeline(redis, ids.map { ["HMGET", keys.job($0)] + fields }, reading: "job hashes")
        var jobs: [JobSummary] = []
        for (id, reply) in zip(ids, replies) {
            let values = (reply.array ?? []).map { $0.string.flatMap { $0.isEmpty ? nil : $0 } }
            func value(_ index: Int) -> String? { index < values.count ? values[index] : nil }
            // An index entry whose hash is gone (deleted by hand) or has no status is not a job to show.
            guard let status = value(0) else { continue }
            if let wanted = query.status, status != wanted { continue }
            jobs.append(JobSummary(
                id: id, status: status, attempt: value(1).flatMap { Int($0) }, progress: value(2).flatMap { Double($0) },
                workerID: value(3), errorType: value(4), errorMessage: value(5), updatedAt: value(6)))
        }
        // Parse each time once, not once per comparison.
        jobs = jobs.map { ($0, $0.updated) }.sorted(by: newestFirst).map(\.0)
        let matched = jobs.count
        if query.limit > 0 && jobs.count > query.limit { jobs.removeLast(jobs.count - query.limit) }
        return JobListing(jobs: jobs, matched: matched)
    }

    /// Newest activity first; jobs without a time last; ties by id so the order is stable.
    static func newestFirst(_ a: (JobSummary, EventTimestamp?), _ b: (JobSummary, EventTimestamp?)) -> Bool {
        switch (a.1, b.1) {
        case let (x?, y?) where x != y: return x > y
        case (.some, .none): return true
        case (.none, .some): return false
        default: return a.0.id < b.0.id
        }
    }
}
