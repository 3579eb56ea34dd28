/// A command's arguments, encoded in Redis's wire format (RESP bulk strings) as they are appended.
///
/// Why: the batching processor sends thousands of arguments per script call. Handing them to hiredis as an array
/// per argument cost one allocation per argument, a copy into an argv buffer and hiredis's own formatting
/// (`sdscatfmt`): a fifth of the processor's instructions per event (`Benchmarks/service_callgrind.py`). Here each
/// argument is copied once, into one growing buffer, and that buffer is what goes on the wire. The buffer is raw
/// memory rather than an `[UInt8]`: three `Array.append(contentsOf:)` calls per argument cost about 300
/// instructions, more than the copying. A value type all the same: a copy shares the buffer until either is changed.
/// Binary-safe: an argument may hold any bytes.
public struct RedisArguments: Sendable {
    /// How many arguments were appended.
    public private(set) var count = 0
    private var storage: Storage

    /// `reservingCapacity`: the encoded bytes to expect, to grow the buffer once.
    public init(reservingCapacity bytes: Int = 0) {
        storage = Storage(capacity: bytes)
    }

    public init(_ arguments: [String]) {
        self.init(reservingCapacity: arguments.reduce(0) { $0 + $1.utf8.count + 16 })
        for argument in arguments { append(argument) }
    }

    public init(_ arguments: [[UInt8]]) {
        self.init(reservingCapacity: arguments.reduce(0) { $0 + $1.count + 16 })
        for argument in arguments { append(argument) }
    }

    /// `$<length>\r\n<bytes>\r\n` per argument, in order (a copy; `withEncoded` lends them without one).
    public var encoded: [UInt8] { withEncoded { Array($0) } }

    /// Calls `body` with the encoded arguments.
    public func withEncoded<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: storage.base, count: storage.count))
    }

    public mutating func append(_ argument: String) {
        var argument = argument
        argument.withUTF8 { append(bytes: UnsafeRawBufferPointer($0)) }
    }

    public mutating func append(_ argument: [UInt8]) {
        argument.withUnsafeBytes { append(bytes: $0) }
    }

    public mutating func append(_ argument: some Collection<UInt8>) {
        if let done: Void = argument.withContiguousStorageIfAvailable({ append(bytes: UnsafeRawBufferPointer($0)) }) {
            return done
        }
        append(Array(argument))
    }

    /// An integer argument, in decimal, without a `String` in between.
    public mutating func append(_ number: Int) {
        Self.withDecimal(number) { digits in append(bytes: digits) }
    }

    /// Appends another set of arguments after these.
    public mutating func append(contentsOf other: RedisArguments) {
        other.withEncoded { bytes in
            let at = reserve(bytes.count)
            if let source = bytes.baseAddress { at.copyMemory(from: source, byteCount: bytes.count) }
            storage.count += bytes.count
        }
        count += other.count
    }

    /// `$<length>\r\n`, the bytes, `\r\n`, written straight into the buffer.
    private mutating func append(bytes: UnsafeRawBufferPointer) {
        var at = reserve(bytes.count + 25)  // "$", at most 20 digits, 2 × "\r\n"
        at.storeBytes(of: UInt8(ascii: "$"), as: UInt8.self)
        at += 1
        Self.withDecimal(bytes.count) { digits in
            at.copyMemory(from: digits.baseAddress!, byteCount: digits.count)
            at += digits.count
        }
        at.storeBytes(of: Self.crlf, as: UInt16.self)
        at += 2
        if let source = bytes.baseAddress { at.copyMemory(from: source, byteCount: bytes.count) }
        at += bytes.count
        at.storeBytes(of: Self.crlf, as: UInt16.self)
        at += 2
        storage.count = at - storage.base
        count += 1
    }

    /// "\r\n" as one store.
    private static let crlf = UInt16(0x0A0D).littleEndian

    /// Room for `extra` more bytes, in a buffer this value alone owns; returns where they go.
    private mutating func reserve(_ extra: Int) -> UnsafeMutableRawPointer {
        if !isKnownUniquelyReferenced(&storage) {
            storage = storage.copy(capacity: storage.count + extra)
        } else if storage.count + extra > storage.capacity {
            storage.grow(to: storage.count + extra)
        }
        return storage.base + storage.count
    }

    /// Calls `body` with `number` in decimal ASCII.
    private static func withDecimal<Result>(_ number: Int, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for any Int64 with its sign
        return withUnsafeMutableBytes(of: &digits) { buffer in
            var magnitude = number.magnitude
            var start = buffer.count
            repeat {
                start -= 1
                buffer[start] = UInt8(truncatingIfNeeded: magnitude % 10) + 48
                magnitude /= 10
            } while magnitude > 0
            if number < 0 {
                start -= 1
                buffer[start] = UInt8(ascii: "-")
            }
            return body(UnsafeRawBufferPointer(rebasing: buffer[start...]))
        }
    }

    /// The encoded command `*<n>\r\n` header for `argumentCount` arguments.
    static func arrayHeader(_ argumentCount: Int) -> [UInt8] {
        [UInt8(ascii: "*")] + withDecimal(argumentCount) { Array($0) } + [13, 10]
    }

    /// The bytes. Only ever changed through a `RedisArguments` that holds the sole reference (`reserve`), which is
    /// what makes sharing it between copies, and across threads, safe.
    private final class Storage: @unchecked Sendable {
        private(set) var base: UnsafeMutableRawPointer
        private(set) var capacity: Int
        var count = 0

        init(capacity: Int) {
            self.capacity = max(capacity, 64)
            base = .allocate(byteCount: self.capacity, alignment: 8)
        }

        deinit { base.deallocate() }

        func copy(capacity: Int) -> Storage {
            let copy = Storage(capacity: max(capacity, count))
            copy.base.copyMemory(from: base, byteCount: count)
            copy.count = count
            return copy
        }

        func grow(to needed: Int) {
            var newCapacity = capacity * 2
            while newCapacity < needed { newCapacity *= 2 }
            let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 8)
            newBase.copyMemory(from: base, byteCount: count)
            base.deallocate()
            base = newBase
            capacity = newCapacity
        }
    }
}
