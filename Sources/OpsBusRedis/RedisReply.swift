/// One RESP2 reply, copied out of hiredis memory (so it outlives the C reply object).
///
/// hiredis 0.14 speaks RESP2 only: a nil bulk string and a nil array both arrive as `.null`.
public enum RedisReply: Sendable, Hashable, CustomStringConvertible {
    /// A simple string such as `OK` or `QUEUED`.
    case status(String)
    /// An error reply such as `WRONGTYPE Operation against a key holding the wrong kind of value`.
    case error(String)
    case integer(Int64)
    /// A bulk string; binary-safe (may contain NUL bytes and invalid UTF-8).
    case bulk([UInt8])
    case null
    case array([RedisReply])

    /// The text of a status reply or a bulk string that is valid UTF-8; nil otherwise.
    public var string: String? {
        switch self {
        case let .status(text): return text
        case let .bulk(bytes): return String(validating: bytes, as: UTF8.self)
        default: return nil
        }
    }

    /// The raw bytes of a bulk string or status reply.
    public var bytes: [UInt8]? {
        switch self {
        case let .bulk(bytes): return bytes
        case let .status(text): return Array(text.utf8)
        default: return nil
        }
    }

    /// An integer reply, or a bulk string holding a decimal integer (Lua scripts and HGET return numbers that way).
    public var int: Int64? {
        switch self {
        case let .integer(value): return value
        case let .bulk(bytes):
            guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
            return Int64(text)
        default: return nil
        }
    }

    public var array: [RedisReply]? {
        if case let .array(elements) = self { return elements }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// The message of an error reply.
    public var errorMessage: String? {
        if case let .error(message) = self { return message }
        return nil
    }

    /// The first word of an error reply (`NOSCRIPT`, `WRONGTYPE`, `ERR`, ...).
    public var errorCode: String? { errorMessage.map(Self.errorCode(of:)) }

    /// Field/value pairs of an `HGETALL`-style flat array (also `CONFIG GET`, `XINFO`, `HELLO 2`). Integer values
    /// are rendered in decimal; pairs whose field or value is not text (binary, null, nested array) are skipped.
    /// A non-array reply (including `.null`) gives an empty dictionary.
    public func hashDictionary() -> [String: String] {
        guard case let .array(elements) = self else { return [:] }
        var result: [String: String] = [:]
        result.reserveCapacity(elements.count / 2)
        var index = 0
        while index + 1 < elements.count {
            let value: String?
            if case let .integer(number) = elements[index + 1] { value = String(number) } else { value = elements[index + 1].string }
            if let field = elements[index].string, let value { result[field] = value }
            index += 2
        }
        return result
    }

    public var description: String {
        switch self {
        case let .status(text): return text
        case let .error(message): return "(error) \(message)"
        case let .integer(value): return "(integer) \(value)"
        case let .bulk(bytes):
            if let text = String(validating: bytes, as: UTF8.self) { return "\"\(text)\"" }
            return "(\(bytes.count) bytes)"
        case .null: return "(nil)"
        case let .array(elements): return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }

    public static func errorCode(of message: String) -> String {
        String(message.prefix { $0 != " " })
    }

    /// Error codes that go away by themselves (a restarting Redis loading its data, a busy script, a failover):
    /// work that gets one is retried like after a lost connection, never dead-lettered.
    /// NOSCRIPT is here because a connection reloads a script once per call: a second flush between that reload
    /// and the retry (or a failover to a replica without it) must not dead-letter anything.
    /// OOM and MISCONF (a full Redis, a failing RDB save with `stop-writes-on-bgsave-error`) refuse every write
    /// until an operator acts: retried too (the broker or a journal keeps the data meanwhile).
    public static let transientErrorCodes: Set<String> = [
        "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "NOSCRIPT", "OOM", "MISCONF",
    ]

    /// Whether an error reply's message has one of the `transientErrorCodes`.
    public static func isTransient(errorMessage: String) -> Bool {
        transientErrorCodes.contains(errorCode(of: errorMessage))
    }
}
