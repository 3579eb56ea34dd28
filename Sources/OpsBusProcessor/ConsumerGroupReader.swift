import OpsBusRedis

/// One consumer of a Redis stream consumer group, read the crash-safe way: first this consumer's own pending
/// entries (read before a crash but never acknowledged), then new ones, and now and then the entries of consumers
/// that went away (XAUTOCLAIM after `claimIdleMilliseconds`). Used by the outbox relay and the stream source.
struct ConsumerGroupReader {
    let stream: String
    let group: String
    let consumer: String
    let batch: Int
    let claimIdleMilliseconds: Int
    /// How often to look for entries of consumers that went away.
    var claimInterval: Double = 10
    private var lastClaim = ContinuousClock.now - .seconds(3600)

    init(stream: String, group: String, consumer: String, batch: Int, claimIdleMilliseconds: Int) {
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.claimIdleMilliseconds = claimIdleMilliseconds
    }

    /// Creates the group (reading from the stream's start) unless it exists.
    func ensureGroup(_ redis: RedisConnection) throws(RedisError) {
        let reply = try redis.send(["XGROUP", "CREATE", stream, group, "0", "MKSTREAM"])
        if let error = reply.errorMessage, !error.hasPrefix("BUSYGROUP") {
            throw RedisError.server(message: error, command: "XGROUP")
        }
    }

    /// The next entries, each as the raw `[id, [field, value, …]]` reply, in processing order (creating the group
    /// first if needed).
    mutating func nextEntries(_ redis: RedisConnection) throws(RedisError) -> [RedisReply] {
        try ensureGroup(redis)
        let claimStale = ContinuousClock.now - lastClaim > .seconds(claimInterval)
        if claimStale { lastClaim = .now }
        var entries: [RedisReply] = []
        for start in ["0", ">"] {
            let reply = try redis.command(["XREADGROUP", "GROUP", group, consumer, "COUNT", String(batch),
                                           "STREAMS", stream, start])
            // [[stream, [entry, …]]]
            entries += reply.array?.first?.array?.dropFirst().first?.array ?? []
        }
        if claimStale {
            // [cursor, [entry, …], [deleted ids]]
            let reply = try redis.command(["XAUTOCLAIM", stream, group, consumer, String(claimIdleMilliseconds),
                                           "0-0", "COUNT", String(batch)])
            entries += reply.array?.dropFirst().first?.array ?? []
        }
        return entries
    }
}
