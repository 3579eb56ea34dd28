import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusPublisher

/// A synthetic edge worker for link tests and benchmarks: publishes job lifecycles through the spool and reports
/// every accepted event, so a test can check that each one reached Redis exactly once.
struct PumpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pump",
        abstract: "Publish a stream of synthetic job events through the spool (link tests, benchmarks).",
        discussion: """
            Each job publishes job.received, job.started and job.completed (job ids <prefix>-<6-digit index>). \
            Every event is spooled before it counts as accepted; stdout gets one JSON line per accepted event:
              {"accepted":"<event_id>","session_id":"…","seq":N,"job_id":"…","event_type":"…"}
            At the end the command waits until the spool is empty (every event acknowledged by the bridge, or by \
            the broker with --ack broker), prints {"drained":true|false,"pending":K,…} and exits 0 when drained, \
            3 otherwise. What an earlier run left in the spool is sent first, under its original session and seq.

            Example: opsbus pump --mqtt-url mqtt://10.0.0.1:1883 --worker-id edge-1 --spool /var/lib/opsbus/pump --jobs 1000
            """)

    @Option(help: "Worker id stamped on the events (and the spool's owner).")
    var workerID: String = "pump"

    @Option(help: "Number of jobs (3 events each).")
    var jobs: Int = 100

    @Option(help: "Index of the first job.")
    var firstJob: Int = 0

    @Option(help: "Job id prefix.")
    var jobPrefix: String = "pump"

    @Option(help: "Events per second (0 = as fast as the spool takes them).")
    var rate: Double = 0

    @Option(help: "Seconds to wait for the spool to drain at the end.")
    var drainTimeout: Double = 60

    @OptionGroup var spooling: SpoolingOptions
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard jobs >= 0, firstJob >= 0 else { throw ValidationError("--jobs and --first-job must not be negative") }
        guard rate >= 0 else { throw ValidationError("--rate must not be negative") }
    }

    func run() async throws {
        let logger = try common.makeLogger("opsbus.pump")
        let environment = try RuntimeSettings.current.environment
        let context: PublisherContext
        do {
            context = try PublisherContext.fromEnvironment(environment, workerID: workerID, serviceType: "pump")
        } catch {
            throw ValidationError("\(error)")
        }
        let publisher = try await EventPublisher.connect(
            endpoint: try connection.mqttEndpoint(), context: context, scheme: try connection.topicScheme(),
            spool: try spooling.options(owner: workerID), connectTimeout: 2, logger: logger, announceWorker: false)
        let started = ContinuousClock.now
        let interval = rate > 0 ? Duration.seconds(1 / rate) : nil
        var next = ContinuousClock.now
        var accepted = 0
        for index in firstJob..<(firstJob + jobs) {
            let jobID = "\(jobPrefix)-\(String(format: "%06d", index))"
            let job = try publisher.withJobContext(jobID, attempt: 1)
            for step in 0..<3 {
                if let interval {
                    next += interval
                    try await Task.sleep(until: next, clock: .continuous)
                }
                let envelope: EventEnvelope
                switch step {
                case 0: envelope = try await job.received(queuePosition: index)
                case 1: envelope = try await job.started()
                default: envelope = try await job.completed(processingTime: 0.1, outputSize: 1024)
                }
                accepted += 1
                emit([
                    "accepted": .string(envelope.eventID), "session_id": .string(envelope.sessionID),
                    "seq": .int(Int64(envelope.seq)), "job_id": .string(jobID),
                    "event_type": .string(envelope.eventType.rawValue),
                ])
            }
        }
        let publishSeconds = (ContinuousClock.now - started).seconds
        let pending = await publisher.drain(timeout: drainTimeout)
        let totalSeconds = (ContinuousClock.now - started).seconds
        let statistics = publisher.spoolStatistics
        emit([
            "drained": .bool(pending == 0), "pending": .int(Int64(pending)), "accepted": .int(Int64(accepted)),
            "publish_seconds": .double(publishSeconds), "total_seconds": .double(totalSeconds),
            "dropped": .int(Int64(statistics?.dropped ?? 0)),
        ])
        await publisher.disconnect()
        if pending > 0 { throw ExitCode(3) }
    }

    private func emit(_ object: JSONObject) {
        var line = JSONValue.object(object).serialized()
        line += "\n"
        FileHandle.standardOutput.write(Data(line.utf8))
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
