import Foundation
import Logging
import OpsBusCore
import OpsBusRedis

/// Validates one MQTT message and applies it to Redis; owns the processor's Redis connection.
///
/// A hiredis context is not thread-safe, so exactly one thread uses this at a time (`EventProcessor` keeps it in a
/// mutex and calls it from the MQTT network thread).
final class EventApplier {
    private let configuration: ProcessorConfiguration
    private let logger: Logger
    private var redis: RedisConnection?
    private var keys: RedisKeys { configuration.keys }
    /// Called with each outcome once it is in Redis (and counted in the stats hash, by the same script call).
    private let onApplied: @Sendable (ApplyResult) -> Void
    /// Prometheus counters and the latency histogram (`/metrics`).
    private let metrics: ProcessorMetrics?

    init(configuration: ProcessorConfiguration, logger: Logger, metrics: ProcessorMetrics? = nil,
         onApplied: @escaping @Sendable (ApplyResult) -> Void) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.onApplied = onApplied
    }

    /// Connects at start so a wrong `REDIS_URL` fails loudly instead of on the first event, and notes when gap
    /// tracking began (sessions that started earlier may have had events applied before anyone counted them).
    func connect() throws(ProcessorError) {
        do {
            let connection = try configuration.connectRedis(logger: logger)
            redis = connection
            _ = try connection.command(["HSETNX", keys.stats, "seq_tracking_since_ms",
                                        String(EventTimestamp.now().millisecondsSinceEpoch)])
        } catch {
            throw .redis(error)
        }
    }

    func apply(topic: String, payload: [UInt8]) -> ApplyResult {
        let plan: RedisPlan
        let envelope: EventEnvelope?
        switch validate(topic: topic, payload: payload) {
        case .success(let (valid, subject)):
            envelope = valid
            plan = RedisPlan(envelope: valid, subject: subject, topic: topic, payload: payload,
                             configuration: configuration)
        case .failure(let reason):
            envelope = reason.envelope
            plan = RedisPlan(deadLetter: reason, topic: topic, payload: payload, keys: keys,
                             sequence: reason.envelope.flatMap { RedisPlan.sequenceTracking($0, configuration: configuration) })
        }
        let result = execute(plan)
        metrics?.record(result, eventType: envelope?.eventType, timestamp: envelope?.timestamp)
        logOutcome(result, envelope: envelope, topic: topic)
        return result
    }

    /// One line per event with its ids as metadata (`--log-format json` makes them fields): a dead letter as a
    /// warning, everything else at debug, so an operator can follow one job, worker or trace through the logs.
    private func logOutcome(_ result: ApplyResult, envelope: EventEnvelope?, topic: String) {
        let level: Logger.Level
        let message: Logger.Message
        switch result {
        case .deadLettered: (level, message) = (.warning, "event dead-lettered")
        case .applied: (level, message) = (.debug, "event applied")
        case .duplicate: (level, message) = (.debug, "duplicate event ignored")
        case .retryLater: return  // logged where Redis failed
        }
        guard level >= logger.logLevel else { return }
        var metadata: Logger.Metadata = ["topic": "\(topic)"]
        if case let .deadLettered(reason) = result { metadata["reason"] = "\(reason)" }
        if case let .applied(outcome) = result { metadata["outcome"] = "\(outcome)" }
        if let envelope {
            metadata["event_id"] = "\(envelope.eventID)"
            metadata["event_type"] = "\(envelope.eventType.rawValue)"
            let ids: [(String, String?)] = [
                ("job_id", envelope.jobID?.rawValue), ("worker_id", envelope.workerID?.rawValue),
                ("machine_id", envelope.machineID?.rawValue), ("trace_id", envelope.traceID),
                ("correlation_id", envelope.correlationID), ("session_id", envelope.sessionID),
            ]
            for case let (key, value?) in ids where !value.isEmpty { metadata[key] = "\(value)" }
        }
        logger.log(level: level, message, metadata: metadata)
    }

    /// Parses and checks a message; the failure string is the dead-letter reason.
    private func validate(topic: String, payload: [UInt8]) -> Result<(EventEnvelope, Identifier), RejectionReason> {
        if payload.count > configuration.maxPayloadBytes {
            return .failure(RejectionReason("oversize: \(payload.count) bytes > limit \(configuration.maxPayloadBytes)"))
        }
        let envelope: EventEnvelope
        do {
            envelope = try EventEnvelope.decode(payload, maxBytes: configuration.maxPayloadBytes)
        } catch {
            return .failure(RejectionReason("invalid event: \(error)"))
        }
        if envelope.workerID == nil, let assigned = envelope.fields["worker_assigned"]?.stringValue {
            // Without a worker_id, worker_assigned names the worker and becomes part of Redis keys.
            do {
                _ = try Identifier(validating: assigned, field: "worker_assigned")
            } catch {
                return .failure(RejectionReason("invalid event: \(error)", envelope: envelope))
            }
        }
        do {
            return .success((envelope, try configuration.scheme.check(topic: topic, matches: envelope).subject))
        } catch {
            return .failure(RejectionReason("\(error)", envelope: envelope))
        }
    }

    /// Runs the plan, riding out a Redis outage for up to `redisRetryWindow` seconds.
    private func execute(_ plan: RedisPlan) -> ApplyResult {
        let deadline = Date().addingTimeInterval(configuration.redisRetryWindow)
        var failures = 0
        // Set once an attempt failed after its call may have reached Redis: the re-run must not count the
        // message again (see `EventStatsScript`).
        var retried = false
        while true {
            do throws(RedisError) {
                let connection = try connection()
                let applied = try plan.apply(on: connection, retried: retried)
                let result = applied.result
                if let failure = applied.sequenceError {
                    logger.warning("gap tracking failed for this event (the event itself is applied)",
                                   metadata: ["error": "\(failure)", "topic": "\(plan.topic)"])
                }
                onApplied(result)
                return result
            } catch let error {
                if error.commandMayHaveRun { retried = true }
                switch error {
                case .server(let message, let command)
                where !Self.transientServerErrors.contains(error.serverErrorCode ?? ""):
                    // Redis refused the write itself (e.g. a key of the wrong type): retrying cannot help, and the
                    // message must not block the ones behind it. Keep it as a dead letter with the reason.
                    let reason = "Redis rejected \(command): \(message)"
                    if plan.isDeadLetter { return .deadLettered(reason: plan.reason ?? reason) }
                    return execute(RedisPlan(deadLetter: RejectionReason(reason), topic: plan.topic,
                                             payload: plan.payload, keys: keys, sequence: plan.sequence))
                default:
                    failures += 1
                    metrics?.redisErrors.increment()
                    redis?.close()
                    redis = nil
                    if Date() >= deadline { return .retryLater(reason: "\(error)") }
                    let delay = min(2.0, 0.05 * pow(2, Double(min(failures, 10)))) * Double.random(in: 0.8...1.2)
                    logger.warning("Redis write failed; retrying", metadata: ["error": "\(error)", "delay": "\(delay)"])
                    Thread.sleep(forTimeInterval: delay)
                }
            }
        }
    }

    /// Error replies that go away by themselves (a restarting Redis loading its data, a busy script, a failover):
    /// retried like a lost connection instead of dead-lettering a perfectly good event.
    /// NOSCRIPT is here because the connection reloads a script once per call: a second flush between that reload
    /// and the retry (or a failover to a replica without it) must not dead-letter the event.
    static let transientServerErrors: Set<String> = [
        "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "NOSCRIPT",
    ]

    private func connection() throws(RedisError) -> RedisConnection {
        if let redis, !redis.isBroken { return redis }
        let fresh = try configuration.connectRedis(logger: logger)
        redis = fresh
        return fresh
    }
}

struct RejectionReason: Error, CustomStringConvertible {
    let description: String
    /// The refused event when it could be decoded (it still counts for gap detection).
    let envelope: EventEnvelope?
    init(_ description: String, envelope: EventEnvelope? = nil) {
        self.description = description
        self.envelope = envelope
    }
}
