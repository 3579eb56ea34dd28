import Testing
@testable import OpsBusRedis

@Suite struct RedisReplyTests {
    @Test func accessorsReadTheMatchingCases() {
        #expect(RedisReply.status("OK").string == "OK")
        #expect(RedisReply.bulk(Array("héllo".utf8)).string == "héllo")
        #expect(RedisReply.bulk([0xFF, 0xFE]).string == nil)
        #expect(RedisReply.bulk([0xFF, 0x00]).bytes == [0xFF, 0x00])
        #expect(RedisReply.integer(42).string == nil)
        #expect(RedisReply.integer(-7).int == -7)
        #expect(RedisReply.bulk(Array("123".utf8)).int == 123)
        #expect(RedisReply.bulk(Array("12a".utf8)).int == nil)
        #expect(RedisReply.status("5").int == nil)
        #expect(RedisReply.null.isNull)
        #expect(!RedisReply.bulk([]).isNull)
        #expect(RedisReply.array([.integer(1)]).array == [.integer(1)])
        #expect(RedisReply.null.array == nil)
        #expect(RedisReply.error("NOSCRIPT No matching script").errorCode == "NOSCRIPT")
        #expect(RedisReply.status("OK").errorCode == nil)
    }

    @Test func hashDictionaryPairsFieldsAndValues() {
        let reply = RedisReply.array([
            .bulk(Array("state".utf8)), .bulk(Array("running".utf8)),
            .bulk(Array("attempt".utf8)), .integer(3),
            .bulk(Array("blob".utf8)), .bulk([0xFF]),
            .bulk(Array("dangling".utf8)),
        ])
        #expect(reply.hashDictionary() == ["state": "running", "attempt": "3"])
        #expect(RedisReply.null.hashDictionary() == [:])
        #expect(RedisReply.array([]).hashDictionary() == [:])
    }
}

@Suite struct RedisErrorTests {
    @Test func serverMessagesLoseEchoedArguments() {
        let message = "ERR unknown command 'AUHT', with args beginning with: 'hunter2' "
        let sanitized = RedisError.sanitizeServerMessage(message)
        #expect(!sanitized.contains("hunter2"))
        #expect(sanitized.hasPrefix("ERR unknown command 'AUHT'"))
        #expect(RedisError.sanitizeServerMessage("WRONGTYPE Operation") == "WRONGTYPE Operation")
    }

    @Test func classifiesErrors() {
        let timeout = RedisError.timeout(endpoint: "redis://h:1/0", seconds: 0.5)
        #expect(timeout.commandMayHaveRun && timeout.isConnectionFailure)
        #expect(timeout.description.contains("hiredis 0.14 cannot resume"))
        let refused = RedisError.connectFailed(endpoint: "redis://h:1/0", reason: "Connection refused")
        #expect(!refused.commandMayHaveRun && refused.isConnectionFailure)
        let server = RedisError.server(message: "WRONGTYPE Operation against a key", command: "LPUSH")
        #expect(server.serverErrorCode == "WRONGTYPE" && !server.isConnectionFailure)
        #expect(RedisError.io(endpoint: "e", reason: "r", commandMayHaveRun: false).description.contains("was not sent"))
    }
}

@Suite struct SHA1Tests {
    @Test(arguments: [
        ("", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
        (
            "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "a49b2446a02c645bf419f995b67091253a04a259"
        ),
        ("The quick brown fox jumps over the lazy dog", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"),
    ])
    func matchesFIPSVectors(_ message: String, _ expected: String) {
        #expect(SHA1.hexDigest(message.utf8) == expected)
        #expect(RedisScript(name: "vector", source: message).sha == expected)
    }

    @Test func hashesAMillionAs() {
        #expect(SHA1.hexDigest([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)) == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }
}

@Suite struct RedisReconnectPolicyTests {
    /// A deterministic generator so jitter bounds can be checked exactly.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func growsExponentiallyUpToTheCap() {
        let policy = RedisReconnectPolicy(initialDelay: 0.1, maximumDelay: 1, multiplier: 2, jitter: 0)
        #expect((0..<7).map { policy.delay(afterAttempt: $0) } == [0.1, 0.2, 0.4, 0.8, 1, 1, 1])
        #expect(policy.delay(afterAttempt: 10_000) == 1)
    }

    @Test func jitterStaysWithinItsBandAndTheCap() {
        let policy = RedisReconnectPolicy(initialDelay: 0.1, maximumDelay: 1, multiplier: 2, jitter: 0.5)
        var generator = SplitMix(state: 7)
        for attempt in 0..<200 {
            let base = min(1, 0.1 * Double(1 << min(attempt, 20)))
            let delay = policy.delay(afterAttempt: attempt, using: &generator)
            #expect(delay >= base * 0.5 && delay <= min(1, base * 1.5))
        }
        let firstDelays = Set((0..<50).map { _ in policy.delay(afterAttempt: 0, using: &generator) })
        #expect(firstDelays.count > 40, "jitter must actually vary the delay")
    }
}
