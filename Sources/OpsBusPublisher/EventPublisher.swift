import Logging
import OpsBusCore
import OpsBusMQTT

/// Publishes typed job-platform events over MQTT: the seed's `ConnectorLogger`, on a real broker.
///
/// `publish` returns once the broker acknowledged a QoS 1 event (or once libmosquitto took a QoS 0 one), and throws
/// otherwise; the topic and QoS come from the event type (`topics.md`). The worker's health topic carries an
/// `online` birth message on connect and an `offline` last will, so a dead connection marks the worker offline.
public final class EventPublisher: Sendable {
    public let factory: EventFactory
    private let client: MQTTClient
    private let logger: Logger

    public var context: PublisherContext { factory.context }
    public var sessionID: String { factory.sessionID }

    /// Wraps an already configured client. Prefer `connect(...)`, which also sets the last will and the birth message.
    public init(client: MQTTClient, factory: EventFactory, logger: Logger = Logger(label: "opsbus.publisher")) {
        self.client = client
        self.factory = factory
        self.logger = logger
    }

    /// Connects to the broker at `endpoint`. With `announceWorker` (and a worker id in the context) the worker's
    /// health topic gets an `online` birth message now and an `offline` last will for a lost connection; one-shot
    /// tools such as `opsbus publish` pass false so they do not speak for the worker's lifetime.
    /// The client id defaults to `opsbus-pub-<worker or machine>-<session>`, unique per session.
    public static func connect(
        endpoint: MQTTEndpoint, context: PublisherContext, scheme: TopicScheme = .unprefixed,
        policy: QoSPolicy = .default, clientID: String? = nil, keepAlive: Int = 30,
        tls: MQTTTLSConfiguration? = nil, waitForBroker: Bool = false,
        logger: Logger = Logger(label: "opsbus.publisher"), announceWorker: Bool = true
    ) async throws(EventPublisherError) -> EventPublisher {
        let factory = EventFactory(context: context, scheme: scheme, policy: policy)
        let owner = context.workerID?.rawValue ?? context.machineID?.rawValue ?? "anon"
        var configuration = MQTTClientConfiguration(
            endpoint: endpoint, clientID: clientID ?? "opsbus-pub-\(owner)-\(factory.sessionID.suffix(10))")
        configuration.keepAlive = keepAlive
        configuration.tls = tls
        if announceWorker && context.workerID != nil {
            // The broker publishes this if the connection dies without a clean disconnect. Its timestamp is
            // connect time; `last_will: true` tells the processor to apply it over this session's later events
            // anyway (see the processor's EntityEventScript).
            let will = try factory.prepare(
                .workerHealth,
                fields: ["status": "offline", "reason": "connection lost (last will)", "last_will": true])
            configuration.will = MQTTWill(
                topic: will.topic, payload: will.envelope.encoded(), qos: MQTTQoS(will.delivery.qos),
                retain: will.delivery.retain)
        }
        let client: MQTTClient
        do {
            client = try MQTTClient(configuration: configuration, logger: logger)
            try await client.connect(waitForBroker: waitForBroker)
        } catch {
            throw .transport(error, topic: "(connect)")
        }
        let publisher = EventPublisher(client: client, factory: factory, logger: logger)
        if announceWorker && context.workerID != nil {
            try await publisher.workerHealth(status: "online")
        }
        return publisher
    }

    /// Announces the worker offline (when the context has one) and disconnects cleanly.
    public func close(status: String = "offline", reason: String = "shutdown") async {
        if context.workerID != nil {
            do {
                try await workerHealth(status: status, fields: ["reason": .string(reason)])
            } catch {
                logger.warning("could not publish final worker health", metadata: ["error": "\(error)"])
            }
        }
        await client.disconnect()
    }

    /// Disconnects cleanly without publishing anything (the last will is not sent on a clean disconnect).
    public func disconnect() async {
        await client.disconnect()
    }

    // MARK: Generic

    /// Publishes any event type with explicit fields; the typed methods below build on this.
    @discardableResult
    public func publish(
        _ eventType: EventType, fields: JSONObject = JSONObject(), subject: Identifier? = nil,
        options: EventFactory.Options = .init()
    ) async throws(EventPublisherError) -> EventEnvelope {
        let prepared = try factory.prepare(eventType, fields: fields, subject: subject, options: options)
        try await send(topic: prepared.topic, payload: prepared.envelope.encoded(), delivery: prepared.delivery)
        logger.debug(
            "published",
            metadata: ["event_type": "\(eventType.rawValue)", "topic": "\(prepared.topic)",
                       "event_id": "\(prepared.envelope.eventID)", "seq": "\(prepared.envelope.seq)"])
        return prepared.envelope
    }

    /// Publishes bytes as they are on a topic of the caller's choice (for scripts and replays); no validation
    /// beyond what MQTT itself requires.
    public func publishRaw(topic: String, payload: [UInt8], qos: QoS, retain: Bool = false)
        async throws(EventPublisherError)
    {
        try await send(topic: topic, payload: payload, delivery: DeliveryPolicy(qos: qos, retain: retain, reason: "raw"))
    }

    private func send(topic: String, payload: [UInt8], delivery: DeliveryPolicy) async throws(EventPublisherError) {
        do {
            try await client.publish(topic: topic, payload: payload, qos: MQTTQoS(delivery.qos), retain: delivery.retain)
        } catch {
            throw .transport(error, topic: topic)
        }
    }

    /// A view of this publisher bound to one job, so connector code need not repeat the job id.
    public func withJobContext(_ jobID: String, attempt: Int? = nil, traceID: String? = nil)
        throws(EventPublisherError) -> JobEventPublisher
    {
        JobEventPublisher(
            publisher: self, jobID: try EventFactory.identifier(jobID, field: "job_id"), attempt: attempt,
            traceID: traceID)
    }

    // MARK: Workers, resources, queues, services, models, triggers

    @discardableResult
    public func workerHealth(status: String, currentJob: String? = nil, fields: JSONObject = JSONObject())
        async throws(EventPublisherError) -> EventEnvelope
    {
        var body = fields
        body["status"] = .string(status)
        if let currentJob { body["current_job"] = .string(currentJob) }
        return try await publish(.workerHealth, fields: body)
    }

    @discardableResult
    public func workerHeartbeat(status: String, load: Double? = nil, gpuMemoryUsedMB: Double? = nil)
        async throws(EventPublisherError) -> EventEnvelope
    {
        var body: JSONObject = ["status": .string(status)]
        if let load { body["load"] = .double(load) }
        if let gpuMemoryUsedMB { body["gpu_memory_used_mb"] = .double(gpuMemoryUsedMB) }
        return try await publish(.workerHeartbeat, fields: body)
    }

    @discardableResult
    public func workerRegistered(capabilities: [String], version: String? = nil, gpu: JSONObject? = nil)
        async throws(EventPublisherError) -> EventEnvelope
    {
        var body: JSONObject = ["capabilities": .array(capabilities.map { .string($0) })]
        if let version { body["version"] = .string(version) }
        if let gpu { body["gpu"] = .object(gpu) }
        return try await publish(.workerRegistered, fields: body)
    }

    @discardableResult
    public func workerDeregistered(reason: String) async throws(EventPublisherError) -> EventEnvelope {
        try await publish(.workerDeregistered, fields: ["reason": .string(reason)])
    }

    @discardableResult
    public func resourceAllocated(jobID: String, resources: JSONObject) async throws(EventPublisherError) -> EventEnvelope {
        try await publish(
            .resourceAllocated, fields: ["resources": .object(resources)],
            options: .init(jobID: try EventFactory.identifier(jobID, field: "job_id")))
    }

    @discardableResult
    public func resourceReleased(jobID: String, resources: JSONObject) async throws(EventPublisherError) -> EventEnvelope {
        try await publish(
            .resourceReleased, fields: ["resources": .object(resources)],
            options: .init(jobID: try EventFactory.identifier(jobID, field: "job_id")))
    }

    @discardableResult
    public func queueState(queue: String, depth: Int, capacity: Int) async throws(EventPublisherError) -> EventEnvelope {
        let subject = try EventFactory.identifier(queue, field: "queue")
        return try await publish(
            .queueState, fields: ["queue": .string(queue), "depth": .int(Int64(depth)), "capacity": .int(Int64(capacity))],
            subject: subject)
    }

    @discardableResult
    public func serviceHealth(service: String, status: String, details: JSONObject? = nil)
        async throws(EventPublisherError) -> EventEnvelope
    {
        let subject = try EventFactory.identifier(service, field: "service")
        var body: JSONObject = ["service": .string(service), "status": .string(status)]
        if let details { body["details"] = .object(details) }
        return try await publish(.serviceHealth, fields: body, subject: subject)
    }

    @discardableResult
    public func modelLoaded(model: String, loadTimeMs: Double, cacheHit: Bool, modelSizeMB: Double? = nil,
                            jobID: String? = nil) async throws(EventPublisherError) -> EventEnvelope
    {
        let subject = try EventFactory.identifier(model, field: "model")
        var body: JSONObject = ["model": .string(model), "load_time_ms": .double(loadTimeMs), "cache_hit": .bool(cacheHit)]
        if let modelSizeMB { body["model_size_mb"] = .double(modelSizeMB) }
        let job = try jobID.map { (id) throws(EventPublisherError) in try EventFactory.identifier(id, field: "job_id") }
        return try await publish(.modelLoaded, fields: body, subject: subject, options: .init(jobID: job))
    }

    /// Publishes one of the `trigger.*` events (notification, retry, precache, workflow, scaling, failover).
    @discardableResult
    public func trigger(_ eventType: EventType, subject: String, reason: String, details: JSONObject? = nil,
                        jobID: String? = nil) async throws(EventPublisherError) -> EventEnvelope
    {
        let subjectID = try EventFactory.identifier(subject, field: "subject")
        var body: JSONObject = ["reason": .string(reason)]
        if let details { body["details"] = .object(details) }
        let job = try jobID.map { (id) throws(EventPublisherError) in try EventFactory.identifier(id, field: "job_id") }
        return try await publish(eventType, fields: body, subject: subjectID, options: .init(jobID: job))
    }
}

extension MQTTQoS {
    /// The wire QoS for a policy QoS (the MQTT module does not depend on the core).
    init(_ qos: QoS) {
        switch qos {
        case .atMostOnce: self = .atMostOnce
        case .atLeastOnce: self = .atLeastOnce
        case .exactlyOnce: self = .exactlyOnce
        }
    }
}
