import Testing
import OpsBusCore

@Suite struct IdentifierTests {
    @Test(arguments: ["a", "job-123", "gpu_worker.01", "urn:x:y", "A-Z.a_z:0-9", String(repeating: "x", count: 128),
                      "01HZY3J5Q6R7S8T9V0W1X2Y3Z4", "550e8400-e29b-41d4-a716-446655440000"])
    func validIdsAreAccepted(value: String) throws {
        let id = try Identifier(validating: value, field: "job_id")
        #expect(id.rawValue == value)
        #expect(id.description == value)
        #expect(Identifier(rawValue: value) == id)
    }

    @Test func emptyIsRejected() {
        #expect(throws: IdentifierError.empty(field: "job_id")) { try Identifier(validating: "", field: "job_id") }
        #expect(Identifier(rawValue: "") == nil)
    }

    @Test func tooLongIsRejected() {
        let value = String(repeating: "a", count: 129)
        #expect(throws: IdentifierError.tooLong(field: "worker_id", length: 129)) {
            try Identifier(validating: value, field: "worker_id")
        }
    }

    @Test(arguments: [
        ("+", Character("+"), 0), ("#", "#", 0), ("a/b", "/", 1), ("a b", " ", 1), ("ab\u{0}", "\u{0}", 2),
        ("jöb", "ö", 1), ("job😀", "😀", 3), ("a\tb", "\t", 1), ("a\nb", "\n", 1), ("$SYS", "$", 0),
        ("a+b", "+", 1), ("x#", "#", 1), ("a,b", ",", 1), ("a\"b", "\"", 1), ("e\u{301}", "e\u{301}", 0),
    ])
    func hostileIdsAreRejected(value: String, character: Character, offset: Int) {
        #expect(throws: IdentifierError.invalidCharacter(field: "job_id", value: value, character: character, offset: offset)) {
            try Identifier(validating: value, field: "job_id")
        }
        #expect(Identifier(rawValue: value) == nil)
    }

    @Test func invalidCharacterBeatsLength() {
        // A long id with a bad character reports the character (the more useful error).
        let value = String(repeating: "a", count: 200) + "/"
        #expect(throws: IdentifierError.invalidCharacter(field: "id", value: value, character: "/", offset: 200)) {
            try Identifier(validating: value)
        }
    }

    @Test func messagesNameFieldAndEscapeValue() {
        #expect(IdentifierError.invalidCharacter(field: "job_id", value: "a/b", character: "/", offset: 1).description
            == #"invalid job_id "a/b": character "/" at offset 1 is not allowed (allowed: A-Z a-z 0-9 . _ : -)"#)
        #expect(IdentifierError.invalidCharacter(field: "job_id", value: "a\u{0}\n\"", character: "\u{0}", offset: 1).description
            == #"invalid job_id "a\u{0}\n\"": character "\u{0}" at offset 1 is not allowed (allowed: A-Z a-z 0-9 . _ : -)"#)
        #expect(IdentifierError.empty(field: "worker_id").description
            == "invalid worker_id: must not be empty (1-128 characters of A-Z a-z 0-9 . _ : -)")
        #expect(IdentifierError.tooLong(field: "job_id", length: 300).description
            == "invalid job_id: 300 characters, at most 128 allowed")
        let long = String(repeating: "z", count: 500) + " "
        let message = IdentifierError.invalidCharacter(field: "job_id", value: long, character: " ", offset: 500).description
        #expect(message.contains(String(repeating: "z", count: 64) + "…\""))
        #expect(!message.contains(String(repeating: "z", count: 65)))
    }

    @Test func ordering() throws {
        let a = try Identifier(validating: "a")
        let b = try Identifier(validating: "b")
        #expect(a < b)
        #expect([b, a].sorted() == [a, b])
    }
}

@Suite struct EventTypeTests {
    @Test(arguments: EventType.allCases)
    func actionIsTheRawValueAfterTheDot(type: EventType) {
        let parts = type.rawValue.split(separator: ".")
        #expect(parts.count == 2)
        #expect(type.action == String(parts[1]))
        // The family is the plural of the part before the dot.
        #expect(type.topicFamily.rawValue == parts[0] + "s")
        #expect(EventType(rawValue: type.rawValue) == type)
    }

    @Test func subjectKinds() {
        #expect(EventType.jobFailed.subjectKind == .job)
        #expect(EventType.resourceReleased.subjectKind == .worker)
        #expect(EventType.workerHeartbeat.subjectKind == .worker)
        #expect(EventType.queueState.subjectKind == .queue)
        #expect(EventType.serviceHealth.subjectKind == .service)
        #expect(EventType.modelLoaded.subjectKind == .model)
        #expect(EventType.allCases.filter { $0.subjectKind == .trigger }.count == 7)
        #expect(EventType.allCases.count == 21)
    }

    @Test func catalogHasASchemaForEveryType() {
        for type in EventType.allCases {
            let schema = EventCatalog.schema(for: type)
            #expect(schema.eventType == type)
            #expect(!schema.doc.isEmpty)
            #expect(Set(schema.fields.map(\.name)).count == schema.fields.count, "duplicate field in \(type)")
            for field in schema.fields {
                #expect(!EventEnvelope.envelopeKeys.contains(field.name), "\(type).\(field.name) clashes with an envelope key")
                #expect(!field.doc.isEmpty)
            }
        }
    }
}
