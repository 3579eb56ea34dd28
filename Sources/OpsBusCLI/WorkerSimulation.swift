import ArgumentParser
import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusPublisher
import OpsBusSpool

/// A simulated GPU worker running ComfyUI-style jobs: it publishes exactly what a real connector would
/// (registration, health, job lifecycle with progress, model loads, resources, completions and classified failures).
/// Used by `opsbus demo` and `opsbus simulate`.
struct WorkerSimulation: Sendable {
    var workerID: String
    var machineID: String
    var serviceType = "comfyui"
    var jobIDs: [String]
    /// Every n-th job fails (0: none).
    var failEvery = 4
    /// Seconds per progress step.
    var stepDelay = 0.05
    /// Kill this process with SIGKILL after this many jobs have started (simulates a worker dying mid-job).
    var dieDuringJob: Int?
    /// The worker's edge spool (nil: publish directly). A worker's spool directory is its own.
    var spool: SpoolOptions?

    struct Report: Sendable {
        var completed: [String] = []
        var failed: [String] = []
        var eventsPublished = 0
    }

    static let failures = [
        ("CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 23.65 GiB total capacity)", "RuntimeError"),
        ("Timed out after 300s waiting for KSampler to finish", nil),
        ("Model checkpoint 'sdxl-refiner-1.0' not found in /models/checkpoints", nil),
        ("Connection reset by peer while uploading output to storage", nil),
    ]
    static let models = ["sdxl-base-1.0", "flux-dev", "sd15-pruned"]

    func run(endpoint: MQTTEndpoint, scheme: TopicScheme, logger: Logger) async throws -> Report {
        let context = PublisherContext(
            machineID: try EventFactory.identifier(machineID, field: "machine_id"),
            workerID: try EventFactory.identifier(workerID, field: "worker_id"),
            serviceType: serviceType, connectorID: "\(serviceType)-connector")
        let publisher = try await EventPublisher.connect(
            endpoint: endpoint, context: context, scheme: scheme, waitForBroker: true, spool: spool, logger: logger)
        var report = Report()
        try await publisher.workerRegistered(capabilities: ["txt2img", "img2img", "upscale"], version: "1.4.2")
        report.eventsPublished += 2
        for (index, jobID) in jobIDs.enumerated() {
            let model = Self.models[index % Self.models.count]
            let job = try publisher.withJobContext(jobID, attempt: 1, traceID: EventID.make())
            try await job.received(inputSize: 1_000 + index * 37, modelRequired: model, queuePosition: index,
                                   estimatedWaitTime: Double(index) * 2.5)
            try await publisher.workerHealth(status: "busy", currentJob: jobID)
            try await job.started(resourceAllocation: ["gpu_memory_mb": 12_288, "cpu_cores": 4],
                                  processingPriority: 5, expectedDuration: 8)
            try await job.resourceAllocated(["gpu_memory_mb": 12_288, "cpu_cores": 4])
            let cacheHit = index % 3 != 0
            try await job.modelLoaded(model: model, loadTimeMs: cacheHit ? 350 : 41_000, cacheHit: cacheHit,
                                      modelSizeMB: 6_940)
            report.eventsPublished += 5
            if let dieDuringJob, index + 1 >= dieDuringJob {
                try await job.progress(percentage: 30, executionStep: "KSampler", currentOperation: "denoising")
                logger.notice("simulated worker dying now (SIGKILL)", metadata: ["worker": "\(workerID)", "job": "\(jobID)"])
                kill(getpid(), SIGKILL)
            }
            for step in 1...4 {
                try await Task.sleep(for: .seconds(stepDelay))
                try await job.progress(percentage: Double(step) * 20, executionStep: step < 4 ? "KSampler" : "VAEDecode",
                                       currentOperation: "step \(step)/4", elapsedTime: Double(step) * 1.5,
                                       estimatedRemaining: Double(4 - step) * 1.5)
                report.eventsPublished += 1
            }
            if failEvery > 0 && (index + 1) % failEvery == 0 {
                // Workers fail differently, so the demo shows retries and dead letters side by side.
                let spread = workerID.last?.wholeNumberValue ?? 0
                let (message, declared) = Self.failures[(index / failEvery + spread) % Self.failures.count]
                try await job.failed(error: message, declaredType: declared, durationBeforeFailure: 6.2)
                report.failed.append(jobID)
            } else {
                try await job.completed(
                    processingTime: 6 + Double(index % 5), outputSize: 1_500_000 + index * 1_000, expectedDuration: 8,
                    allocatedGPUs: 1, allocatedCPUCores: 4, modelCacheHit: cacheHit, outputURLs: ["s3://outputs/\(jobID)/0.png"],
                    model: model)
                report.completed.append(jobID)
            }
            try await job.resourceReleased(["gpu_memory_mb": 12_288, "cpu_cores": 4])
            try await publisher.workerHealth(status: "idle")
            report.eventsPublished += 3
        }
        await publisher.close(drainTimeout: 30)
        return report
    }
}

struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Simulate GPU workers publishing job events (for demos and load).",
        discussion: """
            Each worker registers, announces its health, and runs its jobs: received, started, resources, model \
            loaded, progress ×4, then completed (or, every --fail-every-th job, failed with a realistic error).
            --die-during-job N makes the process kill itself with SIGKILL during its N-th job, so the broker \
            publishes the worker's last will (workers/<id>/health: offline).
            """)

    @Option(help: "Number of workers.") var workers: Int = 3
    @Option(help: "Jobs per worker.") var jobs: Int = 5
    @Option(help: "Worker id prefix; workers are <prefix>-1, <prefix>-2, …") var workerPrefix: String = "gpu-worker"
    @Option(help: "Machine id (default $MACHINE_ID or sim-machine).") var machine: String?
    @Option(help: "Every n-th job fails (0: none).") var failEvery: Int = 4
    @Option(help: "Kill this process (SIGKILL) during this job number.") var dieDuringJob: Int?
    @Option(help: "Job id prefix.") var jobPrefix: String = "job"

    @OptionGroup var spooling: SpoolingOptions
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.simulate")
        let baseSpool = try spooling.options(owner: "simulate")
        let endpoint = try connection.mqttEndpoint()
        let scheme = try connection.topicScheme()
        let machineID = try machine ?? RuntimeSettings.current.value("MACHINE_ID") ?? "sim-machine"
        let simulations = (1...max(1, workers)).map { number in
            let workerID = "\(workerPrefix)-\(number)"
            // One spool per simulated worker, as on real machines.
            var spool = baseSpool
            spool?.spool.directory += "/\(workerID)"
            return WorkerSimulation(
                workerID: workerID, machineID: machineID,
                jobIDs: (1...max(1, jobs)).map { "\(jobPrefix)-\(number)-\($0)" }, failEvery: failEvery,
                dieDuringJob: dieDuringJob, spool: spool)
        }
        let reports = try await withThrowingTaskGroup(of: WorkerSimulation.Report.self) { group in
            for simulation in simulations {
                group.addTask { try await simulation.run(endpoint: endpoint, scheme: scheme, logger: logger) }
            }
            var all: [WorkerSimulation.Report] = []
            for try await report in group { all.append(report) }
            return all
        }
        let completed = reports.reduce(0) { $0 + $1.completed.count }
        let failed = reports.reduce(0) { $0 + $1.failed.count }
        output("simulated \(simulations.count) workers: \(completed) jobs completed, \(failed) failed, \(reports.reduce(0) { $0 + $1.eventsPublished }) events published")
    }
}
