extension JSONValue {
    /// Compact, deterministic serialisation: no whitespace, object keys in order, control characters escaped,
    /// non-finite doubles written as `null`, doubles in their shortest round-tripping form.
    public func serialized() -> String {
        String(decoding: serializedBytes(), as: UTF8.self)
    }

    /// UTF-8 bytes of `serialized()`.
    public func serializedBytes() -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(256)
        JSONWriter.write(self, into: &output)
        return output
    }

    /// Appends the serialisation to `output` (lets callers build a larger buffer without copies).
    public func serialize(into output: inout [UInt8]) {
        JSONWriter.write(self, into: &output)
    }
}

extension JSONObject {
    /// Compact serialisation of the object, keys in order.
    public func serialized() -> String { JSONValue.object(self).serialized() }

    /// UTF-8 bytes of `serialized()`.
    public func serializedBytes() -> [UInt8] { JSONValue.object(self).serializedBytes() }
}

/// Writes one JSON object member by member, straight into its text: for objects built only to be sent, where a
/// `JSONObject` (members, lookups) and then its serialisation cost several times the writing (issue 6). Members
/// are written in the order added; adding a key twice writes it twice, so callers add each key once.
public struct JSONObjectWriter {
    private var bytes: [UInt8]

    public init(reservingCapacity capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
        bytes.append(UInt8(ascii: "{"))
    }

    public mutating func add(_ key: String, _ value: JSONValue) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        JSONWriter.writeString(key, into: &bytes)
        bytes.append(UInt8(ascii: ":"))
        JSONWriter.write(value, into: &bytes)
    }

    /// The object's text, `{…}`.
    public func text() -> String {
        var bytes = bytes
        bytes.append(UInt8(ascii: "}"))
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The serialiser. Namespaced helpers so the envelope encoder can write keys and values straight into one buffer.
public enum JSONWriter {
    public static func write(_ value: JSONValue, into output: inout [UInt8]) {
        switch value {
        case .null:
            output.append(contentsOf: "null".utf8)
        case .bool(let flag):
            output.append(contentsOf: (flag ? "true" : "false").utf8)
        case .int(let number):
            writeInteger(number, into: &output)
        case .double(let number):
            writeDouble(number, into: &output)
        case .string(let string):
            writeString(string, into: &output)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            var first = true
            for element in elements {
                if !first { output.append(UInt8(ascii: ",")) }
                first = false
                write(element, into: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let object):
            output.append(UInt8(ascii: "{"))
            var first = true
            for member in object.members {
                if !first { output.append(UInt8(ascii: ",")) }
                first = false
                writeString(member.key, into: &output)
                output.append(UInt8(ascii: ":"))
                write(member.value, into: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// Writes a signed integer in decimal without going through `String`.
    public static func writeInteger<I: FixedWidthInteger>(_ number: I, into output: inout [UInt8]) {
        if number == 0 {
            output.append(UInt8(ascii: "0"))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        // Work on the magnitude as UInt64 so the minimum value does not overflow.
        var magnitude = UInt64(number.magnitude)
        withUnsafeMutableBytes(of: &digits) { buffer in
            while magnitude > 0 {
                buffer[count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            }
        }
        if number < 0 { output.append(UInt8(ascii: "-")) }
        withUnsafeBytes(of: &digits) { buffer in
            var index = count - 1
            while index >= 0 {
                output.append(buffer[index])
                index -= 1
            }
        }
    }

    /// Shortest representation that parses back to the same `Double` (Swift's `description` is round-trip
    /// exact), with the exponent tidied to JSON style (`1e+20` → `1e20`, `1e-05` → `1e-5`). Integral values
    /// keep a `.0` so they parse back as a double, not an int. Non-finite values become `null`.
    public static func writeDouble(_ number: Double, into output: inout [UInt8]) {
        guard number.isFinite else {
            output.append(contentsOf: "null".utf8)
            return
        }
        let text = number.description
        var iterator = text.utf8.makeIterator()
        var inExponent = false
        var exponentHasDigit = false
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "e") {
                inExponent = true
                output.append(byte)
                continue
            }
            if inExponent {
                if byte == UInt8(ascii: "+") { continue }
                if byte == UInt8(ascii: "0") && !exponentHasDigit { continue }
                if byte != UInt8(ascii: "-") { exponentHasDigit = true }
            }
            output.append(byte)
        }
        if inExponent && !exponentHasDigit { output.append(UInt8(ascii: "0")) }  // "1e+00" → "1e0"
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Writes a JSON string literal: `"` and `\` escaped, control characters as `\n`-style or `\u00XX`.
    /// Everything else (including non-ASCII) is written as raw UTF-8.
    public static func writeString(_ string: String, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        let done: Void? = string.utf8.withContiguousStorageIfAvailable { buffer in
            writeEscaped(buffer, into: &output)
        }
        if done == nil {
            for byte in string.utf8 { writeEscapedByte(byte, into: &output) }
        }
        output.append(UInt8(ascii: "\""))
    }

    @inline(__always)
    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    private static func writeEscaped(_ buffer: UnsafeBufferPointer<UInt8>, into output: inout [UInt8]) {
        var runStart = 0
        var index = 0
        while index < buffer.count {
            let byte = buffer[index]
            if needsEscape(byte) {
                if runStart < index { output.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[runStart..<index])) }
                writeEscapedByte(byte, into: &output)
                runStart = index + 1
            }
            index += 1
        }
        if runStart < buffer.count { output.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[runStart...])) }
    }

    @inline(__always)
    private static func writeEscapedByte(_ byte: UInt8, into output: inout [UInt8]) {
        switch byte {
        case UInt8(ascii: "\""): output.append(contentsOf: [0x5C, 0x22])
        case UInt8(ascii: "\\"): output.append(contentsOf: [0x5C, 0x5C])
        case 0x0A: output.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: output.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: output.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        case 0x08: output.append(contentsOf: [0x5C, UInt8(ascii: "b")])
        case 0x0C: output.append(contentsOf: [0x5C, UInt8(ascii: "f")])
        case 0x00..<0x20:
            output.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
            output.append(hexDigits[Int(byte >> 4)])
            output.append(hexDigits[Int(byte & 0x0F)])
        default:
            output.append(byte)
        }
    }
}
