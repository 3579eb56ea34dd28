import Logging
import OpsBusCore
import OpsBusMQTT
import Synchronization

/// One end-to-end acknowledgement: `seq` is the highest contiguous seq of the session committed in Redis.
struct SessionAck: Sendable, Hashable {
    var topic: String
    var sessionID: String
    var seq: UInt64
    /// `{"session_id":…,"seq":N,"bridge":…,"timestamp":…}`, built when the batch was committed.
    var payload: [UInt8]
    /// Retained only when the batch moved the session forward. An ack for duplicates or held-back events alone
    /// repeats the value (so a re-sending publisher learns it) without retaining it: once a publisher has cleared
    /// a finished session's retained ack, a stray late duplicate must not bring it back.
    var retain: Bool

    init(topic: String, sessionID: String, seq: UInt64, bridge: String, timestamp: EventTimestamp = .now(),
         retain: Bool = true) {
        self.topic = topic
        self.sessionID = sessionID
        self.seq = seq
        self.retain = retain
        let object: JSONObject = [
            "session_id": .string(sessionID), "seq": .int(Int64(clamping: seq)), "bridge": .string(bridge),
            "timestamp": .string(timestamp.iso8601),
        ]
        payload = Array(object.serialized().utf8)
    }
}

/// Publishes acknowledgements (retained, QoS 1) for the writer thread without ever making it wait for the network.
///
/// `submit` only queues and hands messages to libmosquitto (`MQTTClient.enqueuePublish`, which returns at once);
/// PUBACKs arrive later on the network thread. Bounds and order:
/// * At most `maxInFlight` acks are unacknowledged by the broker, and at most **one per session**: a session's next
///   ack goes out only after the previous one's PUBACK, so a stale value can never reach the broker after a newer
///   one and become the retained value.
/// * Meanwhile, newer values for the same session replace the queued one (the newest always survives; older ones
///   are skipped, they carry no extra information). So the queue holds at most one ack per session.
/// * A completion never publishes itself (the callback runs with the client's lock held): when more acks are
///   waiting it starts a task that does.
/// Acks lost to a broker outage or a bridge stop are not re-sent: the publisher's re-send timeout brings its events
/// back, the bridge recognises them as duplicates and publishes the session's current value again.
final class AckPublisher: Sendable {
    /// Enough to keep the broker busy (libmosquitto keeps 20 on the wire by default), small next to the client's
    /// `maxOutstandingPublishes`.
    static let maxInFlight = 100

    private struct State {
        /// The newest unsent ack per topic.
        var pending: [String: SessionAck] = [:]
        /// Topics with a pending ack and none in flight, oldest first (from `head` on).
        var ready: [String] = []
        var head = 0
        /// Topics with an ack awaiting its PUBACK.
        var inFlight: Set<String> = []
        var failures = 0

        mutating func popReady() -> String? {
            guard head < ready.count else { return nil }
            defer {
                head += 1
                if head > 1024 && head * 2 > ready.count {
                    ready.removeFirst(head)
                    head = 0
                }
            }
            return ready[head]
        }

        var hasReady: Bool { head < ready.count }
    }

    private let state = Mutex(State())
    private let client: MQTTClient
    private let statistics: StatisticsBox
    private let logger: Logger

    init(client: MQTTClient, statistics: StatisticsBox, logger: Logger) {
        self.client = client
        self.statistics = statistics
        self.logger = logger
    }

    /// Queues the acks of one committed batch (one per session it touched) and sends what the bounds allow.
    func submit(_ acks: [SessionAck]) {
        guard !acks.isEmpty else { return }
        state.withLock { s in
            for var ack in acks {
                // A queued retained value must stay retained when a newer repeat of it replaces it.
                if let queued = s.pending[ack.topic], queued.retain { ack.retain = true }
                let isNew = s.pending.updateValue(ack, forKey: ack.topic) == nil
                if isNew && !s.inFlight.contains(ack.topic) { s.ready.append(ack.topic) }
            }
        }
        pump()
    }

    /// Acks queued or in flight (for tests).
    var backlog: Int { state.withLock { $0.pending.count + $0.inFlight.count } }

    private func pump() {
        while true {
            let next: SessionAck? = state.withLock { s in
                guard s.inFlight.count < Self.maxInFlight, let topic = s.popReady(),
                      let ack = s.pending.removeValue(forKey: topic) else { return nil }
                s.inFlight.insert(topic)
                return ack
            }
            guard let ack = next else { return }
            do {
                try client.enqueuePublish(topic: ack.topic, payload: ack.payload, qos: .atLeastOnce, retain: ack.retain) {
                    [self] result in completed(ack, result)
                }
            } catch {
                // Not queued (client stopped, or its outstanding limit reached): keep the ack unless a newer one
                // arrived meanwhile; the next batch or completion tries again.
                let failures = state.withLock { s -> Int in
                    s.inFlight.remove(ack.topic)
                    if s.pending[ack.topic] == nil {
                s.pending[ack.topic] = ack
            } else if ack.retain {
                s.pending[ack.topic]?.retain = true
            }
                    s.ready.append(ack.topic)
                    s.failures += 1
                    return s.failures
                }
                if case .disconnectedByClient = error {
                    // Stopping: the writer drains after the disconnect; those acks wait for the publisher's re-send.
                    logger.debug("acknowledgement not published: the client is disconnected", metadata: ["topic": "\(ack.topic)"])
                } else if failures == 1 || failures % 1000 == 0 {
                    logger.warning("cannot publish acknowledgements; keeping the newest per session",
                        metadata: ["error": "\(error)", "failures": "\(failures)"])
                }
                return
            }
        }
    }

    /// Runs on the network thread with the client's lock held: bookkeeping only; publishing is left to a task.
    private func completed(_ ack: SessionAck, _ result: Result<Void, MQTTError>) {
        let more = state.withLock { s -> Bool in
            s.inFlight.remove(ack.topic)
            if s.pending[ack.topic] != nil { s.ready.append(ack.topic) }
            return s.hasReady
        }
        switch result {
        case .success:
            statistics.value.withLock { $0.acksPublished += 1 }
        case .failure(let error):
            logger.debug("acknowledgement not delivered", metadata: [
                "topic": "\(ack.topic)", "seq": "\(ack.seq)", "error": "\(error)",
            ])
        }
        if more { Task { self.pump() } }
    }
}
