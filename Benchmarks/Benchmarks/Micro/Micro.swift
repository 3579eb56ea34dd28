// Micro benchmarks of opsbus's hot pure code: time and allocations per operation (ordo-one/benchmark).
// Run: cd Benchmarks && swift package benchmark --target Micro   (scripts/bench runs it and keeps the table)
import Benchmark
import OpsBusCore

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 1_000)

    let envelope: EventEnvelope = {
        var envelope = EventEnvelope(
            eventID: EventID.make(), eventType: .jobProgress, timestamp: .now(), source: "comfyui",
            jobID: Identifier(rawValue: "job-000042"), machineID: Identifier(rawValue: "m-1"),
            workerID: Identifier(rawValue: "gpu-1"), serviceType: "comfyui", connectorID: "bench",
            sessionID: "s-0123456789abcdef", seq: 0, traceID: nil, correlationID: nil, attempt: 1,
            fields: ["progress_percentage": 42.5, "execution_step": "KSampler",
                     "current_operation": .string(String(repeating: "x", count: 80))])
        envelope.seq = 0
        return envelope
    }()
    let payload = envelope.encoded()
    let scheme = TopicScheme.unprefixed
    let topic = scheme.topic(for: .jobProgress, subject: Identifier(rawValue: "job-000042")!)
    let filters = try! ["jobs/#", "jobs/+/progress", "workers/+/health", "$share/g/jobs/+/completed", "models/#"]
        .map { try TopicFilter($0) }
    let policy = QoSPolicy.default

    Benchmark("envelope encode (≈400 B)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(envelope.encoded()) }
    }
    Benchmark("envelope decode + validate (≈400 B)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? EventEnvelope.decode(payload)) }
    }
    Benchmark("topic build jobs/<id>/progress") { benchmark in
        let subject = Identifier(rawValue: "job-000042")!
        for _ in benchmark.scaledIterations { blackHole(scheme.topic(for: .jobProgress, subject: subject)) }
    }
    Benchmark("topic parse jobs/<id>/progress") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? scheme.parse(topic)) }
    }
    Benchmark("filter match (5 filters)") { benchmark in
        for _ in benchmark.scaledIterations {
            for filter in filters { blackHole(filter.matches(topic)) }
        }
    }
    Benchmark("QoS policy lookup") { benchmark in
        for _ in benchmark.scaledIterations {
            for type in EventType.allCases { blackHole(policy.policy(for: type)) }
        }
    }
}
