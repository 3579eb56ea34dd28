import Foundation
import Logging
import OpsBusRedis
import Synchronization

/// Counters of one bridge process (the Redis `opsbus:stats` hash has the totals across restarts).
public struct BridgeStatistics: Sendable, Hashable {
    public var journaled = 0
    public var rejected = 0
    public var entries = 0
    public var duplicates = 0
    public var deadLettered = 0
    public var redisFailures = 0
    public var committed = JournalPosition(segment: 0, offset: 0)
    public var lastRedisError: String?
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
/// fields, dedup id); send one pipeline of `BridgeScripts.append` calls; then persist the position after the batch
/// (`Journal.commit`). If Redis fails (connection lost, timeout), nothing is committed and the *same* batch is
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

    struct Control {
        var stopRequested = false
        var stopDeadline: ContinuousClock.Instant?
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    init(journal: Journal, routes: RouteTable, configuration: BridgeConfiguration,
         statistics: StatisticsBox, logger: Logger) {
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
                if stopState.requested && journal.appendedEnd <= position { break }
                if stopState.pastDeadline { break }
                _ = wakeup.wait(timeout: .now() + .milliseconds(200))
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
        let waiters = control.withLock { control -> [CheckedContinuation<Void, Never>] in
            control.finished = true
            defer { control.waiters = [] }
            return control.waiters
        }
        waiters.forEach { $0.resume() }
    }

    private func commit(_ next: JournalPosition, _ position: inout JournalPosition) {
        do {
            try journal.commit(next)
            position = next
            statistics.value.withLock { $0.committed = next }
        } catch {
            // The batch is in Redis; only the bookkeeping failed. Keep going from `next` in memory: a restart
            // replays from the older committed position, which the dedup ids make harmless.
            logger.error("cannot persist the committed journal position", metadata: ["error": "\(error)"])
            position = next
        }
    }

    /// One pipeline for the batch; Redis-rejected records are dead-lettered in a second pipeline.
    private func write(_ entries: [JournalEntry], _ connection: RedisConnection) throws(RedisError) {
        let plans = entries.map {
            StreamEntryFormat.plan($0, routes: routes, configuration: configuration, journalIdentity: journal.identity)
        }
        var pipeline = connection.makePipeline()
        var trims: [String: Int?] = [:]
        var trimOrder: [String] = []
        for plan in plans {
            let (keys, arguments) = BridgeScripts.arguments(plan, statsKey: configuration.statsKey)
            pipeline.appendEvaluate(BridgeScripts.append, keys: keys, arguments: arguments)
            if trims.updateValue(plan.maxAgeSeconds, forKey: plan.stream) == nil { trimOrder.append(plan.stream) }
        }
        // Housekeeping once per stream per batch, after its appends, in the same round trip.
        for stream in trimOrder {
            let (keys, arguments) = BridgeScripts.trimArguments(
                stream: stream, maxAgeSeconds: trims[stream] ?? nil, window: configuration.dedupWindow)
            pipeline.appendEvaluate(BridgeScripts.trim, keys: keys, arguments: arguments)
        }
        let allReplies = try pipeline.execute()
        for (stream, reply) in zip(trimOrder, allReplies.dropFirst(plans.count)) {
            if case .error(let message) = reply {
                logger.warning("trimming failed", metadata: ["stream": "\(stream)", "error": "\(message)"])
            }
        }
        let replies = Array(allReplies.prefix(plans.count))
        var written = 0
        var duplicates = 0
        var deadLettered = 0
        var rejected: [PlannedWrite] = []
        for (plan, reply) in zip(plans, replies) {
            switch reply {
            case .error(let message):
                if case .deadLetter = plan.kind {
                    logger.error("Redis rejected a dead letter; dropping it",
                        metadata: ["stream": "\(plan.stream)", "error": "\(message)"])
                } else {
                    var deadLetter = plan
                    deadLetter.kind = .deadLetter(reason: "redis rejected the entry: \(message)")
                    deadLetter.fields = [("stream", Array(plan.stream.utf8)), ("reason", Array("redis rejected the entry: \(message)".utf8))]
                        + plan.fields.filter { $0.0 != "payload" }
                        + [("payload", Array((plan.field("payload") ?? []).prefix(configuration.deadLetterPayloadBytes)))]
                    deadLetter.stream = configuration.deadLetterStream
                    deadLetter.maxLength = configuration.deadLetterMaxLength
                    deadLetter.maxAgeSeconds = nil
                    rejected.append(deadLetter)
                }
            case .null:
                duplicates += 1
            default:
                if case .deadLetter = plan.kind { deadLettered += 1 } else { written += 1 }
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
            $0.duplicates += duplicates
            $0.deadLettered += deadLettered
        }
    }
}
