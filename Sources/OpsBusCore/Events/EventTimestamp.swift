#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A wall-clock instant with millisecond precision, written on the wire as ISO 8601 UTC
/// (`2026-03-01T12:34:56.789Z`).
///
/// Formatting and parsing are hand-written (no Foundation formatters): every event is stamped and every
/// received event is parsed, so this is on the hot path.
public struct EventTimestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var millisecondsSinceEpoch: Int64

    public init(millisecondsSinceEpoch: Int64) {
        self.millisecondsSinceEpoch = millisecondsSinceEpoch
    }

    /// The current time from the realtime clock.
    public static func now() -> EventTimestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return EventTimestamp(millisecondsSinceEpoch: Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000)
    }

    public static func < (lhs: EventTimestamp, rhs: EventTimestamp) -> Bool {
        lhs.millisecondsSinceEpoch < rhs.millisecondsSinceEpoch
    }

    public var description: String { iso8601 }

    // MARK: Formatting

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`. Years outside 0000–9999 are written with as many digits as needed
    /// (and a `-` sign before year 0); `parse` only accepts four-digit years.
    public var iso8601: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        writeISO8601(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the ISO 8601 form to a byte buffer (used by the envelope encoder).
    public func writeISO8601(into bytes: inout [UInt8]) {
        let (days, msOfDay) = Self.floorDivide(millisecondsSinceEpoch, 86_400_000)
        let (year, month, day) = Self.civil(fromDays: days)
        let hour = msOfDay / 3_600_000
        let minute = msOfDay / 60_000 % 60
        let second = msOfDay / 1000 % 60
        let millisecond = msOfDay % 1000
        if year < 0 || year > 9999 {
            if year < 0 { bytes.append(UInt8(ascii: "-")) }
            JSONWriter.writeInteger(abs(year), into: &bytes)
        } else {
            Self.appendDigits(year, count: 4, into: &bytes)
        }
        bytes.append(UInt8(ascii: "-"))
        Self.appendDigits(month, count: 2, into: &bytes)
        bytes.append(UInt8(ascii: "-"))
        Self.appendDigits(day, count: 2, into: &bytes)
        bytes.append(UInt8(ascii: "T"))
        Self.appendDigits(hour, count: 2, into: &bytes)
        bytes.append(UInt8(ascii: ":"))
        Self.appendDigits(minute, count: 2, into: &bytes)
        bytes.append(UInt8(ascii: ":"))
        Self.appendDigits(second, count: 2, into: &bytes)
        bytes.append(UInt8(ascii: "."))
        Self.appendDigits(millisecond, count: 3, into: &bytes)
        bytes.append(UInt8(ascii: "Z"))
    }

    private static func appendDigits(_ value: Int64, count: Int, into bytes: inout [UInt8]) {
        var divisor: Int64 = 1
        for _ in 1..<count { divisor *= 10 }
        var remaining = value
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(remaining / divisor))
            remaining %= divisor
            divisor /= 10
        }
    }

    private static func floorDivide(_ value: Int64, _ divisor: Int64) -> (quotient: Int64, remainder: Int64) {
        var quotient = value / divisor
        var remainder = value % divisor
        if remainder < 0 {
            quotient -= 1
            remainder += divisor
        }
        return (quotient, remainder)
    }

    // Howard Hinnant's civil-calendar algorithms (proleptic Gregorian).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    static func isLeap(_ year: Int64) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    static func daysInMonth(_ year: Int64, _ month: Int64) -> Int64 {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    // MARK: Parsing

    /// Parses RFC 3339 / ISO 8601 extended format: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    /// `T`/`Z` may be lower case; the fraction may have 1–9 digits and is truncated to milliseconds; an offset
    /// is converted to UTC. Leap seconds (`:60`) are refused.
    public static func parse(_ text: String) throws(TimestampError) -> EventTimestamp {
        if let result = text.utf8.withContiguousStorageIfAvailable({ parse(bytes: $0, text: text) }) {
            return try result.get()
        }
        return try Array(text.utf8).withUnsafeBufferPointer { parse(bytes: $0, text: text) }.get()
    }

    /// `nil` if `text` is not a valid timestamp.
    public init?(iso8601 text: String) {
        guard let parsed = try? Self.parse(text) else { return nil }
        self = parsed
    }

    private static func parse(bytes: UnsafeBufferPointer<UInt8>, text: String) -> Result<EventTimestamp, TimestampError> {
        var position = 0
        func fail(_ problem: String) -> Result<EventTimestamp, TimestampError> {
            .failure(TimestampError(value: text, problem: problem))
        }
        func digits(_ count: Int) -> Int64? {
            guard position + count <= bytes.count else { return nil }
            var value: Int64 = 0
            for offset in 0..<count {
                let byte = bytes[position + offset]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            position += count
            return value
        }
        func expect(_ characters: UInt8...) -> Bool {
            guard position < bytes.count, characters.contains(bytes[position]) else { return false }
            position += 1
            return true
        }
        let format = "expected YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM)"
        guard let year = digits(4), expect(UInt8(ascii: "-")), let month = digits(2), expect(UInt8(ascii: "-")),
              let day = digits(2), expect(UInt8(ascii: "T"), UInt8(ascii: "t")),
              let hour = digits(2), expect(UInt8(ascii: ":")), let minute = digits(2), expect(UInt8(ascii: ":")),
              let second = digits(2)
        else { return fail(format) }
        var millisecond: Int64 = 0
        if expect(UInt8(ascii: ".")) {
            var fractionDigits = 0
            while position < bytes.count, bytes[position] >= UInt8(ascii: "0"), bytes[position] <= UInt8(ascii: "9") {
                if fractionDigits < 3 { millisecond = millisecond * 10 + Int64(bytes[position] - UInt8(ascii: "0")) }
                fractionDigits += 1
                position += 1
            }
            guard (1...9).contains(fractionDigits) else { return fail("fraction must have 1-9 digits") }
            var scale = fractionDigits
            while scale < 3 {
                millisecond *= 10
                scale += 1
            }
        }
        var offsetMinutes: Int64 = 0
        if expect(UInt8(ascii: "Z"), UInt8(ascii: "z")) {
            // UTC
        } else if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
            let sign: Int64 = bytes[position] == UInt8(ascii: "-") ? -1 : 1
            position += 1
            guard let offsetHour = digits(2), expect(UInt8(ascii: ":")), let offsetMinute = digits(2) else {
                return fail(format)
            }
            guard offsetHour <= 23, offsetMinute <= 59 else { return fail("UTC offset out of range") }
            offsetMinutes = sign * (offsetHour * 60 + offsetMinute)
        } else {
            return fail("missing time zone (Z or ±HH:MM); " + format)
        }
        guard position == bytes.count else { return fail("unexpected characters after the time zone") }
        guard (1...12).contains(month) else { return fail("month \(month) out of range") }
        guard day >= 1, day <= daysInMonth(year, month) else { return fail("day \(day) out of range") }
        guard hour <= 23 else { return fail("hour \(hour) out of range") }
        guard minute <= 59 else { return fail("minute \(minute) out of range") }
        guard second <= 59 else { return fail("second \(second) out of range (leap seconds are not supported)") }
        let days = days(fromCivil: year, month, day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetMinutes * 60
        return .success(EventTimestamp(millisecondsSinceEpoch: seconds * 1000 + millisecond))
    }
}

/// A timestamp string that could not be parsed.
public struct TimestampError: Error, Sendable, Hashable, CustomStringConvertible {
    public let value: String
    public let problem: String

    public var description: String {
        "invalid timestamp \"\(EscapedText.escape(value, limit: 64))\": \(problem)"
    }
}
