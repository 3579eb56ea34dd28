import Foundation
import Logging
import OpsBusCore
import OpsBusJournal
import OpsBusRedis
import Synchronization

/// Counters of one bridge process (the Redis `opsbus:stats` hash has the totals across restarts).
public struct BridgeStatistics: Sendable, Hashable {
    public var journaled = 0
    public var rejected = 0
    public var entries = 0
    public var duplicates = 0
    public var deadLettered = 0
    /// Of `duplicates`: `ack: true` envelopes whose seq the session had already committed.
    public var sequenceDuplicates = 0
    /// `ack: true` envelopes held back (not written) because an earlier seq of their session is missing.
    public var outOfOrder = 0
    /// Acknowledgements the broker confirmed (PUBACK).
    public var acksPublished = 0
    public var redisFailures = 0
    public var committed = JournalPosition(segment: 0, offset: 0)
    public var lastRedisError: String?
    /// `entries` by the stream written to (the routes' streams), for `/metrics`.
    public var entriesByStream: [String: Int] = [:]
}

/// Shared counters (handler thread and writer thread).
final class StatisticsBox: Sendable {
    let value = Mutex(BridgeStatistics())
}

/// The bridge's journal sink: journal → Redis, in journal order, one pipeline per batch (driven by a
/// `JournalDrain`, on its thread).
///
/// Batch cycle: plan each record (route, validation, fields, dedup id); send one pipeline of
/// `BridgeScripts.appendBatch` calls, up to 200 records each (`appendInSession`, one per record, for `ack: true`
/// envelopes); hand one acknowledgement per session the batch touched to the `AckPublisher`. If Redis fails
/// (connection lost, timeout, or a transient error reply such as `OOM`), the drain retries the *same* batch with
/// backoff: records that did reach Redis are suppressed by their dedup id. A record that Redis rejects outright
/// (e.g. `WRONGTYPE`: the stream key holds another type) is dead-lettered with Redis's message, since retrying
/// would block the bridge forever.
final class StreamWriter: JournalBatchSink, @unchecked Sendable {
    // @unchecked: the mutable state below is used only by the drain thread, except the Mutex-protected fields.
    private let journalIdentity: String
    private let routes: RouteTable
    private let configuration: BridgeConfiguration
    private let logger: Logger
    let statistics: StatisticsBox
    private let acks: AckPublisher?
    private var connection: RedisConnection?
    /// Whether the "acknowledgements are off" warning was logged (drain thread only).
    private var warnedAcksOff = false
    /// `acksPublished` as far as it was added to `bridge_acks_published` in the stats hash (drain thread only).
    private var recordedAcks = 0

    init(journalIdentity: String, routes: RouteTable, configuration: BridgeConfiguration,
         statistics: StatisticsBox, acks: AckPublisher?, logger: Logger) {
        self.acks = acks
        self.journalIdentity = journalIdentity
        self.routes = routes
        self.configuration = configuration
        self.statistics = statistics
        self.logger = logger
    }

    /// Closes the Redis connection (after the drain stopped).
    func close() {
        connection?.close()
        connection = nil
    }

    func write(_ entries: [JournalEntry], replayed: Bool) throws {
        if connection == nil {
            connection = try RedisConnection(
                endpoint: configuration.redis, connectTimeout: 2,
                commandTimeout: configuration.redisCommandTimeout, logger: logger)
        }
        try write(entries, connection!)
    }

    func idle() {
        if let connection, !connection.isBroken { recordAcks(connection) }
    }

    func writeFailed(_ error: any Error, failures: Int) {
        statistics.value.withLock {
            $0.redisFailures += 1
            $0.lastRedisError = "\(error)"
        }
        if case RedisError.connectFailed = error { connection = nil }
    }

    func committed(_ position: JournalPosition) {
        statistics.value.withLock { $0.committed = position }
    }

    /// Adds the acks confirmed since the last batch to the stats hash while idle (so the count does not wait for the
    /// next message). A failure is left for the next batch, which retries with the connection.
    private func recordAcks(_ connection: RedisConnection) {
        let acksPublished = statistics.value.withLock { $0.acksPublished }
        guard acksPublished > recordedAcks else { return }
        let reply = try? connection.command(
            ["HINCRBY", configuration.statsKey, "bridge_acks_published", String(acksPublished - recordedAcks)])
        if reply?.int != nil { recordedAcks = acksPublished }
    }

    /// One reply per plan, as one `append` call per record would have given it. A batch call that failed as a whole
    /// for a lasting reason has its records go one `append` call each, so each gets its own reply.
    /// A transient error (OOM, READONLY …; `RedisReply.transientErrorCodes`), of a whole call or of one record,
    /// throws: the drain retries the batch with backoff while the records wait in the journal (what was written
    /// before is a duplicate then). Dead-lettering them would lose them, since the dead letter fails the same way.
    private func recordReplies(_ plans: [PlannedWrite], calls: [Range<Int>], replies: ArraySlice<RedisReply>,
                               _ connection: RedisConnection) throws(RedisError) -> [RedisReply] {
        var result: [RedisReply] = []
        result.reserveCapacity(plans.count)
        for (call, reply) in zip(calls, replies) {
            if plans[call.lowerBound].session != nil {
                result.append(reply)
            } else if let elements = reply.array, elements.count == call.count {
                result += elements.map(BridgeScripts.recordReply)
            } else if let message = reply.errorMessage, !RedisReply.isTransient(errorMessage: message) {
                logger.warning("a batch call failed; writing its records one by one", metadata: ["error": "\(message)"])
                var single = connection.makePipeline()
                for plan in plans[call] {
                    let (keys, arguments) = BridgeScripts.arguments(plan, statsKey: configuration.statsKey)
                    single.appendEvaluate(BridgeScripts.append, keys: keys, arguments: arguments)
                }
                result += try single.execute()
            } else {
                result.append(reply)
            }
        }
        for reply in result {
            let message = reply.errorMessage ?? (reply.array?.first?.string == "e" ? reply.array?.last?.string : nil)
            if let message, RedisReply.isTransient(errorMessage: message) {
                throw RedisError.server(message: message, command: "EVALSHA \(BridgeScripts.appendBatch.name)")
            }
        }
        return result
    }

    /// One pipeline for the batch; Redis-rejected records are dead-lettered in a second pipeline. Then the acks.
    private func write(_ entries: [JournalEntry], _ connection: RedisConnection) throws(RedisError) {
        let plans = entries.map {
            StreamEntryFormat.plan($0, routes: routes, configuration: configuration, journalIdentity: journalIdentity)
        }
        var pipeline = connection.makePipeline()
        var trims: [String: Int?] = [:]
        var trimOrder: [String] = []
        for plan in plans where trims.updateValue(plan.maxAgeSeconds, forKey: plan.stream) == nil {
            trimOrder.append(plan.stream)
        }
        // In journal order: each session write on its own (`appendInSession`), each run of other writes in
        // `appendBatch` calls of up to `recordsPerBatchCall` records.
        var calls: [Range<Int>] = []
        var start = 0
        while start < plans.count {
            if let session = plans[start].session {
                let (keys, arguments) = BridgeScripts.sessionArguments(plans[start], session, configuration: configuration)
                pipeline.appendEvaluate(BridgeScripts.appendInSession, keys: keys, arguments: arguments)
                calls.append(start..<start + 1)
                start += 1
                continue
            }
            var end = start + 1
            while end < plans.count, end - start < BridgeScripts.recordsPerBatchCall, plans[end].session == nil { end += 1 }
            let (keys, arguments) = BridgeScripts.batchArguments(plans[start..<end], statsKey: configuration.statsKey)
            pipeline.appendEvaluate(BridgeScripts.appendBatch, keys: RedisArguments(keys), arguments: arguments)
            calls.append(start..<end)
            start = end
        }
        // Housekeeping once per stream per batch, after its appends, in the same round trip.
        for stream in trimOrder {
            let (keys, arguments) = BridgeScripts.trimArguments(
                stream: stream, maxAgeSeconds: trims[stream] ?? nil, window: configuration.dedupWindow)
            pipeline.appendEvaluate(BridgeScripts.trim, keys: keys, arguments: arguments)
        }
        // Acks confirmed since the last batch go to the stats hash in the same round trip (best effort).
        let acksPublished = statistics.value.withLock { $0.acksPublished }
        if acksPublished > recordedAcks {
            pipeline.append(["HINCRBY", configuration.statsKey, "bridge_acks_published", String(acksPublished - recordedAcks)])
        }
        // Session writes must run in journal order. A `SCRIPT FLUSH` between two slots makes every later
        // script slot answer NOSCRIPT; `RedisPipeline` re-runs exactly those, in slot order, so the order holds.
        let allReplies = try pipeline.execute()
        recordedAcks = acksPublished
        for (stream, reply) in zip(trimOrder, allReplies.dropFirst(calls.count)) {
            if case .error(let message) = reply {
                logger.warning("trimming failed", metadata: ["stream": "\(stream)", "error": "\(message)"])
            }
        }
        let replies = try recordReplies(plans, calls: calls, replies: allReplies.prefix(calls.count), connection)
        var written = 0
        var perStream: [String: Int] = [:]
        var duplicates = 0
        var sequenceDuplicates = 0
        var outOfOrder = 0
        var deadLettered = 0
        var rejected: [PlannedWrite] = []
        /// Per session touched, its position after the batch (the last reply wins: they ran in order).
        var positions: [String: (session: SessionSequence, acked: UInt64)] = [:]
        var sessionOrder: [String] = []
        /// Sessions whose position moved in this batch: only those get a retained ack (see `SessionAck.retain`).
        var advanced: Set<String> = []
        for (plan, reply) in zip(plans, replies) {
            if let session = plan.session, reply.errorMessage == nil {
                let parts = reply.array ?? []
                let code = parts.first?.string ?? "?"
                guard parts.count >= 2, let acked = parts[1].int, acked >= 0 else {
                    logger.error("unexpected reply of the session script", metadata: ["reply": "\(reply)"])
                    continue
                }
                switch code {
                case "w":
                    written += 1
                    perStream[plan.stream, default: 0] += 1
                    advanced.insert(session.sessionID)
                case "x":
                    deadLettered += 1
                    advanced.insert(session.sessionID)
                case "d": duplicates += 1
                case "s":
                    duplicates += 1
                    sequenceDuplicates += 1
                case "o": outOfOrder += 1
                default:
                    logger.error("Redis rejected an entry and its dead letter; dropping it", metadata: [
                        "stream": "\(plan.stream)", "session_id": "\(session.sessionID)", "seq": "\(session.seq)",
                        "error": "\(parts.count > 2 ? parts[2].string ?? "" : "")",
                    ])
                }
                if positions.updateValue((session, UInt64(acked)), forKey: session.sessionID) == nil {
                    sessionOrder.append(session.sessionID)
                }
                continue
            }
            switch reply {
            case .error(let message):
                if case .deadLetter = plan.kind {
                    logger.error("Redis rejected a dead letter; dropping it",
                        metadata: ["stream": "\(plan.stream)", "error": "\(message)"])
                } else {
                    // A session write whose script failed as a whole (e.g. OOM, or the session key holds another
                    // type) is dead-lettered without touching the session: its publisher gets no ack for it and
                    // re-sends it, so nothing is lost once the cause is gone.
                    var deadLetter = plan
                    deadLetter.kind = .deadLetter(reason: "redis rejected the entry: \(message)")
                    deadLetter.fields = [("stream", Array(plan.stream.utf8)), ("reason", Array("redis rejected the entry: \(message)".utf8))]
                        + plan.fields.filter { $0.0 != "payload" }
                        + [("payload", Array((plan.field("payload") ?? []).prefix(configuration.deadLetterPayloadBytes)))]
                    deadLetter.stream = configuration.deadLetterStream
                    deadLetter.maxLength = configuration.deadLetterMaxLength
                    deadLetter.maxAgeSeconds = nil
                    deadLetter.session = nil
                    rejected.append(deadLetter)
                }
            case .null:
                duplicates += 1
            default:
                if case .deadLetter = plan.kind { deadLettered += 1 } else {
                    written += 1
                    perStream[plan.stream, default: 0] += 1
                }
            }
        }
        if !rejected.isEmpty {
            var retry = connection.makePipeline()
            for plan in rejected {
                let (keys, arguments) = BridgeScripts.arguments(plan, statsKey: configuration.statsKey)
                retry.appendEvaluate(BridgeScripts.append, keys: keys, arguments: arguments)
            }
            for (plan, reply) in zip(rejected, try retry.execute()) {
                if let message = reply.errorMessage, RedisReply.isTransient(errorMessage: message) {
                    throw RedisError.server(message: message, command: "EVALSHA \(BridgeScripts.append.name)")
                }
                if case .error(let message) = reply {
                    logger.error("Redis rejected a dead letter; dropping it",
                        metadata: ["stream": "\(plan.stream)", "error": "\(message)"])
                } else if !reply.isNull {
                    deadLettered += 1
                }
            }
        }
        statistics.value.withLock {
            $0.entries += written
            $0.entriesByStream.merge(perStream, uniquingKeysWith: +)
            $0.duplicates += duplicates
            $0.sequenceDuplicates += sequenceDuplicates
            $0.outOfOrder += outOfOrder
            $0.deadLettered += deadLettered
        }
        if outOfOrder > 0 {
            logger.debug("held back out-of-order events", metadata: ["count": "\(outOfOrder)"])
        }
        guard !sessionOrder.isEmpty else { return }
        guard let acks else {
            if !warnedAcksOff {
                warnedAcksOff = true
                logger.warning("""
                    envelopes with ack: true arrive but acknowledgements are off (--no-acks): they are committed in \
                    order, but their publishers never get an ack and keep re-sending them
                    """)
            }
            return
        }
        let now = EventTimestamp.now()
        acks.submit(sessionOrder.compactMap { id in
            positions[id].map { position in
                SessionAck(
                    topic: configuration.topicScheme.ackTopic(owner: position.session.owner, sessionID: id), sessionID: id,
                    seq: position.acked, bridge: configuration.clientID, timestamp: now, retain: advanced.contains(id))
            }
        })
    }
}
