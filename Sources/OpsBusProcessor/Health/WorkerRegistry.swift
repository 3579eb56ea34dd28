import OpsBusCore
import OpsBusRedis

/// One worker's registry entry (`worker:{<id>}`), read back for operators.
public struct WorkerEntry: Sendable, Hashable {
    public var id: String
    /// `online`, `busy`, `offline`, `deregistered` … as last reported; `unknown` when the hash has no status.
    public var status: String
    public var currentJob: String?
    public var machineID: String?
    /// Why the worker is in its status (e.g. `connection lost (last will)`).
    public var reason: String?
    /// Time of the newest event seen from the worker (milliseconds since the epoch).
    public var lastSeenMs: Int64?
    /// Seconds between `lastSeenMs` and the time of reading; nil when never seen.
    public var ageSeconds: Double?
    /// The worker claims to be up (see `WorkerRegistry.liveStatuses`) but has been silent for longer than the stale limit.
    public var isStale: Bool

    public init(id: String, status: String, currentJob: String? = nil, machineID: String? = nil, reason: String? = nil,
                lastSeenMs: Int64? = nil, ageSeconds: Double? = nil, isStale: Bool = false) {
        self.id = id
        self.status = status
        self.currentJob = currentJob
        self.machineID = machineID
        self.reason = reason
        self.lastSeenMs = lastSeenMs
        self.ageSeconds = ageSeconds
        self.isStale = isStale
    }

    public func json() -> JSONValue {
        var object: JSONObject = ["worker_id": .string(id), "status": .string(status)]
        object["current_job"] = currentJob.map(JSONValue.string) ?? .null
        object["machine_id"] = machineID.map(JSONValue.string) ?? .null
        object["reason"] = reason.map(JSONValue.string) ?? .null
        object["last_seen"] = lastSeenMs.map { .string(EventTimestamp(millisecondsSinceEpoch: $0).iso8601) } ?? .null
        object["last_seen_age_seconds"] = ageSeconds.map { .double(($0 * 10).rounded() / 10) } ?? .null
        object["stale"] = .bool(isStale)
        return .object(object)
    }
}

/// Reads the worker registry the processor maintains: the `workers` sorted set (ids by last event time) and one
/// `worker:{<id>}` hash per worker. No KEYS/SCAN: the index names every worker.
public enum WorkerRegistry {
    /// Statuses in which a worker claims to be up, so its silence means something is wrong: every status of
    /// `EventCatalog.workerStatuses` but `offline` (the same set the processor's heartbeat timeout watches).
    /// `deregistered` and unknown statuses are not live.
    public static let liveStatuses: Set<String> = Set(EventCatalog.workerStatuses).subtracting(["offline"])

    /// Every registered worker, most recently seen first.
    /// - Parameter staleAfter: seconds of silence after which a live-claiming worker is flagged stale.
    public static func read(redis: RedisConnection, keys: RedisKeys, now: EventTimestamp, staleAfter: Double)
        throws(InspectionError) -> [WorkerEntry]
    {
        let index = try reading(keys.workers) { () throws(RedisError) in
            try redis.command(["ZREVRANGE", keys.workers, "0", "-1"])
        }
        let ids = (index.array ?? []).compactMap(\.string)
        let fields = ["status", "current_job", "machine_id", "reason", "last_seen_ms"]
        let replies = try chunkedPipeline(
            redis, ids.map { ["HMGET", keys.worker($0)] + fields }, reading: "worker hashes")
        return zip(ids, replies).map { id, reply in
            let values = (reply.array ?? []).map { $0.string.flatMap { $0.isEmpty ? nil : $0 } }
            func value(_ index: Int) -> String? { index < values.count ? values[index] : nil }
            let status = value(0) ?? "unknown"
            // last_seen_ms is written by HSET of a Lua number: an integer, but be lenient about "1.7e12" forms.
            let lastSeen = value(4).flatMap { Int64($0) ?? Double($0).map { Int64($0) } }
            let age = lastSeen.map { Double(now.millisecondsSinceEpoch - $0) / 1000 }
            return WorkerEntry(
                id: id, status: status, currentJob: value(1), machineID: value(2), reason: value(3),
                lastSeenMs: lastSeen, ageSeconds: age,
                isStale: isStale(status: status, ageSeconds: age, staleAfter: staleAfter))
        }
    }

    /// A worker is stale when it claims to be alive but its newest event is older than `staleAfter` seconds (or it
    /// has no time at all). Workers that said they are offline or deregistered are never stale: their silence is expected.
    public static func isStale(status: String, ageSeconds: Double?, staleAfter: Double) -> Bool {
        guard liveStatuses.contains(status) else { return false }
        guard let ageSeconds else { return true }
        return ageSeconds > staleAfter
    }
}
