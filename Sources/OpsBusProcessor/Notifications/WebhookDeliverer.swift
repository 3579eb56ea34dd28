import Dispatch
import Foundation
import Logging
import OpsBusCore
import OpsBusRedis
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Sends the notifications waiting in each endpoint's `WebhookOutbox` as HTTP POSTs, until cancelled.
///
/// **Delivery is at-least-once.** An entry is moved atomically from `queue` to `processing` before it is sent, and
/// removed only after a 2xx answer, so a crash at any point leaves it in Redis. The cost is that a notification can
/// arrive twice (the receiver answered 2xx but the deliverer died, or was cancelled, before recording it): receivers
/// deduplicate by the `X-Opsbus-Notification-Id` header.
///
/// **One sender per endpoint.** Each endpoint has a lease in Redis (`webhook:{<name>}:owner`, renewed on every
/// claim, `2 × timeout + 10` seconds): several processors may run a deliverer, but only the lease holder sends for
/// an endpoint; the others stand by and take over when it stops (at once, when it was cancelled and released the
/// lease; after the lease expires, when it crashed). Whoever takes the lease first returns the entries its
/// predecessor left in `processing` to the queue.
///
/// **Requests.** `POST` with the entry's body, `Content-Type: application/json`, `User-Agent: opsbus`,
/// `X-Opsbus-Notification-Id`, `X-Opsbus-Attempt` (1-based), and `X-Opsbus-Signature` when the endpoint has a
/// secret (see `WebhookSignature`). Redirects are not followed (a 3xx is a failed attempt). The endpoint's `timeout`
/// bounds the whole request.
///
/// **Failures.** Any non-2xx answer, connection error or timeout is a failed attempt: the entry goes to the
/// `delayed` set with its attempt count and last error, due after `backoff` (capped exponential with jitter); after
/// `maxAttempts` failed attempts it goes to the `deadletter` stream with the last error.
///
/// **Isolation.** Every endpoint has its own task, Redis connection and serial dispatch queue for the blocking
/// Redis calls (they never run on the cooperative thread pool), so a receiver that hangs delays only its own
/// endpoint's notifications.
///
/// **Cancellation** stops at once: a request in flight is cancelled and its entry stays in `processing` (it is
/// sent again by the next lease holder), and the lease is released.
public final class WebhookDeliverer: Sendable {
    /// Retry delays by default: 2 s, 4 s, 8 s … capped at 5 min, ±20 % jitter.
    public static let defaultBackoff = Backoff(initial: 2, maximum: 300, multiplier: 2, jitter: .proportional(0.2))

    public let redisEndpoint: RedisEndpoint
    public let endpoints: [WebhookEndpoint]
    public let outbox: WebhookOutbox
    /// Delays between failed attempts of one notification.
    public let backoff: Backoff
    /// Seconds between looks at an empty outbox (new entries are picked up at most this late).
    public let pollInterval: Double
    private let logger: Logger
    private let counterStorage = Mutex<[String: WebhookCounters]>([:])

    /// - Throws: `.duplicateEndpointName` when two endpoints share a name (they would share one outbox).
    public init(
        redis: RedisEndpoint, endpoints: [WebhookEndpoint], outbox: WebhookOutbox = WebhookOutbox(),
        backoff: Backoff = WebhookDeliverer.defaultBackoff, pollInterval: Double = 0.5,
        logger: Logger = Logger(label: "opsbus.webhooks")
    ) throws(WebhookConfigurationError) {
        var names: Set<String> = []
        for endpoint in endpoints where !names.insert(endpoint.name).inserted {
            throw .duplicateEndpointName(endpoint.name)
        }
        self.redisEndpoint = redis
        self.endpoints = endpoints
        self.outbox = outbox
        self.backoff = backoff
        self.pollInterval = pollInterval.isFinite ? min(max(pollInterval, 0.01), 60) : 0.5
        self.logger = logger
    }

    /// What this deliverer has done since it was created, over all endpoints. (The same numbers, summed over all
    /// deliverers, are in the stats hash: `webhooks_delivered`, `webhooks_failed_attempts`, `webhooks_dead_lettered`.)
    public var counters: WebhookCounters {
        counterStorage.withLock { $0.values.reduce(into: WebhookCounters()) { $0.add($1) } }
    }

    /// What this deliverer has done for one endpoint.
    public func counters(for endpoint: String) -> WebhookCounters {
        counterStorage.withLock { $0[endpoint] ?? WebhookCounters() }
    }

    /// Delivers until the calling task is cancelled (returns at once when there are no endpoints).
    public func run() async {
        guard !endpoints.isEmpty else { return }
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpShouldSetCookies = false
        configuration.httpCookieAcceptPolicy = .never
        configuration.urlCache = nil
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        // A backstop only: `WebhookHTTP.post` enforces each endpoint's timeout itself (swift-corelibs-foundation
        // turns sub-second values here into an immediate timeout, and counts them per packet, not per request).
        configuration.timeoutIntervalForRequest = WebhookHTTP.backstopTimeout(endpoints.map(\.timeout).max() ?? 5)
        let session = URLSession(configuration: configuration, delegate: RefuseRedirects(), delegateQueue: nil)
        defer { session.invalidateAndCancel() }
        await withTaskGroup(of: Void.self) { group in
            for endpoint in endpoints {
                group.addTask {
                    await EndpointDelivery(deliverer: self, endpoint: endpoint, session: session).run()
                }
            }
        }
    }

    // MARK: Internals used by EndpointDelivery

    var log: Logger { logger }

    func count(_ endpoint: String, _ update: (inout WebhookCounters) -> Void) {
        counterStorage.withLock { update(&$0[endpoint, default: WebhookCounters()]) }
    }
}

/// Counts of delivery outcomes.
public struct WebhookCounters: Sendable, Equatable, CustomStringConvertible {
    /// Notifications the receiver accepted with a 2xx.
    public var delivered = 0
    /// Failed attempts that were scheduled for another try.
    public var retried = 0
    /// Notifications moved to the dead-letter stream after their last attempt.
    public var deadLettered = 0

    public init(delivered: Int = 0, retried: Int = 0, deadLettered: Int = 0) {
        self.delivered = delivered
        self.retried = retried
        self.deadLettered = deadLettered
    }

    /// Every failed attempt: the retried ones and the last attempts of dead-lettered notifications.
    public var failedAttempts: Int { retried + deadLettered }

    public var description: String { "delivered \(delivered), retried \(retried), dead-lettered \(deadLettered)" }

    mutating func add(_ other: WebhookCounters) {
        delivered += other.delivered
        retried += other.retried
        deadLettered += other.deadLettered
    }
}

// MARK: - One endpoint

/// The delivery loop of one endpoint: claim → POST → acknowledge, reschedule or dead-letter.
private struct EndpointDelivery: Sendable {
    let deliverer: WebhookDeliverer
    let endpoint: WebhookEndpoint
    let session: URLSession
    let lane: RedisLane
    /// Identifies this loop's lease: host, process and a random part, so two loops never share a lease.
    let owner: String
    let leaseSeconds: Double
    /// Pauses after Redis errors (Redis down or restarting); independent of the per-notification backoff.
    static let redisBackoff = Backoff(initial: 0.2, maximum: 5, multiplier: 2, jitter: .full)

    init(deliverer: WebhookDeliverer, endpoint: WebhookEndpoint, session: URLSession) {
        self.deliverer = deliverer
        self.endpoint = endpoint
        self.session = session
        var logger = deliverer.log
        logger[metadataKey: "webhook"] = "\(endpoint.name)"
        self.lane = RedisLane(redis: deliverer.redisEndpoint, label: "opsbus.webhooks.\(endpoint.name)", logger: logger)
        self.owner = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(UUID().uuidString)"
        self.leaseSeconds = endpoint.timeout * 2 + 10
    }

    private var logger: Logger {
        var logger = deliverer.log
        logger[metadataKey: "webhook"] = "\(endpoint.name)"
        return logger
    }

    func run() async {
        logger.debug("webhook delivery started", metadata: ["endpoint": "\(endpoint)"])
        let outbox = deliverer.outbox
        let name = endpoint.name
        let owner = owner
        let leaseSeconds = leaseSeconds
        var redisFailures = 0
        var standingBy = false
        while !Task.isCancelled {
            let claim: WebhookOutbox.Claim
            do {
                claim = try await lane.run { redis throws(RedisError) in
                    try outbox.claim(redis, endpoint: name, owner: owner, leaseSeconds: leaseSeconds)
                }
                if redisFailures > 0 { logger.info("webhook outbox available again", metadata: ["failures": "\(redisFailures)"]) }
                redisFailures = 0
            } catch {
                redisFailures += 1
                let level: Logger.Level = redisFailures == 1 ? .warning : .debug
                logger.log(level: level, "webhook outbox unavailable, retrying", metadata: ["error": "\(error)"])
                await pause(Self.redisBackoff.delay(afterFailures: redisFailures, random: .random(in: 0..<1)))
                continue
            }
            switch claim {
            case let .standby(retryAfter):
                if !standingBy { logger.debug("another deliverer holds this endpoint, standing by") }
                standingBy = true
                await pause(min(deliverer.pollInterval, max(retryAfter, 0.01)))
            case let .idle(nextDueIn, recovered):
                standingBy = false
                reportRecovered(recovered)
                await pause(min(deliverer.pollInterval, max(nextDueIn ?? deliverer.pollInterval, 0.01)))
            case let .claimed(entry, recovered):
                standingBy = false
                reportRecovered(recovered)
                await deliver(entry)
            }
        }
        // Runs although the task is cancelled: the lane does not look at cancellation.
        do {
            try await lane.run { redis throws(RedisError) in try outbox.releaseLease(redis, endpoint: name, owner: owner) }
        } catch {
            logger.debug("could not release the webhook lease; it expires by itself", metadata: ["error": "\(error)"])
        }
        await lane.close()
        logger.debug("webhook delivery stopped")
    }

    private func reportRecovered(_ count: Int) {
        guard count > 0 else { return }
        logger.info(
            "returned notifications left in processing by a previous deliverer to the queue",
            metadata: ["count": "\(count)"])
    }

    private func deliver(_ bytes: [UInt8]) async {
        guard let entry = WebhookOutboxEntry.decode(bytes) else {
            logger.error("unreadable webhook outbox entry, moving it to the dead-letter stream")
            await finish(.deadLetter(
                notificationID: "(unreadable)", attempts: 0, lastError: "not an opsbus webhook outbox entry", body: bytes),
                entry: bytes, notificationID: "(unreadable)")
            return
        }
        let outcome = await WebhookHTTP.post(entry, to: endpoint, session: session)
        switch outcome {
        case .cancelled:
            return  // left in processing: the next lease holder sends it again
        case let .delivered(status):
            logger.debug("webhook delivered", metadata: [
                "notification_id": "\(entry.notificationID)", "status": "\(status)", "attempt": "\(entry.attempts + 1)",
            ])
            await finish(.acknowledge, entry: bytes, notificationID: entry.notificationID)
        case let .failed(reason):
            let attempts = entry.attempts + 1
            if attempts >= endpoint.maxAttempts {
                logger.warning("webhook failed on its last attempt, moving it to the dead-letter stream", metadata: [
                    "notification_id": "\(entry.notificationID)", "attempts": "\(attempts)", "error": "\(reason)",
                ])
                await finish(
                    .deadLetter(notificationID: entry.notificationID, attempts: attempts, lastError: reason, body: entry.body),
                    entry: bytes, notificationID: entry.notificationID)
            } else {
                let delay = deliverer.backoff.delay(afterFailures: attempts, random: .random(in: 0..<1))
                logger.info("webhook attempt failed, retrying", metadata: [
                    "notification_id": "\(entry.notificationID)", "attempt": "\(attempts)",
                    "retry_in": "\(String(format: "%.2f", delay)) s", "error": "\(reason)",
                ])
                let retry = WebhookOutboxEntry(
                    attempts: attempts, notificationID: entry.notificationID, lastError: reason, body: entry.body)
                await finish(.reschedule(retry: retry.encoded(), delay: delay), entry: bytes, notificationID: entry.notificationID)
            }
        }
    }

    enum Step: Sendable {
        case acknowledge
        case reschedule(retry: [UInt8], delay: Double)
        case deadLetter(notificationID: String, attempts: Int, lastError: String, body: [UInt8])

        /// Fields of the stats hash to increment.
        var statsFields: [String] {
            switch self {
            case .acknowledge: ["webhooks_delivered"]
            case .reschedule: ["webhooks_failed_attempts"]
            case .deadLetter: ["webhooks_failed_attempts", "webhooks_dead_lettered"]
            }
        }
    }

    /// Records the outcome of an attempt, retrying through Redis outages (every step is safe to repeat) until it
    /// succeeds or the task is cancelled (then the entry stays in processing and is sent again later).
    private func finish(_ step: Step, entry: [UInt8], notificationID: String) async {
        let outbox = deliverer.outbox
        let name = endpoint.name
        var failures = 0
        var mayHaveRun = false
        while true {
            do {
                let applied = try await lane.run { redis throws(RedisError) -> Bool in
                    let applied: Bool
                    switch step {
                    case .acknowledge:
                        applied = try outbox.acknowledge(redis, endpoint: name, entry: entry)
                    case let .reschedule(retry, delay):
                        applied = try outbox.reschedule(redis, endpoint: name, entry: entry, retry: retry, delay: delay)
                    case let .deadLetter(id, attempts, lastError, body):
                        applied = try outbox.deadLetter(
                            redis, endpoint: name, entry: entry, notificationID: id, attempts: attempts,
                            lastError: lastError, body: body)
                    }
                    return applied
                }
                // After an ambiguous failure, "nothing to do" most likely means our earlier try did it.
                if applied || mayHaveRun {
                    count(step)
                    await incrementStats(step.statsFields)
                } else {
                    logger.warning(
                        "webhook entry was no longer in the outbox (another deliverer took the endpoint over); the outcome is not recorded",
                        metadata: ["notification_id": "\(notificationID)"])
                }
                return
            } catch {
                failures += 1
                mayHaveRun = mayHaveRun || error.commandMayHaveRun
                logger.warning(
                    "cannot record the webhook outcome in Redis, retrying",
                    metadata: ["notification_id": "\(notificationID)", "error": "\(error)"])
                await pause(Self.redisBackoff.delay(afterFailures: failures, random: .random(in: 0..<1)))
                if Task.isCancelled { return }
            }
        }
    }

    private func count(_ step: Step) {
        deliverer.count(endpoint.name) { counters in
            switch step {
            case .acknowledge: counters.delivered += 1
            case .reschedule: counters.retried += 1
            case .deadLetter: counters.deadLettered += 1
            }
        }
    }

    /// Best effort: a lost increment skews a statistic, not a delivery.
    private func incrementStats(_ fields: [String]) async {
        let statsKey = deliverer.outbox.statsKey
        do {
            try await lane.run { redis throws(RedisError) in
                _ = try redis.pipeline(fields.map { ["HINCRBY", statsKey, $0, "1"] })
            }
        } catch {
            logger.debug("could not update webhook statistics", metadata: ["error": "\(error)"])
        }
    }

    private func pause(_ seconds: Double) async {
        guard seconds > 0, seconds.isFinite else { return }
        try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
    }
}

// MARK: - Redis off the cooperative pool

/// Runs one endpoint's blocking Redis calls on a serial dispatch queue of its own: `RedisConnection` blocks its
/// thread, and the cooperative pool is too small (as few as 2 threads) to lend one.
private final class RedisLane: @unchecked Sendable {
    private let queue: DispatchQueue
    private let redis: RedisEndpoint
    private let logger: Logger
    /// Only touched on `queue`.
    private var connection: RedisConnection?

    init(redis: RedisEndpoint, label: String, logger: Logger) {
        self.queue = DispatchQueue(label: label)
        self.redis = redis
        self.logger = logger
    }

    func run<T: Sendable>(_ body: @escaping @Sendable (RedisConnection) throws(RedisError) -> T) async throws(RedisError) -> T {
        let result: Result<T, RedisError> = await withCheckedContinuation { continuation in
            queue.async {
                continuation.resume(returning: Result { () throws(RedisError) -> T in
                    let connection: RedisConnection
                    if let existing = self.connection {
                        connection = existing
                    } else {
                        connection = try RedisConnection(endpoint: self.redis, logger: self.logger)
                        self.connection = connection
                    }
                    return try body(connection)
                })
            }
        }
        return try result.get()
    }

    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.connection?.close()
                self.connection = nil
                continuation.resume()
            }
        }
    }
}

// MARK: - HTTP

enum WebhookHTTP {
    enum Outcome: Sendable, Equatable {
        case delivered(status: Int)
        case failed(String)
        /// The calling task was cancelled while the request was in flight.
        case cancelled
    }

    static let userAgent = "opsbus"
    static let notificationIDHeader = "X-Opsbus-Notification-Id"
    static let attemptHeader = "X-Opsbus-Attempt"

    /// URLSession's own timeout, set beyond the endpoint's so that `post`'s deadline always fires first.
    static func backstopTimeout(_ timeout: Double) -> Double { timeout.rounded(.up) + 5 }

    static func request(for entry: WebhookOutboxEntry, to endpoint: WebhookEndpoint, now: Date = Date()) -> URLRequest? {
        guard let url = URL(string: endpoint.url) else { return nil }
        var request = URLRequest(
            url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: backstopTimeout(endpoint.timeout))
        request.httpMethod = "POST"
        request.httpBody = Data(entry.body)
        request.httpShouldHandleCookies = false
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue(userAgent, forHTTPHeaderField: "User-Agent")
        request.setValue(entry.notificationID, forHTTPHeaderField: notificationIDHeader)
        request.setValue(String(entry.attempts + 1), forHTTPHeaderField: attemptHeader)
        if let secret = endpoint.secret {
            request.setValue(
                WebhookSignature.header(secret: secret, body: entry.body, now: now),
                forHTTPHeaderField: WebhookSignature.headerName)
        }
        return request
    }

    /// POSTs `entry`; the endpoint's timeout bounds the whole exchange (URLSession's own timeout is per packet).
    static func post(_ entry: WebhookOutboxEntry, to endpoint: WebhookEndpoint, session: URLSession) async -> Outcome {
        guard let request = request(for: entry, to: endpoint) else {
            return .failed("the endpoint URL \(endpoint.redactedURL) cannot be parsed")
        }
        let call = InFlightCall()
        let timeout = endpoint.timeout
        let where_ = endpoint.redactedURL
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
                call.start(continuation) {
                    session.dataTask(with: request) { data, response, error in
                        call.finish(outcome(data: data, response: response, error: error, endpoint: where_), fromTask: true)
                    }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                    call.finish(.failed("no answer from \(where_) within \(timeout) s (timed out)"))
                }
            }
        } onCancel: {
            call.finish(.cancelled)
        }
    }

    static func outcome(data: Data?, response: URLResponse?, error: (any Error)?, endpoint: String) -> Outcome {
        if let error {
            let nsError = error as NSError
            return .failed("request to \(endpoint) failed: \(nsError.localizedDescription) (\(nsError.domain) \(nsError.code))")
        }
        guard let http = response as? HTTPURLResponse else {
            return .failed("request to \(endpoint) got no HTTP response")
        }
        if (200..<300).contains(http.statusCode) { return .delivered(status: http.statusCode) }
        var snippet = String(decoding: (data ?? Data()).prefix(200), as: UTF8.self)
            .map { $0.isNewline ? " " : $0 }.reduce(into: "") { $0.append($1) }
        snippet = snippet.trimmingCharacters(in: .whitespaces)
        return .failed("HTTP \(http.statusCode) from \(endpoint)" + (snippet.isEmpty ? "" : ": \(snippet)"))
    }
}

/// One request's continuation, resumed exactly once by whichever comes first: the response, the timeout or the
/// task's cancellation (the last two also cancel the URLSession task).
private final class InFlightCall: Sendable {
    private struct State {
        var continuation: CheckedContinuation<WebhookHTTP.Outcome, Never>?
        var task: URLSessionDataTask?
        var finished: WebhookHTTP.Outcome?
    }

    private let state = Mutex(State())

    func start(
        _ continuation: CheckedContinuation<WebhookHTTP.Outcome, Never>, makeTask: () -> URLSessionDataTask
    ) {
        let early: WebhookHTTP.Outcome? = state.withLock { state in
            if let finished = state.finished { return finished }  // cancelled before we started
            state.continuation = continuation
            return nil
        }
        if let early {
            continuation.resume(returning: early)
            return
        }
        let task = makeTask()
        let alreadyFinished = state.withLock { state in
            state.task = task
            return state.finished != nil
        }
        if alreadyFinished { task.cancel() } else { task.resume() }
    }

    /// `fromTask`: the outcome is the URLSession task's own completion (otherwise the task is cancelled).
    func finish(_ outcome: WebhookHTTP.Outcome, fromTask: Bool = false) {
        let (continuation, task): (CheckedContinuation<WebhookHTTP.Outcome, Never>?, URLSessionDataTask?) =
            state.withLock { state in
                guard state.finished == nil else { return (nil, nil) }
                state.finished = outcome
                let continuation = state.continuation
                state.continuation = nil
                return (continuation, state.task)
            }
        continuation?.resume(returning: outcome)
        if !fromTask { task?.cancel() }
    }
}

/// Redirects are not followed: the configured URL is the only place notifications go (a receiver could otherwise
/// point the processor at an internal address).
private final class RefuseRedirects: NSObject, URLSessionTaskDelegate, Sendable {
    func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
        newRequest request: URLRequest, completionHandler: @escaping @Sendable (URLRequest?) -> Void
    ) {
        completionHandler(nil)
    }
}
