/// Why a JSON document was refused, and at which byte offset (0-based, into the input bytes).
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Reason: Sendable, Hashable {
        /// Input is empty or only whitespace.
        case emptyInput
        /// Input ended while `expected` was still needed.
        case unexpectedEnd(expected: String)
        /// A byte that cannot start or continue the expected construct.
        case unexpectedByte(UInt8, expected: String)
        /// A byte sequence that is not well-formed UTF-8 (includes overlong forms and encoded surrogates).
        case invalidUTF8
        /// A raw control character (U+0000–U+001F) inside a string; JSON requires these to be escaped.
        case unescapedControlCharacter(UInt8)
        /// A backslash followed by something other than `" \ / b f n r t u`.
        case invalidEscape(UInt8)
        /// `\u` not followed by four hex digits.
        case invalidUnicodeEscape
        /// A `\uD800`–`\uDFFF` escape that is not part of a high+low surrogate pair.
        case loneSurrogate(UInt16)
        /// A number that does not follow the JSON grammar (leading zeros, missing digits, `+1`, `.5`, …).
        case invalidNumber
        /// A number too large in magnitude for a `Double` (e.g. `1e400`).
        case numberOutOfRange
        /// Arrays/objects nested deeper than the limit.
        case depthLimitExceeded(limit: Int)
        /// Non-whitespace after the top-level value.
        case trailingData
    }

    public let reason: Reason
    public let offset: Int

    public init(_ reason: Reason, at offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    public var description: String {
        let what: String
        switch reason {
        case .emptyInput: what = "empty input"
        case .unexpectedEnd(let expected): what = "unexpected end of input, expected \(expected)"
        case .unexpectedByte(let byte, let expected):
            what = "unexpected \(JSONParseError.describe(byte: byte)), expected \(expected)"
        case .invalidUTF8: what = "invalid UTF-8"
        case .unescapedControlCharacter(let byte):
            what = "unescaped control character \(JSONParseError.hex(byte)) in string"
        case .invalidEscape(let byte): what = "invalid escape \\\(JSONParseError.describe(byte: byte, quoted: false))"
        case .invalidUnicodeEscape: what = "invalid \\u escape (need four hex digits)"
        case .loneSurrogate(let unit):
            what = "lone surrogate \\u\(String(unit, radix: 16, uppercase: true)) (not part of a surrogate pair)"
        case .invalidNumber: what = "invalid number"
        case .numberOutOfRange: what = "number out of range"
        case .depthLimitExceeded(let limit): what = "nesting deeper than \(limit) levels"
        case .trailingData: what = "unexpected data after the JSON value"
        }
        return "invalid JSON at byte \(offset): \(what)"
    }

    static func hex(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16, uppercase: true)
        return "0x" + (digits.count == 1 ? "0" + digits : digits)
    }

    static func describe(byte: UInt8, quoted: Bool = true) -> String {
        if byte >= 0x21 && byte < 0x7F {
            let character = String(UnicodeScalar(byte))
            return quoted ? "'\(character)'" : character
        }
        return "byte " + hex(byte)
    }
}

extension JSONValue {
    /// Nesting limit for arrays and objects. Bounds recursion and the work a hostile payload can cause.
    public static let maximumDepth = 64

    /// Parses one JSON value (RFC 8259, strict): UTF-8 is validated, escapes including surrogate pairs are
    /// decoded, integers that fit `Int64` become `.int`, other numbers `.double`; duplicate object keys keep the
    /// first position and the last value. No BOM, no comments, no trailing commas, nothing after the value.
    public static func parse<Bytes: Collection>(_ bytes: Bytes) throws(JSONParseError) -> JSONValue
    where Bytes.Element == UInt8 {
        if let result = bytes.withContiguousStorageIfAvailable(parseBuffer) { return try result.get() }
        return try Array(bytes).withUnsafeBufferPointer(parseBuffer).get()
    }

    /// Parses the UTF-8 encoding of `string`.
    public static func parse(_ string: String) throws(JSONParseError) -> JSONValue {
        if let result = string.utf8.withContiguousStorageIfAvailable(parseBuffer) { return try result.get() }
        return try Array(string.utf8).withUnsafeBufferPointer(parseBuffer).get()
    }

    private static func parseBuffer(_ buffer: UnsafeBufferPointer<UInt8>) -> Result<JSONValue, JSONParseError> {
        var parser = JSONParser(buffer)
        return Result { () throws(JSONParseError) -> JSONValue in try parser.parseDocument() }
    }
}

/// Recursive-descent parser over a contiguous byte buffer. Only lives for the duration of one `parse` call.
struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0
    var depth = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        guard position < bytes.count else { throw JSONParseError(.emptyInput, at: position) }
        let value = try parseValue()
        skipWhitespace()
        guard position == bytes.count else { throw JSONParseError(.trailingData, at: position) }
        return value
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard position < bytes.count else { throw JSONParseError(.unexpectedEnd(expected: "a value"), at: position) }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        case let byte: throw JSONParseError(.unexpectedByte(byte, expected: "a value"), at: position)
        }
    }

    mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let expected = "'\(literal)'"
        var index = 0
        let count = literal.utf8CodeUnitCount
        let start = literal.utf8Start
        while index < count {
            guard position < bytes.count else {
                throw JSONParseError(.unexpectedEnd(expected: expected), at: position)
            }
            guard bytes[position] == start[index] else {
                throw JSONParseError(.unexpectedByte(bytes[position], expected: expected), at: position)
            }
            position += 1
            index += 1
        }
    }

    mutating func enterContainer() throws(JSONParseError) {
        depth += 1
        if depth > JSONValue.maximumDepth {
            throw JSONParseError(.depthLimitExceeded(limit: JSONValue.maximumDepth), at: position)
        }
    }

    mutating func parseObject() throws(JSONParseError) -> JSONValue {
        try enterContainer()
        position += 1  // {
        var object = JSONObject()
        // The keys so far as a 64-bit filter of (length, last byte): a key whose bit is clear is new, with no scan of
        // the earlier keys (that duplicate check was 2.7 k instructions per event in the processor, issue 6).
        var keyFilter: UInt64 = 0
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return .object(object)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count else {
                throw JSONParseError(.unexpectedEnd(expected: "an object key"), at: position)
            }
            guard bytes[position] == UInt8(ascii: "\"") else {
                throw JSONParseError(.unexpectedByte(bytes[position], expected: "an object key"), at: position)
            }
            let key = try parseString()
            skipWhitespace()
            guard position < bytes.count else { throw JSONParseError(.unexpectedEnd(expected: "':'"), at: position) }
            guard bytes[position] == UInt8(ascii: ":") else {
                throw JSONParseError(.unexpectedByte(bytes[position], expected: "':'"), at: position)
            }
            position += 1
            skipWhitespace()
            let value = try parseValue()
            let bit: UInt64 = 1 << UInt64((key.utf8.count &* 7 &+ Int(key.utf8.last ?? 0)) & 63)
            if keyFilter & bit == 0 {
                keyFilter |= bit
                object.appendUnchecked(key: key, value: value)
            } else if object.contains(key: key) {
                object[key] = value  // duplicate: last value wins, first position kept
            } else {
                object.appendUnchecked(key: key, value: value)
            }
            skipWhitespace()
            guard position < bytes.count else {
                throw JSONParseError(.unexpectedEnd(expected: "',' or '}'"), at: position)
            }
            switch bytes[position] {
            case UInt8(ascii: ","):
                position += 1
            case UInt8(ascii: "}"):
                position += 1
                depth -= 1
                return .object(object)
            case let byte:
                throw JSONParseError(.unexpectedByte(byte, expected: "',' or '}'"), at: position)
            }
        }
    }

    mutating func parseArray() throws(JSONParseError) -> JSONValue {
        try enterContainer()
        position += 1  // [
        var elements: [JSONValue] = []
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue())
            skipWhitespace()
            guard position < bytes.count else {
                throw JSONParseError(.unexpectedEnd(expected: "',' or ']'"), at: position)
            }
            switch bytes[position] {
            case UInt8(ascii: ","):
                position += 1
            case UInt8(ascii: "]"):
                position += 1
                depth -= 1
                return .array(elements)
            case let byte:
                throw JSONParseError(.unexpectedByte(byte, expected: "',' or ']'"), at: position)
            }
        }
    }

    // MARK: Strings

    /// Parses a string starting at the opening quote. Fast path: no escapes → one validated slice.
    mutating func parseString() throws(JSONParseError) -> String {
        position += 1  // opening quote
        let start = position
        // Fast path: scan for the closing quote; bail out to the slow path at the first backslash.
        var sawNonASCII = false
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                let slice = UnsafeBufferPointer(rebasing: bytes[start..<position])
                if sawNonASCII { try validateUTF8(slice, base: start) }
                position += 1
                return String(decoding: slice, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw JSONParseError(.unescapedControlCharacter(byte), at: position) }
            if byte >= 0x80 { sawNonASCII = true }
            position += 1
        }
        guard position < bytes.count else {
            throw JSONParseError(.unexpectedEnd(expected: "'\"' closing the string"), at: position)
        }
        // Slow path: copy what we have, then decode escapes.
        var output: [UInt8] = []
        output.reserveCapacity(position - start + 16)
        let prefix = UnsafeBufferPointer(rebasing: bytes[start..<position])
        if sawNonASCII { try validateUTF8(prefix, base: start) }
        output.append(contentsOf: prefix)
        while true {
            guard position < bytes.count else {
                throw JSONParseError(.unexpectedEnd(expected: "'\"' closing the string"), at: position)
            }
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "\""):
                position += 1
                return String(decoding: output, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try parseEscape(into: &output)
            case 0x00..<0x20:
                throw JSONParseError(.unescapedControlCharacter(byte), at: position)
            case 0x20..<0x80:
                output.append(byte)
                position += 1
            default:
                let length = try utf8SequenceLength(at: position)
                output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[position..<position + length]))
                position += length
            }
        }
    }

    mutating func parseEscape(into output: inout [UInt8]) throws(JSONParseError) {
        let escapeStart = position
        position += 1  // backslash
        guard position < bytes.count else {
            throw JSONParseError(.unexpectedEnd(expected: "an escape character"), at: position)
        }
        let byte = bytes[position]
        position += 1
        switch byte {
        case UInt8(ascii: "\""): output.append(0x22)
        case UInt8(ascii: "\\"): output.append(0x5C)
        case UInt8(ascii: "/"): output.append(0x2F)
        case UInt8(ascii: "b"): output.append(0x08)
        case UInt8(ascii: "f"): output.append(0x0C)
        case UInt8(ascii: "n"): output.append(0x0A)
        case UInt8(ascii: "r"): output.append(0x0D)
        case UInt8(ascii: "t"): output.append(0x09)
        case UInt8(ascii: "u"):
            let unit = try parseHex4()
            let scalarValue: UInt32
            switch unit {
            case 0xD800...0xDBFF:
                // High surrogate: must be followed by \u + low surrogate.
                guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"),
                      bytes[position + 1] == UInt8(ascii: "u")
                else { throw JSONParseError(.loneSurrogate(unit), at: escapeStart) }
                position += 2
                let low = try parseHex4()
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw JSONParseError(.loneSurrogate(unit), at: escapeStart)
                }
                scalarValue = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
            case 0xDC00...0xDFFF:
                throw JSONParseError(.loneSurrogate(unit), at: escapeStart)
            default:
                scalarValue = UInt32(unit)
            }
            // Always a valid scalar here (surrogates excluded above).
            let scalar = Unicode.Scalar(scalarValue)!
            output.append(contentsOf: UTF8.encode(scalar)!)
        default:
            throw JSONParseError(.invalidEscape(byte), at: escapeStart)
        }
    }

    mutating func parseHex4() throws(JSONParseError) -> UInt16 {
        guard position + 4 <= bytes.count else { throw JSONParseError(.invalidUnicodeEscape, at: position) }
        var value: UInt16 = 0
        for offset in 0..<4 {
            let byte = bytes[position + offset]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw JSONParseError(.invalidUnicodeEscape, at: position + offset)
            }
            value = value << 4 | UInt16(digit)
        }
        position += 4
        return value
    }

    /// Length of the well-formed UTF-8 sequence starting at `index` (Unicode Table 3-7), or an error.
    func utf8SequenceLength(at index: Int) throws(JSONParseError) -> Int {
        let lead = bytes[index]
        let length: Int
        var lower: UInt8 = 0x80
        var upper: UInt8 = 0xBF
        switch lead {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; upper = 0x9F  // excludes encoded surrogates
        case 0xF0: length = 4; lower = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; upper = 0x8F  // nothing above U+10FFFF
        default: throw JSONParseError(.invalidUTF8, at: index)
        }
        guard index + length <= bytes.count else { throw JSONParseError(.invalidUTF8, at: index) }
        let second = bytes[index + 1]
        guard second >= lower && second <= upper else { throw JSONParseError(.invalidUTF8, at: index) }
        var next = index + 2
        while next < index + length {
            guard bytes[next] & 0xC0 == 0x80 else { throw JSONParseError(.invalidUTF8, at: index) }
            next += 1
        }
        return length
    }

    func validateUTF8(_ slice: UnsafeBufferPointer<UInt8>, base: Int) throws(JSONParseError) {
        var index = base
        let end = base + slice.count
        while index < end {
            if bytes[index] < 0x80 {
                index += 1
            } else {
                let length = try utf8SequenceLength(at: index)
                // A sequence may not run past the slice end (the closing quote is ASCII, so it cannot).
                guard index + length <= end else { throw JSONParseError(.invalidUTF8, at: index) }
                index += length
            }
        }
    }

    // MARK: Numbers

    mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = position
        var negative = false
        if bytes[position] == UInt8(ascii: "-") {
            negative = true
            position += 1
        }
        // Integer part: 0 | [1-9][0-9]*
        guard position < bytes.count else { throw JSONParseError(.invalidNumber, at: start) }
        var isInteger = true
        var overflow = false
        // Accumulate negatively so Int64.min fits.
        var accumulator: Int64 = 0
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if position < bytes.count, isDigit(bytes[position]) {
                throw JSONParseError(.invalidNumber, at: start)  // leading zero
            }
        } else if isDigit(bytes[position]) {
            while position < bytes.count, isDigit(bytes[position]) {
                if !overflow {
                    let digit = Int64(bytes[position] - UInt8(ascii: "0"))
                    let (times10, o1) = accumulator.multipliedReportingOverflow(by: 10)
                    let (next, o2) = times10.subtractingReportingOverflow(digit)
                    if o1 || o2 { overflow = true } else { accumulator = next }
                }
                position += 1
            }
        } else {
            throw JSONParseError(.invalidNumber, at: start)
        }
        // Fraction
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            isInteger = false
            position += 1
            guard position < bytes.count, isDigit(bytes[position]) else {
                throw JSONParseError(.invalidNumber, at: start)
            }
            while position < bytes.count, isDigit(bytes[position]) { position += 1 }
        }
        // Exponent
        if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
            isInteger = false
            position += 1
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
                position += 1
            }
            guard position < bytes.count, isDigit(bytes[position]) else {
                throw JSONParseError(.invalidNumber, at: start)
            }
            while position < bytes.count, isDigit(bytes[position]) { position += 1 }
        }
        if isInteger && !overflow {
            if negative { return .int(accumulator) }
            if accumulator != Int64.min { return .int(-accumulator) }
            // 9223372036854775808 does not fit: fall through to Double.
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
        guard let value = Double(text) else { throw JSONParseError(.invalidNumber, at: start) }
        guard value.isFinite else { throw JSONParseError(.numberOutOfRange, at: start) }
        return .double(value)
    }

    @inline(__always)
    func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }
}
