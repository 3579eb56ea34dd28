/// Why a local mosquitto or redis-server could not be started or stopped.
public enum LocalServerError: Error, CustomStringConvertible, Sendable {
    case binaryNotFound(name: String, searched: [String], installHint: String)
    case launchFailed(name: String, reason: String)
    case notReady(name: String, port: UInt16, seconds: Double, logTail: String)
    case exitedEarly(name: String, status: Int32, logTail: String)
    case noFreePort(reason: String)

    public var description: String {
        switch self {
        case let .binaryNotFound(name, searched, hint):
            return "\(name) not found (searched \(searched.joined(separator: ", "))); install it with: \(hint)"
        case let .launchFailed(name, reason):
            return "could not launch \(name): \(reason)"
        case let .notReady(name, port, seconds, logTail):
            return "\(name) did not accept connections on 127.0.0.1:\(port) within \(seconds) s; log tail:\n\(logTail)"
        case let .exitedEarly(name, status, logTail):
            return "\(name) exited with status \(status) right after start; log tail:\n\(logTail)"
        case let .noFreePort(reason):
            return "no free loopback port: \(reason)"
        }
    }
}
