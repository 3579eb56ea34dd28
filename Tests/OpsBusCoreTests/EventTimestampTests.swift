import Testing
@testable import OpsBusCore

@Suite struct EventTimestampTests {
    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (1_709_210_096_789, "2024-02-29T12:34:56.789Z"),
        (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
    ])
    func formatAndParse(milliseconds: Int64, text: String) throws {
        let timestamp = EventTimestamp(millisecondsSinceEpoch: milliseconds)
        #expect(timestamp.iso8601 == text)
        #expect(timestamp.description == text)
        #expect(try EventTimestamp.parse(text) == timestamp)
    }

    @Test func civilConversionRoundTripsOverFourCenturies() {
        // Every day from 1900 to 2300: days → civil → days is the identity and dates are consecutive.
        var previous = EventTimestamp.civil(fromDays: EventTimestamp.days(fromCivil: 1900, 1, 1) - 1)
        for day in EventTimestamp.days(fromCivil: 1900, 1, 1)...EventTimestamp.days(fromCivil: 2300, 1, 1) {
            let civil = EventTimestamp.civil(fromDays: day)
            #expect(EventTimestamp.days(fromCivil: civil.year, civil.month, civil.day) == day)
            let advancesDay = civil.day == previous.day + 1 && civil.month == previous.month
            let advancesMonth = civil.day == 1 && (civil.month == previous.month + 1 || (civil.month == 1 && previous.month == 12))
            if !(advancesDay || advancesMonth) {
                Issue.record("day \(day): \(previous) → \(civil)")
                return
            }
            previous = civil
        }
    }

    @Test(arguments: [
        ("2026-03-01T12:34:56Z", "2026-03-01T12:34:56.000Z"),
        ("2026-03-01T12:34:56.7Z", "2026-03-01T12:34:56.700Z"),
        ("2026-03-01T12:34:56.78Z", "2026-03-01T12:34:56.780Z"),
        ("2026-03-01T12:34:56.789123456Z", "2026-03-01T12:34:56.789Z"),
        ("2026-03-01t12:34:56.789z", "2026-03-01T12:34:56.789Z"),
        ("2026-03-01T14:34:56.789+02:00", "2026-03-01T12:34:56.789Z"),
        ("2026-03-01T00:04:56.789-05:30", "2026-03-01T05:34:56.789Z"),
        ("2026-03-01T01:00:00.000+02:00", "2026-02-28T23:00:00.000Z"),
    ])
    func lenientInputsNormalise(input: String, normalised: String) throws {
        #expect(try EventTimestamp.parse(input).iso8601 == normalised)
    }

    @Test(arguments: [
        "", "2026-03-01", "2026-03-01T12:34:56", "2026-03-01T12:34:56.789", "2026-03-01 12:34:56Z",
        "2026-3-01T12:34:56Z", "26-03-01T12:34:56Z", "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z",
        "2026-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-01-00T00:00:00Z",
        "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z", "2026-12-31T23:59:60Z", "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00.1234567890Z", "2026-01-01T00:00:00Zjunk", "2026-01-01T00:00:00+0200",
        "2026-01-01T00:00:00+24:00", "+2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000ZZ", "1714567890123",
        "２０２６-01-01T00:00:00Z",
    ])
    func malformedTimestampsAreRejected(text: String) {
        #expect(throws: TimestampError.self) { try EventTimestamp.parse(text) }
        #expect(EventTimestamp(iso8601: text) == nil)
    }

    @Test func errorMessageNamesValueAndProblem() {
        #expect(throws: TimestampError(value: "2026-02-30T00:00:00Z", problem: "day 30 out of range")) {
            try EventTimestamp.parse("2026-02-30T00:00:00Z")
        }
        let error = TimestampError(value: "x\ny", problem: "p")
        #expect(error.description == #"invalid timestamp "x\ny": p"#)
    }

    @Test func nowIsAfter2025AndFormatsAsUTC() {
        let now = EventTimestamp.now()
        #expect(now.millisecondsSinceEpoch > 1_735_689_600_000)
        #expect(now.iso8601.count == 24)
        #expect(now.iso8601.hasSuffix("Z"))
        #expect(EventTimestamp(iso8601: now.iso8601) == now)
    }
}
