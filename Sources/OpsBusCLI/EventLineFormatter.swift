import Foundation
import OpsBusCore

/// One human-readable line per message for `opsbus tail`: time, type, ids, then the fields that matter for that
/// event type. Everything `mosquitto_sub -v` shows is still there (the topic, and the payload for anything that is
/// not an opsbus event), only easier to scan.
public struct EventLineFormatter: Sendable {
    public var colour: Bool

    public init(colour: Bool) { self.colour = colour }

    /// Key fields shown per event type, in this order; other fields are left to `--json`.
    static let keyFields: [EventType: [String]] = [
        .jobReceived: ["model_required", "queue_position", "input_size"],
        .jobStarted: ["worker_assigned", "expected_duration"],
        .jobProgress: ["progress_percentage", "execution_step"],
        .jobCompleted: ["processing_time", "output_size", "cost_estimate", "resource_efficiency"],
        .jobFailed: ["error_type", "retry_recommended", "error"],
        .workerHealth: ["status", "current_job", "reason"],
        .workerHeartbeat: ["status", "load"],
        .workerRegistered: ["capabilities", "version"],
        .workerDeregistered: ["reason"],
        .resourceAllocated: ["resources"],
        .resourceReleased: ["resources"],
        .queueState: ["depth", "capacity"],
        .serviceHealth: ["status"],
        .modelLoaded: ["load_time_ms", "cache_hit", "model_size_mb"],
    ]

    public func format(topic: String, payload: [UInt8], retained: Bool = false) -> String {
        guard let envelope = try? EventEnvelope.decode(payload) else {
            let text = String(decoding: payload.prefix(300), as: UTF8.self)
            return "\(paint(topic, .dim)) \(text)\(payload.count > 300 ? "…" : "")"
        }
        let time = envelope.timestamp.iso8601.dropFirst(11).prefix(12)  // HH:MM:SS.mmm
        var parts = [String(time), paint(pad(envelope.eventType.rawValue, 18), colourFor(envelope))]
        if let job = envelope.jobID { parts.append("job=\(job)") }
        if let worker = envelope.workerID { parts.append("worker=\(worker)") }
        if let attempt = envelope.attempt, attempt > 1 { parts.append("attempt=\(attempt)") }
        for name in Self.keyFields[envelope.eventType] ?? envelope.fields.keys.prefix(4).map({ $0 }) {
            guard let value = envelope.fields[name] else { continue }
            parts.append("\(name)=\(shortValue(value))")
        }
        if retained { parts.append(paint("(retained)", .dim)) }
        parts.append(paint(topic, .dim))
        return parts.joined(separator: "  ")
    }

    private func shortValue(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): return text.count > 60 ? "\"\(text.prefix(57))…\"" : (text.contains(" ") ? "\"\(text)\"" : text)
        case .double(let number): return number == number.rounded() && abs(number) < 1e15 ? String(Int64(number)) : String(fourSignificantDigits(number))
        default:
            let text = value.serialized()
            return text.count > 60 ? String(text.prefix(57)) + "…" : text
        }
    }

    /// Four significant digits: enough to read, short enough to scan (costs are often fractions of a cent).
    private func fourSignificantDigits(_ number: Double) -> String {
        String(format: "%.4g", number)
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    private func colourFor(_ envelope: EventEnvelope) -> TextStyle.Tint {
        switch envelope.eventType {
        case .jobCompleted: return .green
        case .jobFailed: return .red
        case .jobProgress: return .cyan
        case .jobReceived, .jobStarted: return .blue
        case .workerHealth:
            return envelope.fields["status"]?.stringValue == "offline" ? .red : .yellow
        default: return .magenta
        }
    }

    private func paint(_ text: String, _ tint: TextStyle.Tint) -> String {
        TextStyle(enabled: colour).paint(text, tint)
    }
}
