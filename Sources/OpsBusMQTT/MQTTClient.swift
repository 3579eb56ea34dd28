import Logging

/// Outcome of an `MQTTClient.enqueuePublish`.
public typealias MQTTPublishCallback = @Sendable (Result<Void, MQTTError>) -> Void

/// An MQTT client over libmosquitto 2.0.11 that owns its C handle and its network thread.
///
/// Lifecycle: `init` → `connect()` → (automatic reconnects, forever) → `disconnect()` (terminal: a disconnected client
/// does not connect again; create a new one). Dropping the last reference also disconnects cleanly.
///
/// Delivery guarantees, in libmosquitto's terms:
/// * `publish` at QoS 1/2 returns when the broker acknowledged the message. While disconnected the message waits in
///   libmosquitto's in-memory queue and is sent after the reconnect (never re-submitted by us, so no duplicates from
///   the client side; in-flight messages may be resent with DUP after a reconnect). Nothing survives the process.
/// * QoS 0 is sent only while connected; otherwise `publish` throws `.notConnected`.
/// * Incoming messages: see `messages` and `setMessageHandler`.
public final class MQTTClient: Sendable {
    private let core: MQTTClientCore

    /// Validates the configuration and creates the libmosquitto handle (no network activity yet).
    public init(
        configuration: MQTTClientConfiguration, logger: Logger = Logger(label: "opsbus.mqtt")
    ) throws(MQTTError) {
        core = try MQTTClientCore(configuration: configuration, logger: logger)
    }

    deinit {
        core.requestStop()
    }

    public var configuration: MQTTClientConfiguration { core.configuration }

    /// Starts networking and waits for the first accepted CONNACK.
    ///
    /// * `waitForBroker == false`: retries (with the reconnect policy) for at most `connectTimeout` seconds, then
    ///   throws `.connectTimeout(host:port:seconds:)` and stops trying.
    /// * `waitForBroker == true`: keeps trying until the broker accepts us, or the calling task is cancelled
    ///   (`.cancelled`; background attempts then stop unless another `connect()` is waiting).
    /// * A permanent refusal (bad credentials, not authorised, unacceptable protocol, client id rejected, banned)
    ///   throws `.connectionRefused` at once in both modes; "server unavailable/busy" refusals are retried.
    ///   Likewise TLS failures (e.g. certificate verification) throw `.library(code: 8 or 23, ...)` at once.
    /// After the first successful connect, a lost connection is re-established automatically, forever, until
    /// `disconnect()`. Calling `connect()` while connected returns at once.
    public func connect(waitForBroker: Bool = false) async throws(MQTTError) {
        try await core.connect(waitForBroker: waitForBroker)
    }

    /// Sends DISCONNECT (so the broker discards the will), stops the network thread, fails every pending publish,
    /// subscribe and slot wait with `.disconnectedByClient`, and finishes `messages` and `connectionEvents`.
    public func disconnect() async {
        await core.disconnect()
    }

    /// Publishes one message.
    ///
    /// * QoS 0: returns once libmosquitto accepted it for sending; throws `.notConnected` while disconnected
    ///   (QoS 0 is dropped then, not queued).
    /// * QoS 1/2: returns when the broker acknowledged it (PUBACK / PUBCOMP). While disconnected the message is queued
    ///   and sent after the reconnect. With MQTT v5 a failure reason code (≥ 0x80) throws `.publishRejected`.
    ///   If `maxOutstandingPublishes` messages are unacknowledged, waits for a slot (back-pressure) up to
    ///   `publishTimeout`, then throws `.outstandingLimitReached`. Without an acknowledgement within `publishTimeout`
    ///   it throws `.publishTimeout`: the message stays queued in libmosquitto and may still be delivered later (it
    ///   keeps its outstanding slot until then). Task cancellation throws `.cancelled` with the same caveat.
    /// * Invalid topic, oversize payload or malformed UTF-8 throw `.invalidTopic`, `.payloadTooLarge`,
    ///   `.malformedUTF8` before anything is sent.
    public func publish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool = false) async throws(MQTTError) {
        try await core.publish(topic: topic, payload: payload, qos: qos, retain: retain)
    }

    /// Hands a message to libmosquitto now and returns without waiting for the broker: successive calls reach the
    /// wire in call order (which concurrent `publish` calls do not promise), so a sender can keep a window of
    /// messages in flight. `onComplete` runs once, on the network thread and with the client's lock held (hand the
    /// result off, e.g. to an `AsyncStream`; never call back into this client from it): `.success` on the PUBACK
    /// (at once for QoS 0), a failure on a v5 error reason code or when the client is disconnected for good.
    /// There is no timeout: while the link is down the message waits in libmosquitto and is resent after the
    /// reconnect. Throws at once (nothing queued) for invalid input, `.outstandingLimitReached` when
    /// `maxOutstandingPublishes` messages are unacknowledged, and `.notConnected` for QoS 0 without a connection.
    public func enqueuePublish(
        topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool = false,
        onComplete: @escaping MQTTPublishCallback
    ) throws(MQTTError) {
        try core.enqueuePublish(topic: topic, payload: payload, qos: qos, retain: retain, onComplete: onComplete)
    }

    /// Subscribes all `filters` at `qos` in one SUBSCRIBE and waits for the SUBACK; returns the granted QoS per
    /// filter. A filter the broker refused (0x80) throws `.subscriptionRejected(filter:)` (the others stay
    /// subscribed). Granted subscriptions are remembered and re-subscribed after a reconnect in which the broker has
    /// no session for us (`sessionPresent == false`). Requires a connection (`.notConnected` otherwise).
    ///
    /// Prefer QoS 1 for consumers that must not lose messages: libmosquitto acknowledges QoS 2 messages (PUBREC/
    /// PUBCOMP) before the application sees them, so a crash or a `.reject` cannot bring them back.
    @discardableResult
    public func subscribe(_ filters: [String], qos: MQTTQoS) async throws(MQTTError) -> [MQTTQoS] {
        try await core.subscribe(filters, qos: qos)
    }

    /// Unsubscribes and waits for the UNSUBACK; the filters are no longer re-subscribed after reconnects.
    public func unsubscribe(_ filters: [String]) async throws(MQTTError) {
        try await core.unsubscribe(filters)
    }

    /// Incoming messages as a hand-off stream (single consumer), used when no message handler is set.
    ///
    /// Acknowledgement: a QoS 1 message is acknowledged as soon as it is queued into this stream, before the consumer
    /// sees it: at-most-once for the application if it crashes (fine for `tail`-like tools; use `setMessageHandler`
    /// to acknowledge after processing). The buffer is unbounded. The stream finishes after `disconnect()`.
    public var messages: AsyncStream<MQTTMessage> { core.messageStream }

    /// Routes incoming messages to `handler` instead of `messages`. The handler runs synchronously on the network
    /// thread (keep it short, or accept that keepalive and other traffic pause meanwhile; the broker drops us at
    /// 1.5 × keepAlive, which only causes a redelivery).
    ///
    /// For QoS 1 the PUBACK leaves only after the handler returned `.accept`. `.reject` shuts the connection down
    /// before the PUBACK can leave; the client reconnects automatically and, with a durable session (cleanSession
    /// false, fixed clientID), the broker redelivers the message (and possibly others whose PUBACK was still queued:
    /// expect duplicates, make processing idempotent). For QoS 0 and 2, `.reject` cannot cause a redelivery.
    public func setMessageHandler(_ handler: @escaping @Sendable (MQTTMessage) -> MQTTMessageDisposition) {
        core.setHandler(handler)
    }

    /// Removes the handler; messages go to `messages` again.
    public func removeMessageHandler() {
        core.setHandler(nil)
    }

    /// Connection state changes (single consumer; keeps the newest 256 if nobody reads). Finishes after
    /// `disconnect()`. A lost connection shows `.disconnected(error)`, then `.reconnecting(attempt:delay:)` per
    /// scheduled attempt, then `.connected(sessionPresent:)`.
    public var connectionEvents: AsyncStream<MQTTConnectionEvent> { core.eventStream }

    public var isConnected: Bool { core.isConnected }

    /// QoS 1/2 publishes not yet acknowledged by the broker (including timed-out ones still queued in libmosquitto).
    public var outstandingPublishCount: Int { core.outstandingPublishCount }
}
