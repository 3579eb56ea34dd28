import Foundation
import Logging
import OpsBusCore
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

/// The writer thread: journal → Redis, in journal order, one pipeline per batch.
///
/// It runs on a dedicated `Thread`, not on the Swift cooperative pool, because `RedisConnection` blocks (and blocks
/// for long while Redis is down). One writer means journal order is Redis order, so entries of one publisher on one
/// route keep their publish order (the broker delivers one publisher's QoS 1 messages in order, and the handler
/// journals them in delivery order).
///
/// Batch cycle: read up to `batchSize` records after the last committed position; plan each (route, validation,
/// fields, dedup id); send one pipeline of `BridgeScripts.append` calls (`appendInSession` for `ack: true`
/// envelopes); hand one acknowledgement per session the batch touched to the `AckPublisher`; then persist the
/// position after the batch (`Journal.commit`). If Redis fails (connection lost, timeout), nothing is committed and the *same* batch is
/// retried with backoff: records that did reach Redis are suppressed by their dedup id. A record that Redis
/// rejects outright (e.g. `WRONGTYPE`: the stream key holds another type) is dead-lettered with Redis's message,
/// since retrying would block the bridge forever.
final class StreamWriter: @unchecked Sendable {
    // @unchecked: the mutable state below is used only by the writer thread, except the Mutex-protected fields.
    private let journal: Journal
    private let routes: RouteTable
    private let configuration: BridgeConfiguration
    private let logger: Logger
    private let wakeup = DispatchSemaphore(value: 0)
    private let control = Mutex(Control())
    let statistics: StatisticsBox
    private let acks: AckPublisher?
    /// Whether the "acknowledgements are off" warning was logged (writer thread only).
    private var warnedAcksOff = false
    /// `acksPublished` as far as it was added to `bridge_acks_published` in the stats hash (writer thread only).
    private var recordedAcks = 0

    struct Control {
        var stopRequested = false
        var stopDeadline: ContinuousClock.Instant?
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    init(journal: Journal, routes: RouteTable, configuration: BridgeConfiguration,
         statistics: StatisticsBox, acks: AckPublisher?, logger: Logger) {
        self.acks = acks
        self.journal = journal
        self.routes = routes
        self.configuration = configuration
        self.statistics = statistics
        self.logger = logger
    }

    func start() {
        let thread = Thread { [self] in self.main() }
        thread.name = "opsbus-bridge-writer"
        thread.start()
    }

    /// Wakes the thread: new records were journaled.
    func notify() { wakeup.signal() }

    /// Asks the thread to write what is journaled (until `drainTimeout`), then exit.
    func requestStop() {
        control.withLock {
            $0.stopRequested = true
            $0.stopDeadline = .now + .milliseconds(Int(configuration.drainTimeout * 1000))
        }
        wakeup.signal()
    }

    /// Returns once the thread exited.
    func waitForExit() async {
        await withCheckedContinuation { continuation in
            let done = control.withLock { control -> Bool in
                if control.finished { return true }
                control.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private var stopState: (requested: Bool, pastDeadline: Bool) {
        control.withLock { ($0.stopRequested, $0.stopDeadline.map { .now >= $0 } ?? false) }
    }

    private func main() {
        var connection: RedisConnection?
        var position = journal.committed
        var failures = 0
        outer: while true {
            if configuration.fsync == .batch { journal.sync() }
            let batch: (entries: [JournalEntry], next: JournalPosition)
            do {
                batch = try journal.read(from: position, maxRecords: configuration.batchSize)
            } catch {
                logger.error("cannot read the journal", metadata: ["error": "\(error)"])
                if stopState.requested { break }
                _ = wakeup.wait(timeout: .now() + 1)
                continue
            }
            if batch.entries.isEmpty {
                if batch.next != position { commit(batch.next, &position) }
                if let connection, !connection.isBroken { recordAcks(connection) }
                if stopState.requested && journal.appendedEnd <= position { break }
                if stopState.pastDeadline { break }
                // Idle: the lazily committed position is written once its interval is over (or on the next batch).
                var wait = Duration.milliseconds(200)
                if let due = journal.pendingCommitDue(after: Self.commitInterval) {
                    let left = due - .now
                    if left <= .zero { persistPendingCommit() } else { wait = min(wait, left) }
                }
                _ = wakeup.wait(timeout: .now() + .microseconds(max(1, Int(wait / .microseconds(1)))))
                continue
            }
            // Write the batch, retrying the whole batch (idempotent) until it succeeds or the drain deadline passes.
            while true {
                do {
                    if connection == nil {
                        connection = try RedisConnection(
                            endpoint: configuration.redis, connectTimeout: 2,
                            commandTimeout: configuration.redisCommandTimeout, logger: logger)
                    }
                    try write(batch.entries, connection!)
                    if failures > 0 { logger.notice("Redis writes resumed", metadata: ["after_failures": "\(failures)"]) }
                    failures = 0
                    break
                } catch {
                    failures += 1
                    statistics.value.withLock {
                        $0.redisFailures += 1
                        $0.lastRedisError = "\(error)"
                    }
                    if case .connectFailed = error { connection = nil }
                    if failures == 1 || failures % 20 == 0 {
                        logger.warning("Redis write failed; retrying (the journal keeps the messages)",
                            metadata: ["error": "\(error)", "failures": "\(failures)"])
                    }
                    if stopState.pastDeadline {
                        logger.warning("stopping with unwritten journal records; they are written at the next start",
                            metadata: ["from": "\(position)"])
                        break outer
                    }
                    let delay = min(2.0, 0.05 * pow(2, Double(min(failures, 10))))
                    Thread.sleep(forTimeInterval: delay)
                }
            }
            commit(batch.next, &position)
        }
        connection?.close()
        persistPendingCommit()
        let waiters = control.withLock { control -> [CheckedContinuation<Void, Never>] in
            control.finished = true
            defer { control.waiters = [] }
            return control.waiters
        }
        waiters.forEach { $0.resume() }
    }

    /// How stale the persisted committed position may get (BENCHMARKS.md defect 3): at most this much of the
    /// journal is replayed (and deduplicated by Redis) after a crash, instead of a file write + rename per batch.
    static let commitInterval = Duration.milliseconds(100)

    private func persistPendingCommit() {
        do {
            try journal.persistPendingCommit()
        } catch {
            logger.error("cannot persist the committed journal position", metadata: ["error": "\(error)"])
        }
    }

    private func commit(_ next: JournalPosition, _ position: inout JournalPosition) {
        do {
            try journal.commit(next, persistAfter: Self.commitInterval)
            position = next
            statistics.value.withLock { $0.committed = next }
        } catch {
            // The batch is in Redis; only the bookkeeping failed. Keep going from `next` in memory: a restart
            // replays from the older committed position, which the dedup ids make harmless.
            logger.error("cannot persist the committed journal position", metadata: ["error": "\(error)"])
            position = next
        }
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

    /// One pipeline for the batch; Redis-rejected records are dead-lettered in a second pipeline. Then the acks.
    private func write(_ entries: [JournalEntry], _ connection: RedisConnection) throws(RedisError) {
        let plans = entries.map {
            StreamEntryFormat.plan($0, routes: routes, configuration: configuration, journalIdentity: journal.identity)
        }
        var pipeline = connection.makePipeline()
        var trims: [String: Int?] = [:]
        var trimOrder: [String] = []
        for plan in plans {
            if let session = plan.session {
                let (keys, arguments) = BridgeScripts.sessionArguments(plan, session, configuration: configuration)
                pipeline.appendEvaluate(BridgeScripts.appendInSession, keys: keys, arguments: arguments)
            } else {
                let (keys, arguments) = BridgeScripts.arguments(plan, statsKey: configuration.statsKey)
                pipeline.appendEvaluate(BridgeScripts.append, keys: keys, arguments: arguments)
            }
            if trims.updateValue(plan.maxAgeSeconds, forKey: plan.stream) == nil { trimOrder.append(plan.stream) }
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
        for (stream, reply) in zip(trimOrder, allReplies.dropFirst(plans.count)) {
            if case .error(let message) = reply {
                logger.warning("trimming failed", metadata: ["stream": "\(stream)", "error": "\(message)"])
            }
        }
        let replies = Array(allReplies.prefix(plans.count))
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
