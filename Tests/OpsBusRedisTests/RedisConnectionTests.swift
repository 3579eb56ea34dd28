import Synchronization
import Testing
import OpsBusLocalServers
#if canImport(Glibc)
import Glibc
#endif
@testable import OpsBusRedis

@Suite struct RedisConnectionTests {
    /// Payload with NUL bytes, CR LF and invalid UTF-8: hiredis must get explicit lengths, never strlen.
    static let binaryPayload: [UInt8] = [0x00, 0x01, 0x00, 0xFF, 0x0D, 0x0A, 0x24, 0x2A, 0x00, 0xC3, 0x28, 0x00]

    @Test func binaryPayloadRoundTripsThroughSetGetAndStreams() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let key: [UInt8] = [0x6B, 0x00, 0x79]  // "k\0y"
        #expect(try redis.command([bytes("SET"), key, Self.binaryPayload]) == .status("OK"))
        #expect(try redis.command([bytes("GET"), key]) == .bulk(Self.binaryPayload))
        #expect(try redis.command([bytes("STRLEN"), key]) == .integer(Int64(Self.binaryPayload.count)))
        #expect(try redis.command([bytes("GET"), bytes("k")]) == .null, "the key must not be cut at its NUL byte")
        #expect(try redis.command([bytes("SET"), bytes("empty"), []]) == .status("OK"))
        #expect(try redis.command([bytes("GET"), bytes("empty")]) == .bulk([]))

        let id = try #require(try redis.command([bytes("XADD"), bytes("stream"), bytes("*"), bytes("payload"), Self.binaryPayload]).string)
        let range = try redis.command(["XRANGE", "stream", "-", "+"])
        #expect(range == .array([.array([.bulk(bytes(id)), .array([.bulk(bytes("payload")), .bulk(Self.binaryPayload)])])]))
    }

    @Test func pipelineReturnsErrorRepliesInTheirSlotsAndStaysUsable() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let replies = try redis.pipeline([
            ["SET", "counter", "1"],
            ["INCR", "counter"],
            ["LPUSH", "counter", "x"],
            ["NOSUCHCOMMAND", "secret-argument"],
            ["GET", "counter"],
            ["XADD", "s", "NOMKSTREAM", "*", "f", "v"],
        ])
        #expect(replies.count == 6)
        #expect(replies[0] == .status("OK"))
        #expect(replies[1] == .integer(2))
        #expect(replies[2].errorCode == "WRONGTYPE")
        #expect(replies[3].errorCode == "ERR")
        #expect(replies[4] == .bulk(bytes("2")))
        #expect(replies[5] == .null)
        #expect(!redis.isBroken)
        #expect(try redis.command(["PING"]) == .status("PONG"))
        #expect(try redis.pipeline([] as [[String]]).isEmpty)
    }

    @Test func commandThrowsErrorRepliesWithoutArguments() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        try redis.command(["SET", "k", "v"])
        let wrongType = expectRedisError { try redis.command(["LPUSH", "k", "x"]) }
        #expect(wrongType == .server(message: "WRONGTYPE Operation against a key holding the wrong kind of value", command: "LPUSH"))
        #expect(wrongType?.serverErrorCode == "WRONGTYPE")
        let unknown = expectRedisError { try redis.command(["AUHT", "hunter2"]) }
        #expect(unknown?.serverErrorCode == "ERR")
        #expect(unknown.map { !$0.description.contains("hunter2") } == true, "\(String(describing: unknown))")
        // send() returns the same thing as a value.
        #expect(try redis.send(["LPUSH", "k", "x"]).errorCode == "WRONGTYPE")
        #expect(!redis.isBroken)
    }

    @Test func refusesCommandsThatWouldDesynchroniseTheConnection() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        for arguments in [["HELLO", "3"], ["SUBSCRIBE", "c"], ["MONITOR"], ["WATCH", "k"], ["MULTI"]] {
            guard case .unsupported = expectRedisError({ try redis.command(arguments) }) else {
                Issue.record("\(arguments) must be refused as unsupported")
                continue
            }
        }
        guard case .unsupported = expectRedisError({ try redis.pipeline([["MULTI"], ["SET", "a", "1"]]) }) else {
            Issue.record("MULTI without EXEC in a pipeline must be refused")
            return
        }
        guard case .invalidArgument = expectRedisError({ try redis.command([String]()) }) else {
            Issue.record("an empty command must be refused")
            return
        }
        #expect(try redis.command(["PING"]) == .status("PONG"), "refusals send nothing, the connection is intact")
        let transaction = try redis.pipeline([["MULTI"], ["SET", "a", "1"], ["INCR", "a"], ["EXEC"]])
        #expect(transaction == [.status("OK"), .status("QUEUED"), .status("QUEUED"), .array([.status("OK"), .integer(2)])])
        let hello = try redis.command(["HELLO", "2"]).hashDictionary()
        #expect(hello["proto"] == "2" && hello["server"] == "redis")
    }

    /// Pins the hiredis 0.14.1 fact behind the HELLO 3 refusal: the RESP3 reply kills the context.
    @Test func hiredisCannotParseResp3() throws {
        let server = try startRedis()
        defer { server.stop() }
        let context = try HiredisContext.connect(to: .tcp(host: "127.0.0.1", port: Int(server.port)), timeout: 2).get()
        _ = context.setTimeout(2)
        guard case let .failure(failure) = context.command([bytes("HELLO"), bytes("3")]) else {
            Issue.record("hiredis 0.14 parsed a RESP3 reply; HELLO 3 could be allowed now")
            return
        }
        #expect(failure.code == 4)  // REDIS_ERR_PROTOCOL
        #expect(failure.message.contains("Protocol error"))
    }

    @Test func selectsTheDatabaseFromTheURLAndKeepsItAcrossReconnects() throws {
        let server = try startRedis()
        defer { server.stop() }
        let db3 = try RedisConnection(url: server.url + "/3")
        let db0 = try connect(server)
        try db3.command(["SET", "where", "three"])
        #expect(try db0.command(["GET", "where"]) == .null)
        #expect(try db3.command(["GET", "where"]) == .bulk(bytes("three")))
        try db3.reconnect()
        #expect(try db3.command(["GET", "where"]) == .bulk(bytes("three")))

        try db3.command(["SELECT", "5"])
        #expect(db3.database == 5)
        try db3.command(["SET", "where", "five"])
        try db3.reconnect()
        #expect(try db3.command(["GET", "where"]) == .bulk(bytes("five")), "a reconnect re-selects the last SELECTed db")

        let outOfRange = expectRedisError { try RedisConnection(url: server.url + "/99") }
        guard case let .connectFailed(_, reason) = outOfRange else {
            Issue.record("expected .connectFailed, got \(String(describing: outOfRange))")
            return
        }
        #expect(reason.contains("SELECT 99"))
    }

    @Test func connectingToAClosedPortNamesHostAndPort() throws {
        let port = try LoopbackPort.allocate()  // nothing listens on it
        let error = expectRedisError { try RedisConnection(url: "redis://127.0.0.1:\(port)", connectTimeout: 1) }
        guard case let .connectFailed(endpoint, reason) = error else {
            Issue.record("expected .connectFailed, got \(String(describing: error))")
            return
        }
        #expect(endpoint.contains("127.0.0.1:\(port)"))
        #expect(error!.description.contains("127.0.0.1:\(port)"))
        #expect(reason.contains("refused"), "\(reason)")
    }

    @Test func closedConnectionRefusesEverything() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        redis.close()
        #expect(redis.isClosed && !redis.isBroken)
        #expect(expectRedisError { try redis.command(["PING"]) } == .closed)
        #expect(expectRedisError { try redis.reconnect() } == .closed)
    }

    @Test func invalidSettingsAreRejectedBeforeConnecting() {
        let zero = expectRedisError { try RedisConnection(endpoint: RedisEndpoint(port: 1), connectTimeout: 0) }
        guard case .invalidArgument = zero else {
            Issue.record("connectTimeout 0 must be refused, got \(String(describing: zero))")
            return
        }
        let negative = expectRedisError { try RedisConnection(endpoint: RedisEndpoint(port: 1), commandTimeout: -1) }
        guard case .invalidArgument = negative else {
            Issue.record("a negative commandTimeout must be refused, got \(String(describing: negative))")
            return
        }
        let userOnly = expectRedisError { try RedisConnection(endpoint: RedisEndpoint(port: 1, username: "app")) }
        guard case .invalidArgument = userOnly else {
            Issue.record("a user name without a password must be refused, got \(String(describing: userOnly))")
            return
        }
    }
}

@Suite struct RedisTransportTests {
    @Test func connectsOverAUnixSocketWithTheDatabaseFromTheQuery() throws {
        let socketPath = "/tmp/opsbus-redis-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let server = try startRedis(["unixsocket \(socketPath)", "unixsocketperm 700"])
        defer { server.stop() }
        let overSocket = try RedisConnection(url: "unix://\(socketPath)?db=2")
        try overSocket.command(["SET", "via", "socket"])
        let overTCP = try RedisConnection(url: server.url + "/2")
        #expect(try overTCP.command(["GET", "via"]) == .bulk(bytes("socket")))
        try overSocket.reconnect()
        #expect(try overSocket.command(["GET", "via"]) == .bulk(bytes("socket")))
    }

    @Test func connectsToAnIPv6Literal() throws {
        let server = try startRedis(["bind 127.0.0.1 ::1"])
        defer { server.stop() }
        let redis = try RedisConnection(url: "redis://[::1]:\(server.port)/1")
        #expect(try redis.command(["PING"]) == .status("PONG"))
        let address = try redis.command(["CLIENT", "INFO"]).string ?? ""
        #expect(address.contains("addr=[::1]") || address.contains("addr=::1"), "\(address)")
    }

    @Test func largeBinaryValuesAndLongPipelinesCrossBufferBoundaries() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        // 3 MB of every byte value (a multiplicative hash of the index), far beyond hiredis' 16 KB read chunks.
        let big = (0..<(3 * 1024 * 1024 + 17)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        try redis.command([bytes("SET"), bytes("big"), big])
        #expect(try redis.command([bytes("GET"), bytes("big")]) == .bulk(big))

        let replies = try redis.pipeline(Array(repeating: ["INCR", "n"], count: 10_000))
        #expect(replies.count == 10_000)
        #expect(replies.first == .integer(1) && replies.last == .integer(10_000))
        #expect(replies.enumerated().allSatisfy { $0.element == .integer(Int64($0.offset + 1)) })
    }
}

@Suite struct RedisOwnershipTests {
    /// The pattern for callers on other threads (e.g. an MQTT callback): hand the connection to a Mutex, which is
    /// Sendable, and use it only inside `withLock`.
    @Test func aConnectionInAMutexCanBeUsedFromSeveralThreads() throws {
        let server = try startRedis()
        defer { server.stop() }
        let shared = Mutex(try connect(server))
        let workers = (0..<4).map { _ in
            BackgroundThread {
                for _ in 0..<250 {
                    try shared.withLock { redis throws(RedisError) in _ = try redis.command(["INCR", "n"]) }
                }
            }
        }
        #expect(workers.map { $0.join() } == [nil, nil, nil, nil])
        #expect(try shared.withLock { redis throws(RedisError) in try redis.command(["GET", "n"]) } == .bulk(bytes("1000")))
    }
}
