import Logging
import OpsBusCore
import OpsBusHTTP
import OpsBusRedis
import Synchronization

/// The bridge's HTTP endpoints: `/metrics`, `/health/live`, `/health/ready` and `/health` (its statistics as JSON).
public final class BridgeObservability: Sendable {
    private let bridge: Bridge
    private let logger: Logger
    private let server: HTTPServer
    private let redis = BridgeRedisProbe()

    public init(bridge: Bridge, host: String, port: Int, logger: Logger) {
        self.bridge = bridge
        self.logger = logger
        let target = Mutex<BridgeObservabilityTarget?>(nil)
        server = HTTPServer(host: host, port: port, logger: logger) { request in
            guard let route = target.withLock({ $0 })?.route else { return .text("starting\n", status: 503) }
            return route(request)
        }
        target.withLock { $0 = BridgeObservabilityTarget(route: { [weak self] request in
            self?.route(request) ?? .text("stopping\n", status: 503)
        }) }
    }

    public var port: Int { server.port }
    public func start() throws(HTTPServerError) { try server.start() }
    public func stop() { server.stop() }

    func route(_ request: HTTPRequest) -> HTTPResponse {
        switch request.path {
        case "/metrics":
            let reachable = (try? redis.check(bridge.configuration.redis, scripts: [], logger: logger)) != nil
            let text = bridge.metrics.render(
                bridge.statistics, journal: bridge.journalBytes, oldestPendingAge: bridge.oldestPendingAgeSeconds,
                brokerConnected: bridge.isBrokerConnected, redisReachable: reachable)
            return .text(text, contentType: "text/plain; version=0.0.4; charset=utf-8")
        case "/health/live": return .json(#"{"status":"live"}"#)
        case "/health/ready": return readiness()
        case "/health": return health()
        default: return .notFound
        }
    }

    /// 200 only when subscribed and connected to the broker, Redis answers and the bridge's scripts are loaded.
    private func readiness() -> HTTPResponse {
        var reasons: [String] = []
        if !bridge.isSubscribed { reasons.append("not subscribed to the broker yet") }
        if !bridge.isBrokerConnected { reasons.append("not connected to the broker at \(bridge.configuration.mqtt)") }
        do {
            try redis.check(bridge.configuration.redis,
                            scripts: [BridgeScripts.append, BridgeScripts.appendInSession, BridgeScripts.trim],
                            logger: logger)
        } catch {
            reasons.append("Redis: \(error)")
        }
        let object: JSONValue = .object([
            "status": .string(reasons.isEmpty ? "ready" : "not_ready"), "reasons": .array(reasons.map(JSONValue.string)),
        ])
        return .json(object.serialized(), status: reasons.isEmpty ? 200 : 503)
    }

    private func health() -> HTTPResponse {
        let stats = bridge.statistics
        let journal = bridge.journalState
        let object: JSONValue = .object([
            "client_id": .string(bridge.configuration.clientID),
            "broker_connected": .bool(bridge.isBrokerConnected), "subscribed": .bool(bridge.isSubscribed),
            "journaled": .int(Int64(stats.journaled)), "rejected": .int(Int64(stats.rejected)),
            "entries": .int(Int64(stats.entries)), "duplicates": .int(Int64(stats.duplicates)),
            "dead_lettered": .int(Int64(stats.deadLettered)), "out_of_order": .int(Int64(stats.outOfOrder)),
            "acks_published": .int(Int64(stats.acksPublished)), "redis_failures": .int(Int64(stats.redisFailures)),
            "last_redis_error": stats.lastRedisError.map(JSONValue.string) ?? .null,
            "journal": .object([
                "committed": .string("\(journal.committed)"), "appended": .string("\(journal.appended)"),
                "used_bytes": .int(journal.usedBytes),
                "oldest_pending_age_seconds": bridge.oldestPendingAgeSeconds.map(JSONValue.double) ?? .null,
            ]),
            "generated_at": .string(EventTimestamp.now().iso8601),
        ])
        return .json(object.serialized())
    }
}

private struct BridgeObservabilityTarget: Sendable {
    let route: @Sendable (HTTPRequest) -> HTTPResponse
}

/// A Redis connection for probes only (short timeouts, reconnected after any failure).
final class BridgeRedisProbe: @unchecked Sendable {
    // @unchecked: `connection` is only touched while `lock` is held.
    private let lock = Mutex(())
    private var connection: RedisConnection?

    /// PING, then SCRIPT EXISTS for `scripts`, loading the missing ones.
    func check(_ endpoint: RedisEndpoint, scripts: [RedisScript], logger: Logger) throws(RedisError) {
        try lock.withLock { _ throws(RedisError) in
            do throws(RedisError) {
                if connection == nil || connection!.isBroken || connection!.isClosed {
                    connection?.close()
                    connection = try RedisConnection(endpoint: endpoint, connectTimeout: 2, commandTimeout: 2,
                                                     reconnectsAutomatically: false, logger: logger)
                }
                _ = try connection!.command(["PING"])
                guard !scripts.isEmpty else { return }
                let exists = try connection!.command(["SCRIPT", "EXISTS"] + scripts.map(\.sha)).array ?? []
                for (script, reply) in zip(scripts, exists) where reply.int != 1 { try connection!.load(script) }
            } catch {
                connection?.close()
                connection = nil
                throw error
            }
        }
    }
}
