import Testing
import OpsBusCore

/// Small deterministic PRNG (SplitMix64) so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct JSONPropertyTests {
    static func randomString(_ rng: inout SplitMix64) -> String {
        let pool: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\u{0}", "\u{1F}", "\u{7F}",
                                      "é", "€", "\u{FFFF}", "😀", "\u{10FFFF}", "\u{2028}"]
        var string = ""
        for _ in 0..<Int.random(in: 0...12, using: &rng) {
            string.unicodeScalars.append(pool.randomElement(using: &rng)!)
        }
        return string
    }

    static func randomValue(_ rng: inout SplitMix64, depth: Int = 0) -> JSONValue {
        let choice = depth > 4 ? Int.random(in: 0...4, using: &rng) : Int.random(in: 0...6, using: &rng)
        switch choice {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2:
            let magnitude = [Int64(10), 1_000_000, Int64.max].randomElement(using: &rng)!
            return .int(Int64.random(in: -magnitude...magnitude, using: &rng))
        case 3:
            let bits = rng.next()
            let value = Double(bitPattern: bits)
            return .double(value.isFinite ? value : Double.random(in: -1e6...1e6, using: &rng))
        case 4: return .string(randomString(&rng))
        case 5:
            return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in randomValue(&rng, depth: depth + 1) })
        default:
            var object = JSONObject()
            for _ in 0..<Int.random(in: 0...5, using: &rng) {
                object[randomString(&rng)] = randomValue(&rng, depth: depth + 1)
            }
            return .object(object)
        }
    }

    @Test func randomDocumentsRoundTrip() throws {
        var rng = SplitMix64(state: 0x0B5B_05)
        for _ in 0..<2000 {
            let value = Self.randomValue(&rng)
            let bytes = value.serializedBytes()
            let reparsed = try JSONValue.parse(bytes)
            // Doubles compare by value; -0.0 == 0.0 is fine, NaN cannot occur (non-finite excluded above).
            #expect(reparsed == value, "\(value.serialized())")
            #expect(reparsed.serializedBytes() == bytes)
        }
    }

    @Test func mutatedDocumentsNeverCrashAndStayConsistent() {
        var rng = SplitMix64(state: 42)
        let interesting: [UInt8] = [0x00, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A, 0x80, 0xC0, 0xED, 0xF4, 0xFF, 0x30, 0x2D, 0x65]
        for _ in 0..<3000 {
            var bytes = Self.randomValue(&rng).serializedBytes()
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                let index = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0...2, using: &rng) {
                case 0: bytes[index] = interesting.randomElement(using: &rng)!
                case 1: bytes.remove(at: index)
                default: bytes.insert(interesting.randomElement(using: &rng)!, at: index)
                }
            }
            // Either a clean error with an offset inside the input, or a value that re-serialises to
            // something that parses back to the same value.
            do {
                let value = try JSONValue.parse(bytes)
                #expect(try JSONValue.parse(value.serializedBytes()) == value)
            } catch {
                #expect(error.offset >= 0 && error.offset <= bytes.count)
            }
        }
    }

    @Test func objectWriterWritesWhatTheSerializerWrites() throws {
        let members: [(String, JSONValue)] = [
            ("prefix", .string("")), ("flag", .bool(true)), ("n", .int(-12)), ("x", .double(0.25)),
            ("quote \" and \\", .string("line\nbreak \u{1} é 🚀")), ("nested", .object(["a": .array([.null, .int(1)])])),
        ]
        var writer = JSONObjectWriter(reservingCapacity: 8)
        for (key, value) in members { writer.add(key, value) }
        let text = writer.text()
        #expect(text == JSONValue.object(JSONObject(pairs: members)).serialized())
        #expect(try JSONValue.parse(text) == .object(JSONObject(pairs: members)))
        #expect(writer.text() == text, "text() leaves the writer as it was")
        #expect(JSONObjectWriter().text() == "{}")
    }
}
