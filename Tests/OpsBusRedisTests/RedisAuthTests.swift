import Testing
import OpsBusLocalServers
@testable import OpsBusRedis

@Suite struct RedisAuthTests {
    static let config = ["requirepass s3cret", "user app on >pw-of-app ~* +@all"]

    @Test func authenticatesWithThePasswordAndWithAnACLUser() throws {
        let server = try startRedis(Self.config)
        defer { server.stop() }
        let port = server.port
        let asDefault = try RedisConnection(url: "redis://:s3cret@127.0.0.1:\(port)/2")
        #expect(try asDefault.command(["ACL", "WHOAMI"]) == .bulk(bytes("default")))
        try asDefault.command(["SET", "k", "db2"])
        let asApp = try RedisConnection(url: "redis://app:pw-of-app@127.0.0.1:\(port)/2")
        #expect(try asApp.command(["ACL", "WHOAMI"]) == .bulk(bytes("app")))
        #expect(try asApp.command(["GET", "k"]) == .bulk(bytes("db2")))
        // AUTH and SELECT are re-sent on reconnect.
        try asApp.reconnect()
        #expect(try asApp.command(["ACL", "WHOAMI"]) == .bulk(bytes("app")))
        #expect(try asApp.command(["GET", "k"]) == .bulk(bytes("db2")))
        #expect(!asApp.endpoint.description.contains("pw-of-app"))
    }

    @Test func wrongPasswordFailsWithoutRevealingIt() throws {
        let server = try startRedis(Self.config)
        defer { server.stop() }
        let port = server.port
        for url in ["redis://:Wr0ngGuess@127.0.0.1:\(port)", "redis://app:Wr0ngGuess@127.0.0.1:\(port)/1",
                    "redis://nobody:Wr0ngGuess@127.0.0.1:\(port)"] {
            let error = expectRedisError { try RedisConnection(url: url) }
            guard case let .authenticationFailed(endpoint, reason) = error else {
                Issue.record("expected .authenticationFailed for \(url), got \(String(describing: error))")
                continue
            }
            #expect(reason.contains("WRONGPASS"), "\(reason)")
            #expect(endpoint.contains("127.0.0.1:\(port)"))
            #expect(!error!.description.contains("Wr0ngGuess"), "\(error!)")
            #expect(!String(reflecting: error!).contains("Wr0ngGuess"))
        }
    }

    @Test func missingPasswordIsAnAuthenticationFailureAtConnectTime() throws {
        let server = try startRedis(Self.config)
        defer { server.stop() }
        for url in [server.url, server.url + "/3"] {
            let error = expectRedisError { try RedisConnection(url: url) }
            guard case let .authenticationFailed(_, reason) = error else {
                Issue.record("expected .authenticationFailed for \(url), got \(String(describing: error))")
                continue
            }
            #expect(reason.contains("NOAUTH"), "\(reason)")
        }
    }

    @Test func authenticationFailuresAreNotRetried() throws {
        let server = try startRedis(Self.config)
        defer { server.stop() }
        let endpoint = RedisEndpoint(port: Int(server.port), password: "Wr0ngGuess")
        // If this were retried it would keep failing for the whole minute.
        let error = expectRedisError { try RedisConnection.connect(endpoint: endpoint, retryingFor: 60) }
        guard case .authenticationFailed = error else {
            Issue.record("expected .authenticationFailed, got \(String(describing: error))")
            return
        }
    }
}
