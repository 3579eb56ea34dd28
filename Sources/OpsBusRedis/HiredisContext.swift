import CHiredis

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What hiredis reported when a call failed: `redisContext.err`, `errstr`, and whether it was a socket timeout.
struct HiredisFailure: Error {
    /// REDIS_ERR_IO, REDIS_ERR_EOF, REDIS_ERR_PROTOCOL, REDIS_ERR_OOM or REDIS_ERR_OTHER.
    var code: Int32
    var message: String
    /// SO_RCVTIMEO/SO_SNDTIMEO expired: hiredis reports REDIS_ERR_IO with errno EAGAIN.
    var timedOut: Bool
}

/// Owns one blocking `redisContext` and is the only place that touches hiredis. Internal: no C type leaks out of
/// the module. Not thread-safe, like the context itself.
final class HiredisContext {
    private let context: UnsafeMutablePointer<redisContext>

    private init(context: UnsafeMutablePointer<redisContext>) {
        self.context = context
    }

    deinit {
        redisFree(context)
    }

    /// Connects with `timeout` applied to connect() only (hiredis 0.14 leaves the socket blocking without timeout).
    static func connect(to address: RedisEndpoint.Address, timeout: Double) -> Result<HiredisContext, HiredisFailure> {
        let tv = timeval(seconds: timeout)
        let raw: UnsafeMutablePointer<redisContext>?
        switch address {
        case let .tcp(host, port):
            raw = redisConnectWithTimeout(host, Int32(port), tv)
        case let .unixSocket(path):
            raw = redisConnectUnixWithTimeout(path, tv)
        }
        guard let raw else {
            return .failure(HiredisFailure(code: REDIS_ERR_OOM, message: "hiredis could not allocate a context", timedOut: false))
        }
        if raw.pointee.err != 0 {
            let failure = HiredisContext.failure(of: raw, errnoAfterCall: errno)
            // A context whose connect failed has fd -1 (or 0 from calloc, which redisFree skips): safe to free.
            redisFree(raw)
            return .failure(failure)
        }
        return .success(HiredisContext(context: raw))
    }

    /// Sets SO_RCVTIMEO/SO_SNDTIMEO; nil means block forever.
    func setTimeout(_ seconds: Double?) -> Result<Void, HiredisFailure> {
        let tv = seconds.map { timeval(seconds: $0) } ?? timeval(tv_sec: 0, tv_usec: 0)
        guard redisSetTimeout(context, tv) == REDIS_OK else { return .failure(lastFailure()) }
        return .success(())
    }

    func enableKeepAlive() -> Result<Void, HiredisFailure> {
        guard redisEnableKeepAlive(context) == REDIS_OK else { return .failure(lastFailure()) }
        return .success(())
    }

    /// Sends one command and reads its reply. An error reply is a success here (`.error`).
    func command(_ arguments: [[UInt8]]) -> Result<RedisReply, HiredisFailure> {
        let raw = Self.withArgv(arguments) { argc, argv, argvlen in redisCommandArgv(context, argc, argv, argvlen) }
        let savedErrno = errno
        guard let raw else { return .failure(failure(errnoAfterCall: savedErrno)) }
        defer { freeReplyObject(raw) }
        return .success(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
    }

    /// Buffers a command; nothing is written until `nextReply()`.
    func append(_ arguments: [[UInt8]]) -> Result<Void, HiredisFailure> {
        let status = Self.withArgv(arguments) { argc, argv, argvlen in
            redisAppendCommandArgv(context, argc, argv, argvlen)
        }
        guard status == REDIS_OK else { return .failure(lastFailure()) }
        return .success(())
    }

    /// Buffers a command already in the wire format (`RedisArguments`); hiredis copies each part to its output
    /// buffer as it is, so a command may be handed over in several parts.
    func appendEncoded(header: [UInt8], bodies: [RedisArguments]) -> Result<Void, HiredisFailure> {
        func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
            bytes.isEmpty || redisAppendFormattedCommand(
                context, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count) == REDIS_OK
        }
        guard header.withUnsafeBytes(append), bodies.allSatisfy({ $0.withEncoded(append) }) else {
            return .failure(lastFailure())
        }
        return .success(())
    }

    /// Flushes buffered commands (first call) and reads the next reply.
    func nextReply() -> Result<RedisReply, HiredisFailure> {
        var raw: UnsafeMutableRawPointer?
        let status = redisGetReply(context, &raw)
        let savedErrno = errno
        guard status == REDIS_OK, let raw else { return .failure(failure(errnoAfterCall: savedErrno)) }
        defer { freeReplyObject(raw) }
        return .success(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
    }

    /// True when the idle socket is readable or hung up. In this request/reply use nothing should arrive between
    /// commands, so readability means the server closed the connection (restart, `timeout`, CLIENT KILL) or sent
    /// something unexpected. Checking before sending lets the caller reconnect *before* a command could be lost.
    func hasInputWhileIdle() -> Bool {
        var descriptor = pollfd(fd: context.pointee.fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, 0)
        if ready < 0 { return errno != EINTR }
        return ready > 0 && descriptor.revents != 0
    }

    private func lastFailure() -> HiredisFailure { Self.failure(of: context, errnoAfterCall: errno) }

    private func failure(errnoAfterCall: Int32) -> HiredisFailure {
        Self.failure(of: context, errnoAfterCall: errnoAfterCall)
    }

    private static func failure(of context: UnsafeMutablePointer<redisContext>, errnoAfterCall: Int32) -> HiredisFailure {
        let code = context.pointee.err
        let message = withUnsafeBytes(of: context.pointee.errstr) { buffer in
            String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        }
        // hiredis 0.14 formats errno into errstr for I/O errors; errno itself may already be overwritten, so
        // recognise the timeout by either.
        let eagainText = String(cString: strerror(EAGAIN))
        let timedOut = code == REDIS_ERR_IO
            && (errnoAfterCall == EAGAIN || errnoAfterCall == EWOULDBLOCK || message == eagainText)
        return HiredisFailure(
            code: code == 0 ? REDIS_ERR_OTHER : code,
            message: message.isEmpty ? "unknown hiredis error \(code)" : message,
            timedOut: timedOut)
    }

    /// Lays all arguments out in one buffer and hands hiredis pointers and explicit lengths, so payloads may
    /// contain NUL bytes.
    private static func withArgv<Result>(
        _ arguments: [[UInt8]],
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> Result
    ) -> Result {
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        var offsets: [Int] = []
        var lengths: [Int] = []
        offsets.reserveCapacity(arguments.count)
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            offsets.append(flat.count)
            lengths.append(argument.count)
            flat.append(contentsOf: argument)
        }
        flat.append(0)  // never an empty buffer, so every pointer (even for "") is valid
        return flat.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                let base = chars.baseAddress!
                var pointers: [UnsafePointer<CChar>?] = offsets.map { base + $0 }
                return pointers.withUnsafeMutableBufferPointer { argv in
                    lengths.withUnsafeBufferPointer { argvlen in
                        body(Int32(arguments.count), argv.baseAddress!, argvlen.baseAddress!)
                    }
                }
            }
        }
    }

    private static func convert(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            return .bulk(bytes(value.str, value.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            guard let elements = value.element else { return .array([]) }
            return .array((0..<value.elements).map { index in
                elements[index].map { convert($0) } ?? .null
            })
        default:  // REDIS_REPLY_NIL; hiredis 0.14 has no other types
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}

extension timeval {
    /// Rounds tiny positive values up to 1 ms: a zero timeval would mean "no timeout" to the kernel.
    init(seconds: Double) {
        let clamped = max(0.001, seconds)
        let microseconds = Int((clamped * 1_000_000).rounded())
        self.init(tv_sec: microseconds / 1_000_000, tv_usec: microseconds % 1_000_000)
    }
}
