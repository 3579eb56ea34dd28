import Foundation
import Logging
import OpsBusCore
import OpsBusHTTP
import OpsBusRedis
import Synchronization

/// The processor's HTTP endpoints: `/metrics`, `/health/live`, `/health/ready`, `/health`, and the live dashboard
/// (`/`, `/api/summary`, `/events/stream`).
///
/// Everything read from Redis goes through one connection of its own (never the event path's), guarded by a mutex,
/// with short timeouts so a dead Redis makes probes answer 503 quickly instead of hanging. The dashboard summary is
/// read at most once a second however many browsers watch.
public final class ProcessorObservability: Sendable {
    private let processor: EventProcessor
    private let logger: Logger
    private let thresholds: HealthThresholds
    private let server: HTTPServer
    private let redis = RedisSlot()
    private let summaryCache = Mutex<(at: ContinuousClock.Instant, json: String)?>(nil)
    private let rates = Mutex(EventRates())
    /// Redis requests of one probe or scrape wait at most this long (seconds).
    static let redisTimeout = 2.0

    public init(processor: EventProcessor, host: String, port: Int, thresholds: HealthThresholds = HealthThresholds(),
                logger: Logger) {
        self.processor = processor
        self.logger = logger
        self.thresholds = thresholds
        let box = HandlerBox()
        server = HTTPServer(host: host, port: port, logger: logger) { request in box.handle(request) }
        box.set { [weak self] request in self?.route(request) ?? .text("stopping\n", status: 503) }
    }

    /// The port it listens on (useful with port 0).
    public var port: Int { server.port }

    public func start() throws(HTTPServerError) { try server.start() }

    public func stop() {
        server.stop()
        redis.close()
    }

    func route(_ request: HTTPRequest) -> HTTPResponse {
        switch request.path {
        case "/": return HTTPResponse.text(DashboardPage.html, contentType: "text/html; charset=utf-8")
        case "/metrics": return metrics()
        case "/health/live": return .json(#"{"status":"live"}"#)
        case "/health/ready": return readiness()
        case "/health": return health()
        case "/api/summary":
            do { return .json(try summary()) } catch { return .json(Self.errorJSON("\(error)"), status: 503) }
        case "/events/stream": return stream()
        default: return .notFound
        }
    }

    // MARK: Metrics and health

    private func metrics() -> HTTPResponse {
        var report: HealthReport?
        var depths: QueueDepths?
        do {
            report = try withRedis { redis throws in
                try ProcessorHealth.read(redis: redis, keys: processor.configuration.keys, thresholds: thresholds)
            }
            depths = try withRedis { redis throws in try Self.readDepths(redis, keys: processor.configuration.keys) }
        } catch {
            logger.debug("metrics: Redis not readable", metadata: ["error": "\(error)"])
        }
        let text = processor.metrics.render(
            report: report, depths: depths, brokerConnected: processor.isBrokerConnected, redisReachable: report != nil,
            journal: processor.journalBytes)
        return .text(text, contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    static func readDepths(_ redis: RedisConnection, keys: RedisKeys) throws(RedisError) -> QueueDepths {
        let replies = try redis.pipeline([
            ["ZCARD", keys.retries], ["ZRANGE", keys.retries, "0", "0", "WITHSCORES"], ["XLEN", keys.outbox],
            ["XLEN", keys.jobDeadLetters],
        ])
        var depths = QueueDepths()
        depths.retries = replies[0].int ?? 0
        if let due = replies[1].array?.dropFirst().first?.string.flatMap(Double.init) {
            let overdue = Double(EventTimestamp.now().millisecondsSinceEpoch) - due
            depths.oldestRetryOverdueSeconds = max(0, overdue / 1000)
        }
        depths.outbox = replies[2].int ?? 0
        depths.jobDeadLetters = replies[3].int ?? 0
        return depths
    }

    /// 200 only when connected to the broker and subscribed, Redis answers, and the event scripts are in Redis's
    /// script cache (loaded here when missing, as the processor would on its first event); else 503 with reasons.
    private func readiness() -> HTTPResponse {
        var reasons: [String] = []
        if !processor.isSubscribed { reasons.append("not subscribed to the broker yet") }
        if !processor.isBrokerConnected { reasons.append("not connected to the broker at \(processor.configuration.mqtt)") }
        var scripts = "unknown"
        do {
            scripts = try withRedis { redis throws in
                let needed = ProcessorObservability.eventScripts
                let exists = try redis.command(["SCRIPT", "EXISTS"] + needed.map(\.sha)).array ?? []
                let missing = zip(needed, exists).filter { $0.1.int != 1 }.map(\.0)
                for script in missing { try redis.load(script) }
                return missing.isEmpty ? "loaded" : "loaded now (\(missing.count) were missing)"
            }
        } catch {
            reasons.append("Redis: \(error)")
        }
        let object: JSONValue = .object([
            "status": .string(reasons.isEmpty ? "ready" : "not_ready"),
            "reasons": .array(reasons.map(JSONValue.string)),
            "broker_connected": .bool(processor.isBrokerConnected), "subscribed": .bool(processor.isSubscribed),
            "scripts": .string(scripts),
        ])
        return .json(object.serialized(), status: reasons.isEmpty ? 200 : 503)
    }

    static var eventScripts: [RedisScript] { [JobEventScript.script, EntityEventScript.script, SequenceScript.script] }

    /// The business health report (`opsbus health --json`): 200 with the verdict inside, 503 when Redis is unreadable.
    private func health() -> HTTPResponse {
        do {
            let report = try withRedis { redis throws in
                try ProcessorHealth.read(redis: redis, keys: processor.configuration.keys, thresholds: thresholds)
            }
            return .json(report.json().serialized())
        } catch {
            let reason = (error as? RedisError).map {
                ProcessorHealth.unreachableReason(endpoint: processor.configuration.redis, error: $0)
            } ?? "\(error)"
            return .json(JSONValue.object([
                "verdict": "unhealthy", "reasons": .array([.string(reason)]),
                "generated_at": .string(EventTimestamp.now().iso8601),
            ]).serialized(), status: 503)
        }
    }

    // MARK: Dashboard data

    /// The dashboard's JSON, cached for a second.
    func summary() throws -> String {
        if let cached = summaryCache.withLock({ $0 }), ContinuousClock.now - cached.at < .milliseconds(900) {
            return cached.json
        }
        let keys = processor.configuration.keys
        let data = try withRedis { redis throws in
            try DashboardSummary.read(redis: redis, keys: keys, thresholds: thresholds)
        }
        let perSecond = rates.withLock { $0.update(data.report.eventTypes) }
        let json = data.json(eventsPerSecond: perSecond, processor: processor).serialized()
        summaryCache.withLock { $0 = (.now, json) }
        return json
    }

    /// Server-sent events: a `summary` event with the JSON each second it changed (a comment every 15 s otherwise
    /// keeps proxies from closing the stream), until the browser goes away.
    private func stream() -> HTTPResponse {
        HTTPResponse(contentType: "text/event-stream", headers: [("X-Accel-Buffering", "no")]) { [weak self] writer in
            var last = ""
            var quiet = 0
            guard writer.write("retry: 2000\n\n") else { return }
            while let self, writer.isOpen {
                let json: String
                do { json = try self.summary() } catch { json = Self.errorJSON("\(error)") }
                if json != last {
                    guard writer.write("event: summary\ndata: \(json)\n\n") else { return }
                    last = json
                    quiet = 0
                } else {
                    quiet += 1
                    if quiet % 15 == 0, !writer.write(": keepalive\n\n") { return }
                }
                guard writer.pause(seconds: 1) else { return }
            }
        }
    }

    static func errorJSON(_ message: String) -> String {
        JSONValue.object(["error": .string(message), "generated_at": .string(EventTimestamp.now().iso8601)]).serialized()
    }

    // MARK: Redis

    private func withRedis<T>(_ body: (RedisConnection) throws -> T) throws -> T {
        try redis.with(endpoint: processor.configuration.redis, timeout: Self.redisTimeout, logger: logger, body)
    }
}

/// One Redis connection used by one caller at a time, reconnected after any failure.
final class RedisSlot: @unchecked Sendable {
    // @unchecked: `connection` is only touched while `lock` is held.
    private let lock = Mutex(())
    private var connection: RedisConnection?

    func with<T>(endpoint: RedisEndpoint, timeout: Double, logger: Logger, _ body: (RedisConnection) throws -> T)
        throws -> T
    {
        try lock.withLock { _ throws -> T in
            if connection == nil || connection!.isBroken || connection!.isClosed {
                connection?.close()
                connection = try RedisConnection(
                    endpoint: endpoint, connectTimeout: timeout, commandTimeout: timeout,
                    reconnectsAutomatically: false, logger: logger)
            }
            do {
                return try body(connection!)
            } catch {
                connection?.close()
                connection = nil
                throw error
            }
        }
    }

    func close() {
        lock.withLock { _ in
            connection?.close()
            connection = nil
        }
    }
}

/// Lets the server's handler reach the observability object created after it (no retain cycle).
private final class HandlerBox: Sendable {
    private let handler = Mutex<(@Sendable (HTTPRequest) -> HTTPResponse)?>(nil)
    func set(_ body: @escaping @Sendable (HTTPRequest) -> HTTPResponse) { handler.withLock { $0 = body } }
    func handle(_ request: HTTPRequest) -> HTTPResponse {
        guard let body = handler.withLock({ $0 }) else { return .text("starting\n", status: 503) }
        return body(request)
    }
}

/// Events per second by type, from the all-time counters sampled over the last 10 s.
struct EventRates: Sendable {
    private var samples: [(at: ContinuousClock.Instant, counts: [String: Int64])] = []

    mutating func update(_ counts: [String: Int64]) -> [String: Double] {
        let now = ContinuousClock.now
        samples.append((now, counts))
        samples.removeAll { now - $0.at > .seconds(10) }
        guard let oldest = samples.first, now - oldest.at >= .milliseconds(500) else { return [:] }
        let seconds = Double((now - oldest.at).components.seconds)
            + Double((now - oldest.at).components.attoseconds) / 1e18
        var rates: [String: Double] = [:]
        for (type, count) in counts {
            let delta = count - (oldest.counts[type] ?? 0)
            if delta > 0 { rates[type] = (Double(delta) / seconds * 100).rounded() / 100 }
        }
        return rates
    }
}
