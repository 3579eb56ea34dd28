import Foundation
import Logging
import OpsBusJournal
import Synchronization
import Testing

/// `JournalDrain` with several sinks (the batching processor's writers): the parts of a batch complete in any order,
/// each partition's records must stay in journal order, and the committed position, which decides what a restart
/// replays, must never pass a batch that is not written.
@Suite("Journal drain with several writers")
struct JournalDrainTests {
    /// What the sinks of one drain wrote, and what they saw that they should not have.
    final class Outcome: Sendable {
        let written = Mutex<[Int]>([])
        let violations = Mutex<[String]>([])
        /// The number of writers: record n's predecessor in its partition is n - writers.
        let writers: Int
        init(writers: Int) { self.writers = writers }
    }

    /// A sink that records what it wrote and checks, at every write, that the journal's committed position has
    /// not passed the batch in hand.
    final class RecordingSink: JournalBatchSink, @unchecked Sendable {
        let journal: Journal
        let delay: (Int) -> Double
        /// Throws for a batch holding this record number, `failuresLeft` times (nil: forever).
        let failing: Int?
        let outcome: Outcome
        private let failuresLeft: Mutex<Int?>
        /// Touched by this sink's writer thread only.
        private var lastWritten = -1

        init(journal: Journal, outcome: Outcome, failing: Int? = nil,
             failures: Int? = nil, delay: @escaping (Int) -> Double = { _ in 0 }) {
            self.journal = journal
            self.outcome = outcome
            self.failing = failing
            failuresLeft = Mutex(failures)
            self.delay = delay
        }

        func write(_ entries: [JournalEntry], replayed: Bool) throws {
            let numbers = entries.map { Int(String(decoding: $0.record.payload, as: UTF8.self))! }
            if journal.committed > entries[0].position {
                outcome.violations.withLock { $0.append("committed \(journal.committed) passed batch at \(entries[0].position)") }
            }
            if let failing, numbers.contains(failing) {
                let fail = failuresLeft.withLock { left -> Bool in
                    guard let remaining = left else { return true }
                    if remaining == 0 { return false }
                    left = remaining - 1
                    return true
                }
                if fail {
                    Thread.sleep(forTimeInterval: 0.02)
                    throw CocoaError(.fileWriteUnknown)
                }
            }
            Thread.sleep(forTimeInterval: delay(numbers[0]))
            if journal.committed > entries[0].position {
                outcome.violations.withLock { $0.append("committed \(journal.committed) passed batch at \(entries[0].position) while it was written") }
            }
            // One partition's records arrive in journal order (a retried batch repeats its own records only).
            if let first = numbers.first, first <= lastWritten {
                outcome.violations.withLock { $0.append("record \(first) written after \(lastWritten)") }
            }
            lastWritten = numbers.last ?? lastWritten
            // Across writers too: each record's predecessor in its partition is written before it (or with it).
            outcome.written.withLock { written in
                let done = Set(written).union(numbers)
                for number in numbers where number >= outcome.writers && !done.contains(number - outcome.writers) {
                    outcome.violations.withLock { $0.append("record \(number) written before \(number - outcome.writers)") }
                }
                written += numbers
            }
        }
    }

    static func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-drain-\(UUID().uuidString)").path
    }

    static func append(_ numbers: Range<Int>, to journal: Journal, drain: JournalDrain) {
        for number in numbers {
            let record = JournalRecord(topic: "t", payload: Array(String(number).utf8), qos: 1, retain: false,
                                       receivedAtMilliseconds: 0)
            guard case .appended = journal.append(record) else { Issue.record("append \(number) failed"); return }
            drain.notify()
        }
    }

    static let logger = Logger(label: "opsbus.tests.drain")

    /// Records 0, 3, 6, … go to writer 0 (of three), and so on.
    static let partition: @Sendable (JournalRecord) -> Int = { Int(String(decoding: $0.payload, as: UTF8.self))! }

    /// Drains records `0..<count` through `sinks` made by `makeSink(index, journal, outcome)`, from `append` to the
    /// drain's exit; returns the closed journal's directory (the caller removes it) and what the sinks saw.
    static func drain(_ count: Int, writers: Int, batchSize: Int, drainTimeout: Duration,
                      _ makeSink: (Int, Journal, Outcome) -> RecordingSink) async throws -> (path: String, outcome: Outcome) {
        let path = directory()
        let journal = try Journal(directory: path)
        let outcome = Outcome(writers: writers)
        let sinks = (0..<writers).map { makeSink($0, journal, outcome) }
        let drain = JournalDrain(journal: journal, sinks: sinks, partition: partition, batchSize: batchSize,
                                 drainTimeout: drainTimeout, threadName: "test-drain", logger: logger)
        drain.start()
        append(0..<count, to: journal, drain: drain)
        drain.requestStop()
        await drain.waitForExit()
        #expect(outcome.violations.withLock { $0 }.isEmpty, "\(outcome.violations.withLock { $0 }.prefix(3))")
        journal.close()
        return (path, outcome)
    }

    /// The records a journal in `path` replays at its next open.
    static func replayed(_ path: String) throws -> [Int] {
        let journal = try Journal(directory: path)
        defer { journal.close() }
        return try journal.read(from: journal.committed, maxRecords: 1000).entries
            .map { Int(String(decoding: $0.record.payload, as: UTF8.self))! }
    }

    @Test("three writers with uneven speeds: every record written exactly once, each partition in order, the committed position never passes an unwritten batch")
    func everyRecordOnceAndCommitInOrder() async throws {
        // The first writer is slow, so later parts finish first.
        let (path, outcome) = try await Self.drain(500, writers: 3, batchSize: 7, drainTimeout: .seconds(30)) {
            index, journal, outcome in
            RecordingSink(journal: journal, outcome: outcome, delay: { _ in index == 0 ? 0.03 : 0.002 })
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(outcome.written.withLock { $0 }.sorted() == Array(0..<500))
        #expect(try Self.replayed(path).isEmpty, "everything written is committed: nothing replayed")
    }

    @Test("a batch that fails is retried by its writer; the commit waits for it while later batches complete")
    func failedBatchRetriedCommitWaits() async throws {
        let (path, outcome) = try await Self.drain(200, writers: 2, batchSize: 10, drainTimeout: .seconds(30)) {
            _, journal, outcome in
            RecordingSink(journal: journal, outcome: outcome, failing: 40, failures: 3)
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(outcome.written.withLock { $0 }.sorted() == Array(0..<200), "each record once, 40 after its retries")
        #expect(try Self.replayed(path).isEmpty)
    }

    @Test("a stop whose deadline passes with a batch unwritable: the next start replays from that batch")
    func stopAtDeadlineReplaysFromTheUnwrittenBatch() async throws {
        let (path, outcome) = try await Self.drain(60, writers: 2, batchSize: 10, drainTimeout: .milliseconds(500)) {
            _, journal, outcome in
            RecordingSink(journal: journal, outcome: outcome, failing: 25)
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(!outcome.written.withLock { $0 }.contains(25))
        // Writer 1 (odd records) gave up the part with 25: nothing later of its partition may be written before it.
        #expect(!outcome.written.withLock { $0 }.contains { $0 > 25 && $0 % 2 == 1 }, "\(outcome.written.withLock { $0 }.sorted())")
        let replayed = try Self.replayed(path)
        #expect(replayed.first.map { $0 <= 25 } == true, "replay starts at or before the unwritten batch: \(replayed.prefix(3))")
        #expect(Set(replayed).union(outcome.written.withLock { Set($0) }) == Set(0..<60), "nothing is lost")
    }
}
