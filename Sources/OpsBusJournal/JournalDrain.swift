import Foundation
import Logging
import Synchronization

/// Where a `JournalDrain` writes its batches (the bridge's streams, the processor's state).
///
/// With one sink, all calls come from the drain's one thread, in journal order. With several (the processor), each
/// sink is called from its own writer thread only, with the records of its partition in journal order; records of
/// different partitions may be written in any order, `idle()` is called after 200 ms without a part to write, and
/// `committed` is not called.
public protocol JournalBatchSink: AnyObject, Sendable {
    /// Writes one batch. Throwing means "nothing is known to be done": the drain retries the *same* batch with
    /// backoff, so a write must be idempotent (records that did reach Redis are recognised by their ids).
    /// `replayed`: the batch holds records journaled before this process opened the journal. Such a record may
    /// have been written (and counted) by a process that crashed before committing it.
    func write(_ entries: [JournalEntry], replayed: Bool) throws
    /// The journal is drained; called before each idle wait (for housekeeping that must not wait for traffic).
    func idle()
    /// A write failed `failures` times in a row (1, 2, …): count it; the drain logs it and backs off.
    func writeFailed(_ error: any Error, failures: Int)
    /// Everything before `position` is written and committed.
    func committed(_ position: JournalPosition)
}

extension JournalBatchSink {
    public func idle() {}
    public func writeFailed(_ error: any Error, failures: Int) {}
    public func committed(_ position: JournalPosition) {}
}

/// The thread that drains a journal into a sink: read a batch after the committed position, write it, commit,
/// repeat; wait for `notify()` when drained.
///
/// It runs on a dedicated `Thread`, not on the Swift cooperative pool, because the sinks block on Redis (and block
/// for long while Redis is down). One thread means journal order is write order: what one publisher sent keeps its
/// order. A failed write is retried as a whole, with backoff, until it succeeds or the drain deadline of a stop
/// passes; nothing is committed before it succeeded.
///
/// With several sinks, the drain thread reads ahead, splits each batch by `partition` (for the processor: the
/// publisher session, so what one publisher sent stays in order) and hands each part to its partition's writer thread,
/// so Redis runs one part while the next is prepared and sent. Parts of different partitions complete in any order;
/// the committed position only moves past a batch once every part of it and of every batch before it is written.
public final class JournalDrain: Sendable {
    /// How stale the persisted committed position may get (BENCHMARKS.md defect 3): at most this much of the
    /// journal is replayed (and deduplicated by Redis) after a crash, instead of a file write + rename per batch.
    public static let commitInterval = Duration.milliseconds(100)

    private let journal: Journal
    private let sinks: [any JournalBatchSink]
    private let batchSize: Int
    /// Bytes read per batch at most (at least one record). Each batch is held about three times while it is written
    /// (journal bytes, the Redis command, the connection's buffer): 2 MiB keeps a bridge of 64 KiB payloads well
    /// inside its memory target (BENCHMARKS.md), and at 64 KiB a batch of 32 records is still large.
    public static let batchBytes = 2 * 1024 * 1024
    private let drainTimeout: Duration
    private let threadName: String
    private let logger: Logger
    private let wakeup = DispatchSemaphore(value: 0)
    private let control = Mutex(Control())
    /// Records before this position were journaled by an earlier process (see `JournalBatchSink.write`).
    private let replayEnd: JournalPosition
    /// Several sinks: the writer (index into `sinks`) of a record.
    private let partition: (@Sendable (JournalRecord) -> Int)?
    /// Several sinks: each writer's queue of parts, and how far each batch got.
    private let handOff: Mutex<HandOff>
    /// Per writer: signalled once per queued part, and once when the writers are to exit.
    private let work: [DispatchSemaphore]
    private let writersExited = DispatchGroup()

    struct QueuedPart {
        let serial: Int
        let entries: [JournalEntry]
        let replayed: Bool
    }

    struct HandOff {
        var queues: [[QueuedPart]]
        /// Serial → parts of that batch not yet finished (written, or given up at the stop deadline).
        var remaining: [Int: Int] = [:]
        /// Batches with a part given up at the stop deadline: nothing may be committed from the first of them on.
        var gaveUp: Set<Int> = []
        var writersExit = false
    }

    struct Control {
        var stopRequested = false
        var stopDeadline: ContinuousClock.Instant?
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    /// `drainTimeout`: after `requestStop()`, how long the thread keeps writing what is journaled.
    public convenience init(journal: Journal, sink: any JournalBatchSink, batchSize: Int, drainTimeout: Duration,
                            threadName: String, logger: Logger) {
        self.init(journal: journal, sinks: [sink], partition: nil, batchSize: batchSize, drainTimeout: drainTimeout,
                  threadName: threadName, logger: logger)
    }

    /// `sinks`: one writer thread per sink when there are several (see the type's documentation); `partition`
    /// names the sink of a record (taken modulo the number of sinks; records that must stay in order must share
    /// it). With one sink, `partition` is not used.
    public init(journal: Journal, sinks: [any JournalBatchSink], partition: (@Sendable (JournalRecord) -> Int)?,
                batchSize: Int, drainTimeout: Duration, threadName: String, logger: Logger) {
        precondition(!sinks.isEmpty, "a journal drain needs a sink")
        self.journal = journal
        self.sinks = sinks
        self.partition = partition
        handOff = Mutex(HandOff(queues: Array(repeating: [], count: sinks.count)))
        work = sinks.map { _ in DispatchSemaphore(value: 0) }
        self.batchSize = max(1, batchSize)
        self.drainTimeout = drainTimeout
        self.threadName = threadName
        self.logger = logger
        replayEnd = journal.appendedEnd
    }

    public func start() {
        if sinks.count == 1 {
            let thread = Thread { [self] in self.main() }
            thread.name = threadName
            thread.start()
            return
        }
        for (index, sink) in sinks.enumerated() {
            writersExited.enter()
            let writer = Thread { [self] in self.writerMain(index, sink) }
            writer.name = "\(threadName)-\(index + 1)"
            writer.start()
        }
        let thread = Thread { [self] in self.readAheadMain() }
        thread.name = threadName
        thread.start()
    }

    /// Wakes the thread: new records were journaled.
    public func notify() { wakeup.signal() }

    /// Asks the thread to write what is journaled (until `drainTimeout`), then exit.
    public func requestStop() {
        control.withLock {
            $0.stopRequested = true
            $0.stopDeadline = .now + drainTimeout
        }
        wakeup.signal()
    }

    /// Returns once the thread exited.
    public func waitForExit() async {
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
        let sink = sinks[0]
        var position = journal.committed
        var failures = 0
        outer: while true {
            guard let batch = readBatch(from: position) else {
                if stopState.requested { break }
                _ = wakeup.wait(timeout: .now() + 1)
                continue
            }
            if batch.entries.isEmpty {
                if batch.next != position { commit(batch.next, &position) }
                sink.idle()
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
            guard write(batch.entries, replayed: batch.replayed, to: sink, failures: &failures) else {
                logger.warning("stopping with unwritten journal records; they are written at the next start",
                    metadata: ["from": "\(position)"])
                break outer
            }
            commit(batch.next, &position)
        }
        persistPendingCommit()
        finish()
    }

    /// The next batch after `position` (nil: the journal could not be read, logged). A batch is either all replayed
    /// records or none (see `JournalBatchSink.write`).
    private func readBatch(from position: JournalPosition)
        -> (entries: [JournalEntry], next: JournalPosition, replayed: Bool)?
    {
        if journal.fsync == .batch { journal.sync() }
        do {
            let batch = try journal.read(from: position, maxRecords: batchSize, maxBytes: Self.batchBytes)
            guard let first = batch.entries.first, first.position < replayEnd else {
                return (batch.entries, batch.next, false)
            }
            if let cut = batch.entries.firstIndex(where: { $0.position >= replayEnd }) {
                return (Array(batch.entries[..<cut]), batch.entries[cut].position, true)
            }
            return (batch.entries, batch.next, true)
        } catch {
            logger.error("cannot read the journal", metadata: ["error": "\(error)"])
            return nil
        }
    }

    private func finish() {
        let waiters = control.withLock { control -> [CheckedContinuation<Void, Never>] in
            control.finished = true
            defer { control.waiters = [] }
            return control.waiters
        }
        waiters.forEach { $0.resume() }
    }

    /// Writes one batch, retrying the whole batch (idempotent) with backoff until it succeeds (true) or the drain
    /// deadline of a stop passes (false: nothing may be committed from this batch on).
    private func write(_ entries: [JournalEntry], replayed: Bool, to sink: any JournalBatchSink,
                       failures: inout Int) -> Bool {
        while true {
            do {
                try sink.write(entries, replayed: replayed)
                if failures > 0 { logger.notice("Redis writes resumed", metadata: ["after_failures": "\(failures)"]) }
                failures = 0
                return true
            } catch {
                failures += 1
                sink.writeFailed(error, failures: failures)
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("Redis write failed; retrying (the journal keeps the messages)",
                        metadata: ["error": "\(error)", "failures": "\(failures)"])
                }
                if stopState.pastDeadline { return false }
                let delay = min(2.0, 0.05 * pow(2, Double(min(failures, 10))))
                Thread.sleep(forTimeInterval: delay)
            }
        }
    }

    /// Several sinks: read batches ahead (one per writer at most), queue them for the writers, and commit the
    /// prefix of the journal whose batches are all written.
    private func readAheadMain() {
        var position = journal.committed  // committed: everything before is written
        var readPosition = position       // next record to read
        var inFlight: [(serial: Int, next: JournalPosition)] = []
        var nextSerial = 0
        var gaveUp = false
        while true {
            // Commit the written prefix; a batch given up at the deadline stops both committing and reading.
            let (remaining, givenUp) = handOff.withLock { ($0.remaining, $0.gaveUp) }
            while let first = inFlight.first, remaining[first.serial] == 0 {
                if givenUp.contains(first.serial) { gaveUp = true; break }
                inFlight.removeFirst()
                handOff.withLock { _ = $0.remaining.removeValue(forKey: first.serial) }
                commit(first.next, &position)
            }
            if inFlight.isEmpty && readPosition > position && !gaveUp { commit(readPosition, &position) }
            let stop = stopState
            if gaveUp || stop.pastDeadline {
                // Writers give up at the deadline too; wait until none is writing, then leave the rest for the
                // next start.
                if inFlight.allSatisfy({ remaining[$0.serial] == 0 }) {
                    if !inFlight.isEmpty {
                        logger.warning("stopping with unwritten journal records; they are written at the next start",
                            metadata: ["from": "\(position)"])
                    }
                    break
                }
            } else if inFlight.count < sinks.count {
                guard let batch = readBatch(from: readPosition) else {
                    if stop.requested && inFlight.isEmpty { break }
                    _ = wakeup.wait(timeout: .now() + 1)
                    continue
                }
                if !batch.entries.isEmpty {
                    var parts = Array(repeating: [JournalEntry](), count: sinks.count)
                    for entry in batch.entries {
                        let index = (partition?(entry.record) ?? 0) % sinks.count
                        parts[index < 0 ? index + sinks.count : index].append(entry)
                    }
                    let serial = nextSerial
                    handOff.withLock { state in
                        state.remaining[serial] = parts.filter { !$0.isEmpty }.count
                        for (index, part) in parts.enumerated() where !part.isEmpty {
                            state.queues[index].append(QueuedPart(serial: serial, entries: part, replayed: batch.replayed))
                        }
                    }
                    for (index, part) in parts.enumerated() where !part.isEmpty { work[index].signal() }
                    inFlight.append((serial, batch.next))
                    nextSerial += 1
                    readPosition = batch.next
                    continue
                }
                readPosition = batch.next
                if inFlight.isEmpty {
                    if readPosition > position { commit(readPosition, &position) }
                    if stop.requested && journal.appendedEnd <= position { break }
                }
            }
            // Wait for a writer to finish or for new records; persist a lazily committed position that is due.
            var wait = Duration.milliseconds(200)
            if let due = journal.pendingCommitDue(after: Self.commitInterval) {
                let left = due - .now
                if left <= .zero { persistPendingCommit() } else { wait = min(wait, left) }
            }
            _ = wakeup.wait(timeout: .now() + .microseconds(max(1, Int(wait / .microseconds(1)))))
        }
        handOff.withLock { $0.writersExit = true }
        work.forEach { $0.signal() }
        writersExited.wait()
        persistPendingCommit()
        finish()
    }

    /// One writer thread of several: take the next part of its partition, write it (retrying), report it, repeat.
    /// Once it gave a part up at the stop deadline, it gives up every later part of its partition unwritten too: a
    /// later one written before the replay of the earlier would break the partition's order.
    private func writerMain(_ index: Int, _ sink: any JournalBatchSink) {
        var failures = 0
        var abandoned = false
        while true {
            if work[index].wait(timeout: .now() + .milliseconds(200)) == .timedOut {
                sink.idle()
                continue
            }
            let (part, exit) = handOff.withLock { state -> (QueuedPart?, Bool) in
                state.queues[index].isEmpty ? (nil, state.writersExit) : (state.queues[index].removeFirst(), false)
            }
            if exit { break }
            guard let part else { continue }
            let written = !abandoned && write(part.entries, replayed: part.replayed, to: sink, failures: &failures)
            abandoned = !written
            handOff.withLock { state in
                state.remaining[part.serial, default: 1] -= 1
                if !written { state.gaveUp.insert(part.serial) }
            }
            wakeup.signal()
        }
        writersExited.leave()
    }

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
        } catch {
            // The batch is written; only the bookkeeping failed. Keep going from `next` in memory: a restart
            // replays from the older committed position, which the ids make harmless.
            logger.error("cannot persist the committed journal position", metadata: ["error": "\(error)"])
        }
        position = next
        if sinks.count == 1 { sinks[0].committed(next) }
    }
}

/// The message handler's side of a journal: append, or refuse so the broker keeps the message.
///
/// Order: a rejection shuts the MQTT socket, but messages already in the socket's receive buffer may still reach the
/// handler. Accepting one of those would put it in the journal before the rejected message, which the broker
/// redelivers later. So after a rejection everything is refused for a short while: long enough for the buffered
/// messages (processed at once, in the same loop pass), shorter than the reconnect delay (0.5 s with jitter), after
/// which the broker redelivers in order.
public final class JournalAdmission: Sendable {
    public enum Outcome: Sendable, Equatable {
        case appended
        /// Not journaled (full, failed, or inside the window after a rejection): reject the message.
        case refused
    }

    private let journal: Journal
    private let drain: JournalDrain
    private let logger: Logger
    private let refusingUntil = Mutex<ContinuousClock.Instant?>(nil)
    private let refusals = Mutex(0)

    /// `drain` is woken after each append.
    public init(journal: Journal, drain: JournalDrain, logger: Logger) {
        self.journal = journal
        self.drain = drain
        self.logger = logger
    }

    /// Messages refused so far.
    public var refused: Int { refusals.withLock { $0 } }

    public func append(_ record: JournalRecord) -> Outcome {
        let now = ContinuousClock.now
        if let until = refusingUntil.withLock({ $0 }), now < until {
            refusals.withLock { $0 += 1 }
            return .refused
        }
        switch journal.append(record) {
        case .appended:
            drain.notify()
            return .appended
        case .full:
            let count = refuse(until: now + .milliseconds(250))
            if count == 1 || count % 1000 == 0 {
                logger.warning("journal full; rejecting messages until it is drained (the broker keeps them)",
                    metadata: ["max_bytes": "\(journal.maxBytes)", "rejected": "\(count)"])
            }
        case .failed(let error):
            refuse(until: now + .milliseconds(250))
            logger.error("journal append failed; rejecting the message", metadata: ["error": "\(error)"])
        }
        return .refused
    }

    @discardableResult
    private func refuse(until: ContinuousClock.Instant) -> Int {
        refusingUntil.withLock { $0 = until }
        return refusals.withLock { $0 += 1; return $0 }
    }
}
