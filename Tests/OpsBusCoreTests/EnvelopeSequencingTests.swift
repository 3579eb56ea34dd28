import Testing
@testable import OpsBusCore

/// `prev_seq` and `ack`: the envelope keys of spooled, end-to-end acknowledged sessions (topics.md, "Edge delivery").
@Suite struct EnvelopeSequencingTests {
    @Test func ackAndPrevSeqRoundTripInEnvelopeOrder() throws {
        let text = try EnvelopeFixtures.payload(.jobCompleted, replacing: "seq", with: "9")
        var envelope = try EventEnvelope.decode(text)
        #expect(envelope.ack == false && envelope.prevSeq == nil)
        envelope.ack = true
        envelope.prevSeq = 6
        let encoded = envelope.encodedString()
        #expect(encoded.contains(#""seq":9,"prev_seq":6,"ack":true,"#), "\(encoded)")
        let decoded = try EventEnvelope.decode(encoded)
        #expect(decoded == envelope)
        #expect(decoded.jsonObject["prev_seq"] == .int(6) && decoded.jsonObject["ack"] == .bool(true))
    }

    @Test func absentKeysAreNotWritten() throws {
        let envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted))
        let encoded = envelope.encodedString()
        #expect(!encoded.contains("prev_seq") && !encoded.contains(#""ack""#))
    }

    @Test(arguments: [
        (#""seq":5,"prev_seq":5"#, "prev_seq"),
        (#""seq":5,"prev_seq":-1"#, "prev_seq"),
        (#""seq":5,"prev_seq":"4""#, "prev_seq"),
        (#""seq":0,"ack":true"#, "ack"),
        (#""seq":3,"ack":"yes""#, "ack"),
    ])
    func invalidValuesAreRefusedNamingTheKey(replacement: String, key: String) throws {
        let text = EnvelopeFixtures.payload(.jobCompleted).replacingOccurrences(of: #""seq":7"#, with: replacement)
        #expect(text.contains(replacement))
        let error = try #require(throws: EnvelopeError.self) { try EventEnvelope.decode(text) }
        #expect("\(error)".contains(key), "\(error)")
    }

    @Test func validateRefusesWhatDecodeRefuses() throws {
        var envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted))
        envelope.seq = 0
        envelope.ack = true
        #expect(throws: EnvelopeError.self) { try envelope.validate() }
        envelope.seq = 4
        envelope.prevSeq = 4
        #expect(throws: EnvelopeError.self) { try envelope.validate() }
        envelope.prevSeq = 3
        try envelope.validate()
    }

    @Test func ackTopicUsesWorkerThenMachineThenUnderscore() throws {
        var envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted))
        let scheme = try TopicScheme(prefix: "prod/eu")
        #expect(scheme.ackTopic(for: envelope) == "prod/eu/acks/_/sess-1")
        envelope.machineID = try Identifier(validating: "box-1")
        #expect(TopicScheme.unprefixed.ackTopic(for: envelope) == "acks/box-1/sess-1")
        envelope.workerID = try Identifier(validating: "gpu-7")
        #expect(TopicScheme.unprefixed.ackTopic(for: envelope) == "acks/gpu-7/sess-1")
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        var result = ""
        var rest = Substring(self)
        while let range = rest.range(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}

/// Input limits on what an envelope may carry (README "Operating opsbus", topics.md "What readers refuse"): the same
/// limits refuse a payload on decode and an event on publish.
@Suite("Envelope input limits")
struct EnvelopeLimitTests {
    static func envelope() throws -> EventEnvelope { try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted)) }

    @Test func tooManyFieldsAreRefusedOnDecodeAndOnPublish() throws {
        var envelope = try Self.envelope()
        for index in 0..<EventEnvelope.maximumEventFields { envelope.fields["extra_\(index)"] = .int(Int64(index)) }
        #expect(throws: EnvelopeError.invalidFieldValue(
            field: "(event fields)", value: "\(envelope.fields.count) fields", reason: "at most 256 event fields")) {
            try envelope.validate()
        }
        #expect(throws: EnvelopeError.self) { try EventEnvelope.decode(envelope.encoded()) }
        // At the limit it is fine.
        var atLimit = try Self.envelope()
        while atLimit.fields.count < EventEnvelope.maximumEventFields { atLimit.fields["f\(atLimit.fields.count)"] = true }
        try atLimit.validate()
        #expect(try EventEnvelope.decode(atLimit.encoded()).fields.count == EventEnvelope.maximumEventFields)
    }

    @Test func longFieldNamesAndLongEnvelopeTextAreRefused() throws {
        var named = try Self.envelope()
        named.fields[String(repeating: "n", count: EventEnvelope.maximumFieldNameBytes + 1)] = 1
        #expect(throws: EnvelopeError.self) { try named.validate() }
        #expect(throws: EnvelopeError.self) { try EventEnvelope.decode(named.encoded()) }
        named.fields = try Self.envelope().fields
        named.fields[String(repeating: "n", count: EventEnvelope.maximumFieldNameBytes)] = 1
        try named.validate()

        for field in ["trace_id", "correlation_id", "source", "service_type", "connector_id"] {
            var envelope = try Self.envelope()
            let long = String(repeating: "t", count: EventEnvelope.maximumEnvelopeTextBytes + 1)
            switch field {
            case "trace_id": envelope.traceID = long
            case "correlation_id": envelope.correlationID = long
            case "source": envelope.source = long
            case "service_type": envelope.serviceType = long
            default: envelope.connectorID = long
            }
            #expect(throws: EnvelopeError.invalidFieldValue(field: field, value: "513 bytes", reason: "at most 512 bytes")) {
                try EventEnvelope.decode(envelope.encoded())
            }
        }
    }
}

@Suite struct EnvelopeResumeAfterTests {
    @Test func resumeAfterRoundTripsAndMustBeBelowSeq() throws {
        var envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted))
        envelope.seq = 9
        envelope.ack = true
        envelope.resumeAfter = 8
        let text = String(decoding: envelope.encoded(), as: UTF8.self)
        #expect(text.contains("\"resume_after\":8"), "\(text)")
        let decoded = try EventEnvelope.decode(envelope.encoded())
        #expect(decoded.resumeAfter == 8 && decoded.fields["resume_after"] == nil, "an envelope key, not a field")
        envelope.resumeAfter = 9
        #expect(throws: EnvelopeError.self) { try envelope.validate() }
        #expect(throws: EnvelopeError.self) { try EventEnvelope.decode(envelope.encoded()) }
    }
}
