import OpsBusRedis

/// A failure reading the processor's state back out of Redis (for `opsbus jobs`, `workers`, `health`).
public enum InspectionError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Redis could not be reached or answered with an error while reading `reading` (a key or a short description).
    case redis(RedisError, reading: String)
    /// A caller mistake, such as an unknown job status or a negative limit.
    case invalidQuery(String)

    public var description: String {
        switch self {
        case let .redis(error, reading):
            return "cannot read \(reading) from Redis: \(error)"
        case let .invalidQuery(reason):
            return reason
        }
    }

    /// True when Redis itself is unreachable or broke mid-read (as opposed to an error reply or a bad query).
    public var isConnectionFailure: Bool {
        redisError.map { $0.isConnectionFailure || $0 == .closed } ?? false
    }

    /// The underlying Redis error, if any.
    public var redisError: RedisError? {
        if case let .redis(error, _) = self { return error }
        return nil
    }
}

/// Runs `body`, wrapping a `RedisError` with what was being read.
@inline(__always)
func reading<T>(_ what: String, _ body: () throws(RedisError) -> T) throws(InspectionError) -> T {
    do {
        return try body()
    } catch {
        throw .redis(error, reading: what)
    }
}

/// Pipelines `commands` in chunks so that a registry of 100 000 entries does not build one giant pipeline.
func chunkedPipeline(_ redis: RedisConnection, _ commands: [[String]], reading what: String, chunk: Int = 1000)
    throws(InspectionError) -> [RedisReply]
{
    var replies: [RedisReply] = []
    replies.reserveCapacity(commands.count)
    var start = 0
    while start < commands.count {
        let end = min(start + chunk, commands.count)
        let slice = Array(commands[start..<end])
        let chunkReplies = try reading(what) { () throws(RedisError) in try redis.pipeline(slice) }
        for (command, reply) in zip(slice, chunkReplies) {
            if let message = reply.errorMessage {
                throw .redis(.server(message: message, command: command.first ?? "?"), reading: what)
            }
        }
        replies += chunkReplies
        start = end
    }
    return replies
}
