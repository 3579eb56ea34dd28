// opsbus-bench: the Swift half of the benchmark suite (scripts/bench drives it; BENCHMARKS.md explains the figures).
//
//   opsbus-bench gen --kind bridge|lifecycle --jobs 1000 --events N [--size BYTES] --out FILE
//       writes "qos<TAB>topic<TAB>payload" lines of valid opsbus envelopes for the C load generator, so that the
//       opsbus services under test see exactly what EventPublisher would send (the generator costs them nothing).
//   opsbus-bench publish --mqtt-url URL --events N --qos 0|1 [--spool always|never --dir D] [--concurrency K]
//       the publisher scenario, in process: EventPublisher as a worker uses it; prints one JSON line.
//   opsbus-bench hdr FILE
//       HdrHistogram percentiles of a file of latencies in microseconds (one per line); prints one JSON line.
import Foundation
import Histogram
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusPublisher
import OpsBusSpool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct Arguments {
    var values: [String: String] = [:]
    init(_ list: ArraySlice<String>) {
        var iterator = list.makeIterator()
        while let key = iterator.next() {
            guard key.hasPrefix("--") else { continue }
            values[String(key.dropFirst(2))] = iterator.next() ?? ""
        }
    }
    func string(_ key: String, _ fallback: String) -> String { values[key] ?? fallback }
    func int(_ key: String, _ fallback: Int) -> Int { values[key].flatMap { Int($0) } ?? fallback }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("opsbus-bench: \(message)\n".utf8))
    exit(2)
}

func emit(_ object: JSONObject) {
    FileHandle.standardOutput.write(Data((JSONValue.object(object).serialized() + "\n").utf8))
}

/// user + system CPU seconds of this process.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
        + Double(usage.ru_stime.tv_usec) / 1e6
}

/// Resident set size in MiB, from /proc/self/statm.
func rssMiB() -> Double {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Double(fields[1]) else { return 0 }
    return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
}

// MARK: gen

/// Builds envelopes with the library's own factory (valid, with the fields the processor expects).
func generate(_ arguments: Arguments) {
    let kind = arguments.string("kind", "bridge")
    let jobs = arguments.int("jobs", 1000)
    let events = arguments.int("events", 10_000)
    let size = arguments.int("size", 400)
    let failedEvery = arguments.int("failed-every", 10)
    let progressSteps = arguments.int("progress", 8)
    guard let out = arguments.values["out"] else { fail("gen needs --out") }
    let context = PublisherContext(
        machineID: Identifier(rawValue: "bench-machine"), workerID: Identifier(rawValue: "bench-worker"),
        serviceType: "comfyui", connectorID: "bench")
    let factory = EventFactory(context: context)
    // The lifecycle mix comes from 16 workers, each its own publisher session, as on a real platform (the batching
    // processor keeps each session's order and spreads sessions over its writers).
    let workerFactories = (0..<16).map { index in
        EventFactory(context: PublisherContext(
            machineID: Identifier(rawValue: "bench-machine"), workerID: Identifier(rawValue: "gpu-\(index)"),
            serviceType: "comfyui", connectorID: "bench"))
    }
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    guard let handle = FileHandle(forWritingAtPath: out) else { fail("cannot write \(out)") }
    var buffer = [UInt8]()
    buffer.reserveCapacity(1 << 20)
    func write(_ prepared: EventFactory.Prepared) {
        buffer.append(contentsOf: String(prepared.delivery.qos.rawValue).utf8)
        buffer.append(9)
        buffer.append(contentsOf: prepared.topic.utf8)
        buffer.append(9)
        buffer.append(contentsOf: prepared.envelope.encoded())
        buffer.append(10)
        if buffer.count > 1 << 20 {
            handle.write(Data(buffer))
            buffer.removeAll(keepingCapacity: true)
        }
    }
    func prepare(_ type: EventType, _ fields: JSONObject, job: String, attempt: Int = 1,
                 by factory: EventFactory = factory) -> EventFactory.Prepared {
        do {
            return try factory.prepare(
                type, fields: fields, subject: Identifier(rawValue: job),
                options: .init(jobID: Identifier(rawValue: job), attempt: attempt))
        } catch {
            fail("cannot build \(type.rawValue): \(error)")
        }
    }
    let runID = String(UInt32.random(in: 0...UInt32.max), radix: 36)
    switch kind {
    case "bridge":
        // job.progress envelopes padded to `size` bytes (current_operation holds the padding), over `jobs` job ids.
        for index in 0..<events {
            let job = "job-\(runID)-\(index % jobs)"
            var fields: JSONObject = [
                "progress_percentage": .double(Double(index % 100)), "execution_step": "KSampler",
                "current_operation": "",
            ]
            var prepared = prepare(.jobProgress, fields, job: job)
            let missing = size - prepared.envelope.encoded().count
            if missing < 0 {
                // Smaller than the smallest envelope (≈400 B): a compact raw JSON object with an event_id, which
                // the bridge takes as it is (dedup by event_id), padded to `size`.
                let head = "{\"event_id\":\"\(prepared.envelope.eventID)\",\"job_id\":\"\(job)\",\"p\":\""
                let pad = String(repeating: "x", count: max(0, size - head.utf8.count - 2))
                buffer.append(contentsOf: "1\t\(prepared.topic)\t\(head)\(pad)\"}\n".utf8)
                continue
            }
            if missing > 0 {
                fields["current_operation"] = .string(String(repeating: "x", count: missing))
                prepared.envelope.fields = fields
            }
            // The bridge's scenario is QoS 1 end to end (durable subscription, PUBACK after the journal).
            prepared.delivery = DeliveryPolicy(qos: .atLeastOnce, retain: false, reason: "bench")
            write(prepared)
        }
    case "lifecycle":
        // Realistic mix: received, started, `progress` × progress, completed (or failed every `failed-every`-th
        // job), with 100 jobs in flight at a time, interleaved the way concurrent workers interleave.
        let prepareEvent = prepare
        let perJob = 3 + progressSteps
        let jobCount = max(1, events / perJob)
        let inFlight = min(100, jobCount)
        var first = 0
        while first < jobCount {
            let batch = first..<min(jobCount, first + inFlight)
            for step in 0..<perJob {
                for index in batch {
                    let job = "job-\(runID)-\(index)"
                    let worker = "gpu-\(index % 16)"
                    func prepare(_ type: EventType, _ fields: JSONObject, job: String) -> EventFactory.Prepared {
                        prepareEvent(type, fields, job, 1, workerFactories[index % 16])
                    }
                    switch step {
                    case 0:
                        write(prepare(.jobReceived, ["queue_position": .int(Int64(index % 50)),
                                                     "model_required": "sdxl-base-1.0"], job: job))
                    case 1:
                        write(prepare(.jobStarted, ["worker_assigned": .string(worker),
                                                    "expected_duration": 30], job: job))
                    case perJob - 1:
                        if failedEvery > 0, index % failedEvery == 0 {
                            write(prepare(.jobFailed, [
                                "error": "CUDA out of memory. Tried to allocate 2 GiB", "error_type": "out_of_memory",
                                "error_category": "resource", "error_recoverable": true, "retry_recommended": true,
                                "resource_impact": "high", "user_impact": "delayed",
                            ], job: job))
                        } else {
                            write(prepare(.jobCompleted, [
                                "processing_time": 28.4, "output_size": 1_843_200, "resource_efficiency": 0.9,
                                "cost_estimate": 0.012, "model": "sdxl-base-1.0",
                            ], job: job))
                        }
                    default:
                        let percent = Double(step - 1) * 100 / Double(progressSteps + 1)
                        write(prepare(.jobProgress, ["progress_percentage": .double(percent),
                                                     "execution_step": "KSampler"], job: job))
                    }
                }
            }
            first += inFlight
        }
    default:
        fail("unknown --kind \(kind)")
    }
    handle.write(Data(buffer))
    try? handle.close()
}

// MARK: publish

/// The next event index, shared by the publishing tasks.
final class Counter: Sendable {
    let value = Mutex<Int>(0)
}

/// The publisher scenario: `concurrency` tasks share one EventPublisher (as a connector's jobs do) and publish
/// `events` job events between them. QoS 1 uses job.received/started/completed, QoS 0 job.progress. With a spool
/// the run ends when the spool is empty (broker-ack mode: no bridge in this scenario), so the figure includes
/// sending, not only the disk append.
func publish(_ arguments: Arguments) async {
    let events = arguments.int("events", 20_000)
    let qos = arguments.int("qos", 1)
    let concurrency = max(1, arguments.int("concurrency", 64))
    let spoolMode = arguments.string("spool", "none")
    let jobs = arguments.int("jobs", 1000)
    let url = arguments.string("mqtt-url", "mqtt://127.0.0.1:1883")
    let runID = String(UInt32.random(in: 0...UInt32.max), radix: 36)
    var logger = Logger(label: "opsbus-bench")
    logger.logLevel = .error
    do {
        let context = PublisherContext(
            machineID: Identifier(rawValue: "bench-machine"), workerID: Identifier(rawValue: "bench-\(runID)"),
            serviceType: "comfyui", connectorID: "bench")
        var spoolOptions: SpoolOptions?
        if spoolMode != "none" {
            var configuration = SpoolConfiguration(directory: arguments.string("dir", "/tmp/opsbus-bench-spool-\(runID)"))
            configuration.durability = try SpoolDurability(parsing: spoolMode)
            var options = SpoolOptions(spool: configuration, acknowledgement: .broker)
            options.spooledTypes = [.jobReceived, .jobStarted, .jobCompleted, .jobProgress]
            spoolOptions = options
        }
        let publisher = try await EventPublisher.connect(
            endpoint: try MQTTEndpoint(url: url), context: context, spool: spoolOptions, logger: logger,
            announceWorker: false)
        let cpuBefore = cpuSeconds()
        let started = ContinuousClock.now
        let counter = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while true {
                        let index: Int = counter.value.withLock { value in
                            value += 1
                            return value - 1
                        }
                        if index >= events { return }
                        let job = try publisher.withJobContext("job-\(runID)-\(index % jobs)", attempt: 1)
                        if qos == 0 {
                            try await job.progress(percentage: Double(index % 100), executionStep: "KSampler")
                        } else {
                            switch index % 3 {
                            case 0: try await job.received(modelRequired: "sdxl-base-1.0", queuePosition: index % 50)
                            case 1: try await job.started(workerAssigned: "gpu-1", expectedDuration: 30)
                            default: try await job.completed(processingTime: 28.4, outputSize: 1_843_200)
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let accepted = (ContinuousClock.now - started)
        let pending = await publisher.drain(timeout: 120)
        let elapsed = ContinuousClock.now - started
        let cpu = cpuSeconds() - cpuBefore
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let acceptedSeconds = Double(accepted.components.seconds) + Double(accepted.components.attoseconds) / 1e18
        emit([
            "events": .int(Int64(events)), "seconds": .double(seconds), "rate": .double(Double(events) / seconds),
            "accept_seconds": .double(acceptedSeconds), "pending": .int(Int64(pending)),
            "cpu_us_per_event": .double(cpu * 1e6 / Double(events)), "rss_mib": .double(rssMiB()),
        ])
        await publisher.disconnect()
    } catch {
        fail("publish: \(error)")
    }
}

// MARK: hdr

func hdr(_ path: String) {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { fail("cannot read \(path)") }
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    for line in text.split(separator: "\n") {
        if let value = UInt64(line) { _ = histogram.record(max(1, value)) }
    }
    emit([
        "count": .int(Int64(histogram.totalCount)),
        "p50_us": .int(Int64(histogram.valueAtPercentile(50))),
        "p99_us": .int(Int64(histogram.valueAtPercentile(99))),
        "p999_us": .int(Int64(histogram.valueAtPercentile(99.9))),
        "max_us": .int(Int64(histogram.max)),
        "mean_us": .double(histogram.mean),
    ])
}

let argv = CommandLine.arguments
guard argv.count >= 2 else { fail("usage: opsbus-bench gen|publish|hdr …") }
switch argv[1] {
case "gen": generate(Arguments(argv.dropFirst(2)))
case "publish": await publish(Arguments(argv.dropFirst(2)))
case "hdr": hdr(argv.count > 2 ? argv[2] : "/dev/stdin")
default: fail("unknown command \(argv[1])")
}
