import Foundation
import Testing

@testable import OpsBusSpool

@Suite("Spool basics")
struct SpoolBasicTests {
    @Test("append, acknowledge, remove and pending keep append order")
    func appendAcknowledgeRemove() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory))
        defer { spool.close() }
        for seq in UInt64(1)...5 {
            #expect(try await spool.append(event("a", seq)) == .appended)
            if seq <= 3 { try await spool.append(event("b", seq)) }
        }
        let all = spool.pending()
        #expect(all.map { "\($0.sessionID)\($0.seq)" } == ["a1", "b1", "a2", "b2", "a3", "b3", "a4", "a5"])
        #expect(all.allSatisfy { $0.appendedAtMilliseconds > 1_600_000_000_000 })
        #expect(seqs(spool.pending(sessionID: "a")) == [1, 2, 3, 4, 5])
        #expect(seqs(spool.pending(sessionID: "a", afterSeq: 2, limit: 2)) == [3, 4])
        #expect(spool.pending(limit: 3).count == 3)
        #expect(spool.pendingSessions() == ["a", "b"])

        #expect(try spool.acknowledge(sessionID: "a", throughSeq: 3) == 3)
        #expect(try spool.acknowledge(sessionID: "a", throughSeq: 3) == 0)
        #expect(try spool.acknowledge(sessionID: "nobody", throughSeq: 9) == 0)
        #expect(try spool.remove(sessionID: "b", seq: 2))
        #expect(try !spool.remove(sessionID: "b", seq: 2))
        #expect(spool.pending().map { "\($0.sessionID)\($0.seq)" } == ["b1", "b3", "a4", "a5"])
        #expect(spool.pendingSessions() == ["b", "a"])
        #expect(try spool.acknowledge(sessionID: "b", throughSeq: 10) == 2)
        #expect(spool.pendingSessions() == ["a"])

        let statistics = spool.statistics
        #expect(statistics.records == 2)
        #expect(spool.depth == 2)
        #expect(statistics.appended == 8)
        #expect(statistics.acknowledged == 6)
        #expect(statistics.sessions == [.init(sessionID: "a", firstSeq: 4, lastSeq: 5, count: 2)])
    }

    @Test("records that cannot be stored are refused with a reason")
    func invalidRecords() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, maxBytes: 64 * 1024))
        defer { spool.close() }
        try await spool.append(event("a", 5))
        let cases: [(SpoolRecord, String)] = [
            (event("a", 5), "not above"), (event("a", 3), "not above"), (event("a", 0), "at least 1"),
            (event("", 1), "empty session"),
        ]
        for (record, reason) in cases {
            let error = await spoolError { () async throws(SpoolError) in try await spool.append(record) }
            guard case let .invalidRecord(text) = error else {
                Issue.record("expected invalidRecord for \(record.sessionID)/\(record.seq), got \(String(describing: error))")
                continue
            }
            #expect(text.contains(reason))
        }
        let huge = event("a", 6, bytes: 20 * 1024)
        let tooLarge = await spoolError { () async throws(SpoolError) in try await spool.append(huge) }
        guard case let .recordTooLarge(bytes, limit) = tooLarge else {
            Issue.record("expected recordTooLarge, got \(String(describing: tooLarge))")
            return
        }
        #expect(bytes > limit && limit == 16 * 1024)
        #expect(try await spool.append(event("a", 6)) == .appended)
        #expect(seqs(spool.pending()) == [5, 6])
    }

    @Test("durability parses always, interval:<ms> and never and round-trips")
    func durabilityParsing() throws {
        for text in ["always", "never", "interval:250"] {
            #expect(try SpoolDurability(parsing: text).description == text)
        }
        #expect(try SpoolDurability(parsing: "interval:5") == .interval(milliseconds: 5))
        #expect(try SpoolDurability(parsing: "always") == .everyEvent)
        for bad in ["", "sometimes", "interval:", "interval:0", "interval:-3", "interval:x"] {
            #expect(throws: SpoolError.invalidDurability(bad)) { try SpoolDurability(parsing: bad) }
        }
    }

    @Test("a second open of the same directory is refused until the first closes; closed spools refuse calls")
    func locking() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let first = try Spool.open(configuration(directory))
        try await first.append(event("a", 1))
        var impatient = configuration(directory)
        impatient.lockTimeoutMilliseconds = 100
        #expect(throws: SpoolError.locked(directory: directory.path)) { try Spool.open(impatient) }
        first.close()
        let closedAppend = await spoolError { () async throws(SpoolError) in try await first.append(event("a", 2)) }
        #expect(closedAppend == .closed)
        #expect(throws: SpoolError.closed) { try first.acknowledge(sessionID: "a", throughSeq: 1) }
        #expect(throws: SpoolError.closed) { try first.remove(sessionID: "a", seq: 1) }
        let second = try Spool.open(configuration(directory))
        defer { second.close() }
        #expect(seqs(second.pending()) == [1])
    }

    @Test("invalid configurations are refused")
    func invalidConfiguration() {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var small = configuration(directory, maxBytes: 1000)
        #expect(throws: SpoolError.self) { try Spool.open(small) }
        small = configuration(directory, durability: .interval(milliseconds: 0))
        #expect(throws: SpoolError.self) { try Spool.open(small) }
    }
}

@Suite("Spool recovery")
struct SpoolRecoveryTests {
    @Test("a reopened spool holds exactly the live records, in order, with the counters")
    func restart() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var expected: [SpoolRecord] = []
        do {
            let spool = try Spool.open(configuration(directory, durability: .everyEvent))
            for seq in UInt64(1)...20 {
                try await spool.append(event("s1", seq, priority: seq % 5 == 0 ? .essential : .normal,
                                             key: seq % 2 == 0 ? "job.progress/j1" : nil))
                try await spool.append(event("s2", seq, priority: .droppable))
            }
            try spool.acknowledge(sessionID: "s1", throughSeq: 7)
            try spool.remove(sessionID: "s2", seq: 1)
            try spool.remove(sessionID: "s2", seq: 10)
            expected = spool.pending()
            spool.close()
        }
        #expect(expected.count == 13 + 18)
        let reopened = try Spool.open(configuration(directory))
        defer { reopened.close() }
        #expect(reopened.pending() == expected)
        #expect(reopened.pendingSessions() == ["s2", "s1"])
        let statistics = reopened.statistics
        #expect(statistics.appended == 40)
        #expect(statistics.acknowledged == 9)
        #expect(statistics.tornRecordsSkipped == 0)
        // Appending continues above the recovered seqs only.
        #expect(try await reopened.append(event("s1", 21)) == .appended)
        let stale = await spoolError { () async throws(SpoolError) in try await reopened.append(event("s1", 20)) }
        #expect(stale != nil)
    }

    @Test("a torn last record is cut, counted once, and the next append works")
    func tornTail() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        do {
            let spool = try Spool.open(configuration(directory))
            for seq in UInt64(1)...5 { try await spool.append(event("s", seq, bytes: 200)) }
            spool.close()
        }
        try truncateFile(try directory.newestSegmentWithEvents(), by: 3)
        do {
            let spool = try Spool.open(configuration(directory))
            #expect(seqs(spool.pending()) == [1, 2, 3, 4])
            #expect(spool.statistics.tornRecordsSkipped == 1)
            #expect(try await spool.append(event("s", 5, bytes: 200)) == .appended)
            #expect(try await spool.append(event("s", 6, bytes: 200)) == .appended)
            spool.close()
        }
        // Garbage after the last record (a power cut after the file grew, before its data reached the disk).
        try appendToFile(try directory.newestSegmentWithEvents(), [UInt8](repeating: 0, count: 37) + [0xF5, 0x5F, 1, 2, 3])
        do {
            let spool = try Spool.open(configuration(directory))
            #expect(seqs(spool.pending()) == [1, 2, 3, 4, 5, 6])
            #expect(spool.statistics.tornRecordsSkipped == 2)
            try await spool.append(event("s", 7))
            spool.close()
        }
        let spool = try Spool.open(configuration(directory))
        defer { spool.close() }
        #expect(seqs(spool.pending()) == [1, 2, 3, 4, 5, 6, 7])
        #expect(spool.statistics.tornRecordsSkipped == 2)
        // The log no longer shows the cut record: 4 + 5, 6, 7.
        #expect(spool.statistics.appended == 7)
    }

    @Test("a corrupt record in the middle is skipped and counted once; the records after it survive")
    func corruptionInTheMiddle() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var before: [SpoolRecord] = []
        do {
            let spool = try Spool.open(configuration(directory))
            for seq in UInt64(1)...10 { try await spool.append(event("s", seq, bytes: 300)) }
            before = spool.pending()
            spool.close()
        }
        let path = try directory.newestSegmentWithEvents()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let scan = SegmentScan.scan(bytes)
        let fifth = try #require(scan.entries.first { if case let .event(record, _) = $0.record { record.seq == 5 } else { false } })
        bytes[fifth.offset + fifth.size - 10] ^= 0xFF
        // Also damage the length field of the seventh record: recovery must find the eighth by its magic.
        let seventh = try #require(scan.entries.first { if case let .event(record, _) = $0.record { record.seq == 7 } else { false } })
        bytes[seventh.offset + 10] = 0x7F
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            let spool = try Spool.open(configuration(directory))
            #expect(seqs(spool.pending()) == [1, 2, 3, 4, 6, 8, 9, 10])
            #expect(spool.pending().filter { $0.seq != 5 && $0.seq != 7 } == before.filter { $0.seq != 5 && $0.seq != 7 })
            #expect(spool.statistics.tornRecordsSkipped == 2)
            spool.close()
        }
        let spool = try Spool.open(configuration(directory))
        defer { spool.close() }
        #expect(seqs(spool.pending()) == [1, 2, 3, 4, 6, 8, 9, 10])
        #expect(spool.statistics.tornRecordsSkipped == 2)
    }

    @Test("an abrupt stop (no close) loses nothing that append returned for")
    func abruptStop() async throws {
        let directory = TemporaryDirectory()
        let copy = TemporaryDirectory("spool-copy")
        defer {
            directory.remove()
            copy.remove()
        }
        let spool = try Spool.open(configuration(directory, durability: .never))
        for seq in UInt64(1)...50 { try await spool.append(event("s", seq, bytes: 500)) }
        try spool.acknowledge(sessionID: "s", throughSeq: 10)
        let expected = spool.pending()
        // The owner is still running (and holds the lock): what a crash right now leaves is what the files hold.
        try FileManager.default.createDirectory(atPath: copy.path, withIntermediateDirectories: true)
        for path in try directory.segments() {
            try FileManager.default.copyItem(atPath: path, toPath: copy.path + "/" + URL(fileURLWithPath: path).lastPathComponent)
        }
        let recovered = try Spool.open(configuration(copy))
        #expect(recovered.pending() == expected)
        #expect(recovered.statistics.appended == 50)
        #expect(recovered.statistics.acknowledged == 10)
        recovered.close()
        spool.close()
    }

    @Test("inspect reads a spool another instance has open, and tolerates a torn tail")
    func inspect() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory))
        defer { spool.close() }
        for seq in UInt64(1)...30 { try await spool.append(event("s", seq)) }
        try spool.acknowledge(sessionID: "s", throughSeq: 4)
        let live = spool.statistics
        var seen = try Spool.inspect(directory: directory.path)
        #expect(seen == live)
        #expect(seen.records == 26 && seen.sessions.first?.firstSeq == 5)
        // A write in progress (half a record) at the end of the newest segment.
        let encoded = LogRecord.event(event("s", 31), copy: false).encoded()
        try appendToFile(try directory.newestSegmentWithEvents(), Array(encoded.prefix(20)))
        seen = try Spool.inspect(directory: directory.path)
        #expect(seen.records == 26)
        #expect(seen.tornRecordsSkipped == 0)
        #expect(throws: SpoolError.self) { try Spool.inspect(directory: directory.path + "/missing") }
    }
}

@Suite("Spool overflow")
struct SpoolOverflowTests {
    static let small = 64 * 1024

    @Test("coalescing keeps the newest record per key; normal records are not dropped",
          arguments: [SpoolDurability.never, .everyEvent])
    func coalescing(durability: SpoolDurability) async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, maxBytes: Self.small, durability: durability))
        defer { spool.close() }
        var seq: UInt64 = 0
        var outcome = SpoolAppendOutcome.appended
        while outcome == .appended && seq < 500 {
            seq += 1
            outcome = try await spool.append(event("s", seq, bytes: 1000, key: "job.progress/j\(seq % 4)"))
            #expect(spool.statistics.bytes <= Self.small)
        }
        guard case let .appendedAfterMakingRoom(dropped, coalesced) = outcome else {
            Issue.record("the spool never filled: \(outcome)")
            return
        }
        #expect(dropped == 0)
        #expect(coalesced == Int(seq) - 4)
        let live = spool.pending()
        #expect(seqs(live) == [seq - 3, seq - 2, seq - 1, seq])
        #expect(Set(live.compactMap(\.coalesceKey)).count == 4)
        let statistics = spool.statistics
        #expect(statistics.coalesced == UInt64(coalesced) && statistics.dropped == 0)
        #expect(spool.declaredGapStart(sessionID: "s", before: seq - 3) == 0)
        #expect(spool.declaredGapStart(sessionID: "s", before: seq - 2) == nil)
    }

    @Test("droppable records go first, oldest first; the gap is declared, also after a restart")
    func droppableFirst() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var firstSurvivor: UInt64 = 0
        var last: UInt64 = 0
        do {
            let spool = try Spool.open(configuration(directory, maxBytes: Self.small))
            for seq in UInt64(1)...5 { try await spool.append(event("s", seq, bytes: 1000, priority: .normal)) }
            var seq: UInt64 = 5
            var outcome = SpoolAppendOutcome.appended
            while outcome == .appended && seq < 500 {
                seq += 1
                outcome = try await spool.append(event("s", seq, bytes: 1000, priority: .droppable))
                #expect(spool.statistics.bytes <= Self.small)
            }
            guard case let .appendedAfterMakingRoom(dropped, coalesced) = outcome else {
                Issue.record("the spool never filled: \(outcome)")
                return
            }
            #expect(dropped > 0 && coalesced == 0)
            let live = seqs(spool.pending())
            #expect(Array(live.prefix(5)) == [1, 2, 3, 4, 5])
            firstSurvivor = live[5]
            last = seq
            // Oldest first: the droppable records 6 ..< firstSurvivor went, the rest is contiguous.
            #expect(Array(live.dropFirst(5)) == Array(firstSurvivor...seq))
            #expect(firstSurvivor - 6 == UInt64(dropped))
            #expect(spool.statistics.dropped == UInt64(dropped))
            #expect(spool.declaredGapStart(sessionID: "s", before: firstSurvivor) == 5)
            #expect(spool.declaredGapStart(sessionID: "s", before: firstSurvivor + 1) == nil)
            #expect(spool.declaredGapStart(sessionID: "s", before: 5) == nil)
            #expect(spool.declaredGapStart(sessionID: "other", before: 5) == nil)
            // Several records removed at once (a batch of PUBACKs): missing ones and repeats are skipped.
            #expect(try spool.remove(records: [("s", 1), ("s", 2), ("s", 2), ("s", 6), ("other", 1)]) == 2)
            #expect(Array(seqs(spool.pending()).prefix(3)) == [3, 4, 5])
            // The sender's batch read carries the same gap starts as one read per record.
            let toSend = spool.pendingToSend(sessionID: "s", afterSeq: 3, limit: 5)
            #expect(toSend.map(\.record.seq) == [4, 5, firstSurvivor, firstSurvivor + 1, firstSurvivor + 2])
            #expect(toSend.map(\.gapStart) == [nil, nil, 5, nil, nil])
            spool.close()
        }
        let spool = try Spool.open(configuration(directory, maxBytes: Self.small))
        defer { spool.close() }
        #expect(spool.declaredGapStart(sessionID: "s", before: firstSurvivor) == 5)
        #expect(seqs(spool.pending()) == [3, 4, 5] + Array(firstSurvivor...last), "the batch removal survives a reopen")
        #expect(spool.statistics.dropped == firstSurvivor - 6)
        // The receiver acknowledged through 5: the gap still starts there.
        try spool.acknowledge(sessionID: "s", throughSeq: 5)
        #expect(spool.declaredGapStart(sessionID: "s", before: firstSurvivor) == 5)
        // Acknowledged past the drops (it took prev_seq): nothing left to declare.
        try spool.acknowledge(sessionID: "s", throughSeq: firstSurvivor)
        #expect(spool.declaredGapStart(sessionID: "s", before: firstSurvivor + 1) == nil)
    }

    @Test("essential records are never dropped: a full spool throws .full, drops nothing, and declares the refused seq")
    func essentialFull() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, maxBytes: Self.small, dropNormal: true))
        defer { spool.close() }
        try await spool.append(event("d", 1, bytes: 1000, priority: .droppable))
        try await spool.append(event("d", 2, bytes: 1000, priority: .droppable))
        var seq: UInt64 = 0
        var failure: SpoolError?
        while failure == nil && seq < 500 {
            seq += 1
            failure = await spoolError { () async throws(SpoolError) in
                try await spool.append(event("e", seq, bytes: 1000, priority: .essential))
            }
            #expect(spool.statistics.bytes <= Self.small)
        }
        // Room is made from the droppable records first ...
        #expect(spool.pending(sessionID: "d").isEmpty)
        #expect(spool.statistics.dropped == 3, "the two droppable records, and the refused seq (below)")
        // ... then the spool refuses.
        guard case let .full(needed, _, path) = failure else {
            Issue.record("expected .full, got \(String(describing: failure))")
            return
        }
        #expect(needed > 1000 && path == directory.path)
        let before = spool.pending()
        #expect(seqs(before) == Array(1..<seq), "no stored record was dropped for the refused one")
        // The refused seq is declared (its writer may have numbered later events meanwhile): never used again, and
        // the next record carries prev_seq for it.
        #expect(spool.declaredGapStart(sessionID: "e", before: seq + 1) == seq - 1)
        let reused = await spoolError { () async throws(SpoolError) in
            try await spool.append(event("e", seq, bytes: 100, priority: .essential))
        }
        guard case .invalidRecord? = reused else {
            Issue.record("a declared seq must not be accepted again, got \(String(describing: reused))")
            return
        }
        seq += 1
        // A big record does not fit even though a small droppable one could be dropped: nothing is dropped.
        try spool.acknowledge(sessionID: "e", throughSeq: 3)
        try await spool.append(event("d", 3, bytes: 100, priority: .droppable))
        let big = await spoolError { () async throws(SpoolError) in
            try await spool.append(event("e", seq, bytes: 15 * 1024, priority: .essential))
        }
        #expect(big != nil)
        #expect(seqs(spool.pending(sessionID: "d")) == [3])
        #expect(spool.statistics.dropped == 4, "the two droppable records and the two refused seqs")
        // Acknowledgements make room again.
        try spool.acknowledge(sessionID: "e", throughSeq: 20)
        #expect(try await spool.append(event("e", seq + 1, bytes: 1000, priority: .essential)) == .appended)
    }

    @Test("normal records are dropped only with dropNormalWhenFull, oldest first")
    func dropNormal() async throws {
        for dropNormal in [false, true] {
            let directory = TemporaryDirectory()
            defer { directory.remove() }
            let spool = try Spool.open(configuration(directory, maxBytes: Self.small, dropNormal: dropNormal))
            defer { spool.close() }
            var seq: UInt64 = 0
            var result: Result<SpoolAppendOutcome, SpoolError> = .success(.appended)
            while case .success(.appended) = result, seq < 500 {
                seq += 1
                do { result = .success(try await spool.append(event("n", seq, bytes: 1000))) } catch { result = .failure(error) }
            }
            if dropNormal {
                guard case let .success(.appendedAfterMakingRoom(dropped, _)) = result else {
                    Issue.record("expected drops, got \(result)")
                    continue
                }
                let live = seqs(spool.pending())
                #expect(live == Array((UInt64(dropped) + 1)...seq))
                #expect(spool.declaredGapStart(sessionID: "n", before: UInt64(dropped) + 1) == 0)
            } else {
                guard case .failure(.full) = result else {
                    Issue.record("expected .full, got \(result)")
                    continue
                }
                #expect(seqs(spool.pending()) == Array(1..<seq))
            }
        }
    }
}

@Suite("Spool space and concurrency")
struct SpoolSpaceTests {
    @Test("disk usage stays bounded over a long run with an old record pinning old segments")
    func longRunBounded() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let maxBytes = 64 * 1024
        let spool = try Spool.open(configuration(directory, maxBytes: maxBytes, segmentBytes: 16 * 1024))
        try await spool.append(event("pinned", 1, bytes: 300, priority: .essential))
        var highest = 0
        for seq in UInt64(1)...20_000 {
            try await spool.append(event("s", seq, bytes: 120))
            if seq % 3 == 0 || seq == 20_000 { try spool.acknowledge(sessionID: "s", throughSeq: seq) }
            let bytes = spool.statistics.bytes
            highest = max(highest, bytes)
            if bytes > maxBytes {
                Issue.record("disk usage \(bytes) above \(maxBytes) after seq \(seq)")
                break
            }
        }
        #expect(highest > maxBytes / 2)  // It did fill up: reclaiming was exercised.
        let statistics = spool.statistics
        #expect(statistics.records == 1)
        #expect(statistics.segments <= 5)
        spool.close()
        let files = try directory.segments()
        #expect(try files.reduce(0) { $0 + (try fileSize($1)) } <= maxBytes)
        let reopened = try Spool.open(configuration(directory, maxBytes: maxBytes, segmentBytes: 16 * 1024))
        defer { reopened.close() }
        #expect(reopened.pending().map { "\($0.sessionID)\($0.seq)" } == ["pinned1"])
        #expect(reopened.statistics.appended == 20_001)
        #expect(reopened.statistics.acknowledged == 20_000)
    }

    @Test("segments are deleted once acknowledgements pass all their records")
    func deadSegmentsDeleted() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, maxBytes: 1 << 20, segmentBytes: 16 * 1024))
        defer { spool.close() }
        for seq in UInt64(1)...2000 { try await spool.append(event("s", seq, bytes: 120)) }
        let before = spool.statistics
        #expect(before.segments >= 20)
        try spool.acknowledge(sessionID: "s", throughSeq: 1000)
        let after = spool.statistics
        #expect(after.segments <= before.segments / 2 + 2)
        #expect(after.bytes < before.bytes * 6 / 10)
        #expect(try directory.segments().count == after.segments)
        // Deleted, not compacted: the remaining files are the original newer ones.
        #expect(try directory.segments().first.map { !$0.hasSuffix("segment-0000000000000001.spool") } == true)
        #expect(seqs(spool.pending()) == Array(1001...2000))
        try spool.acknowledge(sessionID: "s", throughSeq: 2000)
        #expect(spool.statistics.segments == 1)
    }

    @Test("a compaction interrupted before the old segments were deleted duplicates nothing")
    func interruptedCompaction() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var live: [SpoolRecord] = []
        do {
            let spool = try Spool.open(configuration(directory))
            for seq in UInt64(1)...10 { try await spool.append(event("s", seq)) }
            try spool.acknowledge(sessionID: "s", throughSeq: 4)
            live = spool.pending()
            spool.close()
        }
        // What compaction writes (base checkpoint + copies), left next to the old segments, and a stray temp file.
        var bytes = LogRecord.checkpoint(Checkpoint(
            base: true, counters: SpoolCounters(appended: 10, acknowledged: 4), dropRanges: [:])).encoded()
        for record in live { bytes += LogRecord.event(record, copy: true).encoded() }
        let last = try #require(try directory.segments().last)
        let number = try #require(UInt64(URL(fileURLWithPath: last).lastPathComponent.dropFirst(8).prefix(16)))
        try Data(bytes).write(to: URL(fileURLWithPath: SpoolFiles.segmentPath(directory.path, number + 1)))
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: directory.path + "/compact.tmp"))
        let spool = try Spool.open(configuration(directory))
        defer { spool.close() }
        #expect(spool.pending() == live)
        #expect(spool.statistics.appended == 10 && spool.statistics.acknowledged == 4)
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/compact.tmp"))
        #expect(try directory.segments().count == 2)  // The compacted one and the new append segment.
    }

    @Test("concurrent appenders with .everyEvent: all durable, each session in seq order")
    func concurrentEveryEvent() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, durability: .everyEvent))
        let sessions = 16
        let perSession: UInt64 = 100
        try await withThrowingTaskGroup(of: Void.self) { group in
            for session in 0..<sessions {
                group.addTask {
                    for seq in 1...perSession { try await spool.append(event("s\(session)", seq, bytes: 150)) }
                }
            }
            try await group.waitForAll()
        }
        #expect(spool.statistics.records == sessions * Int(perSession))
        spool.close()
        let reopened = try Spool.open(configuration(directory))
        defer { reopened.close() }
        for session in 0..<sessions {
            #expect(seqs(reopened.pending(sessionID: "s\(session)")) == Array(1...perSession))
        }
        #expect(reopened.statistics.appended == UInt64(sessions) * perSession)
    }

    @Test("interval durability: appends return before the sync and survive a close")
    func intervalDurability() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let spool = try Spool.open(configuration(directory, durability: .interval(milliseconds: 20)))
        for seq in UInt64(1)...200 { try await spool.append(event("s", seq)) }
        try spool.acknowledge(sessionID: "s", throughSeq: 50)
        spool.close()
        let reopened = try Spool.open(configuration(directory))
        defer { reopened.close() }
        #expect(seqs(reopened.pending()) == Array(51...200))
    }
}

@Suite("Spool log format")
struct SpoolLogFormatTests {
    @Test("every record kind round-trips; damage is detected, never decoded")
    func roundTrip() throws {
        var record = event("session-1", 42, bytes: 64, priority: .essential, key: "job.progress/j9")
        record.retain = true
        record.appendedAtMilliseconds = 1_700_000_000_123
        let records: [LogRecord] = [
            .event(record, copy: false), .event(event("s", 1), copy: true),
            .ack(sessionID: "s", throughSeq: 9, removed: 3),
            .removal([Removal(sessionID: "a", seq: 1, reason: .dropped), Removal(sessionID: "b", seq: 2, reason: .coalesced)]),
            .checkpoint(Checkpoint(base: true, counters: SpoolCounters(appended: 1, acknowledged: 2, dropped: 3, coalesced: 4, torn: 5),
                                   dropRanges: ["a": [1...3, 7...7], "b": [2...2]])),
        ]
        var log: [UInt8] = []
        for item in records { log += item.encoded() }
        let scan = SegmentScan.scan(log)
        #expect(scan.entries.map(\.record) == records)
        #expect(scan.damaged.isEmpty && scan.tailBytes == 0 && scan.validEnd == log.count)
        // Flip every bit of the first record in turn: never decoded as something else.
        let first = records[0].encoded()
        for index in 0..<first.count {
            var damaged = first
            damaged[index] ^= 0x01
            if case .record = damaged.withUnsafeBytes({ LogRecord.decode($0, at: 0) }) {
                Issue.record("a flipped bit at \(index) went unnoticed")
            }
        }
    }
}
