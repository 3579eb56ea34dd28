/// Prices used to estimate what a job cost. Rates are per allocated unit per second, storage per
/// megabyte (10^6 bytes, as cloud storage is billed) of output.
public struct CostModel: Sendable, Equatable {
    public let gpuSecondRate: Double
    public let cpuSecondRate: Double
    public let storagePerMB: Double

    /// Negative or non-finite rates become 0: a bad price must not make every cost NaN.
    public init(gpuSecondRate: Double = 0.0006, cpuSecondRate: Double = 0.00005, storagePerMB: Double = 0.00001) {
        self.gpuSecondRate = nonNegative(gpuSecondRate)
        self.cpuSecondRate = nonNegative(cpuSecondRate)
        self.storagePerMB = nonNegative(storagePerMB)
    }
}

/// Derived figures stored with a completed job (`jobs:<id>` fields and the completion event).
public struct CompletionMetrics: Sendable, Equatable {
    /// Seconds the attempt took (sanitised: never negative or NaN).
    public var processingTime: Double
    /// Bytes of output (never negative).
    public var outputSize: Int
    /// expected / actual duration, clamped to 0…1; 1 when no expectation was given or the job took no time.
    public var resourceEfficiency: Double
    /// Estimated cost in the cost model's currency.
    public var costEstimate: Double
    /// outputSize / processingTime; 0 when the time is 0.
    public var throughputBytesPerSecond: Double

    public init(
        processingTime: Double, outputSize: Int, resourceEfficiency: Double, costEstimate: Double,
        throughputBytesPerSecond: Double
    ) {
        self.processingTime = processingTime
        self.outputSize = outputSize
        self.resourceEfficiency = resourceEfficiency
        self.costEstimate = costEstimate
        self.throughputBytesPerSecond = throughputBytesPerSecond
    }

    /// Computes the metrics of one completed attempt.
    ///
    /// - efficiency = `expectedDuration / processingTime` clamped to 0…1 (finishing faster than
    ///   expected is not "more than efficient"); 1 without a usable expectation.
    /// - cost = `processingTime × (gpus × gpuRate + cores × cpuRate) + outputSize/10^6 × storagePerMB`.
    /// - throughput = `outputSize / processingTime`.
    ///
    /// Inputs come from worker reports; a negative, NaN or infinite number is treated as 0 (and a
    /// non-positive expectation as absent) so that one bad field degrades a figure instead of losing
    /// the completion: the job did complete, and that fact matters more than its metrics.
    public static func compute(
        processingTime: Double, outputSize: Int, expectedDuration: Double?, allocatedGPUs: Double,
        allocatedCPUCores: Double, costModel: CostModel = .init()
    ) -> CompletionMetrics {
        let time = nonNegative(processingTime)
        let size = max(0, outputSize)
        let gpus = nonNegative(allocatedGPUs)
        let cores = nonNegative(allocatedCPUCores)

        let efficiency: Double
        if let expected = expectedDuration, expected.isFinite, expected > 0, time > 0 {
            efficiency = min(1, expected / time)
        } else {
            efficiency = 1
        }

        let megabytes = Double(size) / 1_000_000
        let compute = time * (gpus * costModel.gpuSecondRate + cores * costModel.cpuSecondRate)
        let storage = megabytes * costModel.storagePerMB
        let throughput = time > 0 ? Double(size) / time : 0

        return CompletionMetrics(
            processingTime: time, outputSize: size, resourceEfficiency: efficiency,
            costEstimate: compute + storage, throughputBytesPerSecond: throughput)
    }
}

/// `value` if it is a finite non-negative number, else 0.
private func nonNegative(_ value: Double) -> Double {
    value.isFinite && value > 0 ? value : 0
}
