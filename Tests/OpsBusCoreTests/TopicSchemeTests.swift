import Testing
import OpsBusCore

private func id(_ value: String) -> Identifier {
    // Test helper: the values passed here are known-good literals.
    Identifier(rawValue: value)!
}

@Suite struct TopicSchemeTests {
    static let expectedTopics: [(EventType, String)] = [
        (.jobReceived, "jobs/S-1/received"), (.jobStarted, "jobs/S-1/started"), (.jobProgress, "jobs/S-1/progress"),
        (.jobCompleted, "jobs/S-1/completed"), (.jobFailed, "jobs/S-1/failed"),
        (.workerRegistered, "workers/S-1/registered"), (.workerDeregistered, "workers/S-1/deregistered"),
        (.workerHealth, "workers/S-1/health"), (.workerHeartbeat, "workers/S-1/heartbeat"),
        (.resourceAllocated, "resources/S-1/allocated"), (.resourceReleased, "resources/S-1/released"),
        (.queueState, "queues/S-1/state"), (.serviceHealth, "services/S-1/health"), (.modelLoaded, "models/S-1/loaded"),
        (.triggerNotification, "triggers/notification/S-1"), (.triggerRetry, "triggers/retry/S-1"),
        (.triggerPrecache, "triggers/precache/S-1"), (.triggerWorkflow, "triggers/workflow/S-1"),
        (.triggerScaling, "triggers/scaling/S-1"), (.triggerFailover, "triggers/failover/S-1"),
        (.triggerRecommendation, "triggers/recommendation/S-1"),
    ]

    @Test func tableCoversEveryEventType() {
        #expect(Set(Self.expectedTopics.map(\.0)) == Set(EventType.allCases))
    }

    @Test(arguments: expectedTopics)
    func buildAndParseWithoutPrefix(type: EventType, topic: String) throws {
        let scheme = try TopicScheme()
        #expect(scheme.topic(for: type, subject: id("S-1")) == topic)
        #expect(try scheme.parse(topic) == ParsedTopic(eventType: type, subject: id("S-1")))
        #expect(try TopicFilter(scheme.filter(for: type)).matches(topic))
        #expect(try TopicFilter(scheme.filter(for: type.topicFamily)).matches(topic))
    }

    @Test(arguments: expectedTopics)
    func buildAndParseWithPrefix(type: EventType, topic: String) throws {
        let scheme = try TopicScheme(prefix: "prod/eu-1")
        #expect(scheme.topic(for: type, subject: id("S-1")) == "prod/eu-1/" + topic)
        #expect(try scheme.parse("prod/eu-1/" + topic) == ParsedTopic(eventType: type, subject: id("S-1")))
        #expect(throws: TopicError.wrongPrefix(topic: topic, expectedPrefix: "prod/eu-1")) { try scheme.parse(topic) }
        #expect(throws: TopicError.wrongPrefix(topic: "prod/eu-2/" + topic, expectedPrefix: "prod/eu-1")) {
            try scheme.parse("prod/eu-2/" + topic)
        }
        #expect(throws: TopicError.wrongPrefix(topic: "prod/eu-1x/" + topic, expectedPrefix: "prod/eu-1")) {
            try scheme.parse("prod/eu-1x/" + topic)
        }
        // Without a prefix configured, a prefixed topic is simply unknown.
        #expect(throws: TopicError.self) { try TopicScheme().parse("prod/eu-1/" + topic) }
    }

    @Test func emptyPrefixMeansNone() throws {
        #expect(try TopicScheme(prefix: "").prefix == nil)
        #expect(try TopicScheme(prefix: "").topic(for: .jobFailed, subject: id("j")) == "jobs/j/failed")
    }

    @Test(arguments: ["a/", "/a", "a//b", "a/+/b", "a/#", "$SYS", "$share/x", "a+", "a\u{0}b", "a\nb"])
    func invalidPrefixes(prefix: String) {
        #expect(throws: TopicError.self) { try TopicScheme(prefix: prefix) }
    }

    @Test func validPrefixes() throws {
        #expect(try TopicScheme(prefix: "opsbus").prefix == "opsbus")
        #expect(try TopicScheme(prefix: "a/b c/ü").prefix == "a/b c/ü")
        #expect(try TopicScheme(prefix: "a$").prefix == "a$")
    }

    @Test(arguments: [
        "jobs/j1", "jobs/j1/completed/extra", "jobs/j1/exploded", "job/j1/completed", "workers/w1/completed",
        "queues/q/depth", "triggers/explode/j1", "triggers/j1/retry", "resources/w/health", "", "/", "//",
        "jobs//", "models/m/loaded/", "/jobs/j1/completed", "JOBS/j1/completed", "services/s/state",
    ])
    func unknownShapes(topic: String) throws {
        let scheme = try TopicScheme()
        do {
            let parsed = try scheme.parse(topic)
            Issue.record("\(topic) parsed as \(parsed)")
        } catch {
            switch error {
            case .unknownTopic(let reported): #expect(reported == topic)
            case .invalidSubject: break  // e.g. "jobs//" is the right shape with an empty subject
            default: Issue.record("unexpected \(error)")
            }
        }
    }

    @Test(arguments: [
        ("jobs/+/completed", "job_id"), ("jobs/#/completed", "job_id"), ("jobs//completed", "job_id"),
        ("workers/a b/health", "worker_id"), ("triggers/retry/+", "subject"), ("queues/q\u{0}/state", "queue"),
        ("models/ü/loaded", "model"), ("services/$SYS/health", "service"),
    ])
    func invalidSubjects(topic: String, field: String) throws {
        do {
            let parsed = try TopicScheme().parse(topic)
            Issue.record("\(topic) parsed as \(parsed)")
        } catch {
            guard case .invalidSubject(let reportedTopic, let idError) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(reportedTopic == topic)
            #expect(idError.field == field)
        }
    }

    @Test func subscriptionFilters() throws {
        #expect(try TopicScheme().subscriptionFilters() ==
            ["jobs/+/+", "workers/+/+", "resources/+/+", "queues/+/state", "services/+/health", "models/+/loaded", "triggers/+/+"])
        #expect(try TopicScheme(prefix: "p").subscriptionFilters().first == "p/jobs/+/+")
        #expect(try TopicScheme().subscriptionFilters(for: [.worker]) == ["workers/+/+", "resources/+/+"])
        #expect(try TopicScheme().subscriptionFilters(for: [.trigger, .job]) == ["jobs/+/+", "triggers/+/+"])
        #expect(try TopicScheme().subscriptionFilters(for: SubjectKind.allCases) == TopicScheme().subscriptionFilters())
        for filter in try TopicScheme(prefix: "x/y").subscriptionFilters() {
            #expect(throws: Never.self) { try TopicFilter(filter) }
        }
    }

    @Test func everyTopicIsMatchedByExactlyOneSubscriptionFilter() throws {
        let scheme = try TopicScheme(prefix: "ops")
        let filters = try scheme.subscriptionFilters().map { filter throws(TopicError) in try TopicFilter(filter) }
        for type in EventType.allCases {
            let topic = scheme.topic(for: type, subject: id("x"))
            #expect(filters.filter { $0.matches(topic) }.count == 1, "\(topic)")
        }
    }
}

@Suite struct TopicPayloadCheckTests {
    let scheme = try! TopicScheme()

    func envelope(_ type: EventType) throws -> EventEnvelope {
        try EventEnvelope.decode(EnvelopeFixtures.payload(type))
    }

    @Test(arguments: EventType.allCases)
    func matchingTopicPasses(type: EventType) throws {
        let event = try envelope(type)
        let topic = try scheme.topic(for: event)
        try scheme.check(topic: topic, matches: event)
    }

    @Test func wrongEventTypeIsRefused() throws {
        let event = try envelope(.jobFailed)
        #expect(throws: TopicError.payloadMismatch(topic: "jobs/job-1/completed", what: "event type",
                                                   topicValue: "job.completed", payloadValue: "job.failed")) {
            try scheme.check(topic: "jobs/job-1/completed", matches: event)
        }
        let message = TopicError.payloadMismatch(topic: "jobs/job-1/completed", what: "event type",
                                                 topicValue: "job.completed", payloadValue: "job.failed").description
        #expect(message == #"topic "jobs/job-1/completed" says event type "job.completed" but the payload says "job.failed""#)
    }

    @Test func wrongSubjectIsRefused() throws {
        #expect(throws: TopicError.payloadMismatch(topic: "jobs/job-2/completed", what: "job_id",
                                                   topicValue: "job-2", payloadValue: "job-1")) {
            try scheme.check(topic: "jobs/job-2/completed", matches: try envelope(.jobCompleted))
        }
        #expect(throws: TopicError.payloadMismatch(topic: "queues/other/state", what: "queue",
                                                   topicValue: "other", payloadValue: "default")) {
            try scheme.check(topic: "queues/other/state", matches: try envelope(.queueState))
        }
        #expect(throws: TopicError.payloadMismatch(topic: "resources/w2/allocated", what: "worker_id",
                                                   topicValue: "w2", payloadValue: "w1")) {
            try scheme.check(topic: "resources/w2/allocated", matches: try envelope(.resourceAllocated))
        }
        var trigger = try envelope(.triggerPrecache)
        trigger.fields["subject"] = "sdxl"
        try scheme.check(topic: "triggers/precache/sdxl", matches: trigger)
        #expect(throws: TopicError.payloadMismatch(topic: "triggers/precache/job-1", what: "subject",
                                                   topicValue: "job-1", payloadValue: "sdxl")) {
            try scheme.check(topic: "triggers/precache/job-1", matches: trigger)
        }
    }

    @Test func payloadWithoutSubjectIsRefused() throws {
        var event = try envelope(.jobCompleted)
        event.jobID = nil
        #expect(throws: TopicError.payloadSubjectUnavailable(
            topic: "jobs/job-1/completed", error: .missingField(eventType: .jobCompleted, field: "job_id"))) {
            try scheme.check(topic: "jobs/job-1/completed", matches: event)
        }
    }

    @Test func unparsableTopicIsRefusedFirst() throws {
        #expect(throws: TopicError.unknownTopic("jobs/job-1")) {
            try scheme.check(topic: "jobs/job-1", matches: try envelope(.jobCompleted))
        }
    }
}

@Suite struct TopicFilterTests {
    @Test(arguments: [
        // filter, topic, matches
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sports", false),
        ("sport/#", "sport/", true),
        ("#", "sport/tennis", true),
        ("#", "/", true),
        ("#", "a", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/tennis/+", "sport/tennis", false),
        ("sport/tennis/+", "sport/tennis/", true),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+", "finance", true),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/golf", false),
        ("jobs/+/completed", "jobs/j1/completed", true),
        ("jobs/+/completed", "jobs/j1/completedx", false),
        ("jobs/+/completed", "jobs/j1/complete", false),
        ("jobs/+/completed", "jobs/j1/failed", false),
        ("jobs/+/completed", "jobs/j1/x/completed", false),
        ("jobs/+/+", "jobs/j1/progress", true),
        ("jobs/+/+", "jobs/j1", false),
        ("jobs/#", "jobs", true),
        ("jobs/#", "jobsx/a", false),
        ("a/b", "a/b", true),
        ("a/b", "a/b/", false),
        ("a/b", "a/bc", false),
        ("a/b", "a", false),
        ("a/b", "A/b", false),
        ("ü/+", "ü/x", true),
        // $-topics
        ("#", "$SYS/broker/load", false),
        ("+/broker/load", "$SYS/broker/load", false),
        ("+", "$SYS", false),
        ("$SYS/#", "$SYS/broker/load", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/broker/+", "$SYS/broker/load", true),
        ("a/#", "a/$b", true),
        ("a/+", "a/$b", true),
        // $share: group stripped for matching
        ("$share/g1/jobs/+/completed", "jobs/j1/completed", true),
        ("$share/g1/jobs/+/completed", "jobs/j1/failed", false),
        ("$share/g1/#", "jobs/j1/failed", true),
        ("$share/g1/#", "$SYS/x", false),
        ("$share/g1/jobs/#", "$share/g1/jobs/x", false),
    ])
    func matchingTable(filter: String, topic: String, expected: Bool) throws {
        #expect(try TopicFilter(filter).matches(topic) == expected)
    }

    @Test func emptyTopicNeverMatches() throws {
        #expect(!(try TopicFilter("#").matches("")))
        #expect(!(try TopicFilter("+").matches("")))
    }

    @Test func sharedSubscriptionParts() throws {
        let filter = try TopicFilter("$share/processors/jobs/+/+")
        #expect(filter.shareGroup == "processors")
        #expect(filter.matchFilter == "jobs/+/+")
        #expect(filter.rawValue == "$share/processors/jobs/+/+")
        #expect(filter.description == "$share/processors/jobs/+/+")
        #expect(try TopicFilter.shared(group: "processors", filter: "jobs/+/+") == filter)
        #expect(try TopicFilter("jobs/#").shareGroup == nil)
        #expect(try TopicFilter("$shared/x").shareGroup == nil)  // only exactly "$share/" is special
    }

    @Test(arguments: [
        ("", TopicError.emptyFilter),
        ("a/#/b", .misplacedMultiLevelWildcard(filter: "a/#/b")),
        ("#/a", .misplacedMultiLevelWildcard(filter: "#/a")),
        ("a#", .misplacedMultiLevelWildcard(filter: "a#")),
        ("a/b#", .misplacedMultiLevelWildcard(filter: "a/b#")),
        ("a/+b", .partialLevelWildcard(filter: "a/+b", level: "+b")),
        ("a+/b", .partialLevelWildcard(filter: "a+/b", level: "a+")),
        ("++", .partialLevelWildcard(filter: "++", level: "++")),
        ("a\u{0}b", .nulInFilter),
        ("$share/", .invalidSharedSubscription(filter: "$share/", reason: "expected $share/<group>/<filter>")),
        ("$share/g", .invalidSharedSubscription(filter: "$share/g", reason: "expected $share/<group>/<filter>")),
        ("$share//a", .invalidSharedSubscription(filter: "$share//a", reason: "the share group must not be empty")),
        ("$share/g/", .invalidSharedSubscription(filter: "$share/g/", reason: "the filter after the group must not be empty")),
        ("$share/g+/a", .invalidSharedSubscription(filter: "$share/g+/a", reason: "the share group must not contain '+' or '#'")),
        ("$share/#/a", .invalidSharedSubscription(filter: "$share/#/a", reason: "the share group must not contain '+' or '#'")),
        ("$share/g/a/#/b", .misplacedMultiLevelWildcard(filter: "$share/g/a/#/b")),
    ])
    func invalidFilters(filter: String, error: TopicError) {
        #expect(throws: error) { try TopicFilter(filter) }
    }

    @Test func lengthLimit() throws {
        #expect(throws: Never.self) { try TopicFilter(String(repeating: "a", count: 65_535)) }
        #expect(throws: TopicError.filterTooLong(bytes: 65_536)) { try TopicFilter(String(repeating: "a", count: 65_536)) }
        // The limit counts UTF-8 bytes, not characters.
        #expect(throws: TopicError.filterTooLong(bytes: 65_536)) { try TopicFilter(String(repeating: "é", count: 32_768)) }
    }

    @Test func sharedHelperRefusesSlashInGroup() {
        #expect(throws: TopicError.self) { try TopicFilter.shared(group: "a/b", filter: "x") }
        #expect(throws: TopicError.self) { try TopicFilter.shared(group: "", filter: "x") }
    }

    @Test func literalDetection() throws {
        #expect(try TopicFilter("a/b").isLiteral)
        #expect(!(try TopicFilter("a/+").isLiteral))
        #expect(!(try TopicFilter("#").isLiteral))
    }

    @Test func validFiltersThatLookOdd() throws {
        for filter in ["/", "//", "+/+/+", "a//b", "$SYS", "$share/g/+", " ", "a b/c"] {
            #expect(throws: Never.self, "\(filter)") { try TopicFilter(filter) }
        }
        #expect(try TopicFilter("a//b").matches("a//b"))
        #expect(try TopicFilter("a/+/b").matches("a//b"))
    }

    @Test func bridgedStringsMatch() throws {
        // A String built from a Substring/characters still goes through the contiguous fast path or the fallback.
        let topic = String("xxjobs/j1/completed".dropFirst(2))
        #expect(try TopicFilter("jobs/+/completed").matches(topic))
    }
}
