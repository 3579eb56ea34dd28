import Testing
@testable import OpsBusCore

@Suite struct EventIDTests {
    @Test func formatIsCanonicalULID() {
        let id = EventID.make()
        #expect(id.utf8.count == 26)
        #expect(EventID.isValid(id))
        #expect(id.allSatisfy { "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains($0) })
        // An event id also satisfies the id rule.
        #expect(throws: Never.self) { try Identifier(validating: id, field: "event_id") }
    }

    @Test func encodesTimeInTheFirstTenCharacters() {
        let generator = EventIDGenerator()
        let timestamp = EventTimestamp(millisecondsSinceEpoch: 1_469_918_176_385)
        let id = generator.next(at: timestamp)
        // Reference value from the ULID spec: 1469918176385 → "01ARYZ6S41".
        #expect(id.hasPrefix("01ARYZ6S41"))
        #expect(EventID.timestamp(of: id) == timestamp)
    }

    @Test func encodingOfKnownBitPatterns() {
        #expect(EventID.encode(milliseconds: 0, randomHigh: 0, randomLow: 0) == String(repeating: "0", count: 26))
        #expect(EventID.encode(milliseconds: (1 << 48) - 1, randomHigh: .max, randomLow: .max)
            == "7" + String(repeating: "Z", count: 25))
        #expect(EventID.encode(milliseconds: 0, randomHigh: 0, randomLow: 1) == String(repeating: "0", count: 25) + "1")
        // Bit 64 is the lowest bit of randomHigh: straddles characters 12/13 boundary (shift 60..64).
        #expect(EventID.encode(milliseconds: 0, randomHigh: 1, randomLow: 0)
            == String(repeating: "0", count: 13) + "G" + String(repeating: "0", count: 12))
    }

    @Test func monotonicWithinOneMillisecond() {
        let generator = EventIDGenerator()
        let timestamp = EventTimestamp(millisecondsSinceEpoch: 1_750_000_000_000)
        var previous = generator.next(at: timestamp)
        for _ in 0..<10_000 {
            let next = generator.next(at: timestamp)
            #expect(next > previous)
            previous = next
        }
        #expect(EventID.timestamp(of: previous) == timestamp)
    }

    @Test func clockGoingBackwardsKeepsOrder() {
        let generator = EventIDGenerator()
        let first = generator.next(at: EventTimestamp(millisecondsSinceEpoch: 2_000_000))
        let second = generator.next(at: EventTimestamp(millisecondsSinceEpoch: 1_000_000))
        #expect(second > first)
        #expect(EventID.timestamp(of: second)?.millisecondsSinceEpoch == 2_000_000)
        let third = generator.next(at: EventTimestamp(millisecondsSinceEpoch: 3_000_000))
        #expect(third > second)
        #expect(EventID.timestamp(of: third)?.millisecondsSinceEpoch == 3_000_000)
    }

    @Test func randomPartOverflowMovesToNextMillisecond() {
        let generator = EventIDGenerator(state: .init(lastMilliseconds: 5000, randomHigh: .max, randomLow: .max))
        let id = generator.next(at: EventTimestamp(millisecondsSinceEpoch: 5000))
        #expect(EventID.timestamp(of: id)?.millisecondsSinceEpoch == 5001)
        #expect(id.hasSuffix(String(repeating: "0", count: 16)))
    }

    @Test func uniqueAcrossThreads() async {
        let generator = EventIDGenerator()
        let ids = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<8 {
                group.addTask { (0..<2000).map { _ in generator.next() } }
            }
            var all: [String] = []
            for await batch in group {
                // Each task's own ids are strictly increasing.
                #expect(zip(batch, batch.dropFirst()).allSatisfy { $0 < $1 })
                all += batch
            }
            return all
        }
        #expect(Set(ids).count == 16_000)
    }

    @Test func differentGeneratorsDrawDifferentRandomness() {
        let timestamp = EventTimestamp(millisecondsSinceEpoch: 1_000)
        let a = EventIDGenerator().next(at: timestamp)
        let b = EventIDGenerator().next(at: timestamp)
        #expect(a != b)
    }

    @Test(arguments: ["", "01ARYZ6S41TSV4RRFFQ69G5FA", "01ARYZ6S41TSV4RRFFQ69G5FAVX", "81ARYZ6S41TSV4RRFFQ69G5FAV",
                      "01ARYZ6S41TSV4RRFFQ69G5FAI", "01aryz6s41tsv4rrffq69g5fav", "01ARYZ6S41TSV4RRFFQ69G5FA!"])
    func invalidULIDs(text: String) {
        #expect(!EventID.isValid(text))
        #expect(EventID.timestamp(of: text) == nil)
    }
}
