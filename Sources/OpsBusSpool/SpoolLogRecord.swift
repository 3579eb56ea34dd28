import OpsBusCore

/// Why a removal marker removed a record.
enum RemovalReason: UInt8, Sendable {
    /// `remove(sessionID:seq:)`: the broker acknowledged it (counted as acknowledged).
    case acknowledged = 0
    /// Dropped by the overflow policy: never to be sent; `declaredGapStart` reports it.
    case dropped = 1
    /// Superseded by a newer record with the same coalesce key: like `dropped`, counted separately.
    case coalesced = 2
    /// Taken back because `append` failed after the write (its `fdatasync` failed): as if never appended.
    case withdrawn = 3
}

struct Removal: Sendable, Hashable {
    var sessionID: String
    var seq: UInt64
    var reason: RemovalReason
}

/// The cumulative counters, as persisted in checkpoints.
struct SpoolCounters: Sendable, Hashable {
    var appended: UInt64 = 0
    var acknowledged: UInt64 = 0
    var dropped: UInt64 = 0
    var coalesced: UInt64 = 0
    var torn: UInt64 = 0
}

/// The state a log reader needs that older, possibly deleted, segments established: counters and the drop ranges
/// that `declaredGapStart` still needs. Every segment starts with one, so deleting older segments loses nothing.
struct Checkpoint: Sendable, Hashable {
    /// Written by compaction: the segment holds every live record, so everything before it is obsolete.
    var base: Bool
    var counters: SpoolCounters
    var dropRanges: [String: [ClosedRange<UInt64>]]
}

/// One record of the spool's log.
///
/// On disk (little-endian): `magic F5 5F | u32 crc32 | u8 version(1) | u8 kind | u32 bodyLength | body`; the CRC
/// covers everything after itself (version, kind, length, body). 0xF5 never occurs in UTF-8, so the magic lets a
/// reader find the next record after a damaged stretch of JSON payloads without trying a CRC at every byte.
///
/// Bodies:
/// - event (1): `u8 flags (bit0 retain, bit1 has key, bit2 copy), u8 qos, u8 priority, u64 seq, i64 appendedAtMs,
///   str session, str topic, [str key], payload (rest)`. A copy (written by compaction) does not count as appended.
/// - ack (2): `str session, u64 throughSeq, u32 removed` (removed: how many records it removed when written, so
///   the counter survives the deletion of the segments holding them).
/// - removal (3): `u32 count, count × (str session, u64 seq, u8 reason)`.
/// - checkpoint (4): `u8 flags (bit0 base), 5 × u64 counters, u32 sessions, per session: str id, u32 n,
///   n × (u64 first, u64 last)` dropped ranges.
/// `str` = `u16 length, UTF-8 bytes`.
enum LogRecord: Sendable, Hashable {
    case event(SpoolRecord, copy: Bool)
    case ack(sessionID: String, throughSeq: UInt64, removed: UInt32)
    case removal([Removal])
    case checkpoint(Checkpoint)

    static let magic: (UInt8, UInt8) = (0xF5, 0x5F)
    static let version: UInt8 = 1
    static let headerBytes = 12
    /// Sanity bound on a length read from disk: larger is corruption, not a record.
    static let maximumBodyBytes = 256 << 20
    static let maximumStringBytes = Int(UInt16.max)

    enum Kind: UInt8 {
        case event = 1, ack = 2, removal = 3, checkpoint = 4
    }

    var kind: Kind {
        switch self {
        case .event: return .event
        case .ack: return .ack
        case .removal: return .removal
        case .checkpoint: return .checkpoint
        }
    }

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        // An event record in one allocation (its payload appended to a 64-byte reserve grew the buffer twice).
        if case let .event(record, _) = self {
            writer.bytes.reserveCapacity(Self.headerBytes + 64 + record.payload.count + record.sessionID.utf8.count
                                         + record.topic.utf8.count + (record.coalesceKey?.utf8.count ?? 0))
        } else {
            writer.bytes.reserveCapacity(Self.headerBytes + 64)
        }
        writer.u8(Self.magic.0)
        writer.u8(Self.magic.1)
        writer.u32(0)  // CRC, below
        writer.u8(Self.version)
        writer.u8(kind.rawValue)
        writer.u32(0)  // length, below
        switch self {
        case let .event(record, copy):
            let flags: UInt8 = (record.retain ? 1 : 0) | (record.coalesceKey != nil ? 2 : 0) | (copy ? 4 : 0)
            writer.u8(flags)
            writer.u8(record.qos)
            writer.u8(record.priority.rawValue)
            writer.u64(record.seq)
            writer.u64(UInt64(bitPattern: record.appendedAtMilliseconds))
            writer.string(record.sessionID)
            writer.string(record.topic)
            if let key = record.coalesceKey { writer.string(key) }
            writer.bytes += record.payload
        case let .ack(sessionID, throughSeq, removed):
            writer.string(sessionID)
            writer.u64(throughSeq)
            writer.u32(removed)
        case let .removal(items):
            writer.u32(UInt32(items.count))
            for item in items {
                writer.string(item.sessionID)
                writer.u64(item.seq)
                writer.u8(item.reason.rawValue)
            }
        case let .checkpoint(checkpoint):
            writer.u8(checkpoint.base ? 1 : 0)
            let counters = checkpoint.counters
            for value in [counters.appended, counters.acknowledged, counters.dropped, counters.coalesced, counters.torn] {
                writer.u64(value)
            }
            let sessions = checkpoint.dropRanges.filter { !$0.value.isEmpty }.sorted { $0.key < $1.key }
            writer.u32(UInt32(sessions.count))
            for (session, ranges) in sessions {
                writer.string(session)
                writer.u32(UInt32(ranges.count))
                for range in ranges {
                    writer.u64(range.lowerBound)
                    writer.u64(range.upperBound)
                }
            }
        }
        var bytes = writer.bytes
        ByteWriter.put(UInt64(bytes.count - Self.headerBytes), bytes: 4, into: &bytes, at: 8)
        let crc = bytes.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[6...])) }
        ByteWriter.put(UInt64(crc), bytes: 4, into: &bytes, at: 2)
        return bytes
    }

    /// What `decode` found at an offset.
    enum Decoded {
        /// A complete, intact record of `size` bytes (header included).
        case record(LogRecord, size: Int)
        /// The buffer ends inside the record.
        case incomplete
        /// Not a record here: wrong magic, version or kind, length out of range, CRC mismatch, malformed body.
        case corrupt(String)
    }

    static func decode(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
        let available = buffer.count - offset
        guard available >= headerBytes else {
            // A prefix of a header that does not even start with the magic is garbage, not a torn record.
            if available >= 1 && buffer[offset] != magic.0 { return .corrupt("bad magic") }
            if available >= 2 && buffer[offset + 1] != magic.1 { return .corrupt("bad magic") }
            return .incomplete
        }
        guard buffer[offset] == magic.0, buffer[offset + 1] == magic.1 else { return .corrupt("bad magic") }
        guard buffer[offset + 6] == version else { return .corrupt("unknown version \(buffer[offset + 6])") }
        guard let kind = Kind(rawValue: buffer[offset + 7]) else { return .corrupt("unknown kind \(buffer[offset + 7])") }
        let length = Int(ByteReader.integer(buffer, at: offset + 8, bytes: 4))
        guard length <= maximumBodyBytes else { return .corrupt("length \(length) out of range") }
        guard available >= headerBytes + length else { return .incomplete }
        let stored = UInt32(ByteReader.integer(buffer, at: offset + 2, bytes: 4))
        let covered = UnsafeRawBufferPointer(rebasing: buffer[(offset + 6)..<(offset + headerBytes + length)])
        guard CRC32.checksum(covered) == stored else { return .corrupt("CRC mismatch") }
        var reader = ByteReader(UnsafeRawBufferPointer(rebasing: buffer[(offset + headerBytes)..<(offset + headerBytes + length)]))
        guard let record = parseBody(kind, &reader) else { return .corrupt("malformed \(kind) body") }
        return .record(record, size: headerBytes + length)
    }

    private static func parseBody(_ kind: Kind, _ reader: inout ByteReader) -> LogRecord? {
        switch kind {
        case .event:
            guard let flags = reader.u8(), let qos = reader.u8(), let priorityRaw = reader.u8(),
                  let priority = SpoolPriority(rawValue: priorityRaw), let seq = reader.u64(),
                  let appendedAt = reader.u64(), let session = reader.string(), let topic = reader.string()
            else { return nil }
            var key: String?
            if flags & 2 != 0 {
                guard let value = reader.string() else { return nil }
                key = value
            }
            let record = SpoolRecord(
                sessionID: session, seq: seq, topic: topic, payload: reader.rest(), qos: qos, retain: flags & 1 != 0,
                priority: priority, coalesceKey: key, appendedAtMilliseconds: Int64(bitPattern: appendedAt))
            return .event(record, copy: flags & 4 != 0)
        case .ack:
            guard let session = reader.string(), let through = reader.u64(), let removed = reader.u32(), reader.atEnd
            else { return nil }
            return .ack(sessionID: session, throughSeq: through, removed: removed)
        case .removal:
            guard let count = reader.u32() else { return nil }
            var items: [Removal] = []
            for _ in 0..<count {
                guard let session = reader.string(), let seq = reader.u64(), let raw = reader.u8(),
                      let reason = RemovalReason(rawValue: raw)
                else { return nil }
                items.append(Removal(sessionID: session, seq: seq, reason: reason))
            }
            return reader.atEnd ? .removal(items) : nil
        case .checkpoint:
            guard let flags = reader.u8(), let appended = reader.u64(), let acknowledged = reader.u64(),
                  let dropped = reader.u64(), let coalesced = reader.u64(), let torn = reader.u64(),
                  let sessions = reader.u32()
            else { return nil }
            var ranges: [String: [ClosedRange<UInt64>]] = [:]
            for _ in 0..<sessions {
                guard let session = reader.string(), let count = reader.u32() else { return nil }
                var list: [ClosedRange<UInt64>] = []
                for _ in 0..<count {
                    guard let low = reader.u64(), let high = reader.u64(), low <= high else { return nil }
                    list.append(low...high)
                }
                ranges[session] = list
            }
            guard reader.atEnd else { return nil }
            return .checkpoint(Checkpoint(
                base: flags & 1 != 0,
                counters: SpoolCounters(appended: appended, acknowledged: acknowledged, dropped: dropped,
                                        coalesced: coalesced, torn: torn),
                dropRanges: ranges))
        }
    }
}

/// The records of one segment file, and what could not be read.
struct SegmentScan {
    struct Entry {
        var offset: Int
        var size: Int
        var record: LogRecord
    }

    var entries: [Entry] = []
    /// Damaged stretches followed by intact records (each counts as one torn record).
    var damaged: [(offset: Int, bytes: Int)] = []
    /// End of the last intact record.
    var validEnd = 0
    /// Bytes after `validEnd` that are not a record (a torn last write, or garbage); 0 if none.
    var tailBytes = 0

    /// Reads every intact record. After a damaged stretch it resynchronises on the next offset that holds an intact
    /// record (magic + valid CRC); if there is none, the stretch is the tail.
    static func scan(_ bytes: [UInt8]) -> SegmentScan {
        var scan = SegmentScan()
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                switch LogRecord.decode(buffer, at: offset) {
                case let .record(record, size):
                    scan.entries.append(Entry(offset: offset, size: size, record: record))
                    offset += size
                    scan.validEnd = offset
                case .incomplete, .corrupt:
                    guard let next = resynchronise(buffer, after: offset) else {
                        scan.tailBytes = buffer.count - offset
                        return
                    }
                    scan.damaged.append((offset, next - offset))
                    offset = next
                }
            }
        }
        return scan
    }

    private static func resynchronise(_ buffer: UnsafeRawBufferPointer, after offset: Int) -> Int? {
        var candidate = offset + 1
        while candidate + LogRecord.headerBytes <= buffer.count {
            if buffer[candidate] == LogRecord.magic.0 && buffer[candidate + 1] == LogRecord.magic.1,
               case .record = LogRecord.decode(buffer, at: candidate) {
                return candidate
            }
            candidate += 1
        }
        return nil
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u32(_ value: UInt32) { append(UInt64(value), 4) }
    mutating func u64(_ value: UInt64) { append(value, 8) }

    /// Callers validate lengths first (`Spool` rejects longer fields); this only guards the format.
    mutating func string(_ value: String) {
        let count = min(value.utf8.count, LogRecord.maximumStringBytes)
        append(UInt64(count), 2)
        // Straight from the string's storage: `Array(value.utf8.prefix(_:))` copied byte by byte (issue 6).
        if value.utf8.withContiguousStorageIfAvailable({ bytes += UnsafeBufferPointer(rebasing: $0.prefix(count)) }) == nil {
            bytes += value.utf8.prefix(count)
        }
    }

    private mutating func append(_ value: UInt64, _ count: Int) {
        for index in 0..<count { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))) }
    }

    static func put(_ value: UInt64, bytes count: Int, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<count { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }
}

struct ByteReader {
    let buffer: UnsafeRawBufferPointer
    var offset = 0

    init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    var atEnd: Bool { offset == buffer.count }

    static func integer(_ buffer: UnsafeRawBufferPointer, at offset: Int, bytes: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<bytes { value |= UInt64(buffer[offset + index]) << (8 * UInt64(index)) }
        return value
    }

    private mutating func integer(_ count: Int) -> UInt64? {
        guard buffer.count - offset >= count else { return nil }
        defer { offset += count }
        return Self.integer(buffer, at: offset, bytes: count)
    }

    mutating func u8() -> UInt8? { integer(1).map { UInt8($0) } }
    mutating func u32() -> UInt32? { integer(4).map { UInt32($0) } }
    mutating func u64() -> UInt64? { integer(8) }

    mutating func string() -> String? {
        guard let length = integer(2).map(Int.init), buffer.count - offset >= length else { return nil }
        defer { offset += length }
        return String(decoding: UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + length)]), as: UTF8.self)
    }

    mutating func rest() -> [UInt8] {
        defer { offset = buffer.count }
        return Array(buffer[offset...])
    }
}
