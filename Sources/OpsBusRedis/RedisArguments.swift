/// A command's arguments, encoded in Redis's wire format (RESP bulk strings) as they are appended.
///
/// Why: the batching processor sends thousands of arguments per script call. Handing them to hiredis as an array
/// per argument cost one allocation per argument, a copy into an argv buffer and hiredis's own formatting
/// (`sdscatfmt`): a fifth of the processor's instructions per event (`Benchmarks/service_callgrind.py`). Here each
/// argument is copied once, into one growing buffer, and that buffer is what goes on the wire.
/// Binary-safe: an argument may hold any bytes.
public struct RedisArguments: Sendable {
    /// How many arguments were appended.
    public private(set) var count = 0
    /// `$<length>\r\n<bytes>\r\n` per argument, in order.
    public private(set) var encoded: [UInt8] = []

    /// `reservingCapacity`: the encoded bytes to expect, to grow the buffer once.
    public init(reservingCapacity bytes: Int = 0) {
        encoded.reserveCapacity(bytes)
    }

    public init(_ arguments: [String]) {
        self.init(reservingCapacity: arguments.reduce(0) { $0 + $1.utf8.count + 16 })
        for argument in arguments { append(argument) }
    }

    public mutating func append(_ argument: String) {
        let utf8 = argument.utf8
        appendHeader(utf8.count)
        encoded.append(contentsOf: utf8)
        appendCRLF()
    }

    public mutating func append(_ argument: some Collection<UInt8>) {
        appendHeader(argument.count)
        encoded.append(contentsOf: argument)
        appendCRLF()
    }

    /// An integer argument, in decimal, without a `String` in between.
    public mutating func append(_ number: Int) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for any Int64 with its sign
        let start = withUnsafeMutableBytes(of: &digits) { buffer in Self.writeDecimal(number, into: buffer) }
        appendHeader(24 - start)
        withUnsafeBytes(of: &digits) { encoded.append(contentsOf: $0[start...]) }
        appendCRLF()
    }

    /// Appends another set of arguments after these.
    public mutating func append(contentsOf other: RedisArguments) {
        count += other.count
        encoded.append(contentsOf: other.encoded)
    }

    private mutating func appendHeader(_ length: Int) {
        count += 1
        encoded.append(UInt8(ascii: "$"))
        appendDecimal(length)
        appendCRLF()
    }

    @inline(__always)
    private mutating func appendCRLF() {
        encoded.append(13)
        encoded.append(10)
    }

    private mutating func appendDecimal(_ number: Int) {
        if number < 10 {  // most lengths of short arguments, and every count below ten
            encoded.append(UInt8(truncatingIfNeeded: number) + 48)
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        let start = withUnsafeMutableBytes(of: &digits) { buffer in Self.writeDecimal(number, into: buffer) }
        withUnsafeBytes(of: &digits) { encoded.append(contentsOf: $0[start...]) }
    }

    /// Writes `number` in decimal at the end of `buffer` (24 bytes); returns where it starts.
    private static func writeDecimal(_ number: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var magnitude = number.magnitude
        var end = buffer.count
        repeat {
            end -= 1
            buffer[end] = UInt8(truncatingIfNeeded: magnitude % 10) + 48
            magnitude /= 10
        } while magnitude > 0
        if number < 0 {
            end -= 1
            buffer[end] = UInt8(ascii: "-")
        }
        return end
    }

    /// The encoded command `*<n>\r\n` header for `argumentCount` arguments.
    static func arrayHeader(_ argumentCount: Int) -> [UInt8] {
        var header: [UInt8] = [UInt8(ascii: "*")]
        var scratch = RedisArguments()
        scratch.appendDecimal(argumentCount)
        header += scratch.encoded
        header += [13, 10]
        return header
    }
}
