import Foundation

/// Why a configuration value could not be used. Messages name the variable and say what was expected; they never
/// contain a secret (only the path of a secret file).
struct ConfigurationProblem: Error, CustomStringConvertible, Hashable, Sendable {
    /// The variable (or variables) at fault, e.g. `MQTT_PASSWORD_FILE`.
    let variable: String
    let message: String

    var description: String { "\(variable): \(message)" }
}

/// Reads secrets from `*_FILE` variables (docker/Kubernetes secrets), so passwords need not sit in the environment,
/// where `ps e`, `docker inspect` and crash reports can show them.
enum SecretFile {
    /// Secret files are small; a bigger file is most likely the wrong path.
    static let maximumBytes = 64 * 1024

    /// The file's text without one trailing newline (`echo secret > file` adds one).
    /// - Throws: a problem naming `variable` and the path, never the content.
    static func read(path: String, variable: String) throws(ConfigurationProblem) -> String {
        func fail(_ reason: String) -> ConfigurationProblem {
            ConfigurationProblem(variable: variable, message: "cannot use secret file \(path): \(reason)")
        }
        if path.isEmpty { throw ConfigurationProblem(variable: variable, message: "empty path; expected a readable file") }
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
        if secret.hasSuffix("\r\n") { secret.removeLast(2) } else if secret.hasSuffix("\n") { secret.removeLast() }
        guard !secret.isEmpty else { throw fail("the file is empty") }
        return secret
    }
}

/// Hides secrets in values shown to people: `mqtt://processor:****@host:1883`.
enum SecretMask {
    static let mask = "****"

    /// Masks the password of `scheme://user:password@host…` and every query value; works on text that does not
    /// parse as a URL too, so a broken URL is still shown without its secret.
    static func url(_ text: String) -> String {
        var result = text
        if let schemeEnd = result.range(of: "://") {
            let authorityStart = schemeEnd.upperBound
            let authorityEnd = result[authorityStart...].firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" })
                ?? result.endIndex
            let authority = result[authorityStart..<authorityEnd]
            if let at = authority.lastIndex(of: "@") {
                let userinfo = authority[..<at]
                if let colon = userinfo.firstIndex(of: ":") {
                    result.replaceSubrange(result.index(after: colon)..<at, with: mask)
                }
            }
        } else if let at = result.lastIndex(of: "@") {
            // Not a URL: hide everything before the '@' that could be user:password.
            result.replaceSubrange(result.startIndex..<at, with: mask)
        }
        if let question = result.firstIndex(of: "?") {
            let query = result[result.index(after: question)...]
            let masked = query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
                guard let equals = pair.firstIndex(of: "=") else { return String(pair) }
                return String(pair[...equals]) + mask
            }.joined(separator: "&")
            result = String(result[...question]) + masked
        }
        return result
    }
}
