import Testing
import OpsBusCore

@Suite struct QoSPolicyTests {
    @Test(arguments: EventType.allCases)
    func defaults(type: EventType) {
        let policy = QoSPolicy.default.policy(for: type)
        switch type {
        case .jobProgress, .workerHeartbeat:
            #expect(policy.qos == .atMostOnce)
            #expect(!policy.retain)
        case .workerHealth, .queueState, .serviceHealth:
            #expect(policy.qos == .atLeastOnce)
            #expect(policy.retain)
        default:
            #expect(policy.qos == .atLeastOnce)
            #expect(!policy.retain)
        }
        #expect(policy.qos != .exactlyOnce)
        #expect(!policy.reason.isEmpty)
        #expect(!QoSPolicy.default.isOverridden(type))
    }

    @Test func qosOrdering() {
        #expect(QoS.atMostOnce < .atLeastOnce)
        #expect(QoS.atLeastOnce < .exactlyOnce)
        #expect(QoS.exactlyOnce.description == "QoS 2")
    }

    @Test func parseDocumentedExample() throws {
        let overrides = try QoSPolicy.parseOverrides("job.progress=1,worker.health=1+retain,queue.state=0-retain")
        #expect(overrides.count == 3)
        #expect(overrides[.jobProgress]?.qos == .atLeastOnce)
        #expect(overrides[.jobProgress]?.retain == false)  // keeps the default retain flag
        #expect(overrides[.workerHealth]?.qos == .atLeastOnce)
        #expect(overrides[.workerHealth]?.retain == true)
        #expect(overrides[.queueState]?.qos == .atMostOnce)
        #expect(overrides[.queueState]?.retain == false)
        #expect(overrides[.queueState]?.reason == "override \"queue.state=0-retain\"")
    }

    @Test func suffixlessOverrideKeepsDefaultRetain() throws {
        let overrides = try QoSPolicy.parseOverrides("service.health=0")
        #expect(overrides[.serviceHealth]?.retain == true)
        #expect(overrides[.serviceHealth]?.qos == .atMostOnce)
    }

    @Test func whitespaceAndEmptySpec() throws {
        #expect(try QoSPolicy.parseOverrides("").isEmpty)
        #expect(try QoSPolicy.parseOverrides("  ").isEmpty)
        let overrides = try QoSPolicy.parseOverrides(" job.completed = 2 , model.loaded=0+retain ")
        #expect(overrides[.jobCompleted]?.qos == .exactlyOnce)
        #expect(overrides[.modelLoaded] == DeliveryPolicy(qos: .atMostOnce, retain: true, reason: "override \"model.loaded=0+retain\""))
    }

    @Test func overridesApplyOnlyToTheirType() throws {
        let policy = try QoSPolicy(overrideSpec: "job.progress=1+retain")
        #expect(policy.policy(for: .jobProgress).qos == .atLeastOnce)
        #expect(policy.policy(for: .jobProgress).retain)
        #expect(policy.isOverridden(.jobProgress))
        #expect(policy.policy(for: .workerHeartbeat) == QoSPolicy.defaultPolicy(for: .workerHeartbeat))
        let direct = QoSPolicy(overrides: [.jobFailed: DeliveryPolicy(qos: .exactlyOnce, retain: false, reason: "test")])
        #expect(direct.policy(for: .jobFailed).qos == .exactlyOnce)
    }

    @Test(arguments: [
        ("job.progress", PolicyError.malformedEntry("job.progress")),
        ("job.progress=1,", .emptyEntry(spec: "job.progress=1,")),
        ("job.progress=1,,queue.state=0", .emptyEntry(spec: "job.progress=1,,queue.state=0")),
        (",", .emptyEntry(spec: ",")),
        ("job.progrez=1", .unknownEventType("job.progrez")),
        ("=1", .unknownEventType("")),
        ("job.progress=3", .invalidQoS(entry: "job.progress=3", value: "3")),
        ("job.progress=", .invalidQoS(entry: "job.progress=", value: "")),
        ("job.progress=-1", .invalidQoS(entry: "job.progress=-1", value: "-1")),
        ("job.progress=01", .invalidQoS(entry: "job.progress=01", value: "01")),
        ("job.progress=1retain", .invalidQoS(entry: "job.progress=1retain", value: "1retain")),
        ("job.progress=1+keep", .invalidQoS(entry: "job.progress=1+keep", value: "1+keep")),
        ("job.progress=+retain", .invalidQoS(entry: "job.progress=+retain", value: "")),
        ("job.progress=1=2", .invalidQoS(entry: "job.progress=1=2", value: "1=2")),
        ("job.progress=1,job.progress=0", .duplicateEventType(.jobProgress)),
    ])
    func malformedSpecs(spec: String, error: PolicyError) {
        #expect(throws: error) { try QoSPolicy.parseOverrides(spec) }
    }

    @Test func errorMessagesShowSyntax() {
        #expect(PolicyError.invalidQoS(entry: "job.progress=3", value: "3").description ==
            #"QoS override "job.progress=3": "3" is not a QoS; expected <event_type>=<0|1|2>[+retain|-retain], e.g. job.progress=1,worker.health=1+retain"#)
        #expect(PolicyError.unknownEventType("x").description == #"QoS override names unknown event type "x""#)
    }
}
