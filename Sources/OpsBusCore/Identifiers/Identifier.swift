/// A validated identifier: job, worker, machine, queue, service or model id.
///
/// Ids become MQTT topic levels and Redis key parts, so the alphabet is deliberately small:
/// 1–128 ASCII characters from `A-Z a-z 0-9 . _ : -`. That excludes the MQTT wildcards `+` and `#`, the level
/// separator `/`, whitespace, NUL and anything non-ASCII — any of which would let one id address another
/// subject's topic or key.
public struct Identifier: Sendable, Hashable, Comparable, CustomStringConvertible, RawRepresentable {
    public static let maximumLength = 128

    public let rawValue: String

    /// Validates `value`; `field` names the id in error messages (`job_id`, `worker_id`, …).
    public init(validating value: String, field: String = "id") throws(IdentifierError) {
        try Identifier.validate(value, field: field)
        rawValue = value
    }

    /// `nil` when `rawValue` is not a valid id (RawRepresentable requirement; prefer `init(validating:)`).
    public init?(rawValue: String) {
        guard (try? Identifier.validate(rawValue, field: "id")) != nil else { return nil }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }

    public static func < (lhs: Identifier, rhs: Identifier) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Whether `byte` is in the id alphabet.
    @inline(__always)
    public static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    /// 1 for the bytes of the id alphabet, 0 for the others (`isAllowed` as a table).
    private static let allowedTable: [UInt8] = (0...255).map { isAllowed(UInt8($0)) ? 1 : 0 }

    /// Checks `value` against the id rule without building an `Identifier`.
    public static func validate(_ value: String, field: String = "id") throws(IdentifierError) {
        // The common case, a valid native string, in one pass over its bytes with a table (issue 6: iterating
        // `utf8` byte by byte was 5 % of the publisher's instructions per event, with several ids per event).
        let valid = value.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            guard !bytes.isEmpty, bytes.count <= maximumLength else { return false }
            return allowedTable.withUnsafeBufferPointer { table in
                var ok: UInt8 = 1
                for byte in bytes { ok &= table[Int(byte)] }
                return ok == 1
            }
        }
        if valid == true { return }
        var length = 0
        for byte in value.utf8 {
            if !isAllowed(byte) {
                // Report the offending *character* (not byte) and its character offset.
                var offset = 0
                for character in value {
                    if !(character.isASCII && character.utf8.count == 1 && isAllowed(character.utf8.first!)) {
                        throw .invalidCharacter(field: field, value: value, character: character, offset: offset)
                    }
                    offset += 1
                }
                // Unreachable in practice: a disallowed byte always belongs to a disallowed character.
                throw .invalidCharacter(field: field, value: value, character: Character(UnicodeScalar(byte)), offset: length)
            }
            length += 1
        }
        if length == 0 { throw .empty(field: field) }
        if length > maximumLength { throw .tooLong(field: field, length: length) }
    }
}

/// Why a string is not a valid id. Messages name the field and show the value escaped and truncated, so a
/// hostile id cannot inject control characters into logs.
public enum IdentifierError: Error, Sendable, Hashable, CustomStringConvertible {
    case empty(field: String)
    case tooLong(field: String, length: Int)
    /// `offset` counts characters from the start.
    case invalidCharacter(field: String, value: String, character: Character, offset: Int)

    public var field: String {
        switch self {
        case .empty(let field), .tooLong(let field, _), .invalidCharacter(let field, _, _, _): field
        }
    }

    public var description: String {
        switch self {
        case .empty(let field):
            return "invalid \(field): must not be empty (1-\(Identifier.maximumLength) characters of A-Z a-z 0-9 . _ : -)"
        case .tooLong(let field, let length):
            return "invalid \(field): \(length) characters, at most \(Identifier.maximumLength) allowed"
        case .invalidCharacter(let field, let value, let character, let offset):
            return "invalid \(field) \"\(EscapedText.escape(value, limit: 64))\": character "
                + "\"\(EscapedText.escape(String(character), limit: 16))\" at offset \(offset) is not allowed "
                + "(allowed: A-Z a-z 0-9 . _ : -)"
        }
    }
}

/// Printable, bounded rendering of untrusted text for error messages.
public enum EscapedText {
    /// Escapes `"`, `\`, control characters and non-printing scalars Swift-style (`\n`, `\u{0}`) and cuts
    /// the result after `limit` characters of input, appending `…`.
    public static func escape(_ text: String, limit: Int = 64) -> String {
        var result = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit {
                result += "…"
                break
            }
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value)
                    || (0x2028...0x2029).contains(scalar.value) || scalar.properties.generalCategory == .format {
                    result += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
            count += 1
        }
        return result
    }
}
