import OpsBusCore

/// One MQTT message as it is journaled.
///
/// On disk (little-endian): `u32 bodyLength, u32 crc32(body), body`, with body =
/// `u8 version(1), u8 flags(bit0 retain, bit1 truncated), u8 qos, i64 receivedAtMs, u32 originalPayloadBytes,
/// u16 topicBytes, topic, payload`. The length and the CRC let recovery tell a complete record from a torn one
/// (the process died inside `write(2)`, or the OS crashed before the page reached the disk).
public struct JournalRecord: Sendable, Hashable {
    public static let headerBytes = 8
    static let fixedBodyBytes = 1 + 1 + 1 + 8 + 4 + 2
    static let version: UInt8 = 1
    /// Sanity bound when reading a length from disk: anything larger is corruption, not a record.
    static let maximumBodyBytes = 300 * 1024 * 1024

    public var topic: String
    /// The payload bytes, or only their first `maxPayloadBytes` when the message was too large for its route.
    public var payload: [UInt8]
    public var qos: UInt8
    public var retain: Bool
    public var receivedAtMilliseconds: Int64
    /// The size of the payload as received; larger than `payload.count` when the journal kept only its head.
    public var originalPayloadBytes: Int

    public init(topic: String, payload: [UInt8], qos: UInt8, retain: Bool, receivedAtMilliseconds: Int64,
                originalPayloadBytes: Int? = nil) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.receivedAtMilliseconds = receivedAtMilliseconds
        self.originalPayloadBytes = originalPayloadBytes ?? payload.count
    }

    /// A message as it arrives now. One larger than `limit` keeps only its first `keep` bytes (what its dead letter
    /// shows) and its size in `originalPayloadBytes`: it is refused anyway, and one huge message cannot fill the
    /// journal.
    public static func received(topic: String, payload: [UInt8], qos: UInt8, retain: Bool, limit: Int, keep: Int)
        -> JournalRecord
    {
        JournalRecord(
            topic: topic, payload: payload.count > limit ? Array(payload.prefix(keep)) : payload, qos: qos,
            retain: retain, receivedAtMilliseconds: EventTimestamp.now().millisecondsSinceEpoch,
            originalPayloadBytes: payload.count)
    }

    public var isTruncated: Bool { originalPayloadBytes > payload.count }

    /// The full on-disk form: header plus body.
    public func encoded() -> [UInt8] {
        let topicBytes = Array(topic.utf8.prefix(Int(UInt16.max)))
        var body: [UInt8] = []
        body.reserveCapacity(Self.fixedBodyBytes + topicBytes.count + payload.count)
        body.append(Self.version)
        body.append((retain ? 1 : 0) | (isTruncated ? 2 : 0))
        body.append(qos)
        append(UInt64(bitPattern: receivedAtMilliseconds), bytes: 8, to: &body)
        append(UInt64(UInt32(clamping: originalPayloadBytes)), bytes: 4, to: &body)
        append(UInt64(topicBytes.count), bytes: 2, to: &body)
        body += topicBytes
        body += payload
        var record: [UInt8] = []
        record.reserveCapacity(Self.headerBytes + body.count)
        append(UInt64(body.count), bytes: 4, to: &record)
        append(UInt64(CRC32.checksum(body)), bytes: 4, to: &record)
        record += body
        return record
    }

    private func append(_ value: UInt64, bytes: Int, to output: inout [UInt8]) {
        for index in 0..<bytes { output.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))) }
    }

    /// What `decode` found at an offset.
    enum Decoded: Equatable {
        /// A complete, intact record of `size` bytes (header included).
        case record(JournalRecord, size: Int)
        /// The buffer ends inside the record; `needed` bytes (header included) would complete it, if known.
        case incomplete(needed: Int?)
        /// Length out of range, CRC mismatch or unknown version: not a record (torn write or corruption).
        case corrupt(String)
    }

    static func readInteger(_ buffer: UnsafeRawBufferPointer, at offset: Int, bytes: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<bytes { value |= UInt64(buffer[offset + index]) << (8 * UInt64(index)) }
        return value
    }

    /// Decodes the record starting at `offset` of `buffer`.
    static func decode(_ buffer: UnsafeRawBufferPointer, at offset: Int) -> Decoded {
        let available = buffer.count - offset
        guard available >= headerBytes else { return .incomplete(needed: nil) }
        let bodyLength = Int(readInteger(buffer, at: offset, bytes: 4))
        guard bodyLength >= fixedBodyBytes, bodyLength <= maximumBodyBytes else {
            return .corrupt("record length \(bodyLength) out of range")
        }
        guard available >= headerBytes + bodyLength else { return .incomplete(needed: headerBytes + bodyLength) }
        let storedCRC = UInt32(readInteger(buffer, at: offset + 4, bytes: 4))
        let body = UnsafeRawBufferPointer(rebasing: buffer[(offset + headerBytes)..<(offset + headerBytes + bodyLength)])
        guard CRC32.checksum(body) == storedCRC else { return .corrupt("CRC mismatch") }
        guard body[0] == version else { return .corrupt("unknown record version \(body[0])") }
        let flags = body[1]
        let qos = body[2]
        let received = Int64(bitPattern: readInteger(body, at: 3, bytes: 8))
        let original = Int(readInteger(body, at: 11, bytes: 4))
        let topicLength = Int(readInteger(body, at: 15, bytes: 2))
        guard fixedBodyBytes + topicLength <= bodyLength else { return .corrupt("topic length past the record") }
        let topicBytes = body[fixedBodyBytes..<(fixedBodyBytes + topicLength)]
        let payload = Array(body[(fixedBodyBytes + topicLength)...])
        var record = JournalRecord(
            topic: String(decoding: topicBytes, as: UTF8.self), payload: payload, qos: qos, retain: flags & 1 == 1,
            receivedAtMilliseconds: received, originalPayloadBytes: flags & 2 == 2 ? original : payload.count)
        if flags & 2 == 2 && original <= payload.count { record.originalPayloadBytes = payload.count }
        return .record(record, size: headerBytes + bodyLength)
    }
}

/// A place in the journal: a segment number and a byte offset in it. Ordered like the records.
public struct JournalPosition: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var segment: UInt64
    public var offset: Int64

    public init(segment: UInt64, offset: Int64) {
        self.segment = segment
        self.offset = offset
    }

    public static func < (lhs: JournalPosition, rhs: JournalPosition) -> Bool {
        (lhs.segment, lhs.offset) < (rhs.segment, rhs.offset)
    }

    public var description: String { "\(segment):\(offset)" }
}

/// A record read back from the journal, with where it starts and where the next one starts.
public struct JournalEntry: Sendable, Hashable {
    public var position: JournalPosition
    public var next: JournalPosition
    public var record: JournalRecord
}
