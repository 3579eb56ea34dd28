import Testing
import OpsBusLocalServers
@testable import OpsBusRedis

@Suite struct RedisScriptTests {
    static let incrementBy = RedisScript(
        name: "increment_by", source: "return redis.call('INCRBY', KEYS[1], ARGV[1])")

    @Test func shaMatchesWhatScriptLoadReturnsAcrossBlockBoundaries() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        // Lengths 2...161 cross the 55/56/64-byte padding edges of SHA-1 twice; comments are valid Lua.
        var scripts = (0..<160).map { RedisScript(name: "len\($0)", source: "--" + String(repeating: "x", count: $0)) }
        scripts.append(RedisScript(name: "unicode", source: "return 'héllo ✓ 🚀'"))
        scripts.append(RedisScript(name: "empty", source: ""))
        let replies = try redis.pipeline(scripts.map { ["SCRIPT", "LOAD", $0.source] })
        for (script, reply) in zip(scripts, replies) {
            #expect(reply.string == script.sha, "\(script.name)")
        }
    }

    @Test func evaluateLoadsOnNoscriptAndAfterScriptFlush() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let script = Self.incrementBy
        #expect(try redis.command(["SCRIPT", "EXISTS", script.sha]) == .array([.integer(0)]))
        #expect(try redis.evaluate(script, keys: ["n"], arguments: ["5"]) == .integer(5))
        #expect(try redis.command(["SCRIPT", "EXISTS", script.sha]) == .array([.integer(1)]))
        #expect(try redis.evaluate(script, keys: ["n"], arguments: ["1"]) == .integer(6))
        try redis.command(["SCRIPT", "FLUSH"])
        #expect(try redis.evaluate(script, keys: ["n"], arguments: ["1"]) == .integer(7), "NOSCRIPT reloads, runs once")
        #expect(try redis.command(["GET", "n"]) == .bulk(bytes("7")))

        // Binary keys and arguments go through the byte overload.
        let echo = RedisScript(name: "echo", source: "return {KEYS[1], ARGV[1]}")
        let reply = try redis.evaluate(echo, keys: [[0x00, 0x6B]], arguments: [[0xFF, 0x00]])
        #expect(reply == .array([.bulk([0x00, 0x6B]), .bulk([0xFF, 0x00])]))
    }

    @Test func scriptErrorsThrowWithTheScriptName() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let failing = RedisScript(name: "always_fails", source: "return redis.error_reply('BUSINESS rule broken')")
        let runtime = expectRedisError { try redis.evaluate(failing, keys: [String](), arguments: ["secret"]) }
        #expect(runtime == .server(message: "BUSINESS rule broken", command: "EVALSHA always_fails"))
        let broken = RedisScript(name: "does_not_compile", source: "return ((")
        let compile = expectRedisError { try redis.evaluate(broken, keys: [String](), arguments: []) }
        guard case let .server(message, command) = compile else {
            Issue.record("expected .server, got \(String(describing: compile))")
            return
        }
        #expect(command == "SCRIPT LOAD does_not_compile")
        #expect(message.contains("Error compiling script"))
        #expect(!redis.isBroken)
    }

    @Test func pipelineBuilderPreloadsScriptsAndRetriesNoscriptSlotsOnly() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let script = Self.incrementBy

        var pipeline = redis.makePipeline()
        pipeline.append(["SET", "a", "10"])
        pipeline.appendEvaluate(script, keys: ["a"], arguments: ["1"])  // runs after SET thanks to the preload
        pipeline.append(["LPUSH", "a", "x"])
        pipeline.appendEvaluate(script, keys: ["b"], arguments: ["2"])
        #expect(try pipeline.execute() == [.status("OK"), .integer(11), .error("WRONGTYPE Operation against a key holding the wrong kind of value"), .integer(2)])

        // The connection believes the script is loaded; a flush makes the EVALSHA slots fail with NOSCRIPT,
        // and only those are re-run (each exactly once).
        try redis.command(["SCRIPT", "FLUSH"])
        var again = redis.makePipeline()
        again.appendEvaluate(script, keys: ["a"], arguments: ["1"])
        again.append(["INCR", "c"])
        again.appendEvaluate(script, keys: ["b"], arguments: ["2"])
        #expect(try again.execute() == [.integer(12), .integer(1), .integer(4)])
        #expect(try redis.command(["MGET", "a", "b", "c"]) == .array([.bulk(bytes("12")), .bulk(bytes("4")), .bulk(bytes("1"))]))

        var withBrokenScript = redis.makePipeline()
        withBrokenScript.appendEvaluate(RedisScript(name: "bad", source: "return (("), keys: [String](), arguments: [])
        withBrokenScript.append(["PING"])
        let replies = try withBrokenScript.execute()
        #expect(replies.count == 2)
        #expect(replies[0].errorMessage?.contains("could not load bad") == true, "\(replies[0])")
        #expect(replies[1] == .status("PONG"))
        #expect(try redis.makePipeline().execute().isEmpty)
    }

    @Test func encodedArgumentsAreRESPBulkStrings() {
        var arguments = RedisArguments()
        arguments.append("SET")
        arguments.append("")
        arguments.append([0x00, 0xFF] as [UInt8])
        arguments.append(0)
        arguments.append(-42)
        arguments.append(Int.min)
        arguments.append("héllo")
        let expected = Array("$3\r\nSET\r\n$0\r\n\r\n$2\r\n".utf8) + [0x00, 0xFF]
            + Array("\r\n$1\r\n0\r\n$3\r\n-42\r\n$20\r\n-9223372036854775808\r\n$6\r\nhéllo\r\n".utf8)
        #expect(arguments.count == 7)
        #expect(arguments.encoded == expected)
        #expect(RedisArguments.arrayHeader(12) == Array("*12\r\n".utf8))
        var joined = RedisArguments(["a"])
        joined.append(contentsOf: RedisArguments(["bc", "1234567890"]))
        #expect(joined.count == 3)
        #expect(joined.encoded == Array("$1\r\na\r\n$2\r\nbc\r\n$10\r\n1234567890\r\n".utf8))

        // A value: a copy keeps what it had when the original grows (past its first buffer, too).
        let snapshot = joined
        for n in 0..<1_000 { joined.append(n) }
        #expect(snapshot.count == 3)
        #expect(snapshot.encoded == Array("$1\r\na\r\n$2\r\nbc\r\n$10\r\n1234567890\r\n".utf8))
        #expect(joined.count == 1_003)
        #expect(joined.encoded.suffix(9) == Array("$3\r\n999\r\n".utf8))
        var copy = snapshot
        copy.append("z")
        #expect(snapshot.count == 3 && copy.count == 4)
    }

    @Test func encodedScriptCallsRunInOrderAndReloadOnNoscript() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let echo = RedisScript(name: "echo_all", source: "return {#KEYS, KEYS[1], ARGV[1], ARGV[2], ARGV[3], #ARGV}")
        var keys = RedisArguments()
        keys.append([0x00, 0x6B] as [UInt8])
        var arguments = RedisArguments()
        arguments.append("")
        arguments.append(String(repeating: "x", count: 70_000))
        arguments.append(-7)
        for n in 0..<2_000 { arguments.append(n) }
        var pipeline = redis.makePipeline()
        pipeline.append(["SET", "a", "10"])
        pipeline.appendEvaluate(Self.incrementBy, keys: RedisArguments(["a"]), arguments: RedisArguments(["5"]))
        pipeline.appendEvaluate(echo, keys: keys, arguments: arguments)
        let expected: RedisReply = .array([.integer(1), .bulk([0x00, 0x6B]), .bulk([]),
                                           .bulk(Array(String(repeating: "x", count: 70_000).utf8)),
                                           .bulk(bytes("-7")), .integer(2_003)])
        #expect(try pipeline.execute() == [.status("OK"), .integer(15), expected])

        // After a flush both encoded calls answer NOSCRIPT, are reloaded and run once more, each exactly once.
        try redis.command(["SCRIPT", "FLUSH"])
        var again = redis.makePipeline()
        again.appendEvaluate(Self.incrementBy, keys: RedisArguments(["a"]), arguments: RedisArguments(["1"]))
        again.append(["INCR", "c"])
        again.appendEvaluate(echo, keys: keys, arguments: arguments)
        #expect(try again.execute() == [.integer(16), .integer(1), expected])
        #expect(try redis.command(["GET", "a"]) == .bulk(bytes("16")))

        // One encoded call on its own: loaded when missing, and a script error thrown with the script's name.
        try redis.command(["SCRIPT", "FLUSH"])
        #expect(try redis.evaluate(Self.incrementBy, keys: RedisArguments(["a"]), arguments: RedisArguments(["2"])) == .integer(18))
        #expect(throws: RedisError.self) {
            try redis.evaluate(Self.incrementBy, keys: RedisArguments(["a"]), arguments: RedisArguments(["x"]))
        }
        do {
            try redis.evaluate(Self.incrementBy, keys: RedisArguments(["a"]), arguments: RedisArguments(["x"]))
        } catch {
            #expect("\(error)".contains("increment_by"), "\(error)")
        }
    }
}
