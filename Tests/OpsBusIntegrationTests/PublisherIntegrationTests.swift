import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusPublisher
import Testing

@Suite("Publisher against a real mosquitto")
struct PublisherIntegrationTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    func publisher(worker: String = "gpu-7", machine: String = "box-1") async throws -> EventPublisher {
        let context = PublisherContext(
            machineID: try Identifier(validating: machine), workerID: try Identifier(validating: worker),
            serviceType: "comfyui", connectorID: "comfyui-connector")
        return try await EventPublisher.connect(endpoint: servers.mqttEndpoint, context: context, logger: testLogger)
    }

    @Test("mosquitto_sub receives every job event as valid JSON on the documented topic")
    func mosquittoSubSeesDocumentedTopics() async throws {
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["jobs/#", "workers/#", "models/#"])
        let publisher = try await publisher()
        let job = try publisher.withJobContext("job-42", attempt: 1, traceID: "trace-1")
        try await job.received(inputSize: 512, modelRequired: "sdxl")
        try await job.started(expectedDuration: 10)
        try await job.progress(percentage: 50, executionStep: "KSampler")
        try await job.modelLoaded(model: "sdxl", loadTimeMs: 1200, cacheHit: false)
        try await job.completed(processingTime: 9.5, outputSize: 2048, expectedDuration: 10, outputURLs: ["s3://o/1.png"])
        await publisher.close()

        // online (birth), 5 job/model events, offline (close)
        let messages = try await sub.waitForMessages(7)
        sub.stop()
        let expected: [(String, EventType)] = [
            ("workers/gpu-7/health", .workerHealth), ("jobs/job-42/received", .jobReceived),
            ("jobs/job-42/started", .jobStarted), ("jobs/job-42/progress", .jobProgress),
            ("models/sdxl/loaded", .modelLoaded), ("jobs/job-42/completed", .jobCompleted),
            ("workers/gpu-7/health", .workerHealth),
        ]
        try #require(messages.count == expected.count, "got \(messages.map(\.topic))")
        var seqs: [UInt64] = []
        for ((topic, payload), (expectedTopic, type)) in zip(messages, expected) {
            #expect(topic == expectedTopic)
            let envelope = try EventEnvelope.decode(Array(payload.utf8))
            #expect(envelope.eventType == type)
            #expect(envelope.workerID?.rawValue == "gpu-7")
            #expect(envelope.machineID?.rawValue == "box-1")
            #expect(envelope.sessionID == publisher.sessionID)
            seqs.append(envelope.seq)
        }
        // Without a spool the QoS 1 events are sequenced 1, 2, 3, …; QoS 0 progress is best effort (seq 0).
        #expect(seqs[3] == 0, "job.progress (QoS 0) is outside the sequence: \(seqs)")
        let sequenced = seqs.filter { $0 != 0 }
        #expect(sequenced == Array(1...UInt64(sequenced.count)), "gap-free sequence within a session: \(seqs)")
        let completed = try EventEnvelope.decode(Array(messages[5].payload.utf8))
        #expect(completed.jobID?.rawValue == "job-42")
        #expect(completed.attempt == 1)
        #expect(completed.traceID == "trace-1")
        #expect(completed.fields["resource_efficiency"]?.doubleValue != nil)
        #expect(completed.fields["cost_estimate"]?.doubleValue ?? 0 > 0)
    }

    @Test("QoS and retain follow the policy: progress QoS 0, lifecycle QoS 1, health retained")
    func qosAndRetainPolicy() async throws {
        let publisher = try await publisher(worker: "gpu-8")
        let job = try publisher.withJobContext("job-q")
        var configuration = MQTTClientConfiguration(endpoint: servers.mqttEndpoint, clientID: "qos-observer")
        configuration.cleanSession = true
        let observer = try MQTTClient(configuration: configuration, logger: testLogger)
        try await observer.connect()
        _ = try await observer.subscribe(["jobs/#", "workers/#"], qos: .exactlyOnce)
        let collected = Task { () -> [MQTTMessage] in
            var list: [MQTTMessage] = []
            for await message in observer.messages {
                list.append(message)
                if list.count == 3 { break }
            }
            return list
        }
        // The retained birth message arrives first, then the two job events.
        try await job.progress(percentage: 10)
        try await job.failed(error: "CUDA out of memory. Tried to allocate 2 GiB")
        let messages = await collected.value
        await observer.disconnect()
        await publisher.close()
        let byTopic = Dictionary(messages.map { ($0.topic, $0) }, uniquingKeysWith: { first, _ in first })
        #expect(byTopic["workers/gpu-8/health"]?.retain == true)
        #expect(byTopic["workers/gpu-8/health"]?.qos == .atLeastOnce)
        #expect(byTopic["jobs/job-q/progress"]?.qos == .atMostOnce)
        #expect(byTopic["jobs/job-q/failed"]?.qos == .atLeastOnce)
        let failed = try EventEnvelope.decode(byTopic["jobs/job-q/failed"]?.payload ?? [])
        #expect(failed.fields["error_type"]?.stringValue == "out_of_memory")
        #expect(failed.fields["retry_recommended"]?.boolValue == true)
    }

    @Test("hostile ids and incomplete events are refused before anything is sent",
          arguments: ["a/b", "+", "#", "job 1", "", "nul\u{0}byte", String(repeating: "x", count: 129), "jöb"])
    func hostileIDsAreRefused(id: String) async throws {
        let publisher = try await publisher(worker: "gpu-9")
        defer { Task { await publisher.disconnect() } }
        #expect(throws: EventPublisherError.self) { try publisher.withJobContext(id) }
        await #expect(throws: EventPublisherError.self) {
            try await publisher.queueState(queue: id, depth: 1, capacity: 10)
        }
    }

    @Test("a required field missing is a clear error, and the seq is not consumed")
    func missingRequiredField() async throws {
        let publisher = try await publisher(worker: "gpu-10")
        let before = publisher.factory.lastSequence
        do {
            try await publisher.publish(.jobFailed, fields: ["error": "boom"], options: .init(jobID: try Identifier(validating: "j1")))
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("retry_recommended") || "\(error)".contains("error_type"), "\(error)")
        }
        #expect(publisher.factory.lastSequence == before)
        await publisher.disconnect()
    }

    @Test("a worker process killed with SIGKILL is marked offline by its last will")
    func lastWillMarksWorkerOffline() async throws {
        let sub = try await MosquittoSub(port: servers.broker.port, filters: ["workers/+/health"])
        let simulator = try ChildProcess(try opsbusExecutable(), [
            "simulate", "--workers", "1", "--jobs", "3", "--worker-prefix", "doomed", "--die-during-job", "2",
            "--mqtt-url", servers.mqttURL,
        ])
        let status = try await simulator.wait(timeout: 60)
        #expect(status == SIGKILL, "the simulator kills itself with SIGKILL (status \(status)): \(simulator.stderr)")
        _ = try await waitUntil(timeout: 20) {
            sub.messages.contains { $0.payload.contains("\"offline\"") }
        }
        sub.stop()
        let offline = sub.messages.filter { $0.topic == "workers/doomed-1/health" && $0.payload.contains("\"offline\"") }
        try #require(offline.count == 1, "messages: \(sub.messages.map(\.payload))")
        let envelope = try EventEnvelope.decode(Array(offline[0].payload.utf8))
        #expect(envelope.fields["reason"]?.stringValue?.contains("last will") == true)
    }
}
