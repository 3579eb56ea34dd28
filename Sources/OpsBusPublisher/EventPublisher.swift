import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusSpool
import Synchronization

/// Publishes typed job-platform events over MQTT: the seed's `ConnectorLogger`, on a real broker.
///
/// With a spool (`SpoolOptions`, the default for workers via `connectFromEnvironment`), `publish` returns once a
/// spooled event is on disk; it is sent, re-sent if need be, and deleted only when acknowledged end to end (see
/// `SpooledDelivery`), so neither the link, the broker nor a crash of this process can lose it. Other events (and
/// all events without a spool): `publish` returns once the broker acknowledged a QoS 1 event (or once libmosquitto
/// took a QoS 0 one), and throws otherwise. The topic and QoS come from the event type (`topics.md`).
/// The worker's health topic carries an `online` birth on every connect and an `offline` last will, both stamped
/// with the connection's `bd_seq`, so a dead connection marks the worker unreachable and a late will is recognisable.
public final class EventPublisher: Sendable {
    public let factory: EventFactory
    private let client: MQTTClient
    private let logger: Logger
    private let delivery: SpooledDelivery?
    private let births: BirthDeathCounter
    /// Keeps spooled events in `seq` order on disk: `seq` is assigned and the record appended under it.
    /// Held while an event gets its `seq` and is written to the spool (both synchronous).
    private let appendLock = Mutex(())
    private let connectionWatcher = Mutex<Task<Void, Never>?>(nil)
    /// Connections whose birth went out (or was attempted); `connect` waits for the first so it precedes any event.
    private let birthsSent = Mutex(0)

    public var context: PublisherContext { factory.context }
    public var sessionID: String { factory.sessionID }

    /// Wraps an already configured client. Prefer `connect(...)`, which also sets the last will and the birth message.
    public convenience init(client: MQTTClient, factory: EventFactory, logger: Logger = Logger(label: "opsbus.publisher")) {
        self.init(client: client, factory: factory, delivery: nil, births: BirthDeathCounter(directory: nil), logger: logger)
    }

    init(client: MQTTClient, factory: EventFactory, delivery: SpooledDelivery?, births: BirthDeathCounter, logger: Logger) {
        self.client = client
        self.factory = factory
        self.delivery = delivery
        self.births = births
        self.logger = logger
    }

    /// The spool's figures (depth, oldest age, drops), nil without a spool.
    public var spoolStatistics: SpoolStatistics? { delivery?.spool.statistics }

    /// The `bd_seq` of the current (or last attempted) connection.
    public var birthDeathSequence: UInt64 { births.current }

    /// Connects to the broker at `endpoint`. With `announceWorker` (and a worker id in the context) the worker's
    /// health topic gets an `online` birth message on every connect and an `offline` last will for a lost
    /// connection, both carrying the connection's `bd_seq`; one-shot tools such as `opsbus publish` pass false so
    /// they do not speak for the worker's lifetime.
    /// The client id defaults to `opsbus-pub-<worker or machine>-<session>`, unique per session.
    ///
    /// With `spool`, the spool is opened (and what an earlier run left in it is sent first), and an unreachable
    /// broker does not fail the call: it waits up to `connectTimeout` seconds, then returns and keeps connecting in
    /// the background while events go to the spool. Without a spool, an unreachable broker throws after
    /// `connectTimeout` unless `waitForBroker`. A permanent refusal (credentials, TLS) throws in both cases.
    /// `publishTimeout` bounds how long a non-spooled QoS 1 publish may wait while the link is down.
    public static func connect(
        endpoint: MQTTEndpoint, context: PublisherContext, scheme: TopicScheme = .unprefixed,
        policy: QoSPolicy = .default, clientID: String? = nil, keepAlive: Int = 30,
        tls: MQTTTLSConfiguration? = nil, waitForBroker: Bool = false, spool spoolOptions: SpoolOptions? = nil,
        connectTimeout: Double = 10, publishTimeout: Double = 30,
        logger: Logger = Logger(label: "opsbus.publisher"), announceWorker: Bool = true
    ) async throws(EventPublisherError) -> EventPublisher {
        let spooledTypes = spoolOptions.map { $0.spooledTypes ?? EventFactory.defaultSpooledTypes(policy: policy) }
        let factory = EventFactory(context: context, scheme: scheme, policy: policy, spooledTypes: spooledTypes)
        let owner = context.workerID?.rawValue ?? context.machineID?.rawValue ?? "anon"
        var configuration = MQTTClientConfiguration(
            endpoint: endpoint, clientID: clientID ?? "opsbus-pub-\(owner)-\(factory.sessionID.suffix(10))")
        configuration.keepAlive = keepAlive
        configuration.tls = tls
        configuration.connectTimeout = connectTimeout
        configuration.publishTimeout = publishTimeout

        let spool: Spool?
        do {
            spool = try spoolOptions.map { (options) throws(SpoolError) in try Spool.open(options.spool, logger: logger) }
        } catch {
            throw .spool(error)
        }
        let births = BirthDeathCounter(directory: spoolOptions?.spool.directory)
        let announce = announceWorker && context.workerID != nil
        if announce {
            // The broker publishes this if the connection dies without a clean disconnect. Each connection gets a
            // new `bd_seq` (persisted with the spool), so the processor can tell an old connection's late will
            // from the current one's.
            let will = try factory.prepare(
                .workerHealth,
                fields: ["status": "offline", "reason": "connection lost (last will)", "last_will": true])
            var willEnvelope = will.envelope
            if willEnvelope.seq != 0 {
                // A will is sent only if the connection dies: it must not take a number from the sequence.
                factory.returnSequence(willEnvelope.seq)
                willEnvelope.seq = 0
                willEnvelope.ack = false
            }
            let finalWill = willEnvelope
            configuration.willForConnection = { [births] in
                var envelope = finalWill
                envelope.fields["bd_seq"] = .int(Int64(clamping: births.next()))
                return MQTTWill(
                    topic: will.topic, payload: envelope.encoded(), qos: MQTTQoS(will.delivery.qos),
                    retain: will.delivery.retain)
            }
        }
        let client: MQTTClient
        do {
            client = try MQTTClient(configuration: configuration, logger: logger)
        } catch {
            spool?.close()
            throw .transport(error, topic: "(connect)")
        }
        var delivery: SpooledDelivery?
        if let spool, let spoolOptions {
            delivery = SpooledDelivery(
                spool: spool, options: spoolOptions, client: client, scheme: scheme, currentSession: factory.sessionID,
                owner: context.workerID ?? context.machineID ?? Identifier(rawValue: "_")!, logger: logger)
        }
        let publisher = EventPublisher(client: client, factory: factory, delivery: delivery, births: births, logger: logger)
        if let delivery {
            let delivery = delivery
            client.setMessageHandler { message in
                delivery.receiveAck(topic: message.topic, payload: message.payload)
                return .accept
            }
        }
        publisher.watchConnection(announce: announce)
        delivery?.start()
        do throws(MQTTError) {
            if delivery != nil {
                try await publisher.connectInBackground(firstWait: connectTimeout)
            } else {
                try await client.connect(waitForBroker: waitForBroker)
            }
        } catch {
            await publisher.disconnect()
            throw .transport(error, topic: "(connect)")
        }
        if announce && client.isConnected {
            // The birth goes out before anything the caller publishes, as subscribers expect.
            let deadline = ContinuousClock.now + .milliseconds(Int(max(publishTimeout, 1) * 1000))
            while publisher.birthsSent.withLock({ $0 }) == 0 && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        return publisher
    }

    /// Starts connecting for as long as it takes; returns once connected or after `firstWait` seconds. Only a
    /// permanent refusal (credentials, TLS) throws.
    private func connectInBackground(firstWait: Double) async throws(MQTTError) {
        let failure = Mutex<MQTTError?>(nil)
        Task { [client] in
            do throws(MQTTError) {
                try await client.connect(waitForBroker: true)
            } catch {
                failure.withLock { $0 = error }
            }
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(firstWait * 1000))
        while ContinuousClock.now < deadline && !client.isConnected {
            if let error = failure.withLock({ $0 }) { throw error }
            try? await Task.sleep(for: .milliseconds(20))
        }
        if !client.isConnected {
            logger.warning("broker not reachable yet; spooling and connecting in the background",
                           metadata: ["broker": "\(client.configuration.endpoint)"])
        }
    }

    /// On every (re)connect: the birth message, then the spool resumes sending.
    private func watchConnection(announce: Bool) {
        let events = client.connectionEvents
        let task = Task { [weak self] in
            for await event in events {
                guard case .connected = event, let self else { continue }
                if announce {
                    await self.publishBirth()
                    self.birthsSent.withLock { $0 += 1 }
                }
                self.delivery?.wake()
            }
        }
        connectionWatcher.withLock { $0 = task }
    }

    private func publishBirth() async {
        var fields: JSONObject = ["status": "online", "bd_seq": .int(Int64(clamping: births.current))]
        if let delivery { fields["spool_depth"] = .int(Int64(delivery.depth)) }
        do {
            try await publish(.workerHealth, fields: fields)
        } catch {
            logger.warning("could not publish the birth message", metadata: ["error": "\(error)"])
        }
    }

    /// Waits up to `drainTimeout` seconds for the spool to empty (everything acknowledged), announces the worker
    /// offline (when the context has one) and disconnects cleanly. What is still spooled is sent by the next start.
    public func close(status: String = "offline", reason: String = "shutdown", drainTimeout: Double = 5) async {
        _ = await drain(timeout: drainTimeout)
        if context.workerID != nil {
            do {
                try await workerHealth(status: status, fields: ["reason": .string(reason)])
            } catch {
                logger.warning("could not publish final worker health", metadata: ["error": "\(error)"])
            }
        }
        await disconnect()
    }

    /// Disconnects cleanly without publishing anything (the last will is not sent on a clean disconnect) and closes
    /// the spool; spooled events stay on disk for the next start.
    public func disconnect() async {
        connectionWatcher.withLock { $0?.cancel() }
        await delivery?.clearCurrentSessionAck()
        delivery?.stop()
        await client.disconnect()
        delivery?.spool.close()
    }

    /// Waits until every spooled event is acknowledged or `timeout` seconds passed; returns how many are still
    /// waiting (0 without a spool).
    public func drain(timeout: Double) async -> Int {
        await delivery?.drain(timeout: timeout) ?? 0
    }

    // MARK: Generic

    /// Publishes any event type with explicit fields; the typed methods below build on this.
    @discardableResult
    public func publish(
        _ eventType: EventType, fields: JSONObject = JSONObject(), subject: Identifier? = nil,
        options: EventFactory.Options = .init()
    ) async throws(EventPublisherError) -> EventEnvelope {
        let prepared: EventFactory.Prepared
        if let delivery, factory.isSpooled(eventType) {
            prepared = try await spool(eventType, fields: fields, subject: subject, options: options, into: delivery)
        } else {
            prepared = try factory.prepare(eventType, fields: fields, subject: subject, options: options)
            try await send(topic: prepared.topic, payload: prepared.envelope.encoded(), delivery: prepared.delivery)
        }
        logger.debug(
            "published",
            metadata: ["event_type": "\(eventType.rawValue)", "topic": "\(prepared.topic)",
                       "event_id": "\(prepared.envelope.eventID)", "seq": "\(prepared.envelope.seq)"])
        return prepared.envelope
    }

    /// Prepares and encodes the event, then takes its `seq` and writes it to the spool under `appendLock`, so `seq`
    /// order is spool order (the lock covers only the numbering and the write: concurrent publishing tasks spin on
    /// it, BENCHMARKS.md); then waits for durability outside the lock, so concurrent publishers share one fdatasync
    /// (group commit). A failure after the lock (the sync failed, no room) leaves the seq declared dropped by the
    /// spool, never reused.
    private func spool(
        _ eventType: EventType, fields: JSONObject, subject: Identifier?, options: EventFactory.Options,
        into delivery: SpooledDelivery
    ) async throws(EventPublisherError) -> EventFactory.Prepared {
        var event = try factory.prepareUnnumbered(eventType, fields: fields, subject: subject, options: options)
        var seqDigits = 0..<0
        var payload = event.envelope.encoded(seqDigits: &seqDigits)
        let sequenced = factory.isSequenced(eventType)
        let priority = Self.spoolPriority(eventType, delivery: event.delivery)
        let coalesceKey = Self.coalesceKey(event.envelope)
        let (prepared, ticket) = try appendLock.withLock { _ throws(EventPublisherError) in
            if sequenced {
                event.envelope.seq = factory.takeSequence()
                EventEnvelope.setSeq(event.envelope.seq, in: &payload, digits: seqDigits)
            }
            let record = SpoolRecord(
                sessionID: event.envelope.sessionID, seq: event.envelope.seq, topic: event.topic,
                payload: payload, qos: UInt8(event.delivery.qos.rawValue), retain: event.delivery.retain,
                priority: priority, coalesceKey: coalesceKey)
            do throws(SpoolError) {
                return (event, try delivery.spool.write(record))
            } catch {
                if sequenced { factory.returnSequence(event.envelope.seq) }
                throw .spool(error)
            }
        }
        delivery.wake()
        do throws(SpoolError) {
            _ = try await ticket.outcome()
        } catch {
            throw .spool(error)
        }
        return prepared
    }

    /// Terminal job events are never dropped from a full spool; best-effort classes go first.
    static func spoolPriority(_ eventType: EventType, delivery: DeliveryPolicy) -> SpoolPriority {
        if eventType == .jobCompleted || eventType == .jobFailed { return .essential }
        return delivery.qos == .atMostOnce ? .droppable : .normal
    }

    /// Events that supersede each other: a full spool keeps only the latest per key.
    static func coalesceKey(_ envelope: EventEnvelope) -> String? {
        switch envelope.eventType {
        case .jobProgress: return envelope.jobID.map { "job.progress/\($0.rawValue)" }
        case .workerHeartbeat: return "worker.heartbeat"
        default: return nil
        }
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
