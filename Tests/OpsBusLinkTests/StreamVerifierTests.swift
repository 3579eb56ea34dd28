import Testing

/// The scenario checks are only as good as `StreamVerifier`: each kind of damage must be reported.
@Suite("Stream verifier: reports missing, duplicated, reordered and skipped events")
struct StreamVerifierTests {
    func event(_ session: String, _ seq: Int64) -> AcceptedEvent {
        AcceptedEvent(eventID: "\(session)-\(seq)", sessionID: session, seq: seq, jobID: "job", eventType: "job.started")
    }

    func record(_ session: String, _ seq: Int64, prevSeq: Int64? = nil, id: String? = nil) -> StreamRecord {
        StreamRecord(id: "0-\(seq)", eventID: id ?? "\(session)-\(seq)", sessionID: session, seq: seq, prevSeq: prevSeq)
    }

    @Test("a complete, ordered stream of two sessions is clean")
    func clean() {
        let accepted = (1...3).map { event("a", $0) } + (1...2).map { event("b", $0) }
        let records = [record("a", 1), record("b", 1), record("a", 2), record("a", 3), record("b", 2)]
        let report = StreamVerifier.check(records, accepted: accepted)
        #expect(report.problems.isEmpty, "\(report.problems)")
        #expect(report.sessions == 2 && report.streamEntries == 5 && report.acceptedEvents == 5)
    }

    @Test("each kind of damage is reported")
    func damage() {
        let accepted = (1...5).map { event("a", $0) }
        // seq 2 missing (a hole and a missing accepted event), seq 3 twice, seq 4 before seq 3's duplicate.
        let records = [record("a", 1), record("a", 3), record("a", 4), record("a", 3), record("a", 5)]
        let report = StreamVerifier.check(records, accepted: accepted)
        #expect(report.missing.map(\.seq) == [2])
        #expect(report.duplicates == ["a-3": 2])
        #expect(report.orderViolations.count == 1)
        #expect(report.gaps.count == 1)
        #expect(report.problems.count == 4)
    }

    @Test("a hole the publisher declared with prev_seq is not a hole; a session/seq mismatch is reported")
    func declaredGapAndMismatch() {
        let accepted = [event("a", 1), event("a", 4)]
        let records = [record("a", 1), record("a", 4, prevSeq: 1)]
        #expect(StreamVerifier.check(records, accepted: accepted).problems.isEmpty)
        let moved = [record("a", 1), record("b", 1, id: "a-4")]
        #expect(StreamVerifier.check(moved, accepted: accepted).mismatches.count == 1)
    }

    @Test("ranges are summarised")
    func ranges() {
        #expect(StreamReport.ranges([9, 1, 2, 3, 4, 12, 13]) == "1…4, 9, 12…13")
    }
}
