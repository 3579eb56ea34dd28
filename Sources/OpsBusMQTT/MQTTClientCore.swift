import CMosquitto
import Dispatch
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The engine behind `MQTTClient`: owns the libmosquitto handle, the bookkeeping of pending operations, and the
/// network thread.
///
/// ## Why our own network thread (and not `mosquitto_loop_start`)
/// * `mosquitto_threaded_set(true)` + our own `mosquitto_loop(mosq, 100, 1)` calls keep the property we rely on for
///   "ack after processing": with `threaded` set, libmosquitto queues every outgoing packet (PUBACK included) instead
///   of writing it from inside a callback (`packet__queue`), and the queue is written by the next `mosquitto_loop`
///   iteration, i.e. after `on_message` returned. A handler can therefore refuse a QoS 1 message by shutting the socket
///   down before returning: the PUBACK never leaves and the broker redelivers after the reconnect.
/// * Owning the loop lets us reconnect with capped exponential backoff plus jitter (libmosquitto's built-in backoff is
///   quadratic, without jitter) and bound each attempt: we use the non-blocking `mosquitto_connect_async` /
///   `mosquitto_reconnect_async`, which `mosquitto_loop` drives (select for writability, then CONNECT, CONNACK), and
///   give up an attempt after `connectTimeout`. `mosquitto_loop` also runs the keepalive check (`loop_misc`).
/// * It avoids the `connect_async`-before-`loop_start` trap (a refused first connect leaves libmosquitto's thread
///   spinning forever) and `loop_stop` hangs.
/// Exception: MQTT v5 with a session expiry must send a CONNECT property, which 2.0.11 only supports in the blocking
/// `mosquitto_connect_bind_v5`; those attempts block the network thread for the TCP handshake (up to the kernel's
/// SYN retry limit, ~2 min, if the network silently drops packets).
///
/// ## Locking
/// `state` is the only mutable state. Lock order is always `state` → libmosquitto's internal mutexes: publish and
/// subscribe call libmosquitto while holding `state` (so an acknowledgement that races the registration of its
/// message id cannot be lost), and libmosquitto calls our callbacks holding only its `callback_mutex`, which no
/// libmosquitto function that we call with `state` held takes. Continuations are resumed under the lock (cheap, never
/// re-entrant); user code (the message handler) is never called with the lock held.
final class MQTTClientCore: Sendable {
    typealias VoidContinuation = CheckedContinuation<Result<Void, MQTTError>, Never>
    typealias GrantContinuation = CheckedContinuation<Result<[Int32], MQTTError>, Never>

    enum Lifecycle: Equatable {
        /// No network thread (before `connect()`, or after a `connect()` that gave up).
        case idle
        case running(generation: Int)
        /// After `disconnect()`: terminal.
        case stopped
    }

    struct PendingPublish {
        /// nil once the caller stopped waiting (timeout or cancellation): the entry keeps its slot until
        /// libmosquitto reports the acknowledgement, because the message is still queued there.
        var continuation: VoidContinuation?
        let topic: String
        let token: UInt64
        /// When the waiting caller gets `.publishTimeout` (checked by the one sweeper task, not a timer per publish:
        /// at thousands of publishes per second, a timer each cost more than the publish).
        var deadline: ContinuousClock.Instant?
        /// Set instead of `continuation` by `enqueuePublish`.
        var callback: MQTTPublishCallback? = nil

        /// Reports the outcome to whoever waits (continuation or callback), once.
        mutating func finish(_ result: Result<Void, MQTTError>) {
            continuation?.resume(returning: result)
            continuation = nil
            callback?(result)
            callback = nil
        }
    }

    struct PendingRequest {
        var continuation: GrantContinuation?
        let token: UInt64
        let filters: [String]
        /// nil for UNSUBSCRIBE.
        let qos: MQTTQoS?
        var timer: Task<Void, Never>?
    }

    struct ConnectWaiter {
        let continuation: VoidContinuation
        /// nil: wait for the broker as long as it takes.
        let deadline: ContinuousClock.Instant?
    }

    struct State {
        var lifecycle: Lifecycle = .idle
        var generation = 0
        var stopRequested = false
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        var connected = false
        var everConnected = false
        /// Set by on_connect for the current attempt: the CONNACK code and the session-present flag.
        var connack: (code: Int, sessionPresent: Bool)?
        var connectWaiters: [UInt64: ConnectWaiter] = [:]
        var publishes: [Int32: PendingPublish] = [:]
        /// `publish` calls between their libmosquitto call and their entry in `publishes`.
        var registrationsPending = 0
        /// Acknowledgements (`onPublish` calls) so far: orders an early acknowledgement against a registration.
        var ackSerial: UInt64 = 0
        /// Acknowledgements that arrived while registrations were pending and matched no entry, by message id. A
        /// registration takes one only if it arrived after the registration's libmosquitto call began (`serial`):
        /// an older one with the same id is a QoS 0 message's or a stale one's, never this publish's.
        var earlyAcks: [Int32: (serial: UInt64, reasonCode: Int32)] = [:]
        /// Slots of `maxOutstandingPublishes` in use (entries in `publishes` plus slots handed to a waiter).
        var outstanding = 0
        var slotWaiters: [(token: UInt64, continuation: VoidContinuation)] = []
        /// The publish-timeout sweeper runs (only while some publish has a deadline).
        var sweeping = false
        var requests: [Int32: PendingRequest] = [:]
        /// Granted subscriptions, re-subscribed after a reconnect without session.
        var subscriptions: [String: MQTTQoS] = [:]
        var handler: (@Sendable (MQTTMessage) -> MQTTMessageDisposition)?
        var nextToken: UInt64 = 1
        /// Whether `mosquitto_connect_async` ran once (it sets host/port/keepalive; later attempts reconnect).
        var hostConfigured = false

        mutating func token() -> UInt64 {
            defer { nextToken += 1 }
            return nextToken
        }
    }

    let configuration: MQTTClientConfiguration
    let logger: Logger
    let handle: MosquittoHandle
    let state = Mutex(State())
    let wakeup = DispatchSemaphore(value: 0)
    let messageStream: AsyncStream<MQTTMessage>
    let messageContinuation: AsyncStream<MQTTMessage>.Continuation
    let eventStream: AsyncStream<MQTTConnectionEvent>
    let eventContinuation: AsyncStream<MQTTConnectionEvent>.Continuation
    /// "client 'id' at host:port", for error messages.
    let context: String

    init(configuration: MQTTClientConfiguration, logger: Logger) throws(MQTTError) {
        try configuration.validate()
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "mqtt.client"] = "\(configuration.clientID)"
        logger[metadataKey: "mqtt.broker"] = "\(configuration.endpoint)"
        self.logger = logger
        context = "client '\(configuration.clientID)' at "
            + MQTTEndpoint.hostPort(configuration.endpoint.host, configuration.endpoint.port)
        guard let handle = MosquittoHandle(clientID: configuration.clientID, cleanSession: configuration.cleanSession)
        else {
            throw .library(code: MOSQ_ERR_NOMEM.rawValue, operation: "mosquitto_new", context: context)
        }
        self.handle = handle
        (messageStream, messageContinuation) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .unbounded)
        (eventStream, eventContinuation) = AsyncStream.makeStream(
            of: MQTTConnectionEvent.self, bufferingPolicy: .bufferingNewest(256))
        try applyOptions()
    }

    deinit {
        messageContinuation.finish()
        eventContinuation.finish()
    }

    private var mosq: OpaquePointer { handle.pointer }

    // MARK: - Setup

    private func applyOptions() throws(MQTTError) {
        let config = configuration
        func check(_ rc: Int32, _ operation: String) throws(MQTTError) {
            if rc != MOSQ_ERR_SUCCESS.rawValue { throw .library(code: rc, operation: operation, context: context) }
        }
        // Unretained: callbacks only run inside mosquitto_loop on our network thread, which retains `self`.
        mosquitto_user_data_set(mosq, Unmanaged.passUnretained(self).toOpaque())
        try check(mosquitto_threaded_set(mosq, true), "mosquitto_threaded_set")
        if config.protocolVersion == .v5 {
            try check(mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5), "protocol version")
        }
        try check(mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, Int32(config.maxInflightMessages)), "send maximum")
        try check(mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1), "tcp nodelay")
        if let username = config.endpoint.username {
            try check(mosquitto_username_pw_set(mosq, username, config.endpoint.password), "mosquitto_username_pw_set")
        }
        if let will = config.will {
            try check(applyWill(will), "mosquitto_will_set")
        }
        if config.endpoint.useTLS {
            let tls = config.tls ?? config.endpoint.tls ?? MQTTTLSConfiguration()
            let caPath = tls.caFile == nil ? MQTTTLSConfiguration.defaultCAPath : nil
            try check(
                mosquitto_tls_set(mosq, tls.caFile, caPath, tls.certFile, tls.keyFile, nil),
                "mosquitto_tls_set (ca \(tls.caFile ?? caPath ?? "-"), cert \(tls.certFile ?? "-"))")
            if tls.insecureSkipVerify {
                try check(mosquitto_tls_opts_set(mosq, 0, nil, nil), "mosquitto_tls_opts_set (no verification)")
                try check(mosquitto_tls_insecure_set(mosq, true), "mosquitto_tls_insecure_set")
            }
        }
        mosquitto_connect_v5_callback_set(mosq, mqttOnConnect)
        mosquitto_disconnect_v5_callback_set(mosq, mqttOnDisconnect)
        mosquitto_publish_v5_callback_set(mosq, mqttOnPublish)
        mosquitto_message_v5_callback_set(mosq, mqttOnMessage)
        mosquitto_subscribe_v5_callback_set(mosq, mqttOnSubscribe)
        mosquitto_unsubscribe_v5_callback_set(mosq, mqttOnUnsubscribe)
        mosquitto_log_callback_set(mosq, mqttOnLog)
    }

    // MARK: - Public operations

    var isConnected: Bool { state.withLock { $0.connected } }
    var outstandingPublishCount: Int { state.withLock { $0.outstanding } }

    func setHandler(_ handler: (@Sendable (MQTTMessage) -> MQTTMessageDisposition)?) {
        state.withLock { $0.handler = handler }
    }

    func connect(waitForBroker: Bool) async throws(MQTTError) {
        let token = state.withLock { $0.token() }
        let deadline = waitForBroker ? nil : ContinuousClock.now + .seconds(configuration.connectTimeout)
        let result: Result<Void, MQTTError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: VoidContinuation) in
                let startGeneration: Int? = state.withLock { s in
                    switch s.lifecycle {
                    case .stopped:
                        continuation.resume(
                            returning: .failure(.disconnectedByClient(operation: "connect", context: context)))
                        return nil
                    case .running where s.connected:
                        continuation.resume(returning: .success(()))
                        return nil
                    case .running:
                        s.connectWaiters[token] = ConnectWaiter(continuation: continuation, deadline: deadline)
                        return nil
                    case .idle:
                        s.connectWaiters[token] = ConnectWaiter(continuation: continuation, deadline: deadline)
                        s.generation += 1
                        s.lifecycle = .running(generation: s.generation)
                        return s.generation
                    }
                }
                if let startGeneration { startNetworkThread(generation: startGeneration) }
                wakeup.signal()
            }
        } onCancel: {
            state.withLock { s in
                s.connectWaiters.removeValue(forKey: token)?.continuation.resume(
                    returning: .failure(.cancelled(operation: "connect to \(context)")))
            }
            wakeup.signal()
        }
        try result.get()
    }

    func disconnect() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            state.withLock { s in
                switch s.lifecycle {
                case .stopped:
                    continuation.resume()
                case .idle:
                    s.lifecycle = .stopped
                    failEverything(&s, with: .disconnectedByClient(operation: "request", context: context))
                    continuation.resume()
                case .running:
                    s.stopRequested = true
                    s.stopWaiters.append(continuation)
                }
            }
            wakeup.signal()
        }
        messageContinuation.finish()
        eventContinuation.finish()
    }

    /// Fire-and-forget stop for `MQTTClient.deinit`.
    func requestStop() {
        let finishNow: Bool = state.withLock { s in
            switch s.lifecycle {
            case .running:
                s.stopRequested = true
                return false
            case .idle:
                s.lifecycle = .stopped
                failEverything(&s, with: .disconnectedByClient(operation: "request", context: context))
                return true
            case .stopped:
                return true
            }
        }
        wakeup.signal()
        if finishNow {
            messageContinuation.finish()
            eventContinuation.finish()
        }
    }

    func publish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool) async throws(MQTTError) {
        try MQTTValidation.checkTopicName(topic)
        if payload.count > MQTTValidation.maxPayload {
            throw .payloadTooLarge(topic: topic, size: payload.count, limit: MQTTValidation.maxPayload)
        }
        // Formatted only for an error, not per publish (about 800 instructions each, issue 6).
        var operation: String { "publish to '\(topic)'" }
        if qos == .atMostOnce {
            let rc: Int32 = state.withLock { s in
                if s.lifecycle == .stopped { return -100 }
                return callPublish(topic: topic, payload: payload, qos: qos, retain: retain, mid: nil)
            }
            switch rc {
            case MOSQ_ERR_SUCCESS.rawValue: return
            case -100: throw .disconnectedByClient(operation: operation, context: context)
            case MOSQ_ERR_NO_CONN.rawValue: throw .notConnected(operation: operation + " (QoS 0 is not queued)", context: context)
            default: throw publishError(rc, topic: topic)
            }
        }

        // From here we own a slot: it is either moved into `publishes` (freed on the acknowledgement) or released.
        let token = try await acquireSlot(topic: topic)
        let timeout = configuration.publishTimeout
        let result: Result<Void, MQTTError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: VoidContinuation) in
                // libmosquitto is called outside the lock (it writes to its wake-up socket): holding the lock across
                // that syscall made every other publishing task and the network thread wait (gdb samples of the
                // publisher benchmark, BENCHMARKS.md). Its PUBACK may then beat the registration below:
                // `onPublish` keeps such an early acknowledgement while a registration is pending.
                let windowStart = state.withLock { s -> UInt64? in
                    if s.lifecycle == .stopped {
                        releaseSlot(&s)
                        return nil
                    }
                    s.registrationsPending += 1
                    return s.ackSerial
                }
                guard let windowStart else {
                    continuation.resume(returning: .failure(.disconnectedByClient(operation: operation, context: context)))
                    return
                }
                var mid: Int32 = 0
                let rc = callPublish(topic: topic, payload: payload, qos: qos, retain: retain, mid: &mid)
                var resumeNow: Result<Void, MQTTError>?
                let startSweeper = state.withLock { s -> Bool in
                    s.registrationsPending -= 1
                    defer { if s.registrationsPending == 0 { s.earlyAcks.removeAll() } }
                    // NO_CONN for QoS ≥ 1 means "queued, will be sent after the reconnect": never retry it.
                    guard rc == MOSQ_ERR_SUCCESS.rawValue || rc == MOSQ_ERR_NO_CONN.rawValue else {
                        releaseSlot(&s)
                        resumeNow = .failure(publishError(rc, topic: topic))
                        return false
                    }
                    if let early = s.earlyAcks.removeValue(forKey: mid), early.serial > windowStart {
                        let reasonCode = early.reasonCode
                        releaseSlot(&s)
                        resumeNow = reasonCode >= 0x80
                            ? .failure(.publishRejected(reasonCode: Int(reasonCode), topic: topic)) : .success(())
                        return false
                    }
                    if let stale = s.publishes[mid] {
                        // Only possible if 65536 message ids were used while this one stayed unacknowledged
                        // (QoS 0 publishes use ids too). Keep the bookkeeping consistent; the old entry is ambiguous.
                        // Its fate is unknown, so never report it as delivered.
                        logger.warning("message id \(mid) reused while still unacknowledged (topic '\(stale.topic)')")
                        stale.continuation?.resume(returning: .failure(.publishTimeout(topic: stale.topic, seconds: timeout)))
                        releaseSlot(&s)
                    }
                    s.publishes[mid] = PendingPublish(
                        continuation: continuation, topic: topic, token: token,
                        deadline: .now + .milliseconds(Int64(timeout * 1000)))
                    if Task.isCancelled {  // cancelled before the entry existed: onCancel found nothing to cancel
                        s.publishes[mid]?.continuation?.resume(returning: .failure(.cancelled(operation: operation)))
                        s.publishes[mid]?.continuation = nil
                    }
                    if s.sweeping { return false }
                    s.sweeping = true
                    return true
                }
                if let resumeNow { continuation.resume(returning: resumeNow) }
                if startSweeper { Task { [weak self] in await self?.sweepPublishTimeouts() } }
            }
        } onCancel: {
            state.withLock { s in
                guard let (mid, _) = s.publishes.first(where: { $0.value.token == token }) else { return }
                s.publishes[mid]?.deadline = nil
                s.publishes[mid]?.continuation?.resume(returning: .failure(.cancelled(operation: operation)))
                s.publishes[mid]?.continuation = nil
            }
        }
        try result.get()
    }

    /// Hands a message to libmosquitto now, without waiting for its acknowledgement (see `MQTTClient.enqueuePublish`).
    func enqueuePublish(
        topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, onComplete: @escaping MQTTPublishCallback
    ) throws(MQTTError) {
        try MQTTValidation.checkTopicName(topic)
        if payload.count > MQTTValidation.maxPayload {
            throw .payloadTooLarge(topic: topic, size: payload.count, limit: MQTTValidation.maxPayload)
        }
        // Formatted only for an error, not per publish (about 800 instructions each, issue 6).
        var operation: String { "publish to '\(topic)'" }
        let limit = configuration.maxOutstandingPublishes
        let rc: Int32 = state.withLock { s in
            if s.lifecycle == .stopped { return -100 }
            if qos == .atMostOnce { return callPublish(topic: topic, payload: payload, qos: qos, retain: retain, mid: nil) }
            guard s.outstanding < limit, s.slotWaiters.isEmpty else { return -101 }
            var mid: Int32 = 0
            let rc = callPublish(topic: topic, payload: payload, qos: qos, retain: retain, mid: &mid)
            // NO_CONN for QoS ≥ 1 means "queued, will be sent after the reconnect": never retry it.
            guard rc == MOSQ_ERR_SUCCESS.rawValue || rc == MOSQ_ERR_NO_CONN.rawValue else { return rc }
            s.outstanding += 1
            if var stale = s.publishes[mid] {
                logger.warning("message id \(mid) reused while still unacknowledged (topic '\(stale.topic)')")
                stale.finish(.failure(.publishTimeout(topic: stale.topic, seconds: configuration.publishTimeout)))
                releaseSlot(&s)
            }
            s.publishes[mid] = PendingPublish(continuation: nil, topic: topic, token: s.token(), deadline: nil, callback: onComplete)
            return MOSQ_ERR_SUCCESS.rawValue
        }
        switch rc {
        case MOSQ_ERR_SUCCESS.rawValue:
            if qos == .atMostOnce { onComplete(.success(())) }
        case -100: throw .disconnectedByClient(operation: operation, context: context)
        case -101: throw .outstandingLimitReached(limit: limit, topic: topic)
        case MOSQ_ERR_NO_CONN.rawValue: throw .notConnected(operation: operation + " (QoS 0 is not queued)", context: context)
        default: throw publishError(rc, topic: topic)
        }
    }

    func subscribe(_ filters: [String], qos: MQTTQoS) async throws(MQTTError) -> [MQTTQoS] {
        guard !filters.isEmpty else { throw .invalidTopic(topic: "", reason: "no topic filters given") }
        for filter in filters { try MQTTValidation.checkTopicFilter(filter) }
        if qos == .exactlyOnce {
            logger.warning(
                "subscribing at QoS 2: libmosquitto acknowledges QoS 2 messages before the handler runs, so .reject cannot cause redelivery")
        }
        let granted = try await request(filters: filters, qos: qos)
        return try Self.grantedQoS(filters: filters, codes: granted)
    }

    /// SUBACK codes → QoS per filter; a failure code (0x80, or a v5 reason ≥ 0x80) or a missing code throws
    /// `.subscriptionRejected` for the first such filter.
    static func grantedQoS(filters: [String], codes: [Int32]) throws(MQTTError) -> [MQTTQoS] {
        var result: [MQTTQoS] = []
        for (index, filter) in filters.enumerated() {
            let code = index < codes.count ? codes[index] : 0x80
            guard let grantedQoS = MQTTQoS(rawValue: code) else { throw .subscriptionRejected(filter: filter) }
            result.append(grantedQoS)
        }
        return result
    }

    func unsubscribe(_ filters: [String]) async throws(MQTTError) {
        guard !filters.isEmpty else { throw .invalidTopic(topic: "", reason: "no topic filters given") }
        for filter in filters { try MQTTValidation.checkTopicFilter(filter) }
        _ = try await request(filters: filters, qos: nil)
    }

    // MARK: - Internals: publish slots and requests

    /// Calls `mosquitto_publish`; callers hold `state` (see "Locking").
    private func callPublish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, mid: UnsafeMutablePointer<Int32>?)
        -> Int32
    {
        payload.withUnsafeBytes { bytes in
            mosquitto_publish(mosq, mid, topic, Int32(bytes.count), bytes.baseAddress, qos.rawValue, retain)
        }
    }

    private func publishError(_ rc: Int32, topic: String) -> MQTTError {
        switch rc {
        case MOSQ_ERR_PAYLOAD_SIZE.rawValue:
            return .payloadTooLarge(topic: topic, size: -1, limit: MQTTValidation.maxPayload)
        case MOSQ_ERR_MALFORMED_UTF8.rawValue:
            return .malformedUTF8(field: "topic", value: topic)
        default:
            return .library(code: rc, operation: "publish to '\(topic)'", context: context)
        }
    }

    /// Takes a slot of `maxOutstandingPublishes`, waiting for one if needed; returns a fresh token for the publish
    /// (taken under the same lock, as every lock round costs the publishing tasks under contention).
    private func acquireSlot(topic: String) async throws(MQTTError) -> UInt64 {
        let limit = configuration.maxOutstandingPublishes
        let immediate: UInt64? = state.withLock { s in
            if s.outstanding < limit && s.slotWaiters.isEmpty {
                s.outstanding += 1
                return s.token()
            }
            return nil
        }
        if let immediate { return immediate }
        let token = state.withLock { $0.token() }
        let timeout = configuration.publishTimeout
        let result: Result<Void, MQTTError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: VoidContinuation) in
                state.withLock { s in
                    if s.lifecycle == .stopped {
                        continuation.resume(
                            returning: .failure(.disconnectedByClient(operation: "publish to '\(topic)'", context: context)))
                    } else if s.outstanding < limit && s.slotWaiters.isEmpty {
                        s.outstanding += 1
                        continuation.resume(returning: .success(()))
                    } else {
                        s.slotWaiters.append((token, continuation))
                    }
                }
                _ = makeTimer(seconds: timeout) { core in
                    core.state.withLock { s in
                        guard let index = s.slotWaiters.firstIndex(where: { $0.token == token }) else { return }
                        s.slotWaiters.remove(at: index).continuation.resume(
                            returning: .failure(.outstandingLimitReached(limit: limit, topic: topic)))
                    }
                }
            }
        } onCancel: {
            state.withLock { s in
                guard let index = s.slotWaiters.firstIndex(where: { $0.token == token }) else { return }
                s.slotWaiters.remove(at: index).continuation.resume(
                    returning: .failure(.cancelled(operation: "publish to '\(topic)'")))
            }
        }
        try result.get()
        return token  // the waiter's token is done with: the publish can use it
    }

    /// Runs `action` after `seconds` unless cancelled first; holds the core only weakly meanwhile.
    private func makeTimer(seconds: Double, _ action: @escaping @Sendable (MQTTClientCore) -> Void) -> Task<Void, Never> {
        Task { [weak self] in
            try? await Task.sleep(for: .seconds(seconds))
            guard !Task.isCancelled, let self else { return }
            action(self)
        }
    }

    /// Frees one slot, or hands it straight to the oldest waiter.
    private func releaseSlot(_ s: inout State) {
        if s.slotWaiters.isEmpty {
            s.outstanding = max(0, s.outstanding - 1)
        } else {
            s.slotWaiters.removeFirst().continuation.resume(returning: .success(()))
        }
    }

    /// Every 100 ms while publishes wait, gives those past their deadline `.publishTimeout`; the entry (and its
    /// slot) stays until libmosquitto reports the acknowledgement, because the message is still queued there. Ends
    /// when no waiting publish has a deadline (the next one starts it again).
    private func sweepPublishTimeouts() async {
        while true {
            try? await Task.sleep(for: .milliseconds(100))
            let now = ContinuousClock.now
            let timeout = configuration.publishTimeout
            let more = state.withLock { s -> Bool in
                var more = false
                for (mid, entry) in s.publishes {
                    guard let deadline = entry.deadline else { continue }
                    if now >= deadline {
                        s.publishes[mid]?.continuation?.resume(
                            returning: .failure(.publishTimeout(topic: entry.topic, seconds: timeout)))
                        s.publishes[mid]?.continuation = nil
                        s.publishes[mid]?.deadline = nil
                    } else {
                        more = true
                    }
                }
                if !more { s.sweeping = false }
                return more
            }
            if !more { return }
        }
    }

    private func request(filters: [String], qos: MQTTQoS?) async throws(MQTTError) -> [Int32] {
        let operation = (qos == nil ? "unsubscribe from " : "subscribe to ") + filters.map { "'\($0)'" }.joined(separator: ", ")
        let token = state.withLock { $0.token() }
        let timeout = configuration.publishTimeout
        let result: Result<[Int32], MQTTError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: GrantContinuation) in
                state.withLock { s in
                    if s.lifecycle == .stopped {
                        continuation.resume(returning: .failure(.disconnectedByClient(operation: operation, context: context)))
                        return
                    }
                    guard s.connected else {
                        continuation.resume(returning: .failure(.notConnected(operation: operation, context: context)))
                        return
                    }
                    var mid: Int32 = 0
                    let rc = callSubscribe(filters: filters, qos: qos, mid: &mid)
                    guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                        let error: MQTTError = rc == MOSQ_ERR_NO_CONN.rawValue
                            ? .notConnected(operation: operation, context: context)
                            : .library(code: rc, operation: operation, context: context)
                        continuation.resume(returning: .failure(error))
                        return
                    }
                    let timer = makeTimer(seconds: timeout) { [mid] core in
                        core.state.withLock { s in
                            guard s.requests[mid]?.token == token else { return }
                            s.requests.removeValue(forKey: mid)?.continuation?.resume(
                                returning: .failure(.requestTimeout(operation: operation, seconds: timeout, context: core.context)))
                        }
                    }
                    s.requests[mid] = PendingRequest(
                        continuation: continuation, token: token, filters: filters, qos: qos, timer: timer)
                }
            }
        } onCancel: {
            state.withLock { s in
                guard let (mid, _) = s.requests.first(where: { $0.value.token == token }) else { return }
                s.requests[mid]?.timer?.cancel()
                s.requests[mid]?.continuation?.resume(returning: .failure(.cancelled(operation: operation)))
                s.requests[mid]?.continuation = nil
            }
        }
        return try result.get()
    }

    /// SUBSCRIBE (qos non-nil) or UNSUBSCRIBE for several filters in one packet.
    private func callSubscribe(filters: [String], qos: MQTTQoS?, mid: UnsafeMutablePointer<Int32>?) -> Int32 {
        let cStrings: [UnsafeMutablePointer<CChar>?] = filters.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        return cStrings.withUnsafeBufferPointer { buffer in
            if let qos {
                return mosquitto_subscribe_multiple(mosq, mid, Int32(buffer.count), buffer.baseAddress, qos.rawValue, 0, nil)
            } else {
                return mosquitto_unsubscribe_multiple(mosq, mid, Int32(buffer.count), buffer.baseAddress, nil)
            }
        }
    }

    /// Terminal cleanup after `disconnect()`: every waiter gets `error`.
    private func failEverything(_ s: inout State, with error: MQTTError) {
        for (_, entry) in s.publishes {
            var finished = entry
            if case let .disconnectedByClient(_, context) = error {
                finished.finish(.failure(.disconnectedByClient(operation: "publish to '\(entry.topic)'", context: context)))
            } else {
                finished.finish(.failure(error))
            }
        }
        s.publishes.removeAll()
        s.outstanding = 0
        for waiter in s.slotWaiters { waiter.continuation.resume(returning: .failure(error)) }
        s.slotWaiters.removeAll()
        for (_, request) in s.requests {
            request.timer?.cancel()
            request.continuation?.resume(returning: .failure(error))
        }
        s.requests.removeAll()
        for (_, waiter) in s.connectWaiters { waiter.continuation.resume(returning: .failure(error)) }
        s.connectWaiters.removeAll()
    }

    /// Sets (or with nil clears) the will libmosquitto sends in the next CONNECT.
    private func applyWill(_ will: MQTTWill?) -> Int32 {
        guard let will else { return mosquitto_will_clear(mosq) }
        return will.payload.withUnsafeBytes { bytes in
            mosquitto_will_set(mosq, will.topic, Int32(bytes.count), bytes.baseAddress, will.qos.rawValue, will.retain)
        }
    }

    // MARK: - Callbacks (network thread, inside mosquitto_loop)

    fileprivate func onConnect(code: Int32, flags: Int32) {
        let sessionPresent = flags & 1 == 1
        let resubscribe: [MQTTQoS: [String]]? = state.withLock { s in
            s.connack = (Int(code), sessionPresent)
            guard code == 0 else { return nil }
            s.connected = true
            s.everConnected = true
            for (_, waiter) in s.connectWaiters { waiter.continuation.resume(returning: .success(())) }
            s.connectWaiters.removeAll()
            if sessionPresent || s.subscriptions.isEmpty { return nil }
            return Dictionary(grouping: s.subscriptions.keys.sorted(), by: { s.subscriptions[$0]! })
        }
        guard code == 0 else { return }
        if logger.logLevel > .trace {
            // While connected libmosquitto logs only per-packet lines ("sending PUBACK …", mapped to trace), and it
            // formats each one (`vsnprintf` into a fresh buffer) whenever a log callback is set: about 2 % of the
            // bridge's CPU time (`perf`). Its errors and warnings come while connecting, when the callback is back
            // (onDisconnect).
            mosquitto_log_callback_set(mosq, nil)
        }
        logger.info("connected", metadata: ["session_present": "\(sessionPresent)"])
        eventContinuation.yield(.connected(sessionPresent: sessionPresent))
        for (qos, filters) in resubscribe ?? [:] {
            // Sent before any application traffic; the SUBACK has no waiter and is only logged.
            let rc = state.withLock { _ in callSubscribe(filters: filters, qos: qos, mid: nil) }
            if rc != MOSQ_ERR_SUCCESS.rawValue {
                logger.error("re-subscribe failed: \(MQTTError.library(code: rc, operation: "re-subscribe", context: context))")
            } else {
                logger.info("re-subscribed after a reconnect without session", metadata: ["filters": "\(filters)"])
            }
        }
    }

    fileprivate func onDisconnect(code: Int32) {
        state.withLock { $0.connected = false }
        mosquitto_log_callback_set(mosq, mqttOnLog)
        logger.debug("socket closed", metadata: ["rc": "\(code)"])
    }

    fileprivate func onPublish(mid: Int32, reasonCode: Int32) {
        // A waiting `publish` is resumed after the lock is released: resuming schedules its task (a futex wake), and
        // doing that under the lock made every publishing task wait for it (gdb samples of the publisher benchmark,
        // BENCHMARKS.md). An `enqueuePublish` callback still runs under the lock, as documented.
        let waiting: (VoidContinuation, Result<Void, MQTTError>)? = state.withLock { s in
            s.ackSerial += 1
            guard var entry = s.publishes.removeValue(forKey: mid) else {
                // A publish between its libmosquitto call and its registration, or QoS 0 or a stale id: kept only
                // while a registration is pending (see `publish`), and at most the last 32,768.
                if s.registrationsPending > 0 {
                    s.earlyAcks[mid] = (s.ackSerial, reasonCode)
                    if s.earlyAcks.count > 32_768 {
                        let oldest = s.ackSerial - 32_768
                        s.earlyAcks = s.earlyAcks.filter { $0.value.serial > oldest }
                    }
                }
                return nil
            }
            releaseSlot(&s)
            let result: Result<Void, MQTTError> = reasonCode >= 0x80
                ? .failure(.publishRejected(reasonCode: Int(reasonCode), topic: entry.topic)) : .success(())
            let continuation = entry.continuation
            entry.continuation = nil
            entry.finish(result)
            return continuation.map { ($0, result) }
        }
        if let (continuation, result) = waiting { continuation.resume(returning: result) }
    }

    fileprivate func onSubscribe(mid: Int32, granted: [Int32]) {
        state.withLock { s in
            guard let request = s.requests.removeValue(forKey: mid), let qos = request.qos else { return }
            request.timer?.cancel()
            for (index, filter) in request.filters.enumerated() where index < granted.count && granted[index] < 0x80 {
                s.subscriptions[filter] = qos
            }
            request.continuation?.resume(returning: .success(granted))
        }
    }

    fileprivate func onUnsubscribe(mid: Int32) {
        state.withLock { s in
            guard let request = s.requests.removeValue(forKey: mid), request.qos == nil else { return }
            request.timer?.cancel()
            for filter in request.filters { s.subscriptions.removeValue(forKey: filter) }
            request.continuation?.resume(returning: .success([]))
        }
    }

    fileprivate func onMessage(_ message: MQTTMessage) {
        guard let handler = state.withLock({ $0.handler }) else {
            messageContinuation.yield(message)
            return
        }
        guard handler(message) == .reject else { return }
        if message.qos == .atLeastOnce {
            // The PUBACK is queued but unsent (threaded mode); killing the socket now keeps it from ever leaving, so
            // the broker redelivers after our automatic reconnect.
            logger.notice("message rejected by the handler; dropping the connection so the broker redelivers it",
                          metadata: ["topic": "\(message.topic)", "mid": "\(message.messageID)"])
            let fd = mosquitto_socket(mosq)
            if fd >= 0 { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        } else {
            logger.warning("message rejected by the handler, but QoS \(message.qos.rawValue) cannot be redelivered",
                           metadata: ["topic": "\(message.topic)"])
        }
    }

    /// libmosquitto logs every packet at its debug level (a callback per PUBLISH and PUBACK): the text is only
    /// turned into a String when our logger would print it.
    fileprivate func onLog(level: Int32, text: UnsafePointer<CChar>) {
        let mapped: Logger.Level = switch level {
        case MOSQ_LOG_ERR: .error
        case MOSQ_LOG_WARNING: .warning
        case MOSQ_LOG_NOTICE, MOSQ_LOG_INFO: .debug
        default: .trace
        }
        guard mapped >= logger.logLevel else { return }
        logger.log(level: mapped, "libmosquitto: \(String(cString: text))")
    }

    // MARK: - Network thread

    private func startNetworkThread(generation: Int) {
        let thread = Thread { [self] in runNetworkLoop(generation: generation) }
        thread.name = "mqtt-\(configuration.clientID)"
        thread.start()
    }

    private enum Phase {
        case startAttempt
        case connecting(since: ContinuousClock.Instant)
        case connected
        case waiting(until: ContinuousClock.Instant)
    }

    private enum LoopDecision {
        case proceed
        /// disconnect() was called.
        case stop
        /// No first connection and nobody waiting for one.
        case goIdle
        /// This thread's generation is over (defensive; not expected).
        case exit
    }

    private func runNetworkLoop(generation: Int) {
        blockAsynchronousSignals()
        var phase = Phase.startAttempt
        var failures = 0
        let connectTimeout = Duration.seconds(configuration.connectTimeout)
        while true {
            switch checkLifecycle(generation: generation) {
            case .stop:
                stopNetwork()
                return
            case .exit:
                return
            case .goIdle:
                // Close the abandoned attempt first: once we are idle, a new connect() may start another thread.
                abortSocket()
                if enterIdle(generation: generation) { return }
            case .proceed:
                break
            }
            switch phase {
            case let .waiting(until):
                let remaining = ContinuousClock.now.duration(to: until)
                if remaining <= .zero {
                    phase = .startAttempt
                } else {
                    let wait = min(remaining, .milliseconds(100))
                    let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
                    _ = wakeup.wait(timeout: .now() + seconds)
                }

            case .startAttempt:
                let rc = startConnectAttempt()
                let osError = errno
                if rc == MOSQ_ERR_SUCCESS.rawValue {
                    phase = .connecting(since: .now)
                } else {
                    let error = libraryError(rc, errno: osError, operation: "connect")
                    if Self.isConfigurationFailure(rc) && refuseWaiters(error) { return }
                    phase = attemptFailed(error, failures: &failures)
                }

            case let .connecting(since):
                let rc = mosquitto_loop(mosq, 100, 1)
                let osError = errno
                let connack = state.withLock { $0.connack }
                if let connack, connack.code == 0 {
                    failures = 0
                    phase = .connected
                } else if let connack {
                    let refusal = MQTTConnectRefusal(code: connack.code, protocolVersion: configuration.protocolVersion)
                    let error = MQTTError.connectionRefused(reason: refusal, context: context)
                    logger.error("\(error)")
                    abortSocket()
                    if refusal.isPermanent && refuseWaiters(error) { return }
                    phase = attemptFailed(error, failures: &failures)
                } else if rc != MOSQ_ERR_SUCCESS.rawValue {
                    let error = libraryError(rc, errno: osError, operation: "connect")
                    if Self.isConfigurationFailure(rc) {
                        logger.error("\(error)")
                        if refuseWaiters(error) { return }
                    }
                    phase = attemptFailed(error, failures: &failures)
                } else if ContinuousClock.now - since > connectTimeout {
                    abortSocket()
                    let error = MQTTError.connectTimeout(
                        host: configuration.endpoint.host, port: configuration.endpoint.port,
                        seconds: configuration.connectTimeout)
                    phase = attemptFailed(error, failures: &failures)
                }

            case .connected:
                let rc = mosquitto_loop(mosq, 100, 1)
                let osError = errno
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    let error = libraryError(rc, errno: osError, operation: "connection")
                    connectionLost(error)
                    failures = 0
                    phase = attemptFailed(nil, failures: &failures)
                }
            }
        }
    }

    /// Keeps process signals (SIGCHLD, SIGTERM, SIGINT, ...) away from our thread. Other code in the process may
    /// consume them through a signalfd (libdispatch, hence Foundation's `Process`), which only works when no thread
    /// accepts them: a SIGCHLD delivered to our thread would be discarded and `Process.waitUntilExit()` would hang.
    private func blockAsynchronousSignals() {
        var signals = sigset_t()
        sigfillset(&signals)
        for synchronous in [SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS] {
            sigdelset(&signals, synchronous)
        }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
    }

    /// Expires connect() waiters past their deadline and decides whether the loop goes on.
    private func checkLifecycle(generation: Int) -> LoopDecision {
        let now = ContinuousClock.now
        let config = configuration
        return state.withLock { s in
            guard s.lifecycle == .running(generation: generation) else { return .exit }
            if s.stopRequested { return .stop }
            for (token, waiter) in s.connectWaiters {
                if let deadline = waiter.deadline, now >= deadline {
                    s.connectWaiters.removeValue(forKey: token)
                    waiter.continuation.resume(
                        returning: .failure(.connectTimeout(
                            host: config.endpoint.host, port: config.endpoint.port, seconds: config.connectTimeout)))
                }
            }
            // Nobody asked us to keep trying for a first connection: stop the background attempts.
            return !s.everConnected && s.connectWaiters.isEmpty ? .goIdle : .proceed
        }
    }

    /// Ends the thread's generation unless a connect() registered meanwhile. Returns true when the thread must end.
    private func enterIdle(generation: Int) -> Bool {
        state.withLock { s in
            guard s.lifecycle == .running(generation: generation) else { return true }
            if s.stopRequested || s.everConnected || !s.connectWaiters.isEmpty { return false }
            s.lifecycle = .idle
            return true
        }
    }

    /// Failures that retrying cannot fix (certificate verification, TLS setup, unsupported options): like a permanent
    /// CONNACK refusal, they end a first connect() at once instead of surfacing later as a timeout.
    static func isConfigurationFailure(_ rc: Int32) -> Bool {
        [MOSQ_ERR_TLS, MOSQ_ERR_TLS_HANDSHAKE, MOSQ_ERR_OCSP, MOSQ_ERR_NOT_SUPPORTED, MOSQ_ERR_INVAL]
            .map(\.rawValue).contains(rc)
    }

    /// A permanent refusal before the first successful connect fails connect() and stops trying.
    /// Returns true when the thread should end.
    private func refuseWaiters(_ error: MQTTError) -> Bool {
        state.withLock { s in
            guard !s.everConnected else { return false }
            for (_, waiter) in s.connectWaiters { waiter.continuation.resume(returning: .failure(error)) }
            s.connectWaiters.removeAll()
            s.lifecycle = .idle
            return true
        }
    }

    private func startConnectAttempt() -> Int32 {
        let config = configuration
        state.withLock { $0.connack = nil }
        if let provider = config.willForConnection {
            let rc = applyWill(provider())
            if rc != MOSQ_ERR_SUCCESS.rawValue { return rc }
        }
        let expiry: UInt32? = config.protocolVersion == .v5
            ? (config.sessionExpiryInterval ?? (config.cleanSession ? nil : UInt32.max)) : nil
        if let expiry {
            var properties: OpaquePointer? = nil
            defer { mosquitto_property_free_all(&properties) }
            let added = mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), expiry)
            if added != MOSQ_ERR_SUCCESS.rawValue { return added }
            // Re-creates libmosquitto's wake-up socket pair: hold `state` so no publish/subscribe writes to it meanwhile.
            return state.withLock { _ in
                mosquitto_connect_bind_v5(
                    mosq, config.endpoint.host, Int32(config.endpoint.port), Int32(config.keepAlive), nil, properties)
            }
        }
        let configured = state.withLock { $0.hostConfigured }
        if configured { return mosquitto_reconnect_async(mosq) }
        let rc = state.withLock { s in
            s.hostConfigured = true
            return mosquitto_connect_async(mosq, config.endpoint.host, Int32(config.endpoint.port), Int32(config.keepAlive))
        }
        return rc
    }

    /// MOSQ_ERR_ERRNO carries its meaning in errno: name it (e.g. "Connection refused").
    private func libraryError(_ rc: Int32, errno osError: Int32, operation: String) -> MQTTError {
        var operation = operation
        if rc == MOSQ_ERR_ERRNO.rawValue, osError != 0, let text = strerror(osError) {
            operation += " (errno \(osError): \(String(cString: text)))"
        }
        return .library(code: rc, operation: operation, context: context)
    }

    /// Records a failed attempt and schedules the next one.
    private func attemptFailed(_ error: MQTTError?, failures: inout Int) -> Phase {
        failures += 1
        let delay = configuration.reconnect.delay(afterFailures: failures, random: Double.random(in: 0...1))
        if let error {
            // Keep the log readable while a broker is down: the first failure and every 20th at info.
            if failures == 1 || failures % 20 == 0 {
                logger.info("connect attempt \(failures) failed: \(error)")
            } else {
                logger.debug("connect attempt \(failures) failed: \(error)")
            }
        }
        logger.debug("reconnecting", metadata: ["attempt": "\(failures)", "delay_s": "\(delay)"])
        eventContinuation.yield(.reconnecting(attempt: failures, delay: delay))
        return .waiting(until: .now + .seconds(delay))
    }

    private func connectionLost(_ error: MQTTError) {
        logger.warning("connection lost: \(error)")
        state.withLock { s in
            s.connected = false
            // libmosquitto does not resend SUBSCRIBE/UNSUBSCRIBE after a reconnect.
            for (_, request) in s.requests {
                request.timer?.cancel()
                let operation = request.qos == nil ? "unsubscribe" : "subscribe"
                request.continuation?.resume(returning: .failure(.connectionLost(operation: operation, context: context)))
            }
            s.requests.removeAll()
        }
        eventContinuation.yield(.disconnected(error))
    }

    /// Closes a socket left by an abandoned attempt (shutdown makes the next loop call fail and close it).
    private func abortSocket() {
        let fd = mosquitto_socket(mosq)
        guard fd >= 0 else { return }
        _ = shutdown(fd, Int32(SHUT_RDWR))
        _ = mosquitto_loop(mosq, 10, 1)
        state.withLock { $0.connected = false }
    }

    /// Clean DISCONNECT (the broker then discards our will), then terminal cleanup.
    private func stopNetwork() {
        let wasConnected = state.withLock { $0.connected }
        if wasConnected {
            _ = mosquitto_disconnect(mosq)
            let deadline = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < deadline && mosquitto_socket(mosq) >= 0 {
                if mosquitto_loop(mosq, 100, 1) != MOSQ_ERR_SUCCESS.rawValue { break }
            }
        } else {
            _ = mosquitto_disconnect(mosq)
        }
        abortSocket()
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.connected = false
            s.lifecycle = .stopped
            failEverything(&s, with: .disconnectedByClient(operation: "request", context: context))
            defer { s.stopWaiters.removeAll() }
            return s.stopWaiters
        }
        logger.info("disconnected by the client")
        if wasConnected { eventContinuation.yield(.disconnected(nil)) }
        messageContinuation.finish()
        eventContinuation.finish()
        for waiter in waiters { waiter.resume() }
    }
}

// MARK: - C callbacks

private func core(_ userdata: UnsafeMutableRawPointer?) -> MQTTClientCore? {
    guard let userdata else { return nil }
    return Unmanaged<MQTTClientCore>.fromOpaque(userdata).takeUnretainedValue()
}

private func mqttOnConnect(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ rc: Int32, _ flags: Int32, _ props: OpaquePointer?
) {
    core(userdata)?.onConnect(code: rc, flags: flags)
}

private func mqttOnDisconnect(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ rc: Int32, _ props: OpaquePointer?) {
    core(userdata)?.onDisconnect(code: rc)
}

private func mqttOnPublish(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ reasonCode: Int32, _ props: OpaquePointer?
) {
    core(userdata)?.onPublish(mid: mid, reasonCode: reasonCode)
}

private func mqttOnMessage(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ message: UnsafePointer<mosquitto_message>?,
    _ props: OpaquePointer?
) {
    guard let message = message?.pointee, let core = core(userdata) else { return }
    let topic = message.topic.map { String(cString: $0) } ?? ""
    var payload: [UInt8] = []
    if let bytes = message.payload, message.payloadlen > 0 {
        payload = Array(UnsafeRawBufferPointer(start: bytes, count: Int(message.payloadlen)))
    }
    core.onMessage(
        MQTTMessage(
            topic: topic, payload: payload, qos: MQTTQoS(rawValue: message.qos) ?? .atMostOnce, retain: message.retain,
            messageID: message.mid))
}

private func mqttOnSubscribe(
    _ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ count: Int32,
    _ granted: UnsafePointer<Int32>?, _ props: OpaquePointer?
) {
    let codes = granted.map { Array(UnsafeBufferPointer(start: $0, count: Int(max(0, count)))) } ?? []
    core(userdata)?.onSubscribe(mid: mid, granted: codes)
}

private func mqttOnUnsubscribe(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ mid: Int32, _ props: OpaquePointer?) {
    core(userdata)?.onUnsubscribe(mid: mid)
}

private func mqttOnLog(_ mosq: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ level: Int32, _ text: UnsafePointer<CChar>?) {
    guard let text else { return }
    core(userdata)?.onLog(level: level, text: text)
}
