/// A live record and where it is stored.
struct SpoolEntry: Sendable {
    var record: SpoolRecord
    var segment: UInt64
    /// Bytes of its log record (header included).
    var size: Int
    /// Global append order across sessions.
    var ordinal: UInt64
}

/// One session's live records (ascending seq = append order) and the seqs the spool dropped that a receiver still
/// needs to hear about (`declaredGapStart`).
struct SessionState: Sendable {
    /// Live records are `entries[head...]`: acknowledgements remove a prefix, so the array is trimmed lazily.
    private(set) var entries: [SpoolEntry] = []
    private(set) var head = 0
    /// Ascending, disjoint, never adjacent (adjacent ranges are merged).
    var dropRanges: [ClosedRange<UInt64>] = []
    /// The highest seq appended (or dropped) that this process knows of: appends must go above it.
    var lastSeq: UInt64 = 0

    var live: ArraySlice<SpoolEntry> { entries[head...] }
    var count: Int { entries.count - head }
    var isEmpty: Bool { head == entries.count }
    var first: SpoolEntry? { isEmpty ? nil : entries[head] }

    /// Index in `entries` of the first live entry with seq ≥ `seq`.
    func lowerBound(_ seq: UInt64) -> Int {
        var low = head
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].record.seq < seq { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Appends in seq order; an out-of-order seq (only replay of a damaged log can produce one) is inserted in
    /// place, replacing a record with the same seq. Returns the replaced entry.
    mutating func insert(_ entry: SpoolEntry) -> SpoolEntry? {
        lastSeq = max(lastSeq, entry.record.seq)
        if isEmpty || entries[entries.count - 1].record.seq < entry.record.seq {
            entries.append(entry)
            return nil
        }
        let index = lowerBound(entry.record.seq)
        if index < entries.count && entries[index].record.seq == entry.record.seq {
            let old = entries[index]
            entries[index] = entry
            return old
        }
        entries.insert(entry, at: index)
        return nil
    }

    mutating func removeThrough(_ seq: UInt64) -> [SpoolEntry] {
        var end = head
        while end < entries.count && entries[end].record.seq <= seq { end += 1 }
        let removed = Array(entries[head..<end])
        head = end
        trim()
        return removed
    }

    mutating func remove(seq: UInt64) -> SpoolEntry? {
        let index = lowerBound(seq)
        guard index < entries.count, entries[index].record.seq == seq else { return nil }
        let entry = entries[index]
        if index == head { head += 1 } else { entries.remove(at: index) }
        trim()
        return entry
    }

    mutating func setSegment(_ segment: UInt64) {
        for index in head..<entries.count { entries[index].segment = segment }
    }

    private mutating func trim() {
        if head == entries.count {
            entries.removeAll(keepingCapacity: entries.count < 1024)
            head = 0
        } else if head >= 256 && head * 2 >= entries.count {
            entries.removeFirst(head)
            head = 0
        }
    }

    mutating func addDrop(_ seq: UInt64) {
        lastSeq = max(lastSeq, seq)
        var index = 0
        while index < dropRanges.count && dropRanges[index].upperBound < seq { index += 1 }
        if index < dropRanges.count && dropRanges[index].contains(seq) { return }
        var range = seq...seq
        // Merge with the neighbour below (ends at seq-1) and above (starts at seq+1).
        if index > 0 && dropRanges[index - 1].upperBound == seq - 1 {
            range = dropRanges[index - 1].lowerBound...seq
            dropRanges.remove(at: index - 1)
            index -= 1
        }
        if index < dropRanges.count && seq < .max && dropRanges[index].lowerBound == seq + 1 {
            range = range.lowerBound...dropRanges[index].upperBound
            dropRanges.remove(at: index)
        }
        dropRanges.insert(range, at: index)
    }

    /// Forgets drops at or below an acknowledged seq: the receiver is past them.
    @discardableResult
    mutating func pruneDrops(through seq: UInt64) -> Bool {
        var changed = false
        while let first = dropRanges.first, first.lowerBound <= seq {
            changed = true
            if first.upperBound <= seq {
                dropRanges.removeFirst()
            } else {
                dropRanges[0] = (seq + 1)...first.upperBound
            }
        }
        return changed
    }

    func wouldPruneDrops(through seq: UInt64) -> Bool { dropRanges.first.map { $0.lowerBound <= seq } ?? false }

    func gapStart(before seq: UInt64) -> UInt64? {
        guard seq >= 2 else { return nil }
        for range in dropRanges where range.contains(seq - 1) { return range.lowerBound - 1 }
        return nil
    }
}

/// The spool's in-memory state, rebuilt on open by replaying the log and then kept in step with every record
/// written: each log record is applied through the same functions on replay and live, so memory and disk agree.
struct SpoolIndex: Sendable {
    var sessions: [String: SessionState] = [:]
    var counters = SpoolCounters()
    var nextOrdinal: UInt64 = 0
    var liveBytes = 0
    var liveCount = 0
    /// Live records per segment: a segment may be deleted once it and every older one hold none.
    var segmentLive: [UInt64: Int] = [:]

    mutating func apply(_ record: LogRecord, segment: UInt64, size: Int) {
        switch record {
        case let .event(record, copy):
            insert(record, segment: segment, size: size)
            if !copy { counters.appended &+= 1 }
        case let .ack(sessionID, throughSeq, removed):
            _ = acknowledge(sessionID: sessionID, through: throughSeq)
            counters.acknowledged &+= UInt64(removed)
        case let .removal(items):
            for item in items { remove(item) }
        case let .checkpoint(checkpoint):
            if checkpoint.base {
                sessions = [:]
                liveBytes = 0
                liveCount = 0
                segmentLive = [:]
            }
            counters = checkpoint.counters
            for key in Array(sessions.keys) { sessions[key]?.dropRanges = [] }
            for (session, ranges) in checkpoint.dropRanges where !ranges.isEmpty {
                var state = sessions[session] ?? SessionState()
                state.dropRanges = ranges
                state.lastSeq = max(state.lastSeq, ranges.last?.upperBound ?? 0)
                sessions[session] = state
            }
            for key in Array(sessions.keys) { forgetIfEmpty(key) }
        }
    }

    private mutating func insert(_ record: SpoolRecord, segment: UInt64, size: Int) {
        let entry = SpoolEntry(record: record, segment: segment, size: size, ordinal: nextOrdinal)
        nextOrdinal += 1
        if let replaced = sessions[record.sessionID, default: SessionState()].insert(entry) {
            forget(replaced)
        }
        liveBytes += size
        liveCount += 1
        segmentLive[segment, default: 0] += 1
    }

    private mutating func forget(_ entry: SpoolEntry) {
        liveBytes -= entry.size
        liveCount -= 1
        segmentLive[entry.segment, default: 1] -= 1
    }

    /// How many records an acknowledgement would remove, and whether it changes anything at all.
    func acknowledgeEffect(sessionID: String, through seq: UInt64) -> (removed: Int, changes: Bool) {
        guard let session = sessions[sessionID] else { return (0, false) }
        let removed = session.live.prefix { $0.record.seq <= seq }.count
        return (removed, removed > 0 || session.wouldPruneDrops(through: seq))
    }

    mutating func acknowledge(sessionID: String, through seq: UInt64) -> Int {
        guard sessions[sessionID] != nil else { return 0 }
        let removed = sessions[sessionID]!.removeThrough(seq)
        sessions[sessionID]!.pruneDrops(through: seq)
        for entry in removed { forget(entry) }
        forgetIfEmpty(sessionID)
        return removed.count
    }

    private mutating func remove(_ item: Removal) {
        if sessions[item.sessionID] != nil, let entry = sessions[item.sessionID]!.remove(seq: item.seq) {
            forget(entry)
        }
        switch item.reason {
        case .acknowledged: counters.acknowledged &+= 1
        case .dropped:
            counters.dropped &+= 1
            sessions[item.sessionID, default: SessionState()].addDrop(item.seq)
        case .coalesced:
            counters.coalesced &+= 1
            sessions[item.sessionID, default: SessionState()].addDrop(item.seq)
        case .withdrawn:
            counters.appended = counters.appended > 0 ? counters.appended - 1 : 0
            if var session = sessions[item.sessionID] {
                // The seq may be used again for another record.
                session.lastSeq = max(session.live.last?.record.seq ?? 0, session.dropRanges.last?.upperBound ?? 0)
                sessions[item.sessionID] = session
            }
        }
        forgetIfEmpty(item.sessionID)
    }

    mutating func forgetIfEmpty(_ sessionID: String) {
        if let session = sessions[sessionID], session.isEmpty, session.dropRanges.isEmpty {
            sessions[sessionID] = nil
        }
    }

    /// Moves every live record to `segment` (after compaction wrote them there).
    mutating func relocateAll(to segment: UInt64) {
        for key in Array(sessions.keys) { sessions[key]!.setSegment(segment) }
        segmentLive = liveCount > 0 ? [segment: liveCount] : [:]
    }

    func checkpoint(base: Bool) -> Checkpoint {
        var ranges: [String: [ClosedRange<UInt64>]] = [:]
        for (id, session) in sessions where !session.dropRanges.isEmpty { ranges[id] = session.dropRanges }
        return Checkpoint(base: base, counters: counters, dropRanges: ranges)
    }

    /// Every live entry in append order.
    func liveEntries() -> [SpoolEntry] {
        var all: [SpoolEntry] = []
        all.reserveCapacity(liveCount)
        for session in sessions.values { all += session.live }
        all.sort { $0.ordinal < $1.ordinal }
        return all
    }

    /// Sessions with live records, ordered by their oldest live record.
    func orderedSessions() -> [(id: String, state: SessionState)] {
        sessions.compactMap { id, state in state.isEmpty ? nil : (id, state) }
            .sorted { $0.state.first!.ordinal < $1.state.first!.ordinal }
    }

    func statistics(diskBytes: Int, segments: Int) -> SpoolStatistics {
        var statistics = SpoolStatistics()
        statistics.records = liveCount
        statistics.bytes = diskBytes
        statistics.liveBytes = liveBytes
        statistics.segments = segments
        let ordered = orderedSessions()
        statistics.sessions = ordered.map { id, state in
            SpoolStatistics.SessionRange(
                sessionID: id, firstSeq: state.first!.record.seq, lastSeq: state.live.last!.record.seq,
                count: state.count)
        }
        statistics.oldestAppendedAtMilliseconds = ordered.compactMap { $0.state.first?.record.appendedAtMilliseconds }.min()
        statistics.appended = counters.appended
        statistics.acknowledged = counters.acknowledged
        statistics.dropped = counters.dropped
        statistics.coalesced = counters.coalesced
        statistics.tornRecordsSkipped = counters.torn
        return statistics
    }
}
