import Testing
@testable import OpsBusCore

/// A minimal valid payload for every event type, as JSON text.
enum EnvelopeFixtures {
    static let head = #""event_id":"01JQ7ZB5M4X9K2V8D3N6P0R1ST","timestamp":"2026-03-01T12:34:56.789Z","source":"worker","session_id":"sess-1","seq":7,"schema":1"#

    static func minimalFields(for type: EventType) -> String {
        switch type {
        case .jobReceived: #""job_id":"job-1""#
        case .jobStarted: #""job_id":"job-1","worker_assigned":"w1""#
        case .jobProgress: #""job_id":"job-1","progress_percentage":42.5"#
        case .jobCompleted: #""job_id":"job-1","processing_time":12.5"#
        case .jobFailed: #""job_id":"job-1","error":"boom","error_type":"gpu_oom","retry_recommended":true"#
        case .workerRegistered, .workerDeregistered, .workerHeartbeat: #""worker_id":"w1""#
        case .workerHealth: #""worker_id":"w1","status":"idle""#
        case .resourceAllocated, .resourceReleased: #""worker_id":"w1","job_id":"job-1","resources":{"gpu_memory_mb":8192}"#
        case .queueState: #""queue":"default","depth":3,"capacity":100"#
        case .serviceHealth: #""service":"api","status":"healthy""#
        case .modelLoaded: #""model":"sdxl","load_time_ms":1234,"cache_hit":false"#
        case .triggerNotification, .triggerRetry, .triggerPrecache, .triggerWorkflow, .triggerScaling, .triggerFailover,
             .triggerRecommendation:
            #""job_id":"job-1","reason":"because""#
        }
    }

    static func payload(_ type: EventType, extra: String? = nil) -> String {
        "{" + #""event_type":"\#(type.rawValue)","# + head + "," + minimalFields(for: type) + (extra.map { "," + $0 } ?? "") + "}"
    }

    /// Payload with one envelope key replaced (value is raw JSON) or removed (`nil`).
    static func payload(_ type: EventType = .jobCompleted, replacing key: String, with value: String?) throws -> String {
        var object = try #require(try JSONValue.parse(payload(type)).objectValue)
        if let value {
            object[key] = try JSONValue.parse(value)
        } else {
            object.removeValue(forKey: key)
        }
        return object.serialized()
    }
}

private func decodeError(_ text: String, maxBytes: Int = EventEnvelope.defaultMaximumBytes,
                         sourceLocation: SourceLocation = #_sourceLocation) -> EnvelopeError? {
    do {
        let envelope = try EventEnvelope.decode(text, maxBytes: maxBytes)
        Issue.record("expected a decode error, got \(envelope.encodedString())", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

@Suite struct EventEnvelopeRoundTripTests {
    @Test(arguments: EventType.allCases)
    func minimalPayloadOfEveryTypeDecodesAndRoundTrips(type: EventType) throws {
        let envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(type))
        #expect(envelope.eventType == type)
        #expect(envelope.seq == 7)
        #expect(envelope.timestamp.iso8601 == "2026-03-01T12:34:56.789Z")
        try envelope.validate()
        let again = try EventEnvelope.decode(envelope.encoded())
        #expect(again == envelope)
        #expect(again.encoded() == envelope.encoded())
    }

    @Test func unknownFieldsAndKeyOrderArePreserved() throws {
        let text = #"{"zeta":{"nested":[1,2,{"b":1,"a":2}]},"event_type":"job.completed","processing_time":3,"# +
            #""event_id":"e1","alpha":"x","timestamp":"2026-03-01T12:34:56.789Z","source":"worker","job_id":"j1","# +
            #""session_id":"s1","seq":1,"schema":1,"future_field":null,"mid":1.5}"#
        let envelope = try EventEnvelope.decode(text)
        #expect(envelope.fields.keys == ["zeta", "processing_time", "alpha", "future_field", "mid"])
        #expect(envelope.fields["future_field"] == .null)
        #expect(envelope.encodedString() ==
            #"{"event_id":"e1","event_type":"job.completed","timestamp":"2026-03-01T12:34:56.789Z","source":"worker","# +
            #""job_id":"j1","session_id":"s1","seq":1,"schema":1,"zeta":{"nested":[1,2,{"b":1,"a":2}]},"# +
            #""processing_time":3,"alpha":"x","future_field":null,"mid":1.5}"#)
        #expect(try EventEnvelope.decode(envelope.encoded()) == envelope)
    }

    @Test func allEnvelopeKeysSerialiseInContractOrder() throws {
        var envelope = EventEnvelope(
            eventID: "01JQ7ZB5M4X9K2V8D3N6P0R1ST", eventType: .jobFailed,
            timestamp: EventTimestamp(millisecondsSinceEpoch: 1_772_368_496_789), source: "worker",
            jobID: try Identifier(validating: "job-9"), machineID: try Identifier(validating: "m1"),
            workerID: try Identifier(validating: "w1"), serviceType: "comfyui", connectorID: "comfy-1",
            sessionID: "s1", seq: 42, prevSeq: 40, ack: true, traceID: "t-1", correlationID: "c-1", attempt: 2,
            fields: ["error": "boom", "error_type": "gpu_oom", "retry_recommended": false])
        envelope.resumeAfter = 39
        try envelope.validate()
        let object = try #require(try JSONValue.parse(envelope.encoded()).objectValue)
        #expect(object.keys == EventEnvelope.envelopeKeys + ["error", "error_type", "retry_recommended"])
        #expect(JSONValue.object(envelope.jsonObject).serializedBytes() == envelope.encoded())
        #expect(try EventEnvelope.decode(envelope.encoded()) == envelope)
    }

    /// The spooling publisher encodes with `seq` 0 outside its lock and sets the `seq` inside.
    @Test(arguments: [UInt64(1), 9, 10, 99_999, UInt64(Int64.max)])
    func seqSetInAnEncodingIsTheEncodingWithThatSeq(seq: UInt64) throws {
        var envelope = EventEnvelope(
            eventID: "01JQ7ZB5M4X9K2V8D3N6P0R1ST", eventType: .jobCompleted,
            timestamp: EventTimestamp(millisecondsSinceEpoch: 1_772_368_496_789), source: "worker",
            jobID: try Identifier(validating: "job-9"), sessionID: "s1", seq: 0, ack: true,
            fields: ["seq_note": "\"seq\":0", "nested": ["seq": 0]])
        var digits = 0..<0
        var encoding = envelope.encoded(seqDigits: &digits)
        #expect(encoding == envelope.encoded())
        #expect(String(decoding: encoding[digits], as: UTF8.self) == "0")
        EventEnvelope.setSeq(seq, in: &encoding, digits: digits)
        envelope.seq = seq
        #expect(String(decoding: encoding, as: UTF8.self) == envelope.encodedString())
        #expect(try JSONValue.parse(encoding).objectValue?["seq"] == .int(Int64(seq)))
    }

    @Test func absentOptionalsAreOmittedAndNullCountsAsAbsent() throws {
        let text = try EnvelopeFixtures.payload(.jobCompleted, replacing: "trace_id", with: "null")
        let envelope = try EventEnvelope.decode(text)
        #expect(envelope.traceID == nil)
        let keys = try #require(try JSONValue.parse(envelope.encoded()).objectValue).keys
        #expect(!keys.contains("trace_id"))
        #expect(!keys.contains("machine_id"))
        #expect(!keys.contains("attempt"))
    }

    @Test func defaultInitialiserStampsIdAndTime() throws {
        let before = EventTimestamp.now()
        let envelope = EventEnvelope(eventType: .workerHeartbeat, source: "worker",
                                     workerID: try Identifier(validating: "w1"), sessionID: "s", seq: 0)
        #expect(EventID.isValid(envelope.eventID))
        #expect(envelope.timestamp >= before)
        #expect(envelope.schemaVersion == 1)
        try envelope.validate()
    }

    @Test func fieldsNamedLikeEnvelopeKeysAreNeverWrittenTwice() throws {
        var envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted))
        envelope.fields["seq"] = 999
        #expect(throws: EnvelopeError.reservedFieldName("seq")) { try envelope.validate() }
        let object = try #require(try JSONValue.parse(envelope.encoded()).objectValue)
        #expect(object["seq"] == 7)
        #expect(object.count == envelope.encodedKeyCountForTest)
    }

    @Test func seqAndIntegralDoublesDecode() throws {
        let text = try EnvelopeFixtures.payload(.jobCompleted, replacing: "seq", with: "9223372036854775807")
        #expect(try EventEnvelope.decode(text).seq == UInt64(Int64.max))
        let asDouble = try EnvelopeFixtures.payload(.jobCompleted, replacing: "seq", with: "5.0")
        #expect(try EventEnvelope.decode(asDouble).seq == 5)
    }

    @Test func subscriptReadsAndWritesFields() throws {
        var envelope = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobProgress))
        #expect(envelope[field: "progress_percentage"] == 42.5)
        envelope[field: "execution_step"] = "sampling"
        #expect(envelope.fields.keys.last == "execution_step")
    }
}

extension EventEnvelope {
    /// Envelope keys present plus non-reserved fields: the number of keys `encoded()` must write.
    var encodedKeyCountForTest: Int {
        var count = 6 + 1  // event_id, event_type, timestamp, source, session_id, seq + schema
        for value in [jobID?.rawValue, machineID?.rawValue, workerID?.rawValue, serviceType, connectorID, traceID, correlationID]
        where value != nil { count += 1 }
        if attempt != nil { count += 1 }
        if prevSeq != nil { count += 1 }
        if ack { count += 1 }
        return count + fields.filter { !EventEnvelope.isEnvelopeKey($0.key) }.count
    }
}

@Suite struct EventEnvelopeDecodeErrorTests {
    @Test func oversize() {
        let text = EnvelopeFixtures.payload(.jobCompleted)
        #expect(decodeError(text, maxBytes: 100) == .oversize(bytes: text.utf8.count, limit: 100))
        #expect(throws: Never.self) { try EventEnvelope.decode(text, maxBytes: text.utf8.count) }
    }

    @Test func invalidJSON() {
        #expect(decodeError("{\"a\":") == .invalidJSON(JSONParseError(.unexpectedEnd(expected: "a value"), at: 5)))
        #expect(decodeError("") == .invalidJSON(JSONParseError(.emptyInput, at: 0)))
    }

    @Test func notAnObject() {
        #expect(decodeError("[1]") == .notAnObject(got: .array))
        #expect(decodeError("\"job.completed\"") == .notAnObject(got: .string))
        #expect(decodeError("null") == .notAnObject(got: .null))
    }

    @Test(arguments: ["event_id", "event_type", "timestamp", "source", "session_id", "seq", "schema"])
    func missingEnvelopeKey(key: String) throws {
        let text = try EnvelopeFixtures.payload(replacing: key, with: nil)
        #expect(decodeError(text) == .missingEnvelopeField(key))
        // null is treated as absent.
        let nulled = try EnvelopeFixtures.payload(replacing: key, with: "null")
        #expect(decodeError(nulled) == .missingEnvelopeField(key))
    }

    @Test(arguments: [
        ("event_id", "1", FieldKind.string, JSONValue.Kind.int),
        ("event_type", "true", .string, .bool),
        ("timestamp", "1714567890123", .string, .int),
        ("source", "{}", .string, .object),
        ("session_id", "[]", .string, .array),
        ("seq", "\"7\"", .int, .string),
        ("seq", "7.5", .int, .double),
        ("schema", "\"1\"", .int, .string),
        ("job_id", "12", .string, .int),
        ("worker_id", "false", .string, .bool),
        ("machine_id", "1.5", .string, .double),
        ("service_type", "1", .string, .int),
        ("connector_id", "[]", .string, .array),
        ("trace_id", "{}", .string, .object),
        ("correlation_id", "2", .string, .int),
        ("attempt", "\"1\"", .int, .string),
    ])
    func wrongEnvelopeKeyType(key: String, value: String, expected: FieldKind, got: JSONValue.Kind) throws {
        let text = try EnvelopeFixtures.payload(replacing: key, with: value)
        #expect(decodeError(text) == .wrongFieldType(field: key, expected: expected, got: got))
    }

    @Test func unknownEventType() throws {
        let text = try EnvelopeFixtures.payload(replacing: "event_type", with: "\"job.exploded\"")
        #expect(decodeError(text) == .unknownEventType("job.exploded"))
        #expect(decodeError(text)?.description == #"unknown event_type "job.exploded""#)
    }

    @Test(arguments: [Int64(0), 2, -1, 99])
    func unsupportedSchemaVersion(version: Int64) throws {
        let text = try EnvelopeFixtures.payload(replacing: "schema", with: String(version))
        #expect(decodeError(text) == .unsupportedSchemaVersion(version, supported: 1))
    }

    @Test(arguments: [
        ("job_id", "\"a/b\""), ("job_id", "\"+\""), ("job_id", "\"#\""), ("job_id", "\"\""), ("worker_id", "\"w 1\""),
        ("machine_id", "\"m\\u0000\""), ("event_id", "\"e/1\""), ("session_id", "\"s#\""),
        ("job_id", "\"\(String(repeating: "j", count: 129))\""), ("worker_id", "\"wörker\""),
    ])
    func invalidIdentifiers(key: String, value: String) throws {
        let text = try EnvelopeFixtures.payload(.workerHealth, replacing: key, with: value)
        guard case .invalidIdentifier(let error) = decodeError(text) else {
            Issue.record("expected invalidIdentifier for \(key)=\(value)")
            return
        }
        #expect(error.field == key)
    }

    @Test func invalidTimestamp() throws {
        let text = try EnvelopeFixtures.payload(replacing: "timestamp", with: "\"yesterday\"")
        guard case .invalidTimestamp(let error) = decodeError(text) else {
            Issue.record("expected invalidTimestamp")
            return
        }
        #expect(error.value == "yesterday")
    }

    @Test func invalidEnvelopeValues() throws {
        #expect(decodeError(try EnvelopeFixtures.payload(replacing: "seq", with: "-1"))
            == .invalidFieldValue(field: "seq", value: "-1", reason: "must not be negative"))
        #expect(decodeError(try EnvelopeFixtures.payload(replacing: "attempt", with: "-2"))
            == .invalidFieldValue(field: "attempt", value: "-2", reason: "must be 0...2147483647"))
        #expect(decodeError(try EnvelopeFixtures.payload(replacing: "source", with: "\"\""))
            == .invalidFieldValue(field: "source", value: "\"\"", reason: "must not be empty"))
    }

    @Test(arguments: EventType.allCases)
    func everyRequiredFieldIsEnforced(type: EventType) throws {
        for spec in EventCatalog.schema(for: type).requiredFields {
            var object = try #require(try JSONValue.parse(EnvelopeFixtures.payload(type)).objectValue)
            object.removeValue(forKey: spec.name)
            #expect(decodeError(object.serialized()) == .missingField(eventType: type, field: spec.name))
        }
    }

    @Test(arguments: EventType.allCases)
    func everyCatalogFieldIsTypeChecked(type: EventType) throws {
        for spec in EventCatalog.schema(for: type).fields {
            // A value of a kind the field does not accept: an object for scalars, a string for objects/arrays.
            let wrong: JSONValue = (spec.kind == .string) ? ["x": 1] : "nope"
            var object = try #require(try JSONValue.parse(EnvelopeFixtures.payload(type)).objectValue)
            object[spec.name] = wrong
            #expect(decodeError(object.serialized()) == .wrongFieldType(field: spec.name, expected: spec.kind, got: wrong.kind),
                    "\(type) \(spec.name)")
        }
    }

    @Test func fieldKindDetails() throws {
        // int fields refuse fractional numbers but take integral doubles.
        let fractional = EnvelopeFixtures.payload(.queueState).replacingDepth(with: "3.5")
        #expect(decodeError(fractional) == .wrongFieldType(field: "depth", expected: .int, got: .double))
        #expect(throws: Never.self) { try EventEnvelope.decode(EnvelopeFixtures.payload(.queueState).replacingDepth(with: "3.0")) }
        // string[] refuses mixed arrays.
        let mixed = EnvelopeFixtures.payload(.jobCompleted, extra: #""output_urls":["a",1]"#)
        #expect(decodeError(mixed) == .wrongFieldType(field: "output_urls", expected: .stringArray, got: .array))
        #expect(throws: Never.self) {
            try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted, extra: #""output_urls":["a","b"]"#))
        }
        // null for an optional field is fine and kept; for a required one it is a type error.
        let optionalNull = try EventEnvelope.decode(EnvelopeFixtures.payload(.jobCompleted, extra: #""output_size":null"#))
        #expect(optionalNull.fields["output_size"] == .null)
        let requiredNull = #"{"event_type":"job.completed","# + EnvelopeFixtures.head + #","job_id":"j","processing_time":null}"#
        #expect(decodeError(requiredNull) == .wrongFieldType(field: "processing_time", expected: .number, got: .null))
    }

    @Test func fieldValueConstraints() {
        let tooFar = EnvelopeFixtures.payload(.jobProgress).replacingOccurrences("42.5", "100.5")
        #expect(decodeError(tooFar) == .invalidFieldValue(field: "progress_percentage", value: "100.5", reason: "must be within 0.0...100.0"))
        let negative = EnvelopeFixtures.payload(.jobProgress).replacingOccurrences("42.5", "-1")
        #expect(decodeError(negative) == .invalidFieldValue(field: "progress_percentage", value: "-1.0", reason: "must be within 0.0...100.0"))
        let badStatus = EnvelopeFixtures.payload(.workerHealth).replacingOccurrences("idle", "sleepy")
        #expect(decodeError(badStatus) == .invalidFieldValue(field: "status", value: "\"sleepy\"",
                                                             reason: "must be one of online, busy, idle, degraded, offline"))
        let badService = EnvelopeFixtures.payload(.serviceHealth).replacingOccurrences("healthy", "fine")
        #expect(decodeError(badService) == .invalidFieldValue(field: "status", value: "\"fine\"",
                                                              reason: "must be one of healthy, degraded, unhealthy"))
    }

    @Test func missingSubjectIsReported() {
        let noJob = #"{"event_type":"job.started","# + EnvelopeFixtures.head + #","worker_assigned":"w"}"#
        #expect(decodeError(noJob) == .missingField(eventType: .jobStarted, field: "job_id"))
        let noWorker = #"{"event_type":"worker.heartbeat","# + EnvelopeFixtures.head + "}"
        #expect(decodeError(noWorker) == .missingField(eventType: .workerHeartbeat, field: "worker_id"))
        let noResourceWorker = #"{"event_type":"resource.released","# + EnvelopeFixtures.head + #","resources":{}}"#
        #expect(decodeError(noResourceWorker) == .missingField(eventType: .resourceReleased, field: "worker_id"))
        let noTriggerSubject = #"{"event_type":"trigger.scaling","# + EnvelopeFixtures.head + #","reason":"load"}"#
        #expect(decodeError(noTriggerSubject) == .missingField(eventType: .triggerScaling, field: "subject"))
        let badQueue = EnvelopeFixtures.payload(.queueState).replacingOccurrences("\"default\"", "\"a/b\"")
        #expect(decodeError(badQueue) == .invalidIdentifier(.invalidCharacter(field: "queue", value: "a/b", character: "/", offset: 1)))
        let badSubject = #"{"event_type":"trigger.retry","# + EnvelopeFixtures.head + #","reason":"r","subject":"x y"}"#
        #expect(decodeError(badSubject) == .invalidIdentifier(.invalidCharacter(field: "subject", value: "x y", character: " ", offset: 1)))
    }

    @Test func errorMessagesAreReadable() {
        #expect(EnvelopeError.missingField(eventType: .jobFailed, field: "error").description
            == #"job.failed event is missing required field "error""#)
        #expect(EnvelopeError.wrongFieldType(field: "seq", expected: .int, got: .string).description
            == #"event key "seq" must be int, got string"#)
        #expect(EnvelopeError.oversize(bytes: 300_000, limit: 262_144).description == "event payload is 300000 bytes, limit is 262144")
        #expect(EnvelopeError.missingEnvelopeField("seq").description == #"event envelope is missing required key "seq""#)
        #expect(EnvelopeError.unsupportedSchemaVersion(2, supported: 1).description
            == "unsupported schema version 2 (this build understands 1...1)")
        #expect(EnvelopeError.invalidJSON(JSONParseError(.trailingData, at: 3)).description
            == "event payload is not valid JSON: invalid JSON at byte 3: unexpected data after the JSON value")
    }
}

@Suite struct EventEnvelopeValidateTests {
    func valid(_ type: EventType = .jobCompleted) throws -> EventEnvelope {
        try EventEnvelope.decode(EnvelopeFixtures.payload(type))
    }

    @Test func validateMirrorsDecodeRules() throws {
        var envelope = try valid()
        envelope.eventID = "bad id"
        #expect(throws: EnvelopeError.invalidIdentifier(.invalidCharacter(field: "event_id", value: "bad id", character: " ", offset: 3))) {
            try envelope.validate()
        }
        envelope = try valid()
        envelope.sessionID = ""
        #expect(throws: EnvelopeError.invalidIdentifier(.empty(field: "session_id"))) { try envelope.validate() }
        envelope = try valid()
        envelope.source = ""
        #expect(throws: EnvelopeError.invalidFieldValue(field: "source", value: "\"\"", reason: "must not be empty")) {
            try envelope.validate()
        }
        envelope = try valid()
        envelope.schemaVersion = 2
        #expect(throws: EnvelopeError.unsupportedSchemaVersion(2, supported: 1)) { try envelope.validate() }
        envelope = try valid()
        envelope.seq = UInt64.max
        #expect(throws: EnvelopeError.self) { try envelope.validate() }
        envelope = try valid()
        envelope.attempt = -1
        #expect(throws: EnvelopeError.self) { try envelope.validate() }
        envelope = try valid()
        envelope.fields.removeValue(forKey: "processing_time")
        #expect(throws: EnvelopeError.missingField(eventType: .jobCompleted, field: "processing_time")) { try envelope.validate() }
        envelope = try valid()
        envelope.jobID = nil
        #expect(throws: EnvelopeError.missingField(eventType: .jobCompleted, field: "job_id")) { try envelope.validate() }
        envelope = try valid()
        envelope.fields["output_urls"] = [1]
        #expect(throws: EnvelopeError.wrongFieldType(field: "output_urls", expected: .stringArray, got: .array)) {
            try envelope.validate()
        }
    }

    @Test func topicSubjectPerKind() throws {
        #expect(try valid(.jobStarted).topicSubject().rawValue == "job-1")
        #expect(try valid(.workerHealth).topicSubject().rawValue == "w1")
        #expect(try valid(.resourceAllocated).topicSubject().rawValue == "w1")
        #expect(try valid(.queueState).topicSubject().rawValue == "default")
        #expect(try valid(.serviceHealth).topicSubject().rawValue == "api")
        #expect(try valid(.modelLoaded).topicSubject().rawValue == "sdxl")
        #expect(try valid(.triggerRetry).topicSubject().rawValue == "job-1")
        var trigger = try valid(.triggerPrecache)
        trigger.fields["subject"] = "sdxl-turbo"
        #expect(try trigger.topicSubject().rawValue == "sdxl-turbo")
        trigger.fields["subject"] = 5
        #expect(throws: EnvelopeError.wrongFieldType(field: "subject", expected: .string, got: .int)) { try trigger.topicSubject() }
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound]
            result += replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }

    func replacingDepth(with value: String) -> String {
        replacingOccurrences("\"depth\":3", "\"depth\":\(value)")
    }
}
