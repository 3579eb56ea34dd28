/// Everything that can go wrong talking to Redis, with enough context to act on it.
///
/// Secrets never appear here: endpoints are rendered with the password masked as `***`, and server errors carry only
/// the command *name* (arguments may hold secrets or payloads).
public enum RedisError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The URL could not be parsed. `url` is already redacted.
    case invalidURL(url: String, reason: String)
    /// A caller mistake detected before anything was sent (empty command, negative timeout, ...).
    case invalidArgument(reason: String)
    /// TCP/unix connect or the connection handshake (SELECT, PING) failed; nothing of the caller's ran.
    case connectFailed(endpoint: String, reason: String)
    /// The socket failed while a command was in flight. hiredis 0.14 cannot resume a context after an I/O error, so
    /// the connection is broken until `reconnect()` (the next command reconnects automatically when allowed).
    /// `commandMayHaveRun` is true when the command (or part of a pipeline) may have reached the server.
    case io(endpoint: String, reason: String, commandMayHaveRun: Bool)
    /// No reply within the command timeout. The command may or may not have run, and the connection is broken:
    /// hiredis 0.14 leaves the context unusable after a timed-out read.
    case timeout(endpoint: String, seconds: Double)
    /// The reply could not be parsed (e.g. a RESP3 type byte, which hiredis 0.14 does not know). Connection broken.
    case protocolError(endpoint: String, reason: String)
    /// Redis answered with an error reply (`WRONGTYPE`, `NOSCRIPT`, `ERR ...`). The connection stays usable.
    /// `command` is the command name only; argument echoes in the message are cut off.
    case server(message: String, command: String)
    /// AUTH was rejected, or the server requires a password the endpoint does not have.
    case authenticationFailed(endpoint: String, reason: String)
    /// A feature that hiredis 0.14.1 or this synchronous wrapper cannot support.
    case unsupported(String)
    /// `close()` was called on this connection.
    case closed

    public var description: String {
        switch self {
        case let .invalidURL(url, reason):
            return "invalid Redis URL '\(url)': \(reason)"
        case let .invalidArgument(reason):
            return "invalid Redis request: \(reason)"
        case let .connectFailed(endpoint, reason):
            return "cannot connect to Redis at \(endpoint): \(reason)"
        case let .io(endpoint, reason, mayHaveRun):
            let outcome = mayHaveRun ? "the command may or may not have run" : "the command was not sent"
            return "Redis I/O error at \(endpoint): \(reason); \(outcome); "
                + "the connection is broken until it reconnects (hiredis 0.14 cannot resume a failed context)"
        case let .timeout(endpoint, seconds):
            return "Redis at \(endpoint) did not answer within \(seconds) s; the command may or may not have run; "
                + "the connection is broken until it reconnects (hiredis 0.14 cannot resume after a timeout)"
        case let .protocolError(endpoint, reason):
            return "Redis protocol error at \(endpoint): \(reason); the connection is broken until it reconnects"
        case let .server(message, command):
            return "Redis rejected \(command): \(message)"
        case let .authenticationFailed(endpoint, reason):
            return "Redis authentication failed at \(endpoint): \(reason)"
        case let .unsupported(reason):
            return "unsupported: \(reason)"
        case .closed:
            return "the Redis connection was closed"
        }
    }

    /// True when the failed command may have been executed by the server, so blindly re-running it could apply it
    /// twice. Make such writes idempotent, or check the state before retrying.
    public var commandMayHaveRun: Bool {
        switch self {
        case let .io(_, _, mayHaveRun): return mayHaveRun
        case .timeout, .protocolError: return true
        default: return false
        }
    }

    /// The code of a server error reply: its first word, e.g. `WRONGTYPE`, `NOSCRIPT`, `ERR`, `WRONGPASS`.
    public var serverErrorCode: String? {
        guard case let .server(message, _) = self else { return nil }
        return RedisReply.errorCode(of: message)
    }

    /// True for a server error reply that goes away by itself (`RedisReply.transientErrorCodes`: OOM, READONLY …).
    public var isTransientServerError: Bool {
        serverErrorCode.map(RedisReply.transientErrorCodes.contains) ?? false
    }

    /// True for failures of the connection itself (worth a reconnect and a retry of idempotent work); false for
    /// errors that will repeat unchanged (bad URL, rejected password, error replies, unsupported commands).
    public var isConnectionFailure: Bool {
        switch self {
        case .connectFailed, .io, .timeout, .protocolError: return true
        default: return false
        }
    }

    /// Redis echoes the first arguments of unknown commands ("ERR unknown command 'X', with args beginning with:
    /// 'secret'"); keep only the part before the echo so a typo never leaks a password or payload into logs.
    static func sanitizeServerMessage(_ message: String) -> String {
        guard let range = message.firstRange(of: "with args beginning with:") else { return message }
        return message[..<range.lowerBound].trimmingSuffix() + " (arguments elided)"
    }
}

extension Substring {
    fileprivate func trimmingSuffix() -> String {
        var text = self
        while let last = text.last, last == " " || last == "," { text = text.dropLast() }
        return String(text)
    }
}
