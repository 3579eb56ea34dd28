import Foundation
import OpsBusMQTT

/// Why a configuration value could not be used. Messages name the variable and say what was expected; they never
/// contain a secret (only the path of a secret file).
struct ConfigurationProblem: Error, CustomStringConvertible, Hashable, Sendable {
    /// The variable (or variables) at fault, e.g. `MQTT_PASSWORD_FILE`.
    let variable: String
    let message: String

    var description: String { "\(variable): \(message)" }
}

extension ConfigurationProblem {
    /// A problem found by the rules OpsBusMQTT shares with the publisher library (TLS files, `MQTT_PASSWORD_FILE`,
    /// secret files).
    init(_ problem: MQTTVariableProblem) {
        self.init(variable: problem.variable, message: problem.reason)
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
