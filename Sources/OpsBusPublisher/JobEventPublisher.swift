import OpsBusCore

/// Job lifecycle events for one job (`EventPublisher.withJobContext`). Every event carries the job id, the attempt
/// and the trace id given once here.
public struct JobEventPublisher: Sendable {
    public let publisher: EventPublisher
    public let jobID: Identifier
    public var attempt: Int?
    public var traceID: String?

    init(publisher: EventPublisher, jobID: Identifier, attempt: Int?, traceID: String?) {
        self.publisher = publisher
        self.jobID = jobID
        self.attempt = attempt
        self.traceID = traceID
    }

    private var options: EventFactory.Options {
        EventFactory.Options(jobID: jobID, attempt: attempt, traceID: traceID)
    }

    @discardableResult
    public func publish(_ eventType: EventType, fields: JSONObject) async throws(EventPublisherError) -> EventEnvelope {
        try await publisher.publish(eventType, fields: fields, subject: jobID, options: options)
    }

    /// The job entered the queue.
    @discardableResult
    public func received(
        inputSize: Int? = nil, modelRequired: String? = nil, queuePosition: Int? = nil,
        estimatedWaitTime: Double? = nil, resourceRequirements: JSONObject? = nil, notify: Bool? = nil,
        extra: JSONObject = JSONObject()
    ) async throws(EventPublisherError) -> EventEnvelope {
        var body = JSONObject()
        if let inputSize { body["input_size"] = .int(Int64(inputSize)) }
        if let modelRequired { body["model_required"] = .string(modelRequired) }
        if let queuePosition { body["queue_position"] = .int(Int64(queuePosition)) }
        if let estimatedWaitTime { body["estimated_wait_time"] = .double(estimatedWaitTime) }
        if let resourceRequirements { body["resource_requirements"] = .object(resourceRequirements) }
        if let notify { body["notify"] = .bool(notify) }
        return try await publish(.jobReceived, fields: body.merging(extra))
    }

    /// A worker took the job. `workerAssigned` defaults to the publisher's worker id.
    @discardableResult
    public func started(
        workerAssigned: String? = nil, resourceAllocation: JSONObject? = nil, processingPriority: Int? = nil,
        expectedDuration: Double? = nil, extra: JSONObject = JSONObject()
    ) async throws(EventPublisherError) -> EventEnvelope {
        guard let worker = workerAssigned ?? publisher.context.workerID?.rawValue else {
            throw .missingSubject(eventType: .jobStarted, needed: "worker_assigned")
        }
        var body: JSONObject = ["worker_assigned": .string(worker)]
        if let resourceAllocation { body["resource_allocation"] = .object(resourceAllocation) }
        if let processingPriority { body["processing_priority"] = .int(Int64(processingPriority)) }
        if let expectedDuration { body["expected_duration"] = .double(expectedDuration) }
        return try await publish(.jobStarted, fields: body.merging(extra))
    }

    /// Progress; QoS 0 by default, since the next progress event supersedes it.
    @discardableResult
    public func progress(
        percentage: Double, executionStep: String? = nil, currentOperation: String? = nil,
        elapsedTime: Double? = nil, estimatedRemaining: Double? = nil
    ) async throws(EventPublisherError) -> EventEnvelope {
        var body: JSONObject = ["progress_percentage": .double(min(100, max(0, percentage)))]
        if let executionStep { body["execution_step"] = .string(executionStep) }
        if let currentOperation { body["current_operation"] = .string(currentOperation) }
        if let elapsedTime { body["elapsed_time"] = .double(elapsedTime) }
        if let estimatedRemaining { body["estimated_remaining"] = .double(estimatedRemaining) }
        return try await publish(.jobProgress, fields: body)
    }

    /// The job finished. Efficiency and cost are computed here from the run's figures (`CompletionMetrics`).
    @discardableResult
    public func completed(
        processingTime: Double, outputSize: Int, expectedDuration: Double? = nil, allocatedGPUs: Double = 1,
        allocatedCPUCores: Double = 1, modelCacheHit: Bool? = nil, userSatisfactionScore: Double? = nil,
        outputURLs: [String] = [], model: String? = nil, costModel: CostModel = CostModel(),
        extra: JSONObject = JSONObject()
    ) async throws(EventPublisherError) -> EventEnvelope {
        let metrics = CompletionMetrics.compute(
            processingTime: processingTime, outputSize: outputSize, expectedDuration: expectedDuration,
            allocatedGPUs: allocatedGPUs, allocatedCPUCores: allocatedCPUCores, costModel: costModel)
        var body: JSONObject = [
            "processing_time": .double(metrics.processingTime),
            "output_size": .int(Int64(metrics.outputSize)),
            "resource_efficiency": .double(metrics.resourceEfficiency),
            "cost_estimate": .double(metrics.costEstimate),
        ]
        if let modelCacheHit { body["model_cache_hit"] = .bool(modelCacheHit) }
        if let userSatisfactionScore { body["user_satisfaction_score"] = .double(userSatisfactionScore) }
        if !outputURLs.isEmpty { body["output_urls"] = .array(outputURLs.map { .string($0) }) }
        if let model { body["model"] = .string(model) }
        return try await publish(.jobCompleted, fields: body.merging(extra))
    }

    /// The job failed. The error is classified (`FailureClassifier`) into type, category, recoverability, retry
    /// advice and impact, so consumers act on fields instead of parsing messages.
    @discardableResult
    public func failed(
        error: String, declaredType: String? = nil, durationBeforeFailure: Double? = nil,
        classifier: FailureClassifier = FailureClassifier(), extra: JSONObject = JSONObject()
    ) async throws(EventPublisherError) -> EventEnvelope {
        let analysis = classifier.classify(message: error, declaredType: declaredType)
        var body: JSONObject = [
            "error": .string(error),
            "error_type": .string(analysis.errorType.rawValue),
            "error_category": .string(analysis.category.rawValue),
            "error_recoverable": .bool(analysis.recoverable),
            "retry_recommended": .bool(analysis.retryRecommended),
            "resource_impact": .string(analysis.resourceImpact.rawValue),
            "user_impact": .string(analysis.userImpact.rawValue),
        ]
        if let durationBeforeFailure { body["duration_before_failure"] = .double(durationBeforeFailure) }
        return try await publish(.jobFailed, fields: body.merging(extra))
    }

    @discardableResult
    public func resourceAllocated(_ resources: JSONObject) async throws(EventPublisherError) -> EventEnvelope {
        try await publisher.publish(.resourceAllocated, fields: ["resources": .object(resources)], options: options)
    }

    @discardableResult
    public func resourceReleased(_ resources: JSONObject) async throws(EventPublisherError) -> EventEnvelope {
        try await publisher.publish(.resourceReleased, fields: ["resources": .object(resources)], options: options)
    }

    @discardableResult
    public func modelLoaded(model: String, loadTimeMs: Double, cacheHit: Bool, modelSizeMB: Double? = nil)
        async throws(EventPublisherError) -> EventEnvelope
    {
        try await publisher.modelLoaded(
            model: model, loadTimeMs: loadTimeMs, cacheHit: cacheHit, modelSizeMB: modelSizeMB, jobID: jobID.rawValue)
    }
}

extension JSONObject {
    /// This object with `other`'s keys added (and overriding) at the end.
    func merging(_ other: JSONObject) -> JSONObject {
        var result = self
        for (key, value) in other { result[key] = value }
        return result
    }
}
