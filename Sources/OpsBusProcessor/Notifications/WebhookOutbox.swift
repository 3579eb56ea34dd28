import OpsBusCore
import OpsBusRedis

/// The per-endpoint webhook outbox in Redis: notifications wait here until a `WebhookDeliverer` has POSTed them,
/// so neither a crash of the processor nor a receiver that is down loses one.
///
/// Key layout (`<p>` is `prefix`; all keys of one endpoint share the hash tag `{<name>}`, so every script call
/// touches a single Redis Cluster slot):
///
/// | key | type | holds |
/// |---|---|---|
/// | `<p>webhook:{<name>}:queue` | list | entries ready to send; `enqueue` pushes on the left, the deliverer takes from the right (FIFO) |
/// | `<p>webhook:{<name>}:processing` | list | the entry being sent right now (moved atomically from `queue`) |
/// | `<p>webhook:{<name>}:delayed` | sorted set | entries waiting for a retry, scored by due time (Redis clock, ms since the epoch) |
/// | `<p>webhook:{<name>}:seen` | sorted set | notification ids enqueued in the last `deduplicationWindow`, scored by enqueue time |
/// | `<p>webhook:{<name>}:deadletter` | stream | entries that failed `maxAttempts` times: `notification_id`, `endpoint`, `attempts`, `last_error`, `body` |
/// | `<p>webhook:{<name>}:owner` | string with TTL | the lease of the deliverer that currently sends for this endpoint |
///
/// Counters go to `<p>opsbus:stats` (`webhooks_delivered`, `webhooks_failed_attempts`, `webhooks_dead_lettered`).
///
/// `seen` is a sorted set rather than a set with one `EXPIRE`: every enqueue would push a set's expiry forward, so
/// under steady traffic it would never expire; scoring each id by its enqueue time lets old ids be trimmed one by
/// one (on every enqueue) while the key stays bounded.
///
/// An entry is `opsbus-webhook-v1\n<failed attempts>\n<notification id>\n<last error>\n<body>`: the attempt count
/// and last error travel with the entry, so a retry needs no second key and a crash cannot separate them.
public struct WebhookOutbox: Sendable {
    public let prefix: String
    /// Seconds a notification id is remembered; enqueueing the same id again within it is a no-op.
    public let deduplicationWindow: Double
    /// Bodies larger than this are refused at `enqueue` (1 MiB).
    public static let maximumBodySize = 1 << 20
    /// Notification ids are 1…200 visible ASCII characters (they are sent as an HTTP header).
    public static let maximumNotificationIDLength = 200
    /// Approximate length cap of each dead-letter stream (`XADD MAXLEN ~`).
    public static let deadLetterStreamLength = 10_000

    public init(prefix: String = "", deduplicationWindow: Double = 7 * 24 * 3600) {
        self.prefix = prefix
        self.deduplicationWindow = deduplicationWindow.isFinite ? max(0, deduplicationWindow) : 7 * 24 * 3600
    }

    // MARK: Keys

    public func queueKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:queue" }
    public func processingKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:processing" }
    public func delayedKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:delayed" }
    public func seenKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:seen" }
    public func deadLetterKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:deadletter" }
    public func ownerKey(_ endpoint: String) -> String { "\(prefix)webhook:{\(endpoint)}:owner" }
    /// The processor's stats hash (`RedisKeys.stats`).
    public var statsKey: String { RedisKeys(prefix: prefix).stats }

    // MARK: Enqueue

    /// Adds a notification to `endpoint`'s outbox, unless `notificationID` was enqueued there within the
    /// deduplication window. `body` is exactly what the receiver gets (JSON).
    ///
    /// Atomic (one Lua script): remembering the id and queueing the entry happen together or not at all, so a
    /// retried `enqueue` after a connection error can neither lose nor duplicate the notification.
    /// - Returns: true if queued, false for a duplicate.
    /// - Throws: `.invalidArgument` for an invalid endpoint name, notification id or body (not JSON, too large),
    ///   or any error of the connection.
    @discardableResult
    public func enqueue(
        _ redis: RedisConnection, endpoint: String, notificationID: String, body: [UInt8]
    ) throws(RedisError) -> Bool {
        do {
            try WebhookEndpoint.validate(name: endpoint)
        } catch {
            throw .invalidArgument(reason: error.description)
        }
        try Self.validate(notificationID: notificationID)
        guard body.count <= Self.maximumBodySize else {
            throw .invalidArgument(
                reason: "webhook body of notification \(notificationID) is \(body.count) bytes; the limit is \(Self.maximumBodySize)")
        }
        do {
            _ = try JSONValue.parse(body)
        } catch {
            throw .invalidArgument(reason: "webhook body of notification \(notificationID) is not JSON: \(error)")
        }
        let entry = WebhookOutboxEntry(attempts: 0, notificationID: notificationID, lastError: "", body: body)
        let reply = try redis.evaluate(
            Self.enqueueScript, keys: [Array(seenKey(endpoint).utf8), Array(queueKey(endpoint).utf8)],
            arguments: [Array(notificationID.utf8), entry.encoded(), Array(String(Int64(deduplicationWindow * 1000)).utf8)])
        return reply.int == 1
    }

    // MARK: Inspection

    /// How many notifications of `endpoint` are in each place.
    public func depths(_ redis: RedisConnection, endpoint: String) throws(RedisError) -> WebhookOutboxDepths {
        let replies = try redis.pipeline([
            ["LLEN", queueKey(endpoint)], ["LLEN", processingKey(endpoint)], ["ZCARD", delayedKey(endpoint)],
            ["XLEN", deadLetterKey(endpoint)],
        ])
        func count(_ index: Int) throws(RedisError) -> Int {
            guard let value = replies[index].int else {
                throw .protocolError(endpoint: redis.endpoint.description, reason: "unexpected reply \(replies[index])")
            }
            return Int(value)
        }
        return WebhookOutboxDepths(queued: try count(0), processing: try count(1), delayed: try count(2), deadLettered: try count(3))
    }

    /// The oldest `count` dead letters of `endpoint`.
    public func deadLetters(_ redis: RedisConnection, endpoint: String, count: Int = 100) throws(RedisError) -> [WebhookDeadLetter] {
        let reply = try redis.command(["XRANGE", deadLetterKey(endpoint), "-", "+", "COUNT", String(max(1, count))])
        return (reply.array ?? []).compactMap { item -> WebhookDeadLetter? in
            guard let pair = item.array, pair.count == 2, let id = pair[0].string, let fields = pair[1].array else { return nil }
            var values: [String: [UInt8]] = [:]
            var index = 0
            while index + 1 < fields.count {
                if let field = fields[index].string, let value = fields[index + 1].bytes { values[field] = value }
                index += 2
            }
            func text(_ field: String) -> String { values[field].map { String(decoding: $0, as: UTF8.self) } ?? "" }
            return WebhookDeadLetter(
                streamID: id, endpoint: text("endpoint"), notificationID: text("notification_id"),
                attempts: Int(text("attempts")) ?? 0, lastError: text("last_error"), body: values["body"] ?? [])
        }
    }

    // MARK: Deliverer steps (each one Lua script on the endpoint's slot)

    enum Claim: Equatable {
        /// Another deliverer holds the endpoint's lease for `retryAfter` more seconds.
        case standby(retryAfter: Double)
        /// Nothing is due; the next delayed entry is due in `nextDueIn` seconds (nil: none waiting).
        case idle(nextDueIn: Double?, recovered: Int)
        case claimed(entry: [UInt8], recovered: Int)
    }

    /// Takes (or renews) the endpoint's lease for `leaseSeconds`; on success returns the entries left in
    /// `processing` to the queue (this owner has nothing in flight when it claims, so anything there was left by a
    /// crashed or cancelled deliverer), moves due retries to the queue, and moves the next entry to `processing`.
    func claim(_ redis: RedisConnection, endpoint: String, owner: String, leaseSeconds: Double) throws(RedisError) -> Claim {
        let reply = try redis.evaluate(
            Self.claimScript,
            keys: [ownerKey(endpoint), processingKey(endpoint), queueKey(endpoint), delayedKey(endpoint)],
            arguments: [owner, String(Int64(leaseSeconds * 1000)), "100"])
        guard let parts = reply.array, parts.count == 4, let state = parts[0].int, let recovered = parts[2].int,
            let wait = parts[3].int
        else {
            throw .protocolError(endpoint: redis.endpoint.description, reason: "unexpected webhook claim reply \(reply)")
        }
        switch state {
        case 0: return .standby(retryAfter: max(0, Double(wait) / 1000))
        case 1:
            guard let entry = parts[1].bytes else {
                throw .protocolError(endpoint: redis.endpoint.description, reason: "webhook claim returned no entry")
            }
            return .claimed(entry: entry, recovered: Int(recovered))
        default: return .idle(nextDueIn: wait < 0 ? nil : Double(wait) / 1000, recovered: Int(recovered))
        }
    }

    /// Removes a delivered entry. Returns false if it was no longer there (another deliverer took it over).
    func acknowledge(_ redis: RedisConnection, endpoint: String, entry: [UInt8]) throws(RedisError) -> Bool {
        let reply = try redis.evaluate(
            Self.acknowledgeScript,
            keys: [Array(processingKey(endpoint).utf8), Array(queueKey(endpoint).utf8)], arguments: [entry])
        return (reply.int ?? 0) > 0
    }

    /// Replaces `entry` by `retry` in the delayed set, due in `delay` seconds. A no-op (false) if `entry` is no
    /// longer queued or processing, so a notification another deliverer already sent is not resurrected.
    func reschedule(
        _ redis: RedisConnection, endpoint: String, entry: [UInt8], retry: [UInt8], delay: Double
    ) throws(RedisError) -> Bool {
        let reply = try redis.evaluate(
            Self.rescheduleScript,
            keys: [Array(processingKey(endpoint).utf8), Array(queueKey(endpoint).utf8), Array(delayedKey(endpoint).utf8)],
            arguments: [entry, retry, Array(String(Int64(max(0, delay) * 1000)).utf8)])
        return (reply.int ?? 0) > 0
    }

    /// Moves `entry` to the dead-letter stream. A no-op (false) if it is no longer queued or processing.
    func deadLetter(
        _ redis: RedisConnection, endpoint: String, entry: [UInt8], notificationID: String, attempts: Int,
        lastError: String, body: [UInt8]
    ) throws(RedisError) -> Bool {
        let reply = try redis.evaluate(
            Self.deadLetterScript,
            keys: [Array(processingKey(endpoint).utf8), Array(queueKey(endpoint).utf8), Array(deadLetterKey(endpoint).utf8)],
            arguments: [
                entry, Array(notificationID.utf8), Array(endpoint.utf8), Array(String(attempts).utf8),
                Array(lastError.utf8), body, Array(String(Self.deadLetterStreamLength).utf8),
            ])
        return (reply.int ?? 0) > 0
    }

    /// Gives up the lease if `owner` still holds it, so another deliverer can take over at once.
    func releaseLease(_ redis: RedisConnection, endpoint: String, owner: String) throws(RedisError) {
        try redis.evaluate(Self.releaseScript, keys: [ownerKey(endpoint)], arguments: [owner])
    }

    // MARK: Validation

    static func validate(notificationID: String) throws(RedisError) {
        let bytes = Array(notificationID.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumNotificationIDLength, bytes.allSatisfy({ $0 >= 0x21 && $0 <= 0x7e }) else {
            throw .invalidArgument(
                reason: "webhook notification id must be 1…\(maximumNotificationIDLength) visible ASCII characters "
                    + "(it is sent as the X-Opsbus-Notification-Id header), got '\(String(notificationID.prefix(80)))'")
        }
    }

    // MARK: Scripts

    /// Redis time in ms, so every deliverer schedules retries on one clock.
    private static let now = """
        local clock = redis.call('TIME')
        local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
        """

    /// KEYS: seen, queue. ARGV: notification id, entry, window ms. Returns 1 if queued, 0 for a duplicate.
    static let enqueueScript = RedisScript(name: "webhook_enqueue", source: """
        \(now)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
        if redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1]) == 0 then return 0 end
        redis.call('LPUSH', KEYS[2], ARGV[2])
        return 1
        """)

    /// KEYS: owner, processing, queue, delayed. ARGV: owner id, lease ms, max retries to promote.
    /// Returns {state, entry, recovered, wait ms}: state 0 standby (wait = lease TTL), 1 claimed, 2 idle (wait =
    /// ms until the next retry is due, -1 if none).
    static let claimScript = RedisScript(name: "webhook_claim", source: """
        local holder = redis.call('GET', KEYS[1])
        if holder and holder ~= ARGV[1] then
          return {0, '', 0, redis.call('PTTL', KEYS[1])}
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        local recovered = 0
        while true do
          local stale = redis.call('RPOP', KEYS[2])
          if not stale then break end
          redis.call('RPUSH', KEYS[3], stale)
          recovered = recovered + 1
        end
        \(now)
        local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
        for _, entry in ipairs(due) do
          redis.call('ZREM', KEYS[4], entry)
          redis.call('RPUSH', KEYS[3], entry)
        end
        local entry = redis.call('RPOPLPUSH', KEYS[3], KEYS[2])
        if entry then return {1, entry, recovered, 0} end
        local nextDue = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
        local wait = -1
        if nextDue[2] then wait = math.max(0, tonumber(nextDue[2]) - now) end
        return {2, '', recovered, wait}
        """)

    /// KEYS: processing, queue. ARGV: entry. Returns how many copies were removed.
    static let acknowledgeScript = RedisScript(name: "webhook_acknowledge", source: """
        return redis.call('LREM', KEYS[1], 1, ARGV[1]) + redis.call('LREM', KEYS[2], 1, ARGV[1])
        """)

    /// KEYS: processing, queue, delayed. ARGV: entry, retry entry, delay ms. Returns 1 if rescheduled.
    static let rescheduleScript = RedisScript(name: "webhook_reschedule", source: """
        local removed = redis.call('LREM', KEYS[1], 1, ARGV[1]) + redis.call('LREM', KEYS[2], 1, ARGV[1])
        if removed == 0 then return 0 end
        \(now)
        redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2])
        return 1
        """)

    /// KEYS: processing, queue, dead-letter stream. ARGV: entry, notification id, endpoint, attempts, last error,
    /// body, stream length. Returns 1 if dead-lettered.
    static let deadLetterScript = RedisScript(name: "webhook_dead_letter", source: """
        local removed = redis.call('LREM', KEYS[1], 1, ARGV[1]) + redis.call('LREM', KEYS[2], 1, ARGV[1])
        if removed == 0 then return 0 end
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'notification_id', ARGV[2], 'endpoint', ARGV[3],
          'attempts', ARGV[4], 'last_error', ARGV[5], 'body', ARGV[6])
        return 1
        """)

    /// KEYS: owner. ARGV: owner id.
    static let releaseScript = RedisScript(name: "webhook_release", source: """
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 0
        """)
}

/// Where an endpoint's notifications are (see `WebhookOutbox.depths`).
public struct WebhookOutboxDepths: Sendable, Equatable {
    public var queued: Int
    public var processing: Int
    public var delayed: Int
    public var deadLettered: Int

    public init(queued: Int, processing: Int, delayed: Int, deadLettered: Int) {
        self.queued = queued
        self.processing = processing
        self.delayed = delayed
        self.deadLettered = deadLettered
    }

    /// Notifications not yet delivered nor dead-lettered.
    public var pending: Int { queued + processing + delayed }
}

/// A notification that failed on every attempt.
public struct WebhookDeadLetter: Sendable, Equatable {
    /// The Redis stream entry id (its time part is when it was dead-lettered).
    public var streamID: String
    public var endpoint: String
    public var notificationID: String
    public var attempts: Int
    public var lastError: String
    public var body: [UInt8]
}

/// One outbox entry: `opsbus-webhook-v1\n<failed attempts>\n<notification id>\n<last error>\n<body>`.
struct WebhookOutboxEntry: Equatable {
    static let magic = "opsbus-webhook-v1"
    static let maximumErrorLength = 500

    var attempts: Int
    var notificationID: String
    var lastError: String
    var body: [UInt8]

    init(attempts: Int, notificationID: String, lastError: String, body: [UInt8]) {
        self.attempts = attempts
        self.notificationID = notificationID
        // One line, bounded: the entry format is line-based and the error is only for people.
        var line = String(lastError.map { $0.isNewline ? " " : $0 })
        if line.count > Self.maximumErrorLength { line = String(line.prefix(Self.maximumErrorLength)) + "…" }
        self.lastError = line
        self.body = body
    }

    func encoded() -> [UInt8] {
        Array("\(Self.magic)\n\(attempts)\n\(notificationID)\n\(lastError)\n".utf8) + body
    }

    /// Nil for bytes that are not an entry (corrupted, or written by something else).
    static func decode(_ bytes: [UInt8]) -> WebhookOutboxEntry? {
        var lines: [String] = []
        var start = 0
        var index = 0
        while lines.count < 4 && index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                guard let line = String(validating: bytes[start..<index], as: UTF8.self) else { return nil }
                lines.append(line)
                start = index + 1
            }
            index += 1
        }
        guard lines.count == 4, lines[0] == magic, let attempts = Int(lines[1]), attempts >= 0, !lines[2].isEmpty else {
            return nil
        }
        return WebhookOutboxEntry(attempts: attempts, notificationID: lines[2], lastError: lines[3], body: Array(bytes[start...]))
    }
}
