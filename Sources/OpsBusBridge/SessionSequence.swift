import OpsBusCore

/// The sequencing keys of an envelope sent with `ack: true`: what the bridge needs to commit a session's events in
/// order, exactly once, and to tell the publisher how far it got (`topics.md`, end-to-end acknowledgements).
public struct SessionSequence: Sendable, Hashable {
    /// The publisher session; a valid id, so it is one topic level of the ack topic.
    public var sessionID: String
    /// ≥ 1.
    public var seq: UInt64
    /// Below `seq`: the publisher dropped `prevSeq + 1 … seq − 1` itself, so they count as filled.
    public var prevSeq: UInt64?
    /// Below `seq`: every seq up to it is settled at the publisher (acknowledged or declared dropped), so the
    /// session's position may be raised to it (`resume_after`).
    public var resumeAfter: UInt64?
    /// `worker_id`, else `machine_id`, else `_` (`EventEnvelope.ackOwner`).
    public var owner: Identifier

    public init(sessionID: String, seq: UInt64, prevSeq: UInt64? = nil, resumeAfter: UInt64? = nil, owner: Identifier) {
        self.sessionID = sessionID
        self.seq = seq
        self.prevSeq = prevSeq
        self.resumeAfter = resumeAfter
        self.owner = owner
    }

    static let noOwner = Identifier(rawValue: "_")!

    /// From an already parsed payload (the writer parses each payload once anyway). Nil unless `ack` is `true`,
    /// `seq` ≥ 1 and `session_id` (and `worker_id`/`machine_id` when present) follow the id rule: without a valid
    /// session and owner there is no ack topic to answer on, and such an envelope is mirrored like any other.
    /// An out-of-range `prev_seq` (not below `seq`) is ignored rather than trusted.
    static func from(_ object: JSONObject) -> SessionSequence? {
        guard object["ack"]?.boolValue == true else { return nil }
        return make(
            sessionID: object["session_id"]?.stringValue, seq: object["seq"]?.intValue,
            prevSeq: object["prev_seq"]?.intValue, resumeAfter: object["resume_after"]?.intValue,
            workerID: object["worker_id"]?.stringValue,
            machineID: object["machine_id"]?.stringValue)
    }

    static func make(sessionID: String?, seq: Int64?, prevSeq: Int64?, resumeAfter: Int64? = nil, workerID: String?,
                     machineID: String?)
        -> SessionSequence?
    {
        guard let sessionID, Identifier(rawValue: sessionID) != nil, let seq, seq >= 1 else { return nil }
        let owner: Identifier
        if let workerID {
            guard let id = Identifier(rawValue: workerID) else { return nil }
            owner = id
        } else if let machineID {
            guard let id = Identifier(rawValue: machineID) else { return nil }
            owner = id
        } else {
            owner = noOwner
        }
        let previous = prevSeq.flatMap { $0 >= 0 && $0 < seq ? UInt64($0) : nil }
        let resume = resumeAfter.flatMap { $0 >= 0 && $0 < seq ? UInt64($0) : nil }
        return SessionSequence(sessionID: sessionID, seq: UInt64(seq), prevSeq: previous, resumeAfter: resume, owner: owner)
    }

    /// From a payload that may be cut short or not be valid JSON: the records the bridge dead-letters (oversize ones
    /// are journaled truncated). Such an event must still advance the session, or its publisher re-sends it forever
    /// and every later event is held back. Reads the top-level members in order until the bytes end or stop making
    /// sense; publishers write the envelope keys first, so they sit well inside the kept head of the payload.
    static func scan(_ payload: [UInt8]) -> SessionSequence? {
        var scanner = PrefixScanner(bytes: payload)
        var values: [String: PrefixScanner.Scalar] = [:]
        scanner.scanTopLevel(wanted: ["ack", "session_id", "seq", "prev_seq", "resume_after", "worker_id", "machine_id"]) {
            if values[$0] == nil { values[$0] = $1 }
        }
        guard case .bool(true)? = values["ack"] else { return nil }
        func string(_ key: String) -> String? { if case .string(let text)? = values[key] { text } else { nil } }
        func integer(_ key: String) -> Int64? { if case .integer(let number)? = values[key] { number } else { nil } }
        return make(
            sessionID: string("session_id"), seq: integer("seq"), prevSeq: integer("prev_seq"),
            resumeAfter: integer("resume_after"),
            workerID: string("worker_id"), machineID: string("machine_id"))
    }
}

/// A forgiving reader of a JSON object's top-level scalar members, for `SessionSequence.scan`.
struct PrefixScanner {
    enum Scalar: Equatable {
        case string(String)
        case integer(Int64)
        case bool(Bool)
        case other
    }

    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// Calls `found` for each top-level member whose key is in `wanted`, until the input ends or is malformed.
    mutating func scanTopLevel(wanted: Set<String>, _ found: (String, Scalar) -> Void) {
        skipSpace()
        guard take(UInt8(ascii: "{")) else { return }
        while true {
            skipSpace()
            guard let key = readString() else { return }
            skipSpace()
            guard take(UInt8(ascii: ":")) else { return }
            skipSpace()
            guard let value = readValue(keep: wanted.contains(key)) else { return }
            if wanted.contains(key) { found(key, value) }
            skipSpace()
            guard take(UInt8(ascii: ",")) else { return }
        }
    }

    private mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    private mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    /// A string with simple escapes; `\u` escapes and unterminated strings end the scan (nil).
    private mutating func readString() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        var output: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(validating: output, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { return nil }
                let escaped = bytes[index]
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): output.append(escaped)
                case UInt8(ascii: "n"): output.append(0x0A)
                case UInt8(ascii: "t"): output.append(0x09)
                case UInt8(ascii: "r"): output.append(0x0D)
                case UInt8(ascii: "b"): output.append(0x08)
                case UInt8(ascii: "f"): output.append(0x0C)
                default: return nil
                }
            default:
                output.append(byte)
            }
        }
        return nil
    }

    /// One value; nested objects and arrays are skipped (`.other`). Nil when the input ends inside the value.
    private mutating func readValue(keep: Bool) -> Scalar? {
        guard index < bytes.count else { return nil }
        switch bytes[index] {
        case UInt8(ascii: "\""):
            return readString().map { .string($0) }
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            return skipNested() ? .other : nil
        case UInt8(ascii: "t"):
            return literal("true") ? .bool(true) : nil
        case UInt8(ascii: "f"):
            return literal("false") ? .bool(false) : nil
        case UInt8(ascii: "n"):
            return literal("null") ? .other : nil
        default:
            let start = index
            while index < bytes.count, "+-0123456789.eE".utf8.contains(bytes[index]) { index += 1 }
            // A number running into the end of the input may have been cut short: not trusted.
            guard index > start, index < bytes.count else { return nil }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            if let number = Int64(text) { return .integer(number) }
            // `3.0` counts as 3, like `JSONValue.intValue`.
            guard let number = Double(text) else { return nil }
            if number.isFinite, number == number.rounded(.towardZero), abs(number) < 9.2e18 { return .integer(Int64(number)) }
            return .other
        }
    }

    private mutating func literal(_ word: String) -> Bool {
        let expected = Array(word.utf8)
        guard index + expected.count <= bytes.count, Array(bytes[index..<(index + expected.count)]) == expected else {
            return false
        }
        index += expected.count
        return true
    }

    /// Skips a nested object or array, strings included; false when the input ends first.
    private mutating func skipNested() -> Bool {
        var depth = 0
        var inString = false
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            if inString {
                if byte == UInt8(ascii: "\\") { index += 1 } else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                depth -= 1
                if depth == 0 { return true }
            default: break
            }
        }
        return false
    }
}
