import Logging

#if canImport(Glibc)
import Glibc
#endif

/// File operations on a spool directory (Glibc, like the bridge's journal: one `write(2)` per record, `fdatasync`).
enum SpoolFiles {
    static let segmentPrefix = "segment-"
    static let segmentSuffix = ".spool"

    static func segmentPath(_ directory: String, _ segment: UInt64) -> String {
        let digits = String(segment)
        return directory + "/" + segmentPrefix + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
            + segmentSuffix
    }

    static func compactionPath(_ directory: String) -> String { directory + "/compact.tmp" }

    static func error(_ operation: String, _ path: String, _ code: Int32 = errno) -> SpoolError {
        .io(operation: operation, path: path, errno: code)
    }

    static func listSegments(_ directory: String) throws(SpoolError) -> [UInt64] {
        guard let handle = opendir(directory) else { throw error("list", directory) }
        defer { closedir(handle) }
        var segments: [UInt64] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasPrefix(segmentPrefix), name.hasSuffix(segmentSuffix),
                  let number = UInt64(name.dropFirst(segmentPrefix.count).dropLast(segmentSuffix.count))
            else { continue }
            segments.append(number)
        }
        return segments.sorted()
    }

    /// The whole file, or nil if it does not exist (deleted by the owner while a read-only reader lists it).
    static func readFile(_ path: String) throws(SpoolError) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        if descriptor < 0 {
            if errno == ENOENT { return nil }
            throw error("open", path)
        }
        defer { Glibc.close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw error("stat", path) }
        return try read(descriptor, path: path, offset: 0, length: Int(info.st_size))
    }

    static func read(_ descriptor: Int32, path: String, offset: Int, length: Int) throws(SpoolError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let result = buffer.withUnsafeMutableBytes {
                pread(descriptor, $0.baseAddress! + done, length - done, off_t(offset + done))
            }
            if result < 0 {
                if errno == EINTR { continue }
                throw error("read", path)
            }
            if result == 0 { break }
            done += result
        }
        if done < length { buffer.removeLast(length - done) }
        return buffer
    }

    /// Writes all of `bytes` (retrying short writes and EINTR). On failure the file is cut back to `rollbackSize`,
    /// so a record is wholly in the file or not at all as far as this process can tell.
    static func writeAll(_ descriptor: Int32, _ bytes: [UInt8], path: String, rollbackSize: Int?) throws(SpoolError) {
        let failure: Int32? = bytes.withUnsafeBytes { buffer -> Int32? in
            var done = 0
            while done < buffer.count {
                let result = write(descriptor, buffer.baseAddress! + done, buffer.count - done)
                if result < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if result == 0 { return EIO }
                done += result
            }
            return nil
        }
        if let failure {
            if let rollbackSize { _ = ftruncate(descriptor, off_t(rollbackSize)) }
            throw error("write", path, failure)
        }
    }

    static func openForAppend(_ path: String, create: Bool) throws(SpoolError) -> Int32 {
        let flags = O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0)
        let descriptor = open(path, flags, 0o644)
        guard descriptor >= 0 else { throw error("open", path) }
        return descriptor
    }

    static func syncDirectory(_ directory: String) throws(SpoolError) {
        let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw error("open", directory) }
        defer { Glibc.close(descriptor) }
        guard fsync(descriptor) == 0 else { throw error("fsync", directory) }
    }

    /// `mkdir -p`.
    static func createDirectory(_ directory: String) throws(SpoolError) {
        var path = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o755) != 0 && errno != EEXIST { throw error("mkdir", path) }
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw error("stat", directory) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw error("mkdir", directory, ENOTDIR) }
    }

    /// Takes the directory's exclusive `flock`, retrying for `timeoutMilliseconds` (a process that is just exiting,
    /// or a child forked by this one that has not reached exec yet, may hold it for a moment).
    static func lock(_ directory: String, timeoutMilliseconds: Int) throws(SpoolError) -> Int32 {
        let path = directory + "/lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw error("open", path) }
        let deadline = ContinuousClock.now + .milliseconds(max(0, timeoutMilliseconds))
        while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            guard code == EWOULDBLOCK || code == EINTR else {
                Glibc.close(descriptor)
                throw error("lock", path, code)
            }
            guard ContinuousClock.now < deadline else {
                Glibc.close(descriptor)
                throw .locked(directory: directory)
            }
            usleep(20_000)
        }
        return descriptor
    }

    static func wallClockMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// The log of a spool directory as read back: the rebuilt index plus what recovery has to repair.
struct LoadedLog {
    var index = SpoolIndex()
    /// Readable segments and their sizes (after cutting torn tails, when not read-only).
    var segmentSizes: [UInt64: Int] = [:]
    /// Segments older than the newest compaction output: superseded, to be deleted.
    var superseded: [UInt64] = []
    /// Torn tails to cut: segment → end of its last intact record.
    var truncations: [(segment: UInt64, validEnd: Int, bytes: Int)] = []
    /// Damaged stretches followed by intact records (only a rewrite removes them).
    var damagedStretches = 0

    /// Replays the segments in order, from the newest one that starts with a compaction checkpoint.
    ///
    /// `readOnly` (inspect): a torn tail of the newest segment may be a write in progress, so it is neither counted
    /// nor cut; a segment that disappears while reading means the owner compacted or cleaned up: `nil`, read again.
    static func load(directory: String, readOnly: Bool, logger: Logger) throws(SpoolError) -> LoadedLog? {
        var log = LoadedLog()
        let segments = try SpoolFiles.listSegments(directory)
        var start = 0
        for position in segments.indices.reversed() {
            let path = SpoolFiles.segmentPath(directory, segments[position])
            guard let isBase = try startsWithBaseCheckpoint(path) else {
                if readOnly { return nil }
                continue
            }
            if isBase {
                start = position
                break
            }
        }
        log.superseded = Array(segments[..<start])
        var newTorn: UInt64 = 0
        for segment in segments[start...] {
            let path = SpoolFiles.segmentPath(directory, segment)
            guard let bytes = try SpoolFiles.readFile(path) else {
                if readOnly { return nil }
                continue
            }
            let scan = SegmentScan.scan(bytes)
            for entry in scan.entries { log.index.apply(entry.record, segment: segment, size: entry.size) }
            for stretch in scan.damaged {
                logger.error("spool: skipping a corrupt stretch in the middle of a segment",
                    metadata: ["segment": "\(path)", "offset": "\(stretch.offset)", "bytes": "\(stretch.bytes)"])
            }
            log.damagedStretches += scan.damaged.count
            newTorn += UInt64(scan.damaged.count)
            let newest = segment == segments.last
            if scan.tailBytes > 0 && !(readOnly && newest) {
                if !readOnly {
                    logger.warning("spool: cutting a torn or corrupt tail",
                        metadata: ["segment": "\(path)", "offset": "\(scan.validEnd)", "bytes": "\(scan.tailBytes)"])
                }
                log.truncations.append((segment, scan.validEnd, scan.tailBytes))
                newTorn += 1
            }
            log.segmentSizes[segment] = readOnly ? bytes.count : scan.validEnd
        }
        log.index.counters.torn &+= newTorn
        return log
    }

    /// Whether the file's first record is an intact compaction checkpoint; nil if the file does not exist.
    private static func startsWithBaseCheckpoint(_ path: String) throws(SpoolError) -> Bool? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        if descriptor < 0 {
            if errno == ENOENT { return nil }
            throw SpoolFiles.error("open", path)
        }
        defer { Glibc.close(descriptor) }
        let header = try SpoolFiles.read(descriptor, path: path, offset: 0, length: LogRecord.headerBytes)
        guard header.count == LogRecord.headerBytes, header[0] == LogRecord.magic.0, header[1] == LogRecord.magic.1,
              header[7] == LogRecord.Kind.checkpoint.rawValue
        else { return false }
        let length = Int(header.withUnsafeBytes { ByteReader.integer($0, at: 8, bytes: 4) })
        guard length <= LogRecord.maximumBodyBytes else { return false }
        let record = try SpoolFiles.read(descriptor, path: path, offset: 0, length: LogRecord.headerBytes + length)
        guard case let .record(.checkpoint(checkpoint), _) = record.withUnsafeBytes({ LogRecord.decode($0, at: 0) })
        else { return false }
        return checkpoint.base
    }
}
