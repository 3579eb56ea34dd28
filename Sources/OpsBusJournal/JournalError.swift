/// What a journal can fail at, with the file and the operation so an operator can fix it.
public enum JournalError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The journal's own settings are out of range (e.g. `maxBytes` too small).
    case invalidConfiguration(reason: String)
    /// A file operation failed (`open`, `write`, `rename`, …) with `errno` text.
    case io(path: String, operation: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidConfiguration(reason): return "invalid journal configuration: \(reason)"
        case let .io(path, operation, reason): return "journal \(operation) failed for \(path): \(reason)"
        }
    }
}
