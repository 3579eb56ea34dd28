/// MQTT quality of service.
public enum QoS: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: QoS, rhs: QoS) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "QoS \(rawValue)" }
}

/// How one event type is published.
public struct DeliveryPolicy: Sendable, Hashable, CustomStringConvertible {
    public var qos: QoS
    /// Retained messages are handed to every new subscriber at once: right for "current state" events.
    public var retain: Bool
    /// Why this policy (shown by the CLI and in `topics.md`).
    public var reason: String

    public init(qos: QoS, retain: Bool, reason: String) {
        self.qos = qos
        self.retain = retain
        self.reason = reason
    }

    public var description: String { "\(qos) · retain \(retain ? "yes" : "no") (\(reason))" }
}

/// Delivery policy per event type: defaults plus operator overrides.
///
/// Defaults:
/// - `job.progress`, `worker.heartbeat`: QoS 0, not retained — each one is superseded by the next, so a lost
///   one costs nothing and retrying would only add load.
/// - `worker.health`, `queue.state`, `service.health`: QoS 1, retained — they are current state; a new
///   subscriber (a restarted processor, an operator's `mosquitto_sub`) learns it at once.
/// - everything else: QoS 1, not retained — facts that must arrive; the processor is idempotent, so a
///   duplicate from QoS 1 redelivery is harmless.
///
/// QoS 2 is never a default: libmosquitto acknowledges (PUBREC) a QoS 2 message before the application's
/// callback has seen it, so a crash in between loses it; QoS 1 plus an idempotent consumer is the safer pair.
public struct QoSPolicy: Sendable {
    public static let `default` = QoSPolicy()

    /// Event types whose events supersede each other.
    private static let ephemeral: Set<EventType> = [.jobProgress, .workerHeartbeat]
    /// Event types that describe current state.
    private static let currentState: Set<EventType> = [.workerHealth, .queueState, .serviceHealth]

    private let overrides: [EventType: DeliveryPolicy]

    public init(overrides: [EventType: DeliveryPolicy] = [:]) {
        self.overrides = overrides
    }

    /// Defaults with overrides parsed from `spec` (see `parseOverrides`).
    public init(overrideSpec spec: String) throws(PolicyError) {
        self.init(overrides: try Self.parseOverrides(spec))
    }

    public func policy(for eventType: EventType) -> DeliveryPolicy {
        overrides[eventType] ?? Self.defaultPolicy(for: eventType)
    }

    /// Whether an override is in effect for `eventType`.
    public func isOverridden(_ eventType: EventType) -> Bool { overrides[eventType] != nil }

    public static func defaultPolicy(for eventType: EventType) -> DeliveryPolicy {
        if ephemeral.contains(eventType) {
            return DeliveryPolicy(qos: .atMostOnce, retain: false,
                                  reason: "superseded by the next one; a lost one costs nothing")
        }
        if currentState.contains(eventType) {
            return DeliveryPolicy(qos: .atLeastOnce, retain: true,
                                  reason: "current state; new subscribers learn it at once")
        }
        return DeliveryPolicy(qos: .atLeastOnce, retain: false,
                              reason: "must arrive; duplicates are harmless to the idempotent processor")
    }

    /// Parses an override spec: comma-separated `<event_type>=<qos>[+retain|-retain]`, for example
    /// `job.progress=1,worker.health=1+retain,queue.state=0-retain`.
    ///
    /// - `<qos>` is 0, 1 or 2.
    /// - `+retain` / `-retain` set the retain flag; without a suffix the event type keeps its default retain flag.
    /// - Whitespace around entries is ignored; an empty or all-whitespace spec means no overrides.
    /// - Each event type may appear once.
    public static func parseOverrides(_ spec: String) throws(PolicyError) -> [EventType: DeliveryPolicy] {
        var result: [EventType: DeliveryPolicy] = [:]
        if spec.allSatisfy(\.isWhitespace) { return result }
        for rawEntry in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let entry = rawEntry.trimmingWhitespace()
            guard !entry.isEmpty else { throw .emptyEntry(spec: spec) }
            let sides = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard sides.count == 2 else { throw .malformedEntry(String(entry)) }
            let typeName = sides[0].trimmingWhitespace()
            var value = sides[1].trimmingWhitespace()
            guard let eventType = EventType(rawValue: String(typeName)) else {
                throw .unknownEventType(String(typeName))
            }
            var retain = defaultPolicy(for: eventType).retain
            if value.hasSuffix("+retain") {
                retain = true
                value = value.dropLast(7)
            } else if value.hasSuffix("-retain") {
                retain = false
                value = value.dropLast(7)
            }
            guard value.count == 1, let number = Int(value), let qos = QoS(rawValue: number) else {
                throw .invalidQoS(entry: String(entry), value: String(value))
            }
            guard result[eventType] == nil else { throw .duplicateEventType(eventType) }
            result[eventType] = DeliveryPolicy(qos: qos, retain: retain, reason: "override \"\(entry)\"")
        }
        return result
    }
}

/// Why a QoS override spec was refused.
public enum PolicyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// An entry is empty (`a=1,,b=0` or a trailing comma).
    case emptyEntry(spec: String)
    /// An entry is not `<event_type>=<qos>[+retain|-retain]`.
    case malformedEntry(String)
    case unknownEventType(String)
    /// The QoS is not 0, 1 or 2, or the suffix is not `+retain`/`-retain`.
    case invalidQoS(entry: String, value: String)
    case duplicateEventType(EventType)

    public var description: String {
        let syntax = "expected <event_type>=<0|1|2>[+retain|-retain], e.g. job.progress=1,worker.health=1+retain"
        switch self {
        case .emptyEntry(let spec):
            return "QoS override spec \"\(EscapedText.escape(spec, limit: 200))\" has an empty entry; \(syntax)"
        case .malformedEntry(let entry):
            return "QoS override \"\(EscapedText.escape(entry))\" is malformed; \(syntax)"
        case .unknownEventType(let name):
            return "QoS override names unknown event type \"\(EscapedText.escape(name))\""
        case .invalidQoS(let entry, let value):
            return "QoS override \"\(EscapedText.escape(entry))\": \"\(EscapedText.escape(value))\" is not a QoS; \(syntax)"
        case .duplicateEventType(let type):
            return "QoS override for \(type) given more than once"
        }
    }
}

fileprivate extension Substring {
    func trimmingWhitespace() -> Substring {
        var result = self
        while let first = result.first, first.isWhitespace { result = result.dropFirst() }
        while let last = result.last, last.isWhitespace { result = result.dropLast() }
        return result
    }
}
