import Synchronization

/// Generates ULIDs: 26 characters of Crockford base32 encoding a 48-bit millisecond timestamp and 80 random
/// bits. ULIDs sort by creation time, which keeps event ids ordered in logs and Redis streams.
///
/// Within one millisecond a generator increments the random part instead of drawing a new one, so the ids it
/// hands out are strictly increasing even when many events share a millisecond (or the clock steps back:
/// the generator then keeps using its last timestamp). Thread-safe.
public final class EventIDGenerator: Sendable {
    struct State {
        var lastMilliseconds: UInt64 = 0
        /// High 16 bits of the 80-bit random part.
        var randomHigh: UInt16 = 0
        /// Low 64 bits of the 80-bit random part.
        var randomLow: UInt64 = 0
    }

    private let state: Mutex<State>

    public init() {
        state = Mutex(State())
    }

    init(state initial: State) {
        state = Mutex(initial)
    }

    /// A new id stamped with the current time.
    public func next() -> String {
        next(at: EventTimestamp.now())
    }

    /// A new id stamped with `timestamp` (or with the generator's last timestamp if that is later).
    public func next(at timestamp: EventTimestamp) -> String {
        let requested = UInt64(clamping: max(0, min(timestamp.millisecondsSinceEpoch, EventID.maximumTime)))
        let (milliseconds, high, low) = state.withLock { state -> (UInt64, UInt16, UInt64) in
            if requested > state.lastMilliseconds {
                var generator = SystemRandomNumberGenerator()
                state.lastMilliseconds = requested
                state.randomHigh = UInt16.random(in: .min ... .max, using: &generator)
                state.randomLow = generator.next()
            } else {
                // Same (or earlier) millisecond: increment the 80-bit random part; on overflow move to the
                // next millisecond so ordering still holds.
                state.randomLow &+= 1
                if state.randomLow == 0 {
                    state.randomHigh &+= 1
                    if state.randomHigh == 0 { state.lastMilliseconds += 1 }
                }
            }
            return (state.lastMilliseconds, state.randomHigh, state.randomLow)
        }
        return EventID.encode(milliseconds: milliseconds, randomHigh: high, randomLow: low)
    }
}

/// ULID helpers.
public enum EventID {
    /// Crockford base32 alphabet (no I, L, O, U).
    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    /// Largest 48-bit millisecond value.
    static let maximumTime: Int64 = (1 << 48) - 1
    public static let length = 26

    private static let shared = EventIDGenerator()

    /// A new ULID from the process-wide generator.
    public static func make() -> String { shared.next() }

    static func encode(milliseconds: UInt64, randomHigh: UInt16, randomLow: UInt64) -> String {
        // 128-bit value: [48 time][16 randomHigh][64 randomLow] as (upper, lower) 64-bit halves.
        let upper = (milliseconds << 16) | UInt64(randomHigh)
        let lower = randomLow
        var bytes = [UInt8](repeating: 0, count: length)
        for index in 0..<length {
            let shift = (length - 1 - index) * 5  // bit position of this character's lowest bit
            let value: UInt64
            if shift >= 64 {
                value = upper >> UInt64(shift - 64)
            } else if shift + 5 > 64 {
                value = (lower >> UInt64(shift)) | (upper << UInt64(64 - shift))
            } else {
                value = lower >> UInt64(shift)
            }
            bytes[index] = alphabet[Int(value & 0x1F)]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether `text` is a canonical ULID (26 upper-case Crockford characters, first one 0–7).
    public static func isValid(_ text: String) -> Bool {
        var count = 0
        for byte in text.utf8 {
            guard count < length, alphabet.contains(byte) else { return false }
            if count == 0 && byte > UInt8(ascii: "7") { return false }
            count += 1
        }
        return count == length
    }

    /// The creation time encoded in a ULID, or `nil` if `text` is not one.
    public static func timestamp(of text: String) -> EventTimestamp? {
        guard isValid(text) else { return nil }
        var milliseconds: Int64 = 0
        for byte in text.utf8.prefix(10) {
            milliseconds = milliseconds << 5 | Int64(alphabet.firstIndex(of: byte)!)
        }
        return EventTimestamp(millisecondsSinceEpoch: milliseconds)
    }
}
