import Foundation
import Logging
import OpsBusCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// When the journal calls `fdatasync`.
public enum JournalFsync: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// After every record, before the message handler returns (and so before the PUBACK): survives an OS crash or
    /// power loss, at the cost of one disk flush per message.
    case always
    /// Once per writer batch: bounds what an OS crash can lose to the records of about one batch interval.
    case batch
    /// Never: a process crash (`kill -9`) loses nothing, because the data is already in the kernel's page cache;
    /// an OS crash or power loss can lose the records the kernel had not written back yet (default).
    case never

    public var description: String { rawValue }
}

/// A local append-only journal: the durable hand-off between an MQTT message handler and Redis, used by the bridge
/// and by the batching processor.
///
/// **Why a journal.** libmosquitto sends the PUBACK of a QoS 1 message after the message handler returns, and has no
/// manual acknowledgement. Writing to Redis inside the handler would serialize a service on one Redis round trip
/// per message (and stall keepalive while Redis is down). Instead the handler appends the message to this file with
/// one `write(2)` and returns: once `write` returned, the bytes belong to the kernel, so killing the process cannot
/// lose them, and the PUBACK that follows is safe for process crashes. (An OS crash or power loss needs
/// `JournalFsync.always`.) A writer thread reads the journal in order and writes batches to Redis.
///
/// **Layout.** A directory holding `segment-<16 digits>.journal` files (appended in number order), `committed`
/// (`<segment> <offset>`: everything before it is in Redis; replaced atomically by write + rename) and `lock`
/// (an `flock` so two processes never share a journal).
///
/// **Cost at moderate rates** (issue 6, BENCHMARKS.md defect 3). At a steady 1,000 messages/s each writer batch holds
/// one or two records, so per-batch file work dominates: the reader keeps the segment it reads open (one `pread` per
/// batch instead of open + pread + close), and the writer persists the committed position lazily
/// (`commit(_:persistAfter:)`: at most once per interval, when segments are deleted, when idle and on close) instead
/// of a write + rename per batch. After a crash, replay then starts up to one interval earlier; Redis deduplicates
/// those records like any other replay.
///
/// **Recovery.** On open, the tail of the newest segment is checked record by record (length + CRC32) from the
/// committed offset; a torn last record (the process died inside `write`, or an OS crash lost a page) is cut off
/// with `ftruncate`. Appends then go to a fresh segment. Replaying from the committed offset can repeat records
/// that were already written to Redis just before a crash; the Redis side deduplicates them.
///
/// **Bounds.** The live segments may hold at most `maxBytes`; an append that does not fit returns `.full` and the
/// service rejects the message (the broker keeps it and redelivers). Segments roll over at `segmentBytes` and are
/// deleted once fully committed.
public final class Journal: Sendable {
    public enum AppendResult: Sendable, Equatable {
        case appended(JournalPosition)
        /// Appending would exceed `maxBytes`; try again after the writer caught up.
        case full
        case failed(JournalError)
    }

    struct AppendState {
        var descriptor: Int32
        var segment: UInt64
        var size: Int64
        /// Bytes of every live segment, the current one included.
        var totalBytes: Int64
        var segmentSizes: [UInt64: Int64]
        var committed: JournalPosition
        var closed = false
    }

    public let directory: String
    /// A random id created with the journal directory (file `identity`). Dedup ids derived from journal positions
    /// include it, so a recreated journal (positions starting again at 0) can never collide with an old one.
    public let identity: String
    public let maxBytes: Int64
    public let segmentBytes: Int64
    public let fsync: JournalFsync
    private let lockDescriptor: Int32
    private let state: Mutex<AppendState>
    private let logger: Logger

    /// The segment the reader reads, kept open across reads (one `pread` per batch).
    struct ReadCache {
        var segment: UInt64
        var descriptor: Int32
    }
    private let readCache = Mutex<ReadCache?>(nil)

    /// The committed position as persisted in the `committed` file, and a newer one not persisted yet.
    struct CommitFile {
        var pending: JournalPosition?
        var pendingSince: ContinuousClock.Instant?
        var lastWrite: ContinuousClock.Instant?
    }
    private let commitFile = Mutex(CommitFile())

    /// Opens (creating if needed) and recovers the journal in `directory`, then starts a new segment for appends.
    public init(directory: String, maxBytes: Int64 = 1 << 30, segmentBytes: Int64? = nil, fsync: JournalFsync = .never,
                logger: Logger = Logger(label: "opsbus.journal")) throws(JournalError) {
        guard maxBytes >= 64 * 1024 else {
            throw .invalidConfiguration(reason: "journal max bytes must be at least 65536 (got \(maxBytes))")
        }
        self.directory = directory
        self.maxBytes = maxBytes
        self.segmentBytes = max(16 * 1024, min(segmentBytes ?? 64 * 1024 * 1024, maxBytes / 4))
        self.fsync = fsync
        self.logger = logger
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .io(path: directory, operation: "mkdir", reason: "\(error)")
        }
        let lockPath = directory + "/lock"
        let lockDescriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockDescriptor >= 0 else { throw Self.ioError(lockPath, "open") }
        // Retried briefly: a process that is just exiting, or a child forked by this process that has not reached
        // exec yet (it holds a copy of the descriptor until then), may still hold the lock for a moment.
        var locked = flock(lockDescriptor, LOCK_EX | LOCK_NB) == 0
        for _ in 0..<40 where !locked {
            usleep(50_000)
            locked = flock(lockDescriptor, LOCK_EX | LOCK_NB) == 0
        }
        guard locked else {
            Glibc.close(lockDescriptor)
            throw .io(
                path: directory, operation: "lock",
                reason: "in use by another process (each bridge or processor instance needs its own journal directory)")
        }
        self.lockDescriptor = lockDescriptor
        do {
            identity = try Self.loadIdentity(directory)
        } catch {
            Glibc.close(lockDescriptor)
            throw error
        }

        do {
            var segments = try Self.listSegments(directory)
            var committed = try Self.readCommitted(directory) ?? JournalPosition(segment: segments.first ?? 0, offset: 0)
            // Segments wholly before the committed position are leftovers of a crash between commit and delete.
            for segment in segments where segment < committed.segment {
                unlink(Self.segmentPath(directory, segment))
            }
            segments.removeAll { $0 < committed.segment }
            if let last = segments.last {
                let from = last == committed.segment ? committed.offset : 0
                try Self.truncateTornTail(Self.segmentPath(directory, last), from: from, logger: logger)
            }
            if segments.isEmpty || committed.segment < segments[0] {
                committed = JournalPosition(segment: segments.first ?? committed.segment, offset: 0)
            }
            var sizes: [UInt64: Int64] = [:]
            for segment in segments { sizes[segment] = try Self.fileSize(Self.segmentPath(directory, segment)) }
            // Segment numbers only grow (even if segment files were removed by hand), so a journal position, and the
            // `j:` dedup id built from it, is never reused within one journal identity.
            let next = max((segments.last.map { $0 + 1 }) ?? 0, committed.segment + 1)
            let descriptor = try Self.openSegment(directory, next)
            sizes[next] = 0
            state = Mutex(AppendState(
                descriptor: descriptor, segment: next, size: 0, totalBytes: sizes.values.reduce(0, +),
                segmentSizes: sizes, committed: committed))
        } catch {
            Glibc.close(lockDescriptor)
            throw error
        }
    }

    deinit {
        close()
    }

    /// Persists a pending committed position, closes the descriptors and releases the directory lock. Later
    /// appends fail.
    public func close() {
        let open = state.withLock { !$0.closed }
        if open {
            do {
                try persistPendingCommit()
            } catch {
                logger.warning("journal: cannot persist the committed position on close", metadata: ["error": "\(error)"])
            }
        }
        readCache.withLock { cache in
            if let cache { Glibc.close(cache.descriptor) }
            cache = nil
        }
        state.withLock { state in
            guard !state.closed else { return }
            state.closed = true
            Glibc.close(state.descriptor)
            Glibc.close(lockDescriptor)
        }
    }

    // MARK: Appending (message handler)

    /// Appends one record with a single `write(2)`. A short or failed write is rolled back with `ftruncate`, so a
    /// record is either wholly in the file or not at all (as far as this process can tell).
    public func append(_ record: JournalRecord) -> AppendResult {
        let bytes = record.encoded()
        return state.withLock { state -> AppendResult in
            guard !state.closed else { return .failed(.io(path: directory, operation: "append", reason: "closed")) }
            let count = Int64(bytes.count)
            if state.totalBytes + count > maxBytes { return .full }
            if state.size > 0 && state.size + count > segmentBytes {
                do throws(JournalError) { try rollOver(&state) } catch { return .failed(error) }
            }
            let position = JournalPosition(segment: state.segment, offset: state.size)
            let written = bytes.withUnsafeBytes { buffer -> Int in
                var done = 0
                while done < buffer.count {
                    let result = write(state.descriptor, buffer.baseAddress! + done, buffer.count - done)
                    if result < 0 {
                        if errno == EINTR { continue }
                        return -Int(errno)
                    }
                    if result == 0 { break }
                    done += result
                }
                return done
            }
            guard written == bytes.count else {
                let reason = written < 0 ? String(cString: strerror(Int32(-written))) : "short write"
                _ = ftruncate(state.descriptor, off_t(state.size))
                return .failed(.io(path: Self.segmentPath(directory, state.segment), operation: "write", reason: reason))
            }
            if fsync == .always && fdatasync(state.descriptor) != 0 {
                let error = Self.ioError(Self.segmentPath(directory, state.segment), "fdatasync")
                _ = ftruncate(state.descriptor, off_t(state.size))
                return .failed(error)
            }
            state.size += count
            state.totalBytes += count
            state.segmentSizes[state.segment] = state.size
            return .appended(position)
        }
    }

    private func rollOver(_ state: inout AppendState) throws(JournalError) {
        let next = state.segment + 1
        let descriptor = try Self.openSegment(directory, next)
        if fsync != .never { _ = fdatasync(state.descriptor) }
        Glibc.close(state.descriptor)
        state.descriptor = descriptor
        state.segment = next
        state.size = 0
        state.segmentSizes[next] = 0
    }

    /// Flushes the current segment to disk (`JournalFsync.batch`).
    public func sync() {
        state.withLock { state in
            if !state.closed { _ = fdatasync(state.descriptor) }
        }
    }

    // MARK: Reading and committing (writer thread)

    /// The end of what has been appended so far.
    public var appendedEnd: JournalPosition {
        state.withLock { JournalPosition(segment: $0.segment, offset: $0.size) }
    }

    /// Everything before this position has been written to Redis.
    public var committed: JournalPosition { state.withLock { $0.committed } }

    /// Bytes held by live segments (committed and not).
    public var usedBytes: Int64 { state.withLock { $0.totalBytes } }

    /// Bytes appended and not yet committed: exact within one segment, `usedBytes` (an upper bound) across segments.
    public var pendingBytes: Int64 {
        let (committed, appended) = (self.committed, appendedEnd)
        return appended.segment == committed.segment ? max(0, appended.offset - committed.offset) : usedBytes
    }

    /// Records everything before `position` as written to Redis: the `committed` file is replaced atomically
    /// (write, optional fsync, rename), then segments wholly before `position` are deleted.
    public func commit(_ position: JournalPosition) throws(JournalError) {
        try writeCommitted(position)
        deleteObsoleteSegments(before: position)
    }

    /// Like `commit(_:)`, but the file is written only when its last write is at least `interval` old, or segments
    /// become obsolete (they are deleted only after the file moved past them); otherwise the position is kept
    /// pending for `persistPendingCommit()` (the writer calls it when idle and past the interval, and `close` does).
    /// The in-memory `committed` moves at once. A crash loses at most `interval` of commits: those records are
    /// replayed, and the Redis side deduplicates them.
    public func commit(_ position: JournalPosition, persistAfter interval: Duration) throws(JournalError) {
        let now = ContinuousClock.now
        let obsolete = state.withLock { state in state.segmentSizes.keys.contains { $0 < position.segment } }
        let due = commitFile.withLock { file -> Bool in
            if obsolete { return true }
            guard let last = file.lastWrite, now - last < interval else { return true }
            if file.pending == nil { file.pendingSince = now }
            file.pending = position
            return false
        }
        if due {
            try writeCommitted(position)
            deleteObsoleteSegments(before: position)
        } else {
            state.withLock { $0.committed = position }
        }
    }

    /// When the pending committed position (if any) should be written: `interval` after it became pending.
    public func pendingCommitDue(after interval: Duration) -> ContinuousClock.Instant? {
        commitFile.withLock { file in file.pending == nil ? nil : file.pendingSince.map { $0 + interval } }
    }

    /// Writes the pending committed position, if any.
    public func persistPendingCommit() throws(JournalError) {
        guard let pending = commitFile.withLock({ $0.pending }) else { return }
        try writeCommitted(pending)
    }

    private func writeCommitted(_ position: JournalPosition) throws(JournalError) {
        let path = directory + "/committed"
        let temporary = path + ".tmp"
        let text = Array("\(position.segment) \(position.offset)\n".utf8)
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw Self.ioError(temporary, "open") }
        let written = text.withUnsafeBytes { write(descriptor, $0.baseAddress!, $0.count) }
        if written != text.count {
            Glibc.close(descriptor)
            throw Self.ioError(temporary, "write")
        }
        if fsync != .never { _ = fdatasync(descriptor) }
        Glibc.close(descriptor)
        guard rename(temporary, path) == 0 else { throw Self.ioError(path, "rename") }
        let now = ContinuousClock.now
        commitFile.withLock { file in
            file.lastWrite = now
            // A newer position may have become pending meanwhile (it stays pending); this one is on disk.
            if file.pending.map({ $0 <= position }) ?? false {
                file.pending = nil
                file.pendingSince = nil
            }
        }
        state.withLock { state in
            if state.committed <= position { state.committed = position }
        }
    }

    /// Deletes the segments wholly before `position` (already persisted as committed).
    private func deleteObsoleteSegments(before position: JournalPosition) {
        let obsolete: [UInt64] = state.withLock { state in
            let old = state.segmentSizes.keys.filter { $0 < position.segment }
            for segment in old { state.totalBytes -= state.segmentSizes.removeValue(forKey: segment) ?? 0 }
            return old.sorted()
        }
        readCache.withLock { cache in
            if let current = cache, obsolete.contains(current.segment) {
                Glibc.close(current.descriptor)
                cache = nil
            }
        }
        for segment in obsolete { unlink(Self.segmentPath(directory, segment)) }
    }

    /// Reads up to `maxRecords` complete records (about `maxBytes` at most, but always at least one) starting at
    /// `position`, never past what has been appended. Moves on to the next segment at the end of a sealed one; a
    /// corrupt record in a sealed segment (disk damage: recovery already cut torn tails) ends that segment, logged.
    public func read(from position: JournalPosition, maxRecords: Int, maxBytes: Int = 8 * 1024 * 1024)
        throws(JournalError) -> (entries: [JournalEntry], next: JournalPosition)
    {
        var position = position
        var entries: [JournalEntry] = []
        var budget = maxBytes
        while entries.count < maxRecords {
            let (end, current) = state.withLock { ($0.segmentSizes[position.segment], $0.segment) }
            guard let end else {
                // Not a live segment (deleted after commit, or a gap): go to the next one that exists.
                if position.segment >= current { break }
                position = JournalPosition(segment: position.segment + 1, offset: 0)
                continue
            }
            if position.offset >= end {
                if position.segment < current {
                    position = JournalPosition(segment: position.segment + 1, offset: 0)
                    continue
                }
                break
            }
            let path = Self.segmentPath(directory, position.segment)
            // At most 1 MiB per read (a batch rarely needs more); a larger record is read whole below.
            let length = Int(min(end - position.offset, Int64(max(min(budget, 1 << 20), JournalRecord.headerBytes))))
            var buffer = try readSegment(position.segment, offset: position.offset, length: length)
            var consumed = 0
            var stop = false
            while entries.count < maxRecords && !stop {
                let decoded = buffer.withUnsafeBytes { JournalRecord.decode($0, at: consumed) }
                switch decoded {
                case let .record(record, size):
                    let start = JournalPosition(segment: position.segment, offset: position.offset + Int64(consumed))
                    consumed += size
                    budget -= size
                    entries.append(JournalEntry(
                        position: start,
                        next: JournalPosition(segment: position.segment, offset: position.offset + Int64(consumed)),
                        record: record))
                    if budget <= 0 { stop = true }
                case let .incomplete(needed):
                    if consumed == 0, let needed, Int64(needed) <= end - position.offset {
                        // The first record is larger than the read budget: read exactly it.
                        buffer = try readSegment(position.segment, offset: position.offset, length: needed)
                        continue
                    }
                    if consumed == 0 && position.offset + Int64(buffer.count) >= end {
                        // The segment ends inside a record.
                        stop = true
                        consumed = -1
                    } else {
                        stop = true
                    }
                case let .corrupt(reason):
                    if consumed == 0 {
                        consumed = -1
                        logger.error("corrupt journal record; skipping the rest of the segment",
                            metadata: ["segment": "\(path)", "offset": "\(position.offset)", "reason": "\(reason)"])
                    }
                    stop = true
                }
            }
            if consumed < 0 {
                // Unreadable data at `position`: nothing after it in this segment can be trusted.
                if position.segment < current {
                    position = JournalPosition(segment: position.segment + 1, offset: 0)
                    continue
                }
                break  // Cannot happen for the live segment (only whole records are appended); do not spin.
            }
            position.offset += Int64(consumed)
            if budget <= 0 || consumed == 0 { break }
        }
        return (entries, position)
    }

    /// Reads from a segment through the cached descriptor, opening it (and closing the previous one) on a change.
    private func readSegment(_ segment: UInt64, offset: Int64, length: Int) throws(JournalError) -> [UInt8] {
        let path = Self.segmentPath(directory, segment)
        return try readCache.withLock { cache throws(JournalError) -> [UInt8] in
            if let current = cache, current.segment != segment {
                Glibc.close(current.descriptor)
                cache = nil
            }
            if cache == nil {
                let descriptor = open(path, O_RDONLY | O_CLOEXEC)
                guard descriptor >= 0 else { throw Self.ioError(path, "open") }
                cache = ReadCache(segment: segment, descriptor: descriptor)
            }
            return try Self.pread(cache!.descriptor, path: path, offset: offset, length: length)
        }
    }

    // MARK: Files

    static func segmentPath(_ directory: String, _ segment: UInt64) -> String {
        let digits = String(segment)
        return directory + "/segment-" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits + ".journal"
    }

    static func listSegments(_ directory: String) throws(JournalError) -> [UInt64] {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw .io(path: directory, operation: "list", reason: "\(error)")
        }
        return names.compactMap { name -> UInt64? in
            guard name.hasPrefix("segment-"), name.hasSuffix(".journal") else { return nil }
            return UInt64(name.dropFirst("segment-".count).dropLast(".journal".count))
        }.sorted()
    }

    static func loadIdentity(_ directory: String) throws(JournalError) -> String {
        let path = directory + "/identity"
        if FileManager.default.fileExists(atPath: path) {
            let text = String(decoding: try readFile(path, offset: 0, length: 128), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty else { throw .io(path: path, operation: "parse", reason: "empty identity file") }
            return text
        }
        let identity = EventID.make()
        let temporary = path + ".tmp"
        do {
            try Data((identity + "\n").utf8).write(to: URL(fileURLWithPath: temporary))
        } catch {
            throw .io(path: temporary, operation: "write", reason: "\(error)")
        }
        guard rename(temporary, path) == 0 else { throw ioError(path, "rename") }
        return identity
    }

    static func readCommitted(_ directory: String) throws(JournalError) -> JournalPosition? {
        let path = directory + "/committed"
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let data = try readFile(path, offset: 0, length: 128)
        let parts = String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count == 2, let segment = UInt64(parts[0]), let offset = Int64(parts[1]), offset >= 0 else {
            throw .io(path: path, operation: "parse", reason: "expected '<segment> <offset>'")
        }
        return JournalPosition(segment: segment, offset: offset)
    }

    /// Cuts the file after its last intact record (scanning from `from`, a known record boundary).
    static func truncateTornTail(_ path: String, from: Int64, logger: Logger) throws(JournalError) {
        let size = try fileSize(path)
        var offset = min(from, size)
        let chunk = 4 * 1024 * 1024
        while offset < size {
            var buffer = try readFile(path, offset: offset, length: Int(min(Int64(chunk), size - offset)))
            var consumed = 0
            var done = false
            while !done {
                switch buffer.withUnsafeBytes({ JournalRecord.decode($0, at: consumed) }) {
                case let .record(_, recordSize):
                    consumed += recordSize
                case let .incomplete(needed):
                    if consumed == 0, let needed, offset + Int64(needed) <= size {
                        buffer = try readFile(path, offset: offset, length: needed)
                        continue
                    }
                    done = true
                case .corrupt:
                    done = true
                }
            }
            if consumed == 0 {
                logger.warning("journal: cutting a torn or corrupt tail",
                    metadata: ["segment": "\(path)", "offset": "\(offset)", "bytes": "\(size - offset)"])
                guard truncate(path, off_t(offset)) == 0 else { throw ioError(path, "truncate") }
                return
            }
            offset += Int64(consumed)
        }
    }

    static func openSegment(_ directory: String, _ segment: UInt64) throws(JournalError) -> Int32 {
        let path = segmentPath(directory, segment)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ioError(path, "open") }
        return descriptor
    }

    static func fileSize(_ path: String) throws(JournalError) -> Int64 {
        var info = stat()
        guard stat(path, &info) == 0 else { throw ioError(path, "stat") }
        return Int64(info.st_size)
    }

    static func readFile(_ path: String, offset: Int64, length: Int) throws(JournalError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ioError(path, "open") }
        defer { Glibc.close(descriptor) }
        return try pread(descriptor, path: path, offset: offset, length: length)
    }

    static func pread(_ descriptor: Int32, path: String, offset: Int64, length: Int) throws(JournalError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let result = buffer.withUnsafeMutableBytes {
                Glibc.pread(descriptor, $0.baseAddress! + done, length - done, off_t(offset) + off_t(done))
            }
            if result < 0 {
                if errno == EINTR { continue }
                throw ioError(path, "read")
            }
            if result == 0 { break }
            done += result
        }
        if done < length { buffer.removeLast(length - done) }
        return buffer
    }

    static func ioError(_ path: String, _ operation: String) -> JournalError {
        .io(path: path, operation: operation, reason: String(cString: strerror(errno)))
    }
}
