import Testing
import OpsBusLocalServers
@testable import OpsBusRedis

#if canImport(Glibc)
import Glibc
#endif

/// Timeouts, restarts and hang-ups against a real redis-server.
@Suite struct RedisFaultTests {
    @Test func timeoutBreaksTheConnectionAndReconnectReappliesIt() throws {
        let server = try startRedis()
        defer { server.stop() }
        // connectTimeout (used for the handshake) is longer than the BLPOP, so only the command timeout can fire.
        let redis = try RedisConnection(url: server.url, connectTimeout: 5, commandTimeout: 0.3)
        // BLPOP blocks 2 s on the server; the 0.3 s socket timeout must fire first.
        let first = expectRedisError { try redis.command(["BLPOP", "empty", "2"]) }
        #expect(first == .timeout(endpoint: redis.endpoint.description, seconds: 0.3))
        #expect(first?.commandMayHaveRun == true)
        #expect(redis.isBroken)

        #expect(try redis.command(["PING"]) == .status("PONG"), "the next command reconnects once")
        #expect(!redis.isBroken)
        // hiredis 0.14 drops SO_RCVTIMEO on reconnect; without the re-apply this BLPOP would return nil after 2 s.
        let second = expectRedisError { try redis.command(["BLPOP", "empty", "2"]) }
        #expect(second == .timeout(endpoint: redis.endpoint.description, seconds: 0.3))

        try redis.reconnect()
        let third = expectRedisError { try redis.command(["BLPOP", "empty", "2"]) }
        #expect(third == .timeout(endpoint: redis.endpoint.description, seconds: 0.3), "explicit reconnect too")
    }

    @Test func withoutAutomaticReconnectABrokenConnectionThrowsUntilReconnect() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server, commandTimeout: 0.3, reconnectsAutomatically: false)
        _ = expectRedisError { try redis.command(["BLPOP", "empty", "2"]) }
        let refused = expectRedisError { try redis.command(["PING"]) }
        guard case let .io(_, _, mayHaveRun) = refused else {
            Issue.record("expected .io, got \(String(describing: refused))")
            return
        }
        #expect(!mayHaveRun, "nothing was sent on the broken connection")
        #expect(redis.isBroken)
        try redis.reconnect()
        #expect(try redis.command(["PING"]) == .status("PONG"))
    }

    @Test func killAndStartOnTheSamePortKeepsDataAndReconnects() throws {
        // `always`: with everysec, Redis may postpone the AOF write while an fsync runs, and a SIGKILL then loses
        // acknowledged writes (seen on a loaded machine; README "Delivery guarantees").
        let server = try startRedis(["appendfsync always"])
        defer { server.stop() }
        let redis = try connect(server, reconnectsAutomatically: false)
        try redis.command(["SET", "durable", "yes"])
        try redis.command(["XADD", "events", "*", "n", "1"])
        server.kill()
        try withSignalsUnblocked { try server.start() }

        // The idle socket was hung up by the dead server: detected before sending, so nothing is lost.
        let stale = expectRedisError { try redis.command(["GET", "durable"]) }
        #expect(stale?.commandMayHaveRun == false, "\(String(describing: stale))")
        try redis.reconnect()
        #expect(try redis.command(["GET", "durable"]) == .bulk(bytes("yes")), "AOF kept the write across SIGKILL")
        #expect(try redis.command(["XLEN", "events"]) == .integer(1))
    }

    @Test func idleHangUpIsRepairedTransparentlyWhenAutomaticReconnectIsOn() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let admin = try connect(server)
        let id = try #require(try redis.command(["CLIENT", "ID"]).int)
        try admin.command(["CLIENT", "KILL", "ID", String(id)])
        usleep(50_000)  // let the FIN reach our socket; the point here is a hang-up that is already visible
        #expect(try redis.command(["SET", "after", "kill"]) == .status("OK"))
        #expect(try admin.command(["GET", "after"]) == .bulk(bytes("kill")))
        #expect(try redis.command(["CLIENT", "ID"]).int != id, "it is a new server-side client")
    }

    @Test func aConnectionDroppedMidCommandReportsThatTheCommandMayHaveRun() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server, commandTimeout: 10)
        let id = try #require(try redis.command(["CLIENT", "ID"]).int)
        let url = server.url
        let killer = BackgroundThread {
            let admin = try RedisConnection(url: url)
            // Wait until the BLPOP is really blocked on the server, then cut that client off.
            for _ in 0..<500 {
                let clients = try admin.command(["CLIENT", "LIST", "ID", String(id)]).string ?? ""
                if clients.contains("cmd=blpop") { break }
                usleep(10_000)
            }
            try admin.command(["CLIENT", "KILL", "ID", String(id)])
        }
        let error = expectRedisError { try redis.command(["BLPOP", "never", "8"]) }
        #expect(killer.join() == nil)
        guard case let .io(_, reason, mayHaveRun) = error else {
            Issue.record("expected .io, got \(String(describing: error))")
            return
        }
        #expect(mayHaveRun)
        #expect(reason.contains("closed"), "\(reason)")
        #expect(redis.isBroken)
        #expect(try redis.command(["PING"]) == .status("PONG"))
    }

    @Test func evaluateWorksAcrossARedisRestart() throws {
        let server = try startRedis()
        defer { server.stop() }
        let redis = try connect(server)
        let script = RedisScript(name: "append_and_count", source: "redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])")
        #expect(try redis.evaluate(script, keys: ["l"], arguments: ["a"]) == .integer(1))
        try withSignalsUnblocked { try server.restart() }  // SIGTERM: clean stop; the script cache is gone, the AOF data is not
        #expect(try redis.evaluate(script, keys: ["l"], arguments: ["b"]) == .integer(2))
        #expect(try redis.command(["LRANGE", "l", "0", "-1"]) == .array([.bulk(bytes("a")), .bulk(bytes("b"))]))
    }

    @Test func reconnectRetryingForWaitsForARestartingServer() throws {
        let server = try startRedis(["appendfsync always"])  // SIGKILL below: see the test above
        defer { server.stop() }
        let redis = try connect(server, reconnectsAutomatically: false)
        try redis.command(["SET", "k", "v"])
        server.kill()
        let restarter = BackgroundThread {
            usleep(400_000)
            try withSignalsUnblocked { try server.start() }
        }
        let policy = RedisReconnectPolicy(initialDelay: 0.02, maximumDelay: 0.2)
        try redis.reconnect(retryingFor: 20, policy: policy)
        #expect(restarter.join() == nil)
        #expect(try redis.command(["GET", "k"]) == .bulk(bytes("v")))

        server.kill()
        try withSignalsUnblocked { try server.start() }
        try redis.waitUntilAvailable(deadline: .now + .seconds(10), policy: policy)
        #expect(try redis.command(["GET", "k"]) == .bulk(bytes("v")))
    }

    @Test func connectRetryingForGivesUpWithTheLastConnectError() throws {
        let port = try LoopbackPort.allocate()
        let endpoint = RedisEndpoint(port: Int(port))
        let error = expectRedisError {
            try RedisConnection.connect(
                endpoint: endpoint, connectTimeout: 0.5, retryingFor: 0.3,
                policy: RedisReconnectPolicy(initialDelay: 0.05, maximumDelay: 0.1))
        }
        guard case let .connectFailed(name, _) = error else {
            Issue.record("expected .connectFailed, got \(String(describing: error))")
            return
        }
        #expect(name.contains("127.0.0.1:\(port)"))
    }
}
