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
        let (plan, envelope) = makePlan(topic: topic, payload: payload)
        let result = execute(plan)
        finish(result, envelope: envelope, topic: topic)
        return result
    }

    /// Validates a message and decides its Redis work. `originalBytes`: its size when `payload` is only its start.
    private func makePlan(topic: String, payload: [UInt8], originalBytes: Int? = nil,
                          clock: RedisPlan.Clock? = nil) -> (RedisPlan, EventEnvelope?) {
        let validation = (originalBytes ?? payload.count) > configuration.maxPayloadBytes
            ? .failure(RejectionReason(
                "oversize: \(originalBytes ?? payload.count) bytes > limit \(configuration.maxPayloadBytes)"))
            : validate(topic: topic, payload: payload)
        switch validation {
        case .success(let (valid, subject)):
            return (RedisPlan(envelope: valid, subject: subject, topic: topic, payload: payload,
                              configuration: configuration, clock: clock), valid)
        case .failure(let reason):
            return (RedisPlan(deadLetter: reason, topic: topic, payload: payload, keys: keys,
                              sequence: reason.envelope.flatMap {
                                  RedisPlan.sequenceTracking($0, configuration: configuration, now: clock?.now ?? .now())
                              },
                              originalBytes: originalBytes),
                    reason.envelope)
        }
    }

    /// What follows an outcome in Redis: metrics and the log line (the counters were called by `execute`).
    private func finish(_ result: ApplyResult, envelope: EventEnvelope?, topic: String) {
        metrics?.record(result, eventType: envelope?.eventType, timestamp: envelope?.timestamp)
        logOutcome(result, envelope: envelope, topic: topic)
    }

    /// A journaled message for `applyBatch`.
    struct BatchMessage {
        var topic: String
        var payload: [UInt8]
        /// The size the message had when `payload` is only its start (an oversize message).
        var originalBytes: Int
    }

    /// Applies messages in journal order with one round trip and one script call (`BatchApplyScript`), the
    /// batching processor's path. Throws when Redis failed in a way that leaves the batch's fate unknown (connection
    /// lost, timeout, a transient error of the whole call): the caller retries the same batch, passing `retried`,
    /// and the scripts' dedup and the stats rule (`EventStatsScript`) make that harmless.
    func applyBatch(_ messages: [BatchMessage], retried: Bool) throws(RedisError) {
        let clock = RedisPlan.Clock(keys: keys)
        let planned = messages.map { message in
            makePlan(topic: message.topic, payload: message.payload,
                     originalBytes: message.originalBytes > message.payload.count ? message.originalBytes : nil,
                     clock: clock)
        }
        let connection: RedisConnection
        do {
            connection = try self.connection()
        } catch {
            dropConnection()
            throw error
        }
        var pipeline = connection.makePipeline()
        var calls: [(plan: Int, call: RedisPlan.BatchCall)] = []
        var deadLetterSlots: [(plan: Int, slot: Int)] = []
        var slot = 0
        for (index, (plan, _)) in planned.enumerated() {
            if let event = plan.eventCall(retried: retried) { calls.append((index, event)) }
            if let sequence = plan.sequenceCall { calls.append((index, sequence)) }
            if let commands = plan.deadLetterCommands {
                deadLetterSlots.append((index, slot))
                commands.forEach { pipeline.append($0) }
                slot += commands.count
            }
        }
        if !calls.isEmpty {
            // Encoded as they are appended: one buffer each, no array per argument (`RedisArguments`). The batch's
            // constants go first, once (`RedisPlan.batchConstants`).
            let constants = RedisPlan.batchConstants(configuration: configuration, clock: clock, retried: retried)
            var keys = RedisArguments(reservingCapacity: calls.count * 4 * 40 + 1024)
            var arguments = RedisArguments(reservingCapacity: planned.reduce(0) { $0 + $1.0.payload.count } * 2
                                                               + calls.count * 40 * 10 + 256)
            for key in constants.keys { keys.append(key) }
            arguments.append(calls.count)
            for argument in constants.arguments { arguments.append(argument) }
            for (_, call) in calls {
                for key in call.keys { keys.append(key) }
                arguments.append(call.kind)
                arguments.append(call.keys.count)
                arguments.append(call.arguments.count)
                for argument in call.arguments { arguments.append(argument) }
            }
            pipeline.appendEvaluate(BatchApplyScript.script, keys: keys, arguments: arguments)
        }
        let replies: [RedisReply]
        do {
            replies = try pipeline.execute()
        } catch {
            dropConnection()
            throw error
        }
        var results = [ApplyResult?](repeating: nil, count: planned.count)
        // Results that `execute` decided, which it counted itself; the rest are counted once the whole batch is
        // through (a batch that throws half-way is retried, and its events must not be counted twice).
        var counted = [Bool](repeating: false, count: planned.count)
        for (index, at) in deadLetterSlots {
            if let message = replies[at].errorMessage {
                if RedisReply.isTransient(errorMessage: message) {
                    throw RedisError.server(message: message, command: "XADD")
                }
                logger.error("Redis rejected a dead letter; dropping it",
                             metadata: ["topic": "\(planned[index].0.topic)", "error": "\(message)"])
            }
            results[index] = .deadLettered(reason: planned[index].0.reason ?? "rejected")
        }
        if !calls.isEmpty {
            let reply = replies[slot]
            if let message = reply.errorMessage {
                // The whole call failed: transient (busy, loading …) means retry the batch; anything else would fail
                // again, so each event goes its own way (`execute` dead-letters what Redis refuses).
                let error = RedisError.server(message: message, command: "EVALSHA \(BatchApplyScript.script.name)")
                if error.isTransientServerError { throw error }
                logger.warning("the batch call failed; applying its events one by one", metadata: ["error": "\(message)"])
                // The call may have failed after applying events (scripts have no rollback): re-runs count as retries.
                for (index, (plan, _)) in planned.enumerated() {
                    if results[index] != nil {
                        // A dead letter, written before the call: its gap tracking was in the failed call.
                        if let sequence = plan.sequence {
                            do throws(RedisError) {
                                let reply = try connection.evaluate(SequenceScript.script, keys: sequence.keys,
                                                                    arguments: sequence.arguments)
                                if let message = reply.errorMessage {
                                    logger.warning("gap tracking failed for this event", metadata: ["error": "\(message)"])
                                }
                            } catch {
                                if case .server = error {
                                    logger.warning("gap tracking failed for this event", metadata: ["error": "\(error)"])
                                } else {
                                    throw error
                                }
                            }
                        }
                        continue
                    }
                    let result = execute(plan, retried: true, retryWindow: 0)
                    if case .retryLater(let reason) = result {
                        throw RedisError.io(endpoint: "\(configuration.redis)", reason: reason, commandMayHaveRun: true)
                    }
                    results[index] = result
                    counted[index] = true
                }
            } else {
                try collect(reply.array ?? [], calls: calls, planned: planned, retried: retried,
                            into: &results, counted: &counted)
            }
        }
        for (index, (plan, envelope)) in planned.enumerated() {
            let result = results[index] ?? .applied(outcome: "applied")
            if !counted[index] { onApplied(result) }
            finish(result, envelope: envelope, topic: plan.topic)
        }
    }

    /// Reads the per-call results of a batch reply into `results`; an event that Redis refused is dead-lettered
    /// with Redis's message (as `execute` does for a single event).
    private func collect(_ slots: [RedisReply], calls: [(plan: Int, call: RedisPlan.BatchCall)],
                         planned: [(RedisPlan, EventEnvelope?)], retried: Bool,
                         into results: inout [ApplyResult?], counted: inout [Bool]) throws(RedisError) {
        for (position, (index, call)) in calls.enumerated() {
            let plan = planned[index].0
            let parts = position < slots.count ? slots[position].array ?? [] : []
            let succeeded = parts.first?.int == 1
            let value = parts.count > 1 ? parts[1] : .null
            if call.kind == "s" {
                if !succeeded {
                    logger.warning("gap tracking failed for this event (the event itself is applied)",
                                   metadata: ["error": "\(value.string ?? "\(value)")", "topic": "\(plan.topic)"])
                }
                continue
            }
            if succeeded {
                results[index] = plan.outcome(fromBatchResult: value)
            } else if let message = value.string,
                      RedisReply.isTransient(errorMessage: message) {
                // E.g. READONLY after a failover, OOM: the whole batch is retried (its applied events are duplicates
                // then, not counted again), instead of dead-lettering a good event.
                throw RedisError.io(endpoint: "\(configuration.redis)", reason: message, commandMayHaveRun: true)
            } else {
                let reason = "Redis rejected EVALSHA \(call.kind == "j" ? JobEventScript.script.name : EntityEventScript.script.name): "
                    + (value.string ?? "error")
                let result = execute(RedisPlan(deadLetter: RejectionReason(reason), topic: plan.topic,
                                               payload: plan.payload, keys: keys, sequence: nil),
                                     retried: retried, retryWindow: 0)
                if case .retryLater(let reason) = result {
                    throw RedisError.io(endpoint: "\(configuration.redis)", reason: reason, commandMayHaveRun: true)
                }
                results[index] = result
                counted[index] = true
            }
        }
    }

    /// Closes the Redis connection (the processor stopped).
    func close() { dropConnection() }

    private func dropConnection() {
        redis?.close()
        redis = nil
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
    /// `retried`: an earlier attempt (of a batch holding the message) may have reached Redis.
    /// `retryWindow`: how long to ride out an outage (default `redisRetryWindow`); the batching path passes 0 and
    /// leaves retrying to its drain, which keeps the shutdown deadline.
    private func execute(_ plan: RedisPlan, retried: Bool = false, retryWindow: Double? = nil) -> ApplyResult {
        let deadline = Date().addingTimeInterval(retryWindow ?? configuration.redisRetryWindow)
        var failures = 0
        // Set once an attempt failed after its call may have reached Redis: the re-run must not count the
        // message again (see `EventStatsScript`).
        var retried = retried
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
                where !error.isTransientServerError:
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
