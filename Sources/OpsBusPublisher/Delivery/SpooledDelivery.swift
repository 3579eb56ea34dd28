import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusSpool
import Synchronization

/// Who confirms that a spooled event may leave the spool.
public enum AcknowledgementMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The bridge, once the event is committed to its Redis stream (`acks/<owner>/<session_id>`): end to end, so
    /// nothing is lost between this process and Redis. Needs an acknowledging bridge routing every spooled topic.
    case bridge
    /// The broker's PUBACK: for deployments without a bridge. Survives link loss and restarts of this process, but
    /// not a broker that loses its queue.
    case broker

    public var description: String { rawValue }
}

/// How the publisher spools.
public struct SpoolOptions: Sendable {
    public var spool: SpoolConfiguration
    public var acknowledgement: AcknowledgementMode = .bridge
    /// Seconds without acknowledgement progress after which a session's unacknowledged events are sent again
    /// (go-back-N from the first unacknowledged `seq`; the bridge drops what it already has).
    public var ackTimeout: Double = 10
    /// Spooled events handed to libmosquitto and not yet PUBACKed, at most.
    public var window: Int = 2_000
    /// nil: `EventFactory.defaultSpooledTypes(policy:)`.
    public var spooledTypes: Set<EventType>?

    public init(spool: SpoolConfiguration, acknowledgement: AcknowledgementMode = .bridge, ackTimeout: Double = 10) {
        self.spool = spool
        self.acknowledgement = acknowledgement
        self.ackTimeout = ackTimeout
    }
}

/// The publisher's reliable path: spooled events are written to disk before `publish` returns, sent in `seq` order
/// with a bounded window, and deleted only when acknowledged (by the bridge end to end, or by the broker). Events
/// that stay unacknowledged past `ackTimeout` are sent again; on start, whatever an earlier run left is sent first,
/// under its original session and `seq`.
///
/// While the link is down nothing is handed to libmosquitto (whose queue is RAM-only and unbounded): the spool is
/// the queue, so `publish` never waits for the network and a crash loses nothing that was accepted.
final class SpooledDelivery: Sendable {
    enum Signal: Sendable {
        case wake
        case acknowledged(session: String, seq: UInt64)
        case brokerAcknowledged(session: String, seq: UInt64, success: Bool)
        case tick
    }

    struct SessionProgress {
        /// Where its acks arrive.
        var ackTopic: String
        var subscribed = false
        /// Highest `seq` the acknowledger confirmed.
        var acked: UInt64 = 0
        /// Highest `seq` handed to libmosquitto since the last (re)send.
        var sentThrough: UInt64 = 0
        /// Last time the acknowledgement advanced or a (re)send started.
        var lastProgress = ContinuousClock.now
        /// Handed to libmosquitto and not yet PUBACKed: while any are, libmosquitto itself resends them after a
        /// reconnect, so a resend from the spool would only duplicate them.
        var outstanding = 0
        /// Seconds without progress before the next resend: `ackTimeout`, doubled after each fruitless resend (at
        /// most 32 ×), back to `ackTimeout` when the acknowledgement moves. A bridge that is down for an hour
        /// does not get the whole spool every ten seconds.
        var resendAfter: Double
    }

    struct State {
        var sessions: [String: SessionProgress] = [:]
        var inFlight = 0
    }

    let spool: Spool
    let options: SpoolOptions
    private let client: MQTTClient
    private let scheme: TopicScheme
    private let currentSession: String
    private let owner: Identifier
    private let logger: Logger
    private let state = Mutex(State())
    /// Signals not handled yet. The sender takes all of them at once and then hands out records once: at full
    /// speed a PUBACK arrives every few microseconds, and a pass over the spool per PUBACK cost more than the
    /// publish itself.
    private let queue = Mutex<[Signal]>([])
    private let wakes: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    private let tasks = Mutex<[Task<Void, Never>]>([])

    init(spool: Spool, options: SpoolOptions, client: MQTTClient, scheme: TopicScheme, currentSession: String,
         owner: Identifier, logger: Logger) {
        self.spool = spool
        self.options = options
        self.client = client
        self.scheme = scheme
        self.currentSession = currentSession
        self.owner = owner
        self.logger = logger
        (wakes, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        state.withLock { s in
            s.sessions[currentSession] = SessionProgress(
                ackTopic: scheme.ackTopic(owner: owner, sessionID: currentSession), resendAfter: options.ackTimeout)
        }
    }

    /// Starts the sender and the resend timer; call once the client exists (connected or not).
    func start() {
        for session in spool.pendingSessions() where session != currentSession {
            let topic = ackTopic(forStoredSession: session)
            state.withLock { s in s.sessions[session] = SessionProgress(ackTopic: topic, resendAfter: options.ackTimeout) }
            logger.info("re-sending events a previous run left in the spool",
                        metadata: ["session_id": "\(session)", "events": "\(spool.pending(sessionID: session).count)"])
        }
        let sender = Task { [self] in
            for await _ in wakes {
                // Records the broker acknowledged leave the spool together: one lock round and one log write for
                // everything this wake brought, not one per PUBACK against the publishing tasks' appends.
                var acknowledged: [(sessionID: String, seq: UInt64)] = []
                for event in queue.withLock({ q in defer { q.removeAll(keepingCapacity: true) }; return q }) {
                    handle(event, brokerAcknowledged: &acknowledged)
                }
                do {
                    try spool.remove(records: acknowledged)
                } catch {
                    logger.error("could not remove acknowledged events from the spool", metadata: ["error": "\(error)"])
                }
                await subscribeAckTopics()
                pump()
            }
        }
        let timer = Task { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                signal(.tick)
            }
        }
        tasks.withLock { $0 = [sender, timer] }
        signal(.wake)
    }

    func stop() {
        wakeContinuation.finish()
        for task in tasks.withLock({ $0 }) { task.cancel() }
    }

    /// Queues a signal for the sender and wakes it (one wake covers everything queued by then).
    private func signal(_ event: Signal) {
        if case .wake = event {
            // Nothing to handle: only the pass over the spool, which every wake makes anyway.
        } else {
            queue.withLock { $0.append(event) }
        }
        wakeContinuation.yield()
    }

    /// A new event is in the spool, or the connection came back.
    func wake() { signal(.wake) }

    /// Feeds a message that arrived on one of our ack topics (the only topics the publisher subscribes to).
    /// An empty payload is a cleared retained ack; anything unparseable is logged and ignored.
    func receiveAck(topic: String, payload: [UInt8]) {
        guard !payload.isEmpty else { return }
        guard case .object(let object)? = try? JSONValue.parse(payload),
              case .string(let session)? = object["session_id"], let seq = object["seq"]?.intValue, seq >= 0
        else {
            logger.warning("ignoring a malformed acknowledgement", metadata: ["topic": "\(topic)"])
            return
        }
        guard state.withLock({ $0.sessions[session]?.ackTopic == topic }) else {
            // A repeat for a session that is already finished (or an ack on the wrong topic): nothing to do.
            logger.debug("ignoring an acknowledgement for no session in progress", metadata: ["topic": "\(topic)"])
            return
        }
        signal(.acknowledged(session: session, seq: UInt64(seq)))
    }

    /// Events not yet acknowledged (all sessions).
    var depth: Int { spool.depth }

    /// Waits until the spool holds nothing, or `timeout` seconds passed; returns the number still pending.
    func drain(timeout: Double) async -> Int {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if spool.depth == 0 { return 0 }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return spool.depth
    }

    // MARK: - Sender (one task: every decision below runs on it, in order)

    private func handle(_ event: Signal, brokerAcknowledged: inout [(sessionID: String, seq: UInt64)]) {
        switch event {
        case .wake:
            break
        case .acknowledged(let session, let seq):
            guard state.withLock({ $0.sessions[session] != nil }) else { return }
            do {
                try spool.acknowledge(sessionID: session, throughSeq: seq)
            } catch {
                logger.error("could not record an acknowledgement in the spool", metadata: ["error": "\(error)"])
                return
            }
            state.withLock { s in
                guard var progress = s.sessions[session], seq > progress.acked else { return }
                progress.acked = seq
                progress.sentThrough = max(progress.sentThrough, seq)
                progress.lastProgress = .now
                progress.resendAfter = options.ackTimeout
                s.sessions[session] = progress
            }
            finishIfDrained(session)
        case .brokerAcknowledged(let session, let seq, let success):
            state.withLock { s in
                s.inFlight = max(0, s.inFlight - 1)
                if let outstanding = s.sessions[session]?.outstanding { s.sessions[session]?.outstanding = max(0, outstanding - 1) }
            }
            guard success, options.acknowledgement == .broker else { return }
            brokerAcknowledged.append((session, seq))
            state.withLock { s in
                if var progress = s.sessions[session] {
                    progress.acked = max(progress.acked, seq)
                    progress.lastProgress = .now
                    s.sessions[session] = progress
                }
            }
        case .tick:
            resendOverdue()
        }
    }

    /// Go-back-N: a session whose acknowledgement has not moved for `ackTimeout` while events wait is sent again
    /// from its first unacknowledged event. Only while connected: offline, nothing is being lost.
    private func resendOverdue() {
        guard client.isConnected else {
            // Do not count the outage against the timeout.
            state.withLock { s in for key in s.sessions.keys { s.sessions[key]?.lastProgress = .now } }
            return
        }
        let now = ContinuousClock.now
        state.withLock { s in
            for (session, progress) in s.sessions where progress.sentThrough > progress.acked && progress.outstanding == 0 {
                guard now - progress.lastProgress >= .milliseconds(Int(progress.resendAfter * 1000)) else { continue }
                logger.notice(
                    "no acknowledgement for \(progress.resendAfter) s: sending again from seq \(progress.acked + 1)",
                    metadata: ["session_id": "\(session)", "sent_through": "\(progress.sentThrough)"])
                s.sessions[session]?.sentThrough = progress.acked
                s.sessions[session]?.lastProgress = now
                s.sessions[session]?.resendAfter = min(progress.resendAfter * 2, options.ackTimeout * 32)
            }
        }
    }

    /// Hands the next spooled events to libmosquitto, oldest session first, within the window.
    private func pump() {
        guard client.isConnected else { return }
        for session in spool.pendingSessions() {
            guard var progress = state.withLock({ $0.sessions[session] }) else { continue }
            if options.acknowledgement == .bridge && !progress.subscribed { continue }
            let room = options.window - state.withLock { $0.inFlight }
            guard room > 0 else { return }
            let records = spool.pendingToSend(sessionID: session, afterSeq: progress.sentThrough, limit: room)
            // Everything below the session's oldest spooled record is settled (acknowledged by the bridge, or
            // dropped and declared): that record tells a bridge that forgot the session where to resume.
            let oldest = options.acknowledgement == .bridge && records.first != nil
                ? spool.pending(sessionID: session, limit: 1).first?.seq : nil
            for (record, gapStart) in records {
                let payload = wirePayload(record, gapStart: gapStart,
                                          resumeAfter: record.seq == oldest && record.seq > 1 ? record.seq - 1 : nil)
                let seq = record.seq
                do throws(MQTTError) {
                    try client.enqueuePublish(
                        topic: record.topic, payload: payload, qos: MQTTQoS(rawValue: Int32(record.qos)) ?? .atLeastOnce,
                        retain: record.retain
                    ) { [weak self] result in
                        let success = if case .success = result { true } else { false }
                        self?.signal(.brokerAcknowledged(session: session, seq: seq, success: success))
                    }
                } catch {
                    if case .outstandingLimitReached = error { break }
                    logger.warning("could not hand a spooled event to MQTT; will retry",
                                   metadata: ["topic": "\(record.topic)", "error": "\(error)"])
                    break
                }
                let wasIdle = progress.sentThrough <= progress.acked
                progress.sentThrough = seq
                state.withLock { s in
                    s.inFlight += 1
                    s.sessions[session]?.sentThrough = seq
                    s.sessions[session]?.outstanding += 1
                    // Nothing was outstanding: the acknowledgement clock starts now, not at the last ack.
                    if wasIdle { s.sessions[session]?.lastProgress = .now }
                }
            }
        }
    }

    /// The payload as sent: as spooled, plus `prev_seq` when the spool dropped the events just before it
    /// (`gapStart`, read with the record), and `resume_after` on the session's oldest spooled record.
    private func wirePayload(_ record: SpoolRecord, gapStart: UInt64?, resumeAfter: UInt64?) -> [UInt8] {
        guard gapStart != nil || resumeAfter != nil, var envelope = try? EventEnvelope.decode(record.payload)
        else { return record.payload }
        if let gapStart { envelope.prevSeq = gapStart }
        envelope.resumeAfter = resumeAfter
        return envelope.encoded()
    }

    /// Subscribes to the ack topics of sessions that have none yet (bridge mode).
    private func subscribeAckTopics() async {
        guard options.acknowledgement == .bridge, client.isConnected else { return }
        let wanted = state.withLock { s in s.sessions.filter { !$0.value.subscribed }.map { ($0.key, $0.value.ackTopic) } }
        guard !wanted.isEmpty else { return }
        do {
            try await client.subscribe(wanted.map(\.1), qos: .atLeastOnce)
            state.withLock { s in
                for (session, _) in wanted {
                    s.sessions[session]?.subscribed = true
                    s.sessions[session]?.lastProgress = .now
                }
            }
        } catch {
            logger.warning("could not subscribe to acknowledgements; will retry", metadata: ["error": "\(error)"])
        }
    }

    /// A previous run's session with nothing left: stop listening and clear its retained ack, so the broker does
    /// not keep one retained message per process start forever.
    private func finishIfDrained(_ session: String) {
        guard session != currentSession, spool.pending(sessionID: session, limit: 1).isEmpty,
              let progress = state.withLock({ $0.sessions.removeValue(forKey: session) })
        else { return }
        logger.info("previous session fully acknowledged", metadata: ["session_id": "\(session)", "seq": "\(progress.acked)"])
        let client = client
        Task {
            try? await client.unsubscribe([progress.ackTopic])
            try? await client.publish(topic: progress.ackTopic, payload: [], qos: .atLeastOnce, retain: true)
        }
    }

    /// On a clean stop with nothing left to acknowledge: clears this session's retained ack, which nobody needs any
    /// more (a session never continues after its process ends).
    func clearCurrentSessionAck() async {
        guard options.acknowledgement == .bridge, client.isConnected,
              spool.pending(sessionID: currentSession, limit: 1).isEmpty,
              let progress = state.withLock({ $0.sessions[currentSession] }), progress.acked > 0
        else { return }
        try? await client.unsubscribe([progress.ackTopic])
        try? await client.publish(topic: progress.ackTopic, payload: [], qos: .atLeastOnce, retain: true)
    }

    private func ackTopic(forStoredSession session: String) -> String {
        if let first = spool.pending(sessionID: session, limit: 1).first,
           let envelope = try? EventEnvelope.decode(first.payload) {
            return scheme.ackTopic(for: envelope)
        }
        return scheme.ackTopic(owner: owner, sessionID: session)
    }
}
