/// A Lua script run with `EVALSHA`, named by the SHA-1 of its source exactly as Redis names it.
///
/// Knowing the SHA up front lets `RedisConnection.evaluate` send only the 40-byte digest and fall back to
/// `SCRIPT LOAD` when the server answers `NOSCRIPT` (after a Redis restart or a `SCRIPT FLUSH`): a NOSCRIPT reply
/// means the script did not run, so the retry cannot apply it twice.
public struct RedisScript: Sendable, Hashable, CustomStringConvertible {
    /// A human name for logs and errors (the source and the arguments are never logged).
    public let name: String
    public let source: String
    /// Lower-case hex SHA-1 of the UTF-8 source.
    public let sha: String

    public init(name: String, source: String) {
        self.name = name
        self.source = source
        self.sha = SHA1.hexDigest(source.utf8)
    }

    public var description: String { "script \(name) (\(sha.prefix(12)))" }
}
