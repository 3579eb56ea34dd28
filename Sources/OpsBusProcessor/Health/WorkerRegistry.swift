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
    /// The birth/death counter of its newest connection (`bd_seq`), when its births carry one.
    public var bdSeq: Int64?
    /// Events still in its spool, as its newest birth or health report said.
    public var spoolDepth: Int64?
    /// While `unreachable`: when its last will arrived (ms since the epoch).
    public var linkDownMs: Int64?
    /// How its newest outage ended: `link_down` (the same process reconnected) or `worker_restarted`.
    public var lastOutage: String?
    /// How long that outage lasted (ms); nil when unknown (a restart without a last will).
    public var lastOutageMs: Int64?
    /// Last wills ignored because a newer connection was already known.
    public var staleWills: Int64

    public init(id: String, status: String, currentJob: String? = nil, machineID: String? = nil, reason: String? = nil,
                lastSeenMs: Int64? = nil, ageSeconds: Double? = nil, isStale: Bool = false, bdSeq: Int64? = nil,
                spoolDepth: Int64? = nil, linkDownMs: Int64? = nil, lastOutage: String? = nil,
                lastOutageMs: Int64? = nil, staleWills: Int64 = 0) {
        self.id = id
        self.status = status
        self.currentJob = currentJob
        self.machineID = machineID
        self.reason = reason
        self.lastSeenMs = lastSeenMs
        self.ageSeconds = ageSeconds
        self.isStale = isStale
        self.bdSeq = bdSeq
        self.spoolDepth = spoolDepth
        self.linkDownMs = linkDownMs
        self.lastOutage = lastOutage
        self.lastOutageMs = lastOutageMs
        self.staleWills = staleWills
    }

    /// `link_down 2.5 s`, `worker_restarted`, or nil when it never had an outage.
    public var lastOutageText: String? {
        guard let lastOutage else { return nil }
        guard let lastOutageMs else { return lastOutage }
        let tenths = max(0, lastOutageMs + 50) / 100
        return lastOutage + " " + (tenths < 100 ? "\(tenths / 10).\(tenths % 10) s"
            : ProcessorHealth.describe(seconds: Double(lastOutageMs) / 1000))
    }

    public func json() -> JSONValue {
        var object: JSONObject = ["worker_id": .string(id), "status": .string(status)]
        object["current_job"] = currentJob.map(JSONValue.string) ?? .null
        object["machine_id"] = machineID.map(JSONValue.string) ?? .null
        object["reason"] = reason.map(JSONValue.string) ?? .null
        object["last_seen"] = lastSeenMs.map { .string(EventTimestamp(millisecondsSinceEpoch: $0).iso8601) } ?? .null
        object["last_seen_age_seconds"] = ageSeconds.map { .double(($0 * 10).rounded() / 10) } ?? .null
        object["stale"] = .bool(isStale)
        object["bd_seq"] = bdSeq.map(JSONValue.int) ?? .null
        object["spool_depth"] = spoolDepth.map(JSONValue.int) ?? .null
        // Only while it is unreachable: the field outlives the outage so that a late birth can classify it.
        object["link_down_at"] = status == "unreachable"
            ? linkDownMs.map { .string(EventTimestamp(millisecondsSinceEpoch: $0).iso8601) } ?? .null : .null
        object["last_outage"] = lastOutage.map(JSONValue.string) ?? .null
        object["last_outage_ms"] = lastOutageMs.map(JSONValue.int) ?? .null
        object["stale_wills"] = .int(staleWills)
        return .object(object)
    }
}

/// Reads the worker registry the processor maintains: the `workers` sorted set (ids by last event time) and one
/// `worker:{<id>}` hash per worker. No KEYS/SCAN: the index names every worker.
public enum WorkerRegistry {
    /// Statuses in which a worker claims to be up, so its silence means something is wrong: every status of
    /// `EventCatalog.workerStatuses` but `offline` (the same set the processor's heartbeat timeout watches).
    /// `deregistered`, `unreachable` (its silence is known: the link is down) and unknown statuses are not live.
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
        let fields = ["status", "current_job", "machine_id", "reason", "last_seen_ms", "bd_seq", "spool_depth",
                      "link_down_ms", "last_outage", "last_outage_ms", "stale_wills"]
        let replies = try chunkedPipeline(
            redis, ids.map { ["HMGET", keys.worker($0)] + fields }, reading: "worker hashes")
        return zip(ids, replies).map { id, reply in
            let values = (reply.array ?? []).map { $0.string.flatMap { $0.isEmpty ? nil : $0 } }
            func value(_ index: Int) -> String? { index < values.count ? values[index] : nil }
            let status = value(0) ?? "unknown"
            // last_seen_ms is written by HSET of a Lua number: an integer, but be lenient about "1.7e12" forms.
            func integer(_ index: Int) -> Int64? {
                value(index).flatMap { Int64($0) ?? Double($0).flatMap { $0.isFinite ? Int64(exactly: $0.rounded()) : nil } }
            }
            let lastSeen = integer(4)
            let age = lastSeen.map { Double(now.millisecondsSinceEpoch - $0) / 1000 }
            return WorkerEntry(
                id: id, status: status, currentJob: value(1), machineID: value(2), reason: value(3),
                lastSeenMs: lastSeen, ageSeconds: age,
                isStale: isStale(status: status, ageSeconds: age, staleAfter: staleAfter),
                bdSeq: integer(5), spoolDepth: integer(6), linkDownMs: integer(7), lastOutage: value(8),
                lastOutageMs: integer(9), staleWills: integer(10) ?? 0)
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
