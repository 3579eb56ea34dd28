import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Sizes derived from the configuration.
struct SpoolLimits: Sendable {
    let maxBytes: Int
    let segmentBytes: Int
    /// Largest event record (framing included).
    let recordLimit: Int
    /// Disk room appends leave free for markers (acknowledgements must never fail for lack of space).
    let reserve: Int
    /// Extra room an overflow makes beyond the record at hand, so that the next compaction is some way off (a full
    /// spool otherwise rewrites itself on every append).
    let slack: Int

    /// Appends keep the segment files at or below this.
    var appendLimit: Int { maxBytes - reserve }

    init(_ configuration: SpoolConfiguration) throws(SpoolError) {
        guard configuration.maxBytes >= 64 * 1024 else {
            throw .invalidConfiguration("max bytes must be at least 65536 (got \(configuration.maxBytes))")
        }
        guard configuration.segmentBytes > 0 else {
            throw .invalidConfiguration("segment bytes must be positive (got \(configuration.segmentBytes))")
        }
        if case let .interval(milliseconds) = configuration.durability, milliseconds < 1 {
            throw .invalidConfiguration("the sync interval must be at least 1 ms (got \(milliseconds))")
        }
        maxBytes = configuration.maxBytes
        segmentBytes = max(16 * 1024, min(configuration.segmentBytes, configuration.maxBytes / 4))
        recordLimit = segmentBytes
        reserve = max(2048, maxBytes / 64)
        slack = maxBytes / 8
    }
}

/// One overflow episode: from the first time the spool had to make room until it is half empty again. Logged
/// once at its start and once at its end, not per record.
struct OverflowEpisode {
    var dropped = 0
    var coalesced = 0
    var refused = 0
}

/// The spool's files and index. Not thread-safe: `SpoolCore` keeps it in a `Mutex`.
struct SpoolStore {
    let directory: String
    let limits: SpoolLimits
    let logger: Logger
    var index: SpoolIndex
    var activeSegment: UInt64 {
        didSet { activePath = SpoolFiles.segmentPath(directory, activeSegment) }
    }
    /// The active segment's path, kept with it: every append names it (for its error), and formatting it per append
    /// was 9 % of a spooling publisher's instructions (issue 6).
    private(set) var activePath: String
    /// -1 once closed.
    var activeDescriptor: Int32
    var segmentSizes: [UInt64: Int]
    var diskBytes: Int
    /// Descriptors of segments no longer appended to: synced (if the durability asks for it) and closed by the
    /// sync thread, never here, so that a descriptor is not closed while that thread syncs it.
    var retired: [(descriptor: Int32, path: String)] = []
    /// Bumped by every write: `append` with `.everyEvent` waits until the sync thread synced its generation.
    var writtenGeneration: UInt64 = 0
    /// A segment file was created since the last sync: the directory needs an fsync too.
    var directoryDirty = false
    var overflow: OverflowEpisode?

    init(directory: String, limits: SpoolLimits, logger: Logger, index: SpoolIndex, activeSegment: UInt64,
         activeDescriptor: Int32, segmentSizes: [UInt64: Int], diskBytes: Int) {
        self.directory = directory
        self.limits = limits
        self.logger = logger
        self.index = index
        self.activeSegment = activeSegment
        self.activePath = SpoolFiles.segmentPath(directory, activeSegment)
        self.activeDescriptor = activeDescriptor
        self.segmentSizes = segmentSizes
        self.diskBytes = diskBytes
    }

    var activeSize: Int { segmentSizes[activeSegment] ?? 0 }

    // MARK: Writing

    /// Bytes the next write of `count` bytes adds to the disk: itself, plus a checkpoint if it starts a segment.
    func cost(of count: Int) -> Int {
        guard activeSize > 0 && activeSize + count > limits.segmentBytes else { return count }
        return count + LogRecord.checkpoint(index.checkpoint(base: false)).encoded().count
    }

    func fits(_ count: Int) -> Bool { diskBytes + cost(of: count) <= limits.appendLimit }

    /// Writes one log record to the active segment with one `write(2)`, starting a new segment first when the
    /// record would not fit in this one. Returns the segment written to.
    mutating func write(_ bytes: [UInt8]) throws(SpoolError) -> UInt64 {
        guard activeDescriptor >= 0 else { throw .closed }
        if activeSize > 0 && activeSize + bytes.count > limits.segmentBytes {
            try rollOver(then: bytes)
        } else {
            try SpoolFiles.writeAll(activeDescriptor, bytes, path: activePath, rollbackSize: activeSize)
            segmentSizes[activeSegment, default: 0] += bytes.count
            diskBytes += bytes.count
        }
        writtenGeneration += 1
        return activeSegment
    }

    /// Starts segment N+1 with a checkpoint (the counters and drop ranges so far) followed by `bytes`, in one write.
    private mutating func rollOver(then bytes: [UInt8]) throws(SpoolError) {
        let next = (segmentSizes.keys.max() ?? activeSegment) + 1
        let path = SpoolFiles.segmentPath(directory, next)
        let content = LogRecord.checkpoint(index.checkpoint(base: false)).encoded() + bytes
        let descriptor = try SpoolFiles.openForAppend(path, create: true)
        do throws(SpoolError) {
            try SpoolFiles.writeAll(descriptor, content, path: path, rollbackSize: nil)
        } catch {
            Glibc.close(descriptor)
            unlink(path)
            throw error
        }
        retired.append((activeDescriptor, activePath))
        activeDescriptor = descriptor
        activeSegment = next
        segmentSizes[next] = content.count
        diskBytes += content.count
        directoryDirty = true
    }

    /// Starts a fresh segment holding only a checkpoint (on open: appends never go to a segment that recovery
    /// may have cut).
    mutating func startSegment() throws(SpoolError) {
        let next = (segmentSizes.keys.max() ?? 0) + 1
        let path = SpoolFiles.segmentPath(directory, next)
        let content = LogRecord.checkpoint(index.checkpoint(base: false)).encoded()
        let descriptor = try SpoolFiles.openForAppend(path, create: true)
        do throws(SpoolError) {
            try SpoolFiles.writeAll(descriptor, content, path: path, rollbackSize: nil)
        } catch {
            Glibc.close(descriptor)
            unlink(path)
            throw error
        }
        if activeDescriptor >= 0 { retired.append((activeDescriptor, activePath)) }
        activeDescriptor = descriptor
        activeSegment = next
        segmentSizes[next] = content.count
        diskBytes += content.count
        directoryDirty = true
        writtenGeneration += 1
    }

    /// Writes a marker and applies it. Markers may use the reserve; beyond it the spool compacts first.
    private mutating func writeMarker(_ record: LogRecord) throws(SpoolError) {
        let bytes = record.encoded()
        if diskBytes + cost(of: bytes.count) > limits.maxBytes {
            try compact()
        }
        let segment = try write(bytes)
        index.apply(record, segment: segment, size: bytes.count)
    }

    /// `queued`: the session's latest record still waiting in the queue of appends that need room, if any.
    func validateOrder(_ record: SpoolRecord, queued: UInt64? = nil) throws(SpoolError) {
        let last = max(index.sessions[record.sessionID]?.lastSeq ?? 0, queued ?? 0)
        if last > 0, record.seq <= last {
            throw .invalidRecord("seq \(record.seq) of session \(record.sessionID) is not above its last seq \(last)")
        }
    }

    /// Appends when it fits (the caller checked `fits`).
    mutating func appendEvent(_ record: SpoolRecord, _ bytes: [UInt8]) throws(SpoolError) {
        try validateOrder(record)
        let segment = try write(bytes)
        index.apply(.event(record, copy: false), segment: segment, size: bytes.count)
    }

    // MARK: Removing

    mutating func acknowledge(sessionID: String, through seq: UInt64) throws(SpoolError) -> Int {
        let effect = index.acknowledgeEffect(sessionID: sessionID, through: seq)
        guard effect.changes else { return 0 }
        try writeMarker(.ack(sessionID: sessionID, throughSeq: seq, removed: UInt32(clamping: effect.removed)))
        afterRemoval()
        return effect.removed
    }

    mutating func remove(sessionID: String, seq: UInt64, reason: RemovalReason) throws(SpoolError) -> Bool {
        try remove([(sessionID, seq)], reason: reason) == 1
    }

    /// Removes several records with one log marker (one write instead of one per record); missing ones are skipped.
    /// Returns how many were there.
    mutating func remove(_ records: [(sessionID: String, seq: UInt64)], reason: RemovalReason) throws(SpoolError) -> Int {
        var removals: [Removal] = []
        var seen = Set<Removal>()
        for (sessionID, seq) in records {
            guard let session = index.sessions[sessionID] else { continue }
            let position = session.lowerBound(seq)
            guard position < session.entries.count, session.entries[position].record.seq == seq else { continue }
            let removal = Removal(sessionID: sessionID, seq: seq, reason: reason)
            if seen.insert(removal).inserted { removals.append(removal) }
        }
        guard !removals.isEmpty else { return 0 }
        try writeMarker(.removal(removals))
        afterRemoval()
        return removals.count
    }

    /// Deletes segments that no longer hold live records, and ends an overflow episode once the spool is half empty.
    mutating func afterRemoval() {
        deleteDeadPrefix()
        if let episode = overflow, index.liveBytes <= limits.maxBytes / 2 {
            overflow = nil
            logger.notice("spool overflow over: room again",
                metadata: ["directory": "\(directory)", "dropped": "\(episode.dropped)",
                           "coalesced": "\(episode.coalesced)", "refused": "\(episode.refused)",
                           "live_bytes": "\(index.liveBytes)"])
        }
    }

    /// Deletes the oldest segments while they hold no live records. Only a prefix: a marker in a later segment must
    /// outlive the records it removes, and an older segment's records may be killed only by later markers.
    mutating func deleteDeadPrefix() {
        for segment in segmentSizes.keys.sorted() {
            guard segment != activeSegment, (index.segmentLive[segment] ?? 0) == 0 else { return }
            let path = SpoolFiles.segmentPath(directory, segment)
            if unlink(path) != 0 && errno != ENOENT {
                logger.error("spool: cannot delete a segment", metadata: ["segment": "\(path)", "error": "\(errno)"])
                return
            }
            diskBytes -= segmentSizes.removeValue(forKey: segment) ?? 0
            index.segmentLive[segment] = nil
        }
    }

    /// Worth a compaction: the files are three quarters of the bound and at least half of them is dead weight
    /// (typically one old unacknowledged record pinning old segments).
    var compactionAdvisable: Bool {
        diskBytes >= limits.maxBytes / 4 * 3 && diskBytes - index.liveBytes >= diskBytes / 2
    }

    // MARK: Compaction

    /// Rewrites every live record (after a checkpoint with the counters and drop ranges) into a new segment:
    /// temp file, fdatasync, rename, directory fsync; then deletes all older segments. The new segment's checkpoint
    /// is marked `base`, so if the process dies before the old segments are gone, recovery ignores them.
    mutating func compact() throws(SpoolError) {
        let next = (segmentSizes.keys.max() ?? activeSegment) + 1
        let temporary = SpoolFiles.compactionPath(directory)
        let path = SpoolFiles.segmentPath(directory, next)
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw SpoolFiles.error("open", temporary) }
        var size = 0
        do throws(SpoolError) {
            var buffer = LogRecord.checkpoint(index.checkpoint(base: true)).encoded()
            for entry in index.liveEntries() {
                buffer += LogRecord.event(entry.record, copy: true).encoded()
                if buffer.count >= 1 << 20 {
                    try SpoolFiles.writeAll(descriptor, buffer, path: temporary, rollbackSize: nil)
                    size += buffer.count
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            try SpoolFiles.writeAll(descriptor, buffer, path: temporary, rollbackSize: nil)
            size += buffer.count
            guard fdatasync(descriptor) == 0 else { throw SpoolFiles.error("fdatasync", temporary) }
        } catch {
            Glibc.close(descriptor)
            unlink(temporary)
            throw error
        }
        Glibc.close(descriptor)
        guard rename(temporary, path) == 0 else {
            let error = SpoolFiles.error("rename", path)
            unlink(temporary)
            throw error
        }
        let appendDescriptor: Int32
        do throws(SpoolError) {
            try SpoolFiles.syncDirectory(directory)
            appendDescriptor = try SpoolFiles.openForAppend(path, create: false)
        } catch {
            // Appends must not go on in an older segment: the base checkpoint would discard them on recovery.
            unlink(path)
            throw error
        }
        let old = segmentSizes.keys.sorted()
        if activeDescriptor >= 0 { retired.append((activeDescriptor, activePath)) }
        activeDescriptor = appendDescriptor
        activeSegment = next
        index.relocateAll(to: next)
        segmentSizes = [next: size]
        diskBytes = size
        for segment in old { unlink(SpoolFiles.segmentPath(directory, segment)) }
        logger.debug("spool compacted", metadata: ["directory": "\(directory)", "live_records": "\(index.liveCount)",
                                                   "bytes": "\(size)"])
    }

    // MARK: Overflow

    /// Appends a record that does not fit: reclaims dead space, then applies the overflow policy (coalesce, drop
    /// droppable, drop normal if allowed), persists the drops, compacts if segment deletion is not enough, appends.
    /// When even that cannot make room, throws `.full` and changes nothing.
    mutating func appendMakingRoom(_ record: SpoolRecord, _ bytes: [UInt8], dropNormal: Bool)
        throws(SpoolError) -> SpoolAppendOutcome
    {
        try validateOrder(record)
        deleteDeadPrefix()
        if fits(bytes.count) {
            try appendEvent(record, bytes)
            return .appended
        }
        let hard = limits.appendLimit
        let target = hard - limits.slack
        // After a compaction the files hold a base checkpoint and the live records; the append may then start a
        // new segment (another checkpoint).
        let checkpointBytes = LogRecord.checkpoint(index.checkpoint(base: true)).encoded().count
        let overhead = 2 * checkpointBytes + bytes.count
        if index.liveBytes + overhead <= target {
            try compact()
            try appendEvent(record, bytes)
            return .appended
        }

        // Choose victims, oldest first within each step.
        let entries = index.liveEntries()
        var victims: [Removal] = []
        var victimBytes = 0
        var chosen = Set<Int>()
        var newSessions = Set<String>()
        func choose(_ position: Int, _ reason: RemovalReason) {
            let entry = entries[position]
            chosen.insert(position)
            victims.append(Removal(sessionID: entry.record.sessionID, seq: entry.record.seq, reason: reason))
            victimBytes += entry.size
            newSessions.insert(entry.record.sessionID)
        }
        // Each drop may add a range (16 bytes) and a session (id, counts) to the checkpoints.
        func projected() -> Int {
            let rangeBytes = victims.count * 16 + newSessions.reduce(0) { $0 + $1.utf8.count + 6 }
            return index.liveBytes - victimBytes + overhead + 2 * rangeBytes
        }
        var newestByKey: [String: Int] = [:]
        for (position, entry) in entries.enumerated() {
            if let key = entry.record.coalesceKey { newestByKey[key] = position }
        }
        for (position, entry) in entries.enumerated() {
            guard let key = entry.record.coalesceKey else { continue }
            if newestByKey[key] != position || key == record.coalesceKey { choose(position, .coalesced) }
        }
        var priorities: [SpoolPriority] = [.droppable]
        if dropNormal { priorities.append(.normal) }
        for priority in priorities {
            for (position, entry) in entries.enumerated() where projected() > target {
                if entry.record.priority == priority && !chosen.contains(position) { choose(position, .dropped) }
            }
        }
        guard projected() <= hard else {
            var episode = overflow ?? OverflowEpisode()
            if episode.refused == 0 {
                logger.warning(
                    "spool full of events it must not drop: refusing new events until acknowledgements make room",
                    metadata: ["directory": "\(directory)", "live_bytes": "\(index.liveBytes)",
                                              "max_bytes": "\(limits.maxBytes)", "record_bytes": "\(bytes.count)"])
            }
            episode.refused += 1
            overflow = episode
            throw .full(needed: bytes.count, available: max(0, hard - (projected() - bytes.count)), directory: directory)
        }

        let dropped = victims.count { $0.reason == .dropped }
        let coalesced = victims.count - dropped
        if victims.isEmpty {
            try compact()
        } else {
            let marker = LogRecord.removal(victims)
            let markerBytes = marker.encoded()
            let saved = index
            if diskBytes + cost(of: markerBytes.count) <= limits.maxBytes {
                // Persist the drops first (a marker), then reclaim: often whole old segments die.
                let segment = try write(markerBytes)
                index.apply(marker, segment: segment, size: markerBytes.count)
                deleteDeadPrefix()
                if !fits(bytes.count) { try compact() }
            } else {
                // No room even for the marker: the compaction persists the drops (its checkpoint lists them).
                index.apply(marker, segment: activeSegment, size: 0)
                do throws(SpoolError) { try compact() } catch {
                    index = saved
                    throw error
                }
            }
        }
        var episode = overflow ?? OverflowEpisode()
        if overflow == nil {
            logger.warning("spool full: dropping and coalescing older events to make room",
                metadata: ["directory": "\(directory)", "dropped": "\(dropped)", "coalesced": "\(coalesced)",
                           "live_bytes": "\(index.liveBytes)", "max_bytes": "\(limits.maxBytes)"])
        }
        episode.dropped += dropped
        episode.coalesced += coalesced
        overflow = episode
        try appendEvent(record, bytes)
        return victims.isEmpty ? .appended : .appendedAfterMakingRoom(dropped: dropped, coalesced: coalesced)
    }
}
