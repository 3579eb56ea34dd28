import Foundation
import Logging
import OpsBusCore

/// Writes one JSON object per log line to stderr, for log shippers (`--log-format json`):
/// `{"time":…,"level":…,"label":…,"message":…,"metadata":{…},"source":…}`. Metadata keeps its structure (nested
/// dictionaries and arrays); ids the code attaches (`job_id`, `worker_id`, `trace_id`, `client_id` …) are there.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        FileHandle.standardError.write(Data((Self.line(event, label: label, base: metadata,
                                                       provided: metadataProvider?.get() ?? [:]) + "\n").utf8))
    }

    /// The JSON text of one entry (no newline); metadata precedence: the event's, then the logger's, then provided.
    static func line(_ event: LogEvent, label: String, base: Logger.Metadata, provided: Logger.Metadata = [:]) -> String {
        let merged = provided.merging(base) { $1 }.merging(event.metadata ?? [:]) { $1 }
        var object: JSONObject = [
            "time": .string(EventTimestamp.now().iso8601), "level": .string(event.level.rawValue),
            "label": .string(label), "message": .string("\(event.message)"),
        ]
        if !merged.isEmpty {
            object["metadata"] = .object(JSONObject(pairs: merged.sorted { $0.key < $1.key }.map { ($0.key, json($0.value)) }))
        }
        object["source"] = .string(event.source)
        return JSONValue.object(object).serialized()
    }

    static func json(_ value: Logger.MetadataValue) -> JSONValue {
        switch value {
        case .string(let text): .string(text)
        case .stringConvertible(let convertible): .string(convertible.description)
        case .array(let values): .array(values.map(json))
        case .dictionary(let values):
            .object(JSONObject(pairs: values.sorted { $0.key < $1.key }.map { ($0.key, json($0.value)) }))
        }
    }
}
