import OpsBusRedis

/// Reads a bridge stream through a Redis consumer group: at-least-once delivery to a group of consumers.
///
/// Recipe (what a service does, and what `opsbus processor --source stream:…` can build on):
/// 1. `init` creates the group if needed (`XGROUP CREATE <stream> <group> <start> MKSTREAM`; an existing group is
///    kept as it is, so restarts resume where the group was).
/// 2. At start, `readOwnPending()` returns entries this consumer name received before a crash but never
///    acknowledged (`XREADGROUP … STREAMS <stream> 0`): process them first.
/// 3. Loop: `read(count:blockMilliseconds:)` (`XREADGROUP … >`), process each entry (idempotently: an entry can be
///    delivered again after a crash), then `acknowledge(_:)` (`XACK`) it.
/// 4. Periodically `claimStale(minIdleMilliseconds:count:)` (`XAUTOCLAIM`) takes over entries another consumer
///    received but did not acknowledge for that long (it crashed or hangs) and processes them like fresh ones.
/// Use a stable, unique consumer name per instance (e.g. the host name) so step 2 finds its own entries.
public final class StreamGroupConsumer {
    public let connection: RedisConnection
    public let stream: String
    public let group: String
    public let consumer: String

    /// - Parameter start: where a *new* group starts: `0` (the whole stream) or `$` (only new entries).
    public init(connection: RedisConnection, stream: String, group: String, consumer: String, start: String = "0")
        throws(RedisError)
    {
        self.connection = connection
        self.stream = stream
        self.group = group
        self.consumer = consumer
        let reply = try connection.send(["XGROUP", "CREATE", stream, group, start, "MKSTREAM"])
        if case .error(let message) = reply, reply.errorCode != "BUSYGROUP" {
            throw .server(message: message, command: "XGROUP")
        }
    }

    /// New entries for this consumer (`>`), at most `count`. With `blockMilliseconds`, waits up to that long when
    /// there are none (keep it below the connection's command timeout).
    public func read(count: Int, blockMilliseconds: Int? = nil) throws(RedisError) -> [StreamEntry] {
        var arguments = ["XREADGROUP", "GROUP", group, consumer, "COUNT", String(count)]
        if let blockMilliseconds { arguments += ["BLOCK", String(blockMilliseconds)] }
        return Self.entries(try connection.command(arguments + ["STREAMS", stream, ">"]))
    }

    /// Entries delivered to this consumer name and not yet acknowledged (after a crash and restart).
    public func readOwnPending(count: Int) throws(RedisError) -> [StreamEntry] {
        Self.entries(try connection.command(
            ["XREADGROUP", "GROUP", group, consumer, "COUNT", String(count), "STREAMS", stream, "0"]))
    }

    /// `XACK`s the ids; returns how many were pending.
    @discardableResult
    public func acknowledge(_ ids: [String]) throws(RedisError) -> Int {
        guard !ids.isEmpty else { return 0 }
        return Int(try connection.command(["XACK", stream, group] + ids).int ?? 0)
    }

    /// Takes over up to `count` entries pending (with any consumer) for at least `minIdleMilliseconds`
    /// (`XAUTOCLAIM`, following its cursor). Entries deleted from the stream meanwhile (trimmed) are acknowledged
    /// by Redis 7 itself and not returned.
    public func claimStale(minIdleMilliseconds: Int, count: Int) throws(RedisError) -> [StreamEntry] {
        var cursor = "0-0"
        var claimed: [StreamEntry] = []
        repeat {
            let reply = try connection.command([
                "XAUTOCLAIM", stream, group, consumer, String(minIdleMilliseconds), cursor,
                "COUNT", String(count - claimed.count),
            ])
            guard let parts = reply.array, parts.count >= 2 else { break }
            cursor = parts[0].string ?? "0-0"
            claimed += (parts[1].array ?? []).compactMap(StreamEntry.init(reply:))
        } while cursor != "0-0" && claimed.count < count
        return claimed
    }

    /// Entries delivered to the group and not yet acknowledged (all consumers).
    public func pendingCount() throws(RedisError) -> Int {
        Int(try connection.command(["XPENDING", stream, group]).array?.first?.int ?? 0)
    }

    static func entries(_ reply: RedisReply) -> [StreamEntry] {
        // [[stream, [[id, fields], …]]], or nil when BLOCK timed out.
        (reply.array?.first?.array?.dropFirst().first?.array ?? []).compactMap(StreamEntry.init(reply:))
    }
}
