import Foundation
import Testing
import OpsBusCore

/// `topics.md` is the normative contract. These tests hold it to the code: every JSON example must decode, every
/// documented topic must be what `TopicScheme` builds, every QoS/retain line must be the default policy, and every
/// fields table must be the catalog.
@Suite struct TopicsDocumentTests {
    struct Section {
        var eventType: EventType
        var lines: [String] = []
    }

    static let document: String = {
        // Tests/OpsBusCoreTests/TopicsDocumentTests.swift → package root.
        let root = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let path = root.appendingPathComponent("topics.md").path
        return (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }()

    static var lines: [String] { document.components(separatedBy: "\n") }

    /// Fenced blocks with the given info string, as arrays of lines.
    static func blocks(_ info: String) -> [[String]] {
        var result: [[String]] = []
        var current: [String]?
        for line in lines {
            if current == nil, line == "```" + info {
                current = []
            } else if current != nil, line == "```" {
                result.append(current!)
                current = nil
            } else if current != nil {
                current!.append(line)
            }
        }
        return result
    }

    /// `### <event type>` sections, up to the next heading.
    static func sections() -> [Section] {
        var result: [Section] = []
        var current: Section?
        for line in lines {
            if line.hasPrefix("#") {
                if let current { result.append(current) }
                current = nil
                if line.hasPrefix("### "), let type = EventType(rawValue: String(line.dropFirst(4))) {
                    current = Section(eventType: type)
                }
            } else {
                current?.lines.append(line)
            }
        }
        if let current { result.append(current) }
        return result
    }

    /// Text between the first pair of backticks in `line`.
    static func firstCode(in line: String) -> String? {
        let parts = line.components(separatedBy: "`")
        return parts.count >= 3 ? parts[1] : nil
    }

    @Test func documentIsPresent() {
        #expect(Self.document.count > 1000, "topics.md not found next to Package.swift")
    }

    @Test func everyJSONBlockDecodes() throws {
        let blocks = Self.blocks("json")
        #expect(blocks.count >= EventType.allCases.count)
        for block in blocks {
            let text = block.joined(separator: "\n")
            do {
                let envelope = try EventEnvelope.decode(text)
                // And survives a round trip through the encoder.
                #expect(try EventEnvelope.decode(envelope.encoded()) == envelope)
            } catch {
                Issue.record("topics.md example does not decode: \(error)\n\(text)")
            }
        }
    }

    @Test func everyEventTypeHasExactlyOneSection() {
        let documented = Self.sections().map(\.eventType)
        for type in EventType.allCases {
            #expect(documented.filter { $0 == type }.count == 1, "section for \(type)")
        }
    }

    @Test(arguments: EventType.allCases)
    func sectionMatchesCode(type: EventType) throws {
        let section = try #require(Self.sections().first { $0.eventType == type }, "no section for \(type)")
        let scheme = TopicScheme.unprefixed

        // "Topic: `jobs/<job_id>/completed` · QoS 1 · retain no"
        let topicLine = try #require(section.lines.first { $0.hasPrefix("Topic: ") }, "no Topic: line for \(type)")
        let template = try #require(Self.firstCode(in: topicLine))
        let policy = QoSPolicy.default.policy(for: type)
        #expect(topicLine.hasSuffix("· QoS \(policy.qos.rawValue) · retain \(policy.retain ? "yes" : "no")"),
                "\(type): documented \(topicLine), code says \(policy)")

        // The example payload and the topic it is documented on.
        let exampleLine = try #require(section.lines.first { $0.hasPrefix("Example on ") }, "no example topic for \(type)")
        let exampleTopic = try #require(Self.firstCode(in: exampleLine))
        let start = try #require(section.lines.firstIndex(of: "```json"), "no json example for \(type)")
        let end = try #require(section.lines[start...].firstIndex(of: "```"))
        let envelope = try EventEnvelope.decode(section.lines[(start + 1)..<end].joined(separator: "\n"))
        #expect(envelope.eventType == type)
        let subject = try envelope.topicSubject()
        #expect(exampleTopic == scheme.topic(for: type, subject: subject))
        try scheme.check(topic: exampleTopic, matches: envelope)

        // The template with its placeholder filled in is the same topic.
        let placeholder = "<" + (type.subjectKind == .trigger ? "subject_id" : type.subjectFieldName) + ">"
        #expect(template.contains(placeholder), "\(type): template \(template) should name \(placeholder)")
        #expect(template.replacingOccurrences(of: placeholder, with: subject.rawValue) == exampleTopic)

        // "| `name` | kind | yes/no | meaning |" rows equal the catalog.
        let rows = section.lines.filter { $0.hasPrefix("| `") }.map { row in
            row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let documented = rows.map { "\($0[0].replacingOccurrences(of: "`", with: "")) \($0[1]) \($0[2])" }
        let catalog = EventCatalog.schema(for: type).fields.map { "\($0.name) \($0.kind) \($0.required ? "yes" : "no")" }
        #expect(documented == catalog)
    }

    @Test func operatorOutputLinesAreRealMessages() throws {
        let console = try #require(Self.blocks("console").first { $0.first?.hasPrefix("$ mosquitto_sub -v -t 'jobs/#'") == true })
        let messages = console.dropFirst()
        #expect(messages.count >= 3)
        let filter = try TopicFilter("jobs/#")
        for line in messages {
            let space = try #require(line.firstIndex(of: " "))
            let topic = String(line[..<space])
            let payload = String(line[line.index(after: space)...])
            #expect(filter.matches(topic))
            let envelope = try EventEnvelope.decode(payload)
            try TopicScheme.unprefixed.check(topic: topic, matches: envelope)
            // Operators see the compact encoder output.
            #expect(envelope.encodedString() == payload)
        }
    }

    @Test func overrideExampleParses() throws {
        let spec = try #require(Self.blocks("text").first { $0.first?.contains("=") == true }?.first)
        #expect(try QoSPolicy.parseOverrides(spec).count == 3)
    }
}
