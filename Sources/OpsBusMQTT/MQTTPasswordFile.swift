import Foundation

/// A configuration variable that cannot be used: which one (or which combination) and what was expected. Never holds
/// a secret, only the path of a secret file. Shared by the TLS, password-file and secret-file rules, so the CLI and
/// `EventPublisher.connectFromEnvironment` report them alike.
public struct MQTTVariableProblem: Error, Sendable, Equatable, CustomStringConvertible {
    /// The variable at fault, e.g. `MQTT_PASSWORD_FILE`, or `MQTT_URL and MQTT_PASSWORD_FILE` for a combination.
    public let variable: String
    public let reason: String

    public init(variable: String, reason: String) {
        self.variable = variable
        self.reason = reason
    }

    public var description: String { "\(variable): \(reason)" }
}

/// Reads secrets from `*_FILE` variables (docker/Kubernetes secrets), so passwords need not sit in the environment,
/// where `ps e`, `docker inspect` and crash reports can show them. Generic (the CLI reads `REDIS_PASSWORD_FILE` with
/// it too); it lives here because OpsBusMQTT is the lowest module with I/O that both the CLI and the publisher use.
public enum SecretFile {
    /// Secret files are small; a bigger file is most likely the wrong path.
    public static let maximumBytes = 64 * 1024

    /// The file's text without one trailing newline (`echo secret > file` adds one).
    /// - Throws: a problem naming `variable` and the path, never the content: empty path, missing, not a regular
    ///   file, too big, unreadable, not UTF-8, or empty.
    public static func read(path: String, variable: String) throws(MQTTVariableProblem) -> String {
        func fail(_ reason: String) -> MQTTVariableProblem {
            MQTTVariableProblem(variable: variable, reason: "cannot use secret file \(path): \(reason)")
        }
        if path.isEmpty { throw MQTTVariableProblem(variable: variable, reason: "empty path; expected a readable file") }
        var status = stat()
        guard stat(path, &status) == 0 else { throw fail(String(cString: strerror(errno))) }
        guard (status.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        guard status.st_size <= maximumBytes else { throw fail("larger than \(maximumBytes) bytes") }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw fail(String(cString: strerror(errno))) }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw fail("read failed")
        }
        guard var secret = String(data: data, encoding: .utf8) else { throw fail("not UTF-8 text") }
        // "\r\n" is one Character in Swift: removing two would eat the secret's last character.
        if secret.last == "\n" || secret.last == "\r\n" { secret.removeLast() }
        guard !secret.isEmpty else { throw fail("the file is empty") }
        return secret
    }
}

extension MQTTEndpoint {
    /// The variable that names the broker password's file, as the CLI and `connectFromEnvironment` read it.
    public static let passwordFileVariable = "MQTT_PASSWORD_FILE"

    /// This endpoint with its password read from `path` (`MQTT_PASSWORD_FILE`); unchanged when `path` is nil.
    /// A password in the URL too is refused (which one wins would be a guess), and so is a URL without a user name
    /// (a password alone cannot log in).
    /// - Parameter urlVariable: where the URL came from (`MQTT_URL`, `--mqtt-url`), for the messages.
    public func applyingPasswordFile(path: String?, urlVariable: String = "MQTT_URL") throws(MQTTVariableProblem)
        -> MQTTEndpoint
    {
        guard let path else { return self }
        let variable = Self.passwordFileVariable
        if password != nil {
            throw MQTTVariableProblem(
                variable: "\(urlVariable) and \(variable)", reason: "both give a password; put it in only one of them")
        }
        if username == nil {
            throw MQTTVariableProblem(
                variable: variable, reason: "a password file needs a user name in \(urlVariable) (mqtt://user@host:port)")
        }
        var endpoint = self
        endpoint.password = try SecretFile.read(path: path, variable: variable)
        return endpoint
    }
}
