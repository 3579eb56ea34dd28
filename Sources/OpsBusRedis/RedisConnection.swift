import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A synchronous Redis connection that owns one hiredis 0.14 context.
///
/// Not thread-safe (neither is a hiredis context): one thread or task owns it. Calls block until the reply arrives
/// or the command timeout expires, which is what lets the processor finish a Redis write before acknowledging the
/// MQTT message that caused it.
///
/// **Broken connections.** hiredis 0.14 cannot resume a context after an I/O error, EOF, protocol error or timeout.
/// Such a failure throws (`.io`, `.timeout`, `.protocolError`, with `commandMayHaveRun`) and marks the connection
/// broken. The *next* call first reconnects once (unless `reconnectsAutomatically` is false) and throws if that
/// fails; the failed command itself is never re-sent, because it may have run. Before each command the idle socket
/// is checked for a hang-up, so a Redis restart between commands costs a reconnect, not an error.
///
/// **Error replies.** `send` and `pipeline` return error replies as `.error` (a pipeline keeps going); `command` and
/// `evaluate` throw them as `RedisError.server`.
///
/// **Refused commands** (thrown as `.unsupported` before anything is sent): `HELLO 3` (RESP3 needs hiredis ≥ 1.0;
/// hiredis 0.14 would die on the reply), SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE/MONITOR/SYNC/PSYNC (they turn the
/// connection into a push stream), WATCH and a MULTI outside a pipeline that also holds its EXEC/DISCARD (an
/// automatic reconnect would silently drop the WATCH or the MULTI and run the rest unguarded). Use Lua scripts
/// (`evaluate`) for atomic read-modify-write.
public final class RedisConnection {
    public let endpoint: RedisEndpoint
    /// Seconds allowed for connect() and for each handshake reply (AUTH, SELECT, PING).
    public let connectTimeout: Double
    /// Seconds allowed per socket read or write (SO_RCVTIMEO/SO_SNDTIMEO), so per reply rather than per pipeline;
    /// nil blocks forever. Blocking commands (BLPOP, XREAD BLOCK) must block for less than this.
    public let commandTimeout: Double?
    /// When true, a call on a broken connection reconnects once before sending.
    public var reconnectsAutomatically: Bool
    /// The database in use: the endpoint's, or the last one chosen with a successful `SELECT`. Re-selected after
    /// every reconnect.
    public private(set) var database: Int

    private var context: HiredisContext?
    private var brokenReason: String?
    private var closed = false
    /// SHAs loaded with SCRIPT LOAD on the current server connection; reset by reconnect (a restarted Redis has
    /// an empty script cache).
    private var loadedScripts: Set<String> = []
    private let logger: Logger

    /// Connects, sets the command timeout and TCP keepalive, authenticates and selects the database.
    /// - Throws: `.connectFailed` (host:port and reason), `.authenticationFailed`, `.invalidArgument`.
    public init(
        endpoint: RedisEndpoint, connectTimeout: Double = 5, commandTimeout: Double? = 5,
        reconnectsAutomatically: Bool = true, logger: Logger = Logger(label: "opsbus.redis")
    ) throws(RedisError) {
        try Self.validate(timeout: connectTimeout, name: "connectTimeout")
        if let commandTimeout { try Self.validate(timeout: commandTimeout, name: "commandTimeout") }
        if endpoint.username != nil && endpoint.password == nil {
            throw .invalidArgument(reason: "the endpoint has a user name but no password; Redis AUTH needs both")
        }
        self.endpoint = endpoint
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnectsAutomatically = reconnectsAutomatically
        self.database = endpoint.database
        self.logger = logger
        self.context = try Self.establish(
            endpoint: endpoint, database: endpoint.database, connectTimeout: connectTimeout,
            commandTimeout: commandTimeout, logger: logger)
        logger.debug("connected to Redis", metadata: ["redis": "\(endpoint)"])
    }

    /// `init` from a URL (`redis://[[user]:password@]host[:port][/db]`, `unix:///path?db=N`).
    public convenience init(
        url: String, connectTimeout: Double = 5, commandTimeout: Double? = 5,
        reconnectsAutomatically: Bool = true, logger: Logger = Logger(label: "opsbus.redis")
    ) throws(RedisError) {
        try self.init(
            endpoint: RedisEndpoint(url: url), connectTimeout: connectTimeout, commandTimeout: commandTimeout,
            reconnectsAutomatically: reconnectsAutomatically, logger: logger)
    }

    /// Connects, retrying connection failures with backoff for up to `retryingFor` seconds (for a Redis that is
    /// still starting or restarting). Authentication and argument errors are thrown at once.
    public static func connect(
        endpoint: RedisEndpoint, connectTimeout: Double = 5, commandTimeout: Double? = 5,
        retryingFor seconds: Double, policy: RedisReconnectPolicy = .init(),
        logger: Logger = Logger(label: "opsbus.redis")
    ) throws(RedisError) -> RedisConnection {
        var connection: RedisConnection?
        try retry(for: seconds, policy: policy, logger: logger, endpoint: endpoint) { () throws(RedisError) in
            connection = try RedisConnection(
                endpoint: endpoint, connectTimeout: connectTimeout, commandTimeout: commandTimeout, logger: logger)
        }
        return connection!
    }

    deinit {
        context = nil  // HiredisContext.deinit calls redisFree
    }

    // MARK: State

    /// True after an I/O error, timeout or protocol error, until a (possibly automatic) reconnect succeeds.
    public var isBroken: Bool { !closed && context == nil }

    public var isClosed: Bool { closed }

    /// Frees the hiredis context. Every later call throws `.closed`.
    public func close() {
        context = nil
        closed = true
        brokenReason = nil
    }

    /// Drops the current context (if any) and connects again: connect, command timeout (hiredis 0.14's own
    /// `redisReconnect` would drop it), keepalive, AUTH, SELECT of `database`.
    ///
    /// A fresh context is created instead of calling `redisReconnect`, because 0.14's `redisReconnect` closes the
    /// old descriptor without resetting it, so a second attempt after a failed one could close an unrelated file.
    public func reconnect() throws(RedisError) {
        guard !closed else { throw .closed }
        context = nil
        loadedScripts.removeAll()
        do {
            context = try Self.establish(
                endpoint: endpoint, database: database, connectTimeout: connectTimeout,
                commandTimeout: commandTimeout, logger: logger)
        } catch {
            brokenReason = error.description
            throw error
        }
        if let reason = brokenReason {
            logger.info("reconnected to Redis", metadata: ["redis": "\(endpoint)", "after": "\(reason)"])
        }
        brokenReason = nil
    }

    /// `reconnect()`, retrying connection failures with capped exponential backoff for up to `seconds`.
    /// Use it while Redis restarts. Authentication failures are thrown at once.
    public func reconnect(retryingFor seconds: Double, policy: RedisReconnectPolicy = .init()) throws(RedisError) {
        try Self.retry(for: seconds, policy: policy, logger: logger, endpoint: endpoint) { () throws(RedisError) in
            try reconnect()
        }
    }

    /// Blocks until Redis answers PING (reconnecting with backoff as needed) or `deadline` passes.
    public func waitUntilAvailable(deadline: ContinuousClock.Instant, policy: RedisReconnectPolicy = .init()) throws(RedisError) {
        let remaining = ContinuousClock.now.duration(to: deadline)
        let seconds = Double(remaining.components.seconds) + Double(remaining.components.attoseconds) / 1e18
        if !isBroken {
            do {
                _ = try command(["PING"])
                return
            } catch where error.isConnectionFailure {
                // fall through to reconnecting
            }
        }
        try reconnect(retryingFor: max(0, seconds), policy: policy)
    }

    // MARK: Commands

    /// Sends one command and returns its reply; an error reply is returned as `.error`, not thrown.
    public func send(_ arguments: [[UInt8]]) throws(RedisError) -> RedisReply {
        try Self.checkSupported([arguments], inPipeline: false)
        let context = try usableContext()
        switch context.command(arguments) {
        case let .success(reply):
            observe(arguments, reply)
            return reply
        case let .failure(failure):
            throw markBroken(failure, commandMayHaveRun: true)
        }
    }

    public func send(_ arguments: [String]) throws(RedisError) -> RedisReply {
        try send(arguments.map { Array($0.utf8) })
    }

    /// Sends one command; an error reply is thrown as `.server(message:command:)`.
    @discardableResult
    public func command(_ arguments: [String]) throws(RedisError) -> RedisReply {
        try command(arguments.map { Array($0.utf8) })
    }

    /// Binary-safe: arguments may contain NUL bytes and arbitrary binary data.
    @discardableResult
    public func command(_ arguments: [[UInt8]]) throws(RedisError) -> RedisReply {
        let reply = try send(arguments)
        if case let .error(message) = reply {
            throw .server(message: RedisError.sanitizeServerMessage(message), command: Self.commandName(arguments))
        }
        return reply
    }

    /// Sends all commands in one write and reads all replies. Error replies come back as `.error` in their slot
    /// (the connection stays usable). An I/O error or timeout throws (some of the commands may have run) and
    /// breaks the connection.
    public func pipeline(_ commands: [[String]]) throws(RedisError) -> [RedisReply] {
        try pipeline(commands.map { $0.map { Array($0.utf8) } })
    }

    public func pipeline(_ commands: [[[UInt8]]]) throws(RedisError) -> [RedisReply] {
        try pipeline(wire: commands.map { .arguments($0) })
    }

    /// A command as the pipeline sends it: its arguments, or (script calls built with `RedisArguments`) its bytes
    /// already in the wire format.
    enum WireCommand {
        case arguments([[UInt8]])
        /// `EVALSHA` in the wire format, in parts; never a command `checkSupported` refuses or `observe` tracks.
        case encoded(header: [UInt8], bodies: [RedisArguments])
    }

    func pipeline(wire commands: [WireCommand]) throws(RedisError) -> [RedisReply] {
        guard !commands.isEmpty else { return [] }
        try Self.checkSupported(commands.compactMap { if case let .arguments(a) = $0 { a } else { nil } },
                                inPipeline: true)
        let context = try usableContext()
        for command in commands {
            let appended = switch command {
            case let .arguments(arguments): context.append(arguments)
            case let .encoded(header, bodies): context.appendEncoded(header: header, bodies: bodies)
            }
            if case let .failure(failure) = appended {
                throw markBroken(failure, commandMayHaveRun: false)  // only buffered so far
            }
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for command in commands {
            switch context.nextReply() {
            case let .success(reply):
                if case let .arguments(arguments) = command { observe(arguments, reply) }
                replies.append(reply)
            case let .failure(failure):
                throw markBroken(failure, commandMayHaveRun: true)
            }
        }
        return replies
    }

    /// A builder for a pipeline that may contain script calls; see `RedisPipeline`.
    public func makePipeline() -> RedisPipeline { RedisPipeline(connection: self) }

    // MARK: Scripts

    /// Runs `script` with `EVALSHA`; on `NOSCRIPT` (Redis restarted, or `SCRIPT FLUSH`) it loads the script and
    /// retries once, which is safe because a NOSCRIPT reply means the script did not run.
    /// - Throws: `.server(message:command: "EVALSHA <script name>")` for a script error.
    @discardableResult
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) throws(RedisError) -> RedisReply {
        try evaluate(script, keys: keys.map { Array($0.utf8) }, arguments: arguments.map { Array($0.utf8) })
    }

    @discardableResult
    public func evaluate(_ script: RedisScript, keys: [[UInt8]], arguments: [[UInt8]]) throws(RedisError) -> RedisReply {
        let argv = Self.evalshaArguments(script, keys: keys, arguments: arguments)
        var reply = try send(argv)
        if reply.errorCode == "NOSCRIPT" {
            logger.debug("script not in the Redis script cache, loading it", metadata: ["script": "\(script)"])
            try load(script)
            reply = try send(argv)
        }
        if case let .error(message) = reply {
            throw .server(message: RedisError.sanitizeServerMessage(message), command: "EVALSHA \(script.name)")
        }
        loadedScripts.insert(script.sha)
        return reply
    }

    /// `evaluate` with keys and arguments already encoded (`RedisArguments`).
    @discardableResult
    public func evaluate(_ script: RedisScript, keys: RedisArguments, arguments: RedisArguments) throws(RedisError) -> RedisReply {
        var pipeline = makePipeline()
        pipeline.appendEvaluate(script, keys: keys, arguments: arguments)
        let reply = try pipeline.execute()[0]
        if case let .error(message) = reply {
            throw .server(message: RedisError.sanitizeServerMessage(message), command: "EVALSHA \(script.name)")
        }
        return reply
    }

    /// `SCRIPT LOAD`s `script` and checks that Redis names it with the SHA we computed.
    public func load(_ script: RedisScript) throws(RedisError) {
        let reply = try send([Array("SCRIPT".utf8), Array("LOAD".utf8), Array(script.source.utf8)])
        try checkLoaded(script, reply: reply)
    }

    // MARK: Internals used by RedisPipeline

    func isLoaded(_ script: RedisScript) -> Bool { loadedScripts.contains(script.sha) }

    func checkLoaded(_ script: RedisScript, reply: RedisReply) throws(RedisError) {
        if case let .error(message) = reply {
            throw .server(message: RedisError.sanitizeServerMessage(message), command: "SCRIPT LOAD \(script.name)")
        }
        guard reply.string == script.sha else {
            throw .protocolError(
                endpoint: endpoint.description,
                reason: "SCRIPT LOAD of \(script.name) returned \(reply), expected SHA \(script.sha)")
        }
        loadedScripts.insert(script.sha)
    }

    static func evalshaArguments(_ script: RedisScript, keys: [[UInt8]], arguments: [[UInt8]]) -> [[UInt8]] {
        [Array("EVALSHA".utf8), Array(script.sha.utf8), Array(String(keys.count).utf8)] + keys + arguments
    }

    /// The command name for errors: the first argument, upper-cased, if it looks like a command name.
    static func commandName(_ arguments: [[UInt8]]) -> String {
        guard let first = arguments.first, !first.isEmpty, first.count <= 32,
            first.allSatisfy({ $0 < 0x80 && (Character(Unicode.Scalar($0)).isLetter || $0 == UInt8(ascii: "_")
                || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "|")) })
        else { return "(unnamed command)" }
        return String(decoding: first, as: UTF8.self).uppercased()
    }

    // MARK: Private

    private func usableContext() throws(RedisError) -> HiredisContext {
        guard !closed else { throw .closed }
        if let context {
            if !context.hasInputWhileIdle() { return context }
            // The server hung up (restart, idle timeout, CLIENT KILL) while we were idle: nothing was sent yet.
            _ = markBroken(
                HiredisFailure(code: 3, message: "the server closed the connection while it was idle", timedOut: false),
                commandMayHaveRun: false, logLevel: .info)
        }
        let reason = brokenReason ?? "not connected"
        guard reconnectsAutomatically else {
            throw .io(
                endpoint: endpoint.description, reason: "the connection is broken (\(reason)); call reconnect()",
                commandMayHaveRun: false)
        }
        try reconnect()
        guard let context else { throw .closed }
        return context
    }

    /// Frees the dead context and returns the error to throw.
    private func markBroken(
        _ failure: HiredisFailure, commandMayHaveRun: Bool, logLevel: Logger.Level = .warning
    ) -> RedisError {
        context = nil
        let error: RedisError
        if failure.timedOut {
            error = .timeout(endpoint: endpoint.description, seconds: commandTimeout ?? 0)
        } else if failure.code == 4 {  // REDIS_ERR_PROTOCOL
            error = .protocolError(endpoint: endpoint.description, reason: failure.message)
        } else {
            let reason = failure.code == 3 ? "the server closed the connection (\(failure.message))" : failure.message
            error = .io(endpoint: endpoint.description, reason: reason, commandMayHaveRun: commandMayHaveRun)
        }
        brokenReason = failure.timedOut ? "timed out" : failure.message
        logger.log(level: logLevel, "Redis connection broken", metadata: ["redis": "\(endpoint)", "error": "\(error)"])
        return error
    }

    /// Keeps `database` in step with a successful SELECT so a reconnect selects the same one.
    private func observe(_ arguments: [[UInt8]], _ reply: RedisReply) {
        guard arguments.count == 2, reply == .status("OK"), Self.commandName(arguments) == "SELECT",
            let text = String(validating: arguments[1], as: UTF8.self), let number = Int(text)
        else { return }
        database = number
    }

    /// Refuses commands this synchronous RESP2 wrapper cannot run safely; see the type documentation.
    static func checkSupported(_ commands: [[[UInt8]]], inPipeline: Bool) throws(RedisError) {
        var openTransaction = false
        for arguments in commands {
            guard !arguments.isEmpty else { throw .invalidArgument(reason: "empty command") }
            guard arguments.count < Int(Int32.max) else { throw .invalidArgument(reason: "too many arguments") }
            let name = commandName(arguments)
            switch name {
            case "HELLO":
                if arguments.count > 1, arguments[1] != Array("2".utf8) {
                    throw .unsupported(
                        "HELLO \(String(decoding: arguments[1].prefix(4), as: UTF8.self)): RESP3 needs hiredis ≥ 1.0; "
                            + "hiredis 0.14.1 speaks RESP2 only and would fail on the reply")
                }
            case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SYNC", "PSYNC":
                throw .unsupported("\(name) turns the connection into a push stream; this synchronous client cannot read it")
            case "WATCH":
                throw .unsupported(
                    "WATCH does not survive an automatic reconnect, so EXEC could run unguarded; use a Lua script (evaluate)")
            case "MULTI":
                guard inPipeline else {
                    throw .unsupported(
                        "MULTI outside a pipeline could be lost by an automatic reconnect and the rest would run "
                            + "outside the transaction; send MULTI ... EXEC as one pipeline, or use a Lua script")
                }
                openTransaction = true
            case "EXEC", "DISCARD":
                openTransaction = false
            default:
                break
            }
        }
        if openTransaction {
            throw .unsupported("a pipeline with MULTI must also contain its EXEC or DISCARD")
        }
    }

    private static func validate(timeout: Double, name: String) throws(RedisError) {
        guard timeout.isFinite, timeout > 0, timeout <= 1_000_000 else {
            throw .invalidArgument(reason: "\(name) must be a positive number of seconds, got \(timeout)")
        }
    }

    /// Opens a context and runs the handshake under the connect timeout, then switches to the command timeout.
    private static func establish(
        endpoint: RedisEndpoint, database: Int, connectTimeout: Double, commandTimeout: Double?, logger: Logger
    ) throws(RedisError) -> HiredisContext {
        let name = endpoint.description
        let context: HiredisContext
        switch HiredisContext.connect(to: endpoint.address, timeout: connectTimeout) {
        case let .success(opened): context = opened
        case let .failure(failure): throw .connectFailed(endpoint: name, reason: failure.message)
        }
        if case let .failure(failure) = context.setTimeout(connectTimeout) {
            throw .connectFailed(endpoint: name, reason: "cannot set the socket timeout: \(failure.message)")
        }
        if case .tcp = endpoint.address, case let .failure(failure) = context.enableKeepAlive() {
            logger.warning("cannot enable TCP keepalive", metadata: ["redis": "\(endpoint)", "error": "\(failure.message)"])
        }

        func handshake(_ arguments: [String], label: String) throws(RedisError) -> RedisReply {
            switch context.command(arguments.map { Array($0.utf8) }) {
            case let .success(reply):
                return reply
            case let .failure(failure):
                let reason = failure.timedOut ? "no reply to \(label) within \(connectTimeout) s" : "\(label) failed: \(failure.message)"
                throw .connectFailed(endpoint: name, reason: reason)
            }
        }
        func authenticationError(_ message: String) -> RedisError {
            var reason = message
            if let password = endpoint.password, !password.isEmpty {
                reason = reason.replacing(password, with: "***")
            }
            if RedisReply.errorCode(of: message) == "NOAUTH" {
                reason = "the server requires a password and the endpoint has none (\(reason))"
            }
            return .authenticationFailed(endpoint: name, reason: reason)
        }

        if let password = endpoint.password {
            let arguments = ["AUTH"] + (endpoint.username.map { [$0] } ?? []) + [password]
            if case let .error(message) = try handshake(arguments, label: "AUTH") {
                throw authenticationError(message)
            }
        }
        if database != 0 {
            if case let .error(message) = try handshake(["SELECT", String(database)], label: "SELECT") {
                if RedisReply.errorCode(of: message) == "NOAUTH" { throw authenticationError(message) }
                throw .connectFailed(endpoint: name, reason: "SELECT \(database) was refused: \(message)")
            }
        } else if endpoint.password == nil {
            // Nothing else to send: PING proves it is a Redis that lets us in, rather than failing on first use.
            if case let .error(message) = try handshake(["PING"], label: "PING") {
                if RedisReply.errorCode(of: message) == "NOAUTH" { throw authenticationError(message) }
                throw .connectFailed(endpoint: name, reason: "PING was refused: \(message)")
            }
        }
        if case let .failure(failure) = context.setTimeout(commandTimeout) {
            throw .connectFailed(endpoint: name, reason: "cannot set the command timeout: \(failure.message)")
        }
        return context
    }

    private static func retry(
        for seconds: Double, policy: RedisReconnectPolicy, logger: Logger, endpoint: RedisEndpoint,
        _ attempt: () throws(RedisError) -> Void
    ) throws(RedisError) {
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int64(max(0, min(seconds, 1e9)) * 1000)))
        var attemptNumber = 0
        while true {
            do {
                try attempt()
                return
            } catch {
                let remaining = ContinuousClock.now.duration(to: deadline)
                guard error.isConnectionFailure, remaining > .zero else { throw error }
                let remainingSeconds = Double(remaining.components.seconds)
                    + Double(remaining.components.attoseconds) / 1e18
                let delay = min(policy.delay(afterAttempt: attemptNumber), remainingSeconds)
                logger.debug(
                    "Redis not available yet, retrying",
                    metadata: ["redis": "\(endpoint)", "attempt": "\(attemptNumber + 1)", "error": "\(error)"])
                sleep(seconds: delay)
                attemptNumber += 1
            }
        }
    }

    private static func sleep(seconds: Double) {
        guard seconds > 0 else { return }
        let nanoseconds = Int(seconds * 1e9)
        var request = timespec(tv_sec: nanoseconds / 1_000_000_000, tv_nsec: nanoseconds % 1_000_000_000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}

@available(*, unavailable, message: "a hiredis context is not thread-safe; give each thread or task its own RedisConnection")
extension RedisConnection: Sendable {}
