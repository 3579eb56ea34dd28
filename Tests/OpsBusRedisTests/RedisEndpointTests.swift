import Testing
@testable import OpsBusRedis

@Suite struct RedisEndpointTests {
    struct Case: Sendable, CustomStringConvertible {
        var url: String
        var expected: RedisEndpoint
        var description: String { url }
    }

    static let valid: [Case] = [
        Case(url: "redis://localhost", expected: RedisEndpoint(host: "localhost")),
        Case(url: "redis://127.0.0.1:6380", expected: RedisEndpoint(host: "127.0.0.1", port: 6380)),
        Case(url: "REDIS://example.com:1/15", expected: RedisEndpoint(host: "example.com", port: 1, database: 15)),
        Case(url: "redis://h/", expected: RedisEndpoint(host: "h")),
        Case(url: "redis://h?db=4", expected: RedisEndpoint(host: "h", database: 4)),
        Case(url: "redis://h/4?db=4", expected: RedisEndpoint(host: "h", database: 4)),
        Case(url: "redis://", expected: RedisEndpoint(host: "127.0.0.1")),
        Case(url: "redis://:s3cret@h:7000/2", expected: RedisEndpoint(host: "h", port: 7000, database: 2, password: "s3cret")),
        Case(url: "redis://app:pw@h", expected: RedisEndpoint(host: "h", username: "app", password: "pw")),
        Case(url: "redis://app:p%40ss%3Aw%2Frd@h", expected: RedisEndpoint(host: "h", username: "app", password: "p@ss:w/rd")),
        Case(url: "redis://app:p@ss@h", expected: RedisEndpoint(host: "h", username: "app", password: "p@ss")),
        Case(url: "redis://us%20er:%C3%A9@h", expected: RedisEndpoint(host: "h", username: "us er", password: "é")),
        Case(url: "redis://[::1]", expected: RedisEndpoint(host: "::1")),
        Case(url: "redis://[::1]:6390/1", expected: RedisEndpoint(host: "::1", port: 6390, database: 1)),
        Case(url: "redis://:pw@[fe80::1%25eth0]:1234", expected: RedisEndpoint(host: "fe80::1%eth0", port: 1234, password: "pw")),
        Case(url: "unix:///run/redis/redis.sock", expected: RedisEndpoint(unixSocketPath: "/run/redis/redis.sock")),
        Case(url: "unix:///tmp/r.sock?db=3", expected: RedisEndpoint(unixSocketPath: "/tmp/r.sock", database: 3)),
        Case(url: "unix://:pw@/tmp/r%20s.sock", expected: RedisEndpoint(unixSocketPath: "/tmp/r s.sock", password: "pw")),
    ]

    @Test(arguments: valid)
    func parsesValidURL(_ testCase: Case) throws {
        #expect(try RedisEndpoint(url: testCase.url) == testCase.expected)
    }

    static let invalid: [(url: String, reasonFragment: String)] = [
        ("localhost:6379", "expected redis://"),
        ("http://h", "unknown scheme"),
        ("redis://h:0", "port"),
        ("redis://h:65536", "port"),
        ("redis://h:", "port"),
        ("redis://h:12ab", "port"),
        ("redis://h/x", "database number"),
        ("redis://h/-1", "database number"),
        ("redis://h/1/2", "database number"),
        ("redis://h/1?db=2", "given twice"),
        ("redis://h?timeout=3", "unknown query parameter"),
        ("redis://h?db", "no value"),
        ("redis://h?db=1&db=1", "given twice"),
        ("redis://::1", "brackets"),
        ("redis://[::1", "unterminated"),
        ("redis://[::1]x", "after the IPv6"),
        ("redis://h#frag", "fragments"),
        ("redis://h /0", "whitespace"),
        ("redis://onlyuser@h", "need a ':'"),
        ("redis://user:@h", "password is empty"),
        ("redis://:pw%zz@h", "percent-escape"),
        ("redis://:pw%C3@h", "UTF-8"),
        ("unix://host/tmp/r.sock", "no host"),
        ("unix://", "unix:///absolute"),
        ("unix:///tmp/r.sock?db=x", "non-negative integer"),
    ]

    @Test(arguments: zip(invalid.map(\.url), invalid.map(\.reasonFragment)))
    func rejectsInvalidURL(_ url: String, _ reasonFragment: String) {
        do {
            let endpoint = try RedisEndpoint(url: url)
            Issue.record("parsed \(url) as \(endpoint)")
        } catch {
            guard case let .invalidURL(_, reason) = error else {
                Issue.record("expected .invalidURL, got \(error)")
                return
            }
            #expect(reason.contains(reasonFragment), "\(url): \(reason)")
        }
    }

    @Test func rejectsTLSAsUnsupportedNamingTheHiredisVersion() {
        do {
            _ = try RedisEndpoint(url: "rediss://:pw@h:6380")
            Issue.record("rediss:// must be refused")
        } catch {
            guard case let .unsupported(reason) = error else {
                Issue.record("expected .unsupported, got \(error)")
                return
            }
            #expect(reason.contains("hiredis ≥ 1.0") && reason.contains("0.14.1"))
        }
    }

    @Test func masksThePasswordInDescriptions() throws {
        let endpoint = try RedisEndpoint(url: "redis://app:Sup3rSecret@db.internal:6380/2")
        #expect(endpoint.description == "redis://app:***@db.internal:6380/2")
        #expect(!String(reflecting: endpoint).contains("Sup3rSecret"))
        var dumped = ""
        dump(endpoint, to: &dumped)
        #expect(!dumped.contains("Sup3rSecret"))
        #expect(endpoint.addressDescription == "db.internal:6380")
        #expect(RedisEndpoint(host: "::1", port: 7).addressDescription == "[::1]:7")
        #expect(RedisEndpoint(host: "::1", port: 7, password: "x").description == "redis://:***@[::1]:7/0")
        #expect(RedisEndpoint(unixSocketPath: "/s.sock", database: 2).description == "unix:///s.sock?db=2")
    }

    @Test func masksThePasswordInInvalidURLErrors() {
        let urls = ["redis://app:Sup3rSecret@h:99999", "redis://:Sup3rSecret@h/x", "redis://Sup3rSecret@h"]
        for url in urls {
            do {
                _ = try RedisEndpoint(url: url)
                Issue.record("\(url) should not parse")
            } catch {
                #expect(!error.description.contains("Sup3rSecret"), "\(error)")
                #expect(error.description.contains("***"), "\(error)")
            }
        }
    }

    @Test func descriptionRoundTripsThroughTheParser() throws {
        let endpoints = [
            RedisEndpoint(host: "10.0.0.5", port: 6390, database: 7),
            RedisEndpoint(host: "::1", port: 6379, database: 1),
            RedisEndpoint(host: "h", username: "a b", password: nil),
            RedisEndpoint(unixSocketPath: "/tmp/x.sock", database: 3),
        ]
        for endpoint in endpoints where endpoint.password == nil && endpoint.username == nil {
            #expect(try RedisEndpoint(url: endpoint.description) == endpoint)
        }
    }
}
