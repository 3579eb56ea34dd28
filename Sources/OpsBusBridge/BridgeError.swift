import OpsBusCore
import OpsBusJournal

/// Everything the bridge can refuse or fail at, with the context needed to fix it.
public enum BridgeError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A route specification (flag, environment or config file entry) is malformed.
    case invalidRoute(spec: String, reason: String)
    /// A stream-key template is malformed (`{0}`, unclosed `{`, empty key).
    case invalidTemplate(template: String, reason: String)
    /// The bridge configuration as a whole is inconsistent (no routes, limits out of range …).
    case invalidConfiguration(reason: String)
    /// The JSON configuration file could not be read or parsed.
    case configurationFile(path: String, reason: String)
    /// The journal could not be opened or recovered (`JournalError` says which file and operation).
    case journal(JournalError)
    /// A stream id or time given to `replay` is neither a stream id nor an ISO-8601 time.
    case invalidStreamPosition(String)

    public var description: String {
        switch self {
        case let .invalidRoute(spec, reason): return "invalid bridge route '\(spec)': \(reason)"
        case let .invalidTemplate(template, reason): return "invalid stream key template '\(template)': \(reason)"
        case let .invalidConfiguration(reason): return "invalid bridge configuration: \(reason)"
        case let .configurationFile(path, reason): return "bridge configuration file \(path): \(reason)"
        case let .journal(error): return "\(error)"
        case let .invalidStreamPosition(text):
            return "'\(text)' is neither a stream id (<ms> or <ms>-<seq>, '-' or '+') nor an ISO-8601 time "
                + "(2026-01-31T12:00:00Z)"
        }
    }
}
