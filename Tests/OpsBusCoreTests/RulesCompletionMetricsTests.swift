import Testing

@testable import OpsBusCore

@Suite("Completion metrics")
struct RulesCompletionMetricsTests {
    private func isClose(_ a: Double, _ b: Double) -> Bool { abs(a - b) <= 1e-12 * max(1, abs(b)) }

    @Test func computesCostFromTimeAllocationAndOutput() {
        let metrics = CompletionMetrics.compute(
            processingTime: 100, outputSize: 50_000_000, expectedDuration: 80, allocatedGPUs: 2,
            allocatedCPUCores: 8)
        // 100 s × (2 × 0.0006 + 8 × 0.00005) + 50 MB × 0.00001 = 0.16 + 0.0005
        #expect(isClose(metrics.costEstimate, 0.1605))
        #expect(metrics.resourceEfficiency == 0.8)
        #expect(metrics.throughputBytesPerSecond == 500_000)
        #expect(metrics.processingTime == 100)
        #expect(metrics.outputSize == 50_000_000)
    }

    @Test func customCostModelIsUsed() {
        let model = CostModel(gpuSecondRate: 1, cpuSecondRate: 0.5, storagePerMB: 2)
        let metrics = CompletionMetrics.compute(
            processingTime: 10, outputSize: 3_000_000, expectedDuration: nil, allocatedGPUs: 1,
            allocatedCPUCores: 2, costModel: model)
        #expect(metrics.costEstimate == 10 * (1 + 1) + 3 * 2)
    }

    @Test func efficiencyIsClampedToOne() {
        let fast = CompletionMetrics.compute(
            processingTime: 10, outputSize: 0, expectedDuration: 60, allocatedGPUs: 1, allocatedCPUCores: 1)
        #expect(fast.resourceEfficiency == 1)
        let slow = CompletionMetrics.compute(
            processingTime: 400, outputSize: 0, expectedDuration: 100, allocatedGPUs: 1, allocatedCPUCores: 1)
        #expect(slow.resourceEfficiency == 0.25)
    }

    @Test(arguments: [nil, 0, -5, Double.nan, Double.infinity] as [Double?])
    func unusableExpectationMeansFullEfficiency(expected: Double?) {
        let metrics = CompletionMetrics.compute(
            processingTime: 30, outputSize: 10, expectedDuration: expected, allocatedGPUs: 1, allocatedCPUCores: 1)
        #expect(metrics.resourceEfficiency == 1)
    }

    @Test(arguments: [0, -1, Double.nan, -Double.infinity, Double.infinity])
    func unusableProcessingTimeCountsAsZero(time: Double) {
        let metrics = CompletionMetrics.compute(
            processingTime: time, outputSize: 2_000_000, expectedDuration: 10, allocatedGPUs: 4, allocatedCPUCores: 16)
        #expect(metrics.processingTime == 0)
        #expect(metrics.throughputBytesPerSecond == 0)
        #expect(metrics.resourceEfficiency == 1)
        #expect(isClose(metrics.costEstimate, 2 * 0.00001), "only storage is charged")
    }

    @Test func negativeAndNonFiniteAllocationsCountAsZero() {
        let metrics = CompletionMetrics.compute(
            processingTime: 10, outputSize: -100, expectedDuration: nil, allocatedGPUs: .nan,
            allocatedCPUCores: -4)
        #expect(metrics.outputSize == 0)
        #expect(metrics.costEstimate == 0)
        #expect(metrics.throughputBytesPerSecond == 0)
        let everything = [metrics.processingTime, metrics.resourceEfficiency, metrics.costEstimate, metrics.throughputBytesPerSecond]
        #expect(everything.allSatisfy { $0.isFinite })
    }

    @Test func badRatesBecomeZero() {
        let model = CostModel(gpuSecondRate: -1, cpuSecondRate: .nan, storagePerMB: .infinity)
        #expect(model == CostModel(gpuSecondRate: 0, cpuSecondRate: 0, storagePerMB: 0))
        #expect(CostModel() == CostModel(gpuSecondRate: 0.0006, cpuSecondRate: 0.00005, storagePerMB: 0.00001))
    }
}
