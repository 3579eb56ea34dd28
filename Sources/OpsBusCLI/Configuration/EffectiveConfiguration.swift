import Foundation
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusRedis

/// Where a setting's value came from, in precedence order: flag > env > file > default.
enum SettingSource: String, Sendable, Hashable {
    case flag, env, file, `default`
}

/// A `KEY=value` configuration file (env-file format): one setting per line, `#` starts a comment line, blank lines
/// are ignored, an optional `export ` prefix and one pair of surrounding quotes are allowed. Names are the
/// environment variables' names, so the same file works with `docker run --env-file`.
struct ConfigFile: Sendable {
    let path: String
    /// Values in file order; a name given twice keeps the last value (as a shell would).
    private(set) var values: [String: String] = [:]
    /// Line numbers, for messages.
    private(set) var lines: [String: Int] = [:]
    private(set) var problems: [ConfigurationProblem] = []

    /// - Throws: a problem naming the file when it cannot be read at all.
    init(path: String, variable: String) throws(ConfigurationProblem) {
        self.path = path
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "not readable UTF-8 text" : "no such file"
            throw ConfigurationProblem(variable: variable, message: "cannot read config file \(path): \(reason)")
        }
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst("export ".count)).trimmingCharacters(in: .whitespaces) }
            guard let equals = line.firstIndex(of: "=") else {
                // No value shown: the line may be a secret typed without its name.
                problems.append(ConfigurationProblem(
                    variable: "\(path):\(number)", message: "expected KEY=value (a line without '=')"))
                continue
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            guard SettingsCatalog.byName[name] != nil else {
                problems.append(ConfigurationProblem(
                    variable: "\(path):\(number)",
                    message: "unknown setting '\(name)'; expected one of the names listed by `opsbus config check`"))
                continue
            }
            values[name] = value
            lines[name] = number
        }
    }
}

/// One setting's effective value.
struct ResolvedSetting: Sendable {
    let spec: SettingSpec
    /// nil: unset and no default.
    let value: String?
    let source: SettingSource
    var problem: String?

    /// The value as shown: secrets masked, `(unset)` when there is none.
    var displayValue: String? {
        guard let value else { return nil }
        return source == .default ? value : spec.display(value)
    }
}

/// The configuration as a command would see it: flags > environment > config file > defaults, every value
/// checked, plus the checks that involve two settings (a password in the URL and in a file, a webhook secret without
/// a URL).
struct EffectiveConfiguration: Sendable {
    let settings: [ResolvedSetting]
    /// Problems not tied to one setting's value (config file syntax, combinations).
    let otherProblems: [ConfigurationProblem]
    let configFile: String?

    var problems: [ConfigurationProblem] {
        otherProblems + settings.compactMap { setting in
            setting.problem.map { ConfigurationProblem(variable: setting.spec.name, message: "\($0) (from \(setting.source.rawValue))") }
        }
    }

    var isValid: Bool { problems.isEmpty }

    /// - Parameters:
    ///   - flags: values given on the command line, by variable name.
    ///   - environment: the process environment.
    ///   - configPath: `--config`; else `OPSBUS_CONFIG` from `environment`.
    static func load(flags: [String: String], environment: [String: String], configPath: String?) -> EffectiveConfiguration {
        var other: [ConfigurationProblem] = []
        var file: ConfigFile?
        let path = configPath ?? environment["OPSBUS_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        if let path {
            do {
                file = try ConfigFile(path: path, variable: configPath != nil ? "--config" : "OPSBUS_CONFIG")
                other += file!.problems
            } catch {
                other.append(error)
            }
        }
        var settings: [ResolvedSetting] = []
        for spec in SettingsCatalog.all {
            let value: String?
            let source: SettingSource
            if let flag = flags[spec.name] {
                (value, source) = (flag, .flag)
            } else if let env = environment[spec.name], !env.isEmpty {
                (value, source) = (env, .env)
            } else if let fromFile = file?.values[spec.name], !fromFile.isEmpty {
                (value, source) = (fromFile, .file)
            } else {
                (value, source) = (spec.defaultValue, .default)
            }
            var resolved = ResolvedSetting(spec: spec, value: value, source: source)
            if let value, source != .default { resolved.problem = spec.check(value) }
            settings.append(resolved)
        }
        // With REDIS_PASSWORD_FILE the URL names only the user (`redis://opsbus@redis:6379`), which the URL parser
        // alone refuses: check it as the commands use it.
        if let urlIndex = settings.firstIndex(where: { $0.spec.name == "REDIS_URL" }),
           let file = settings.first(where: { $0.spec.name == "REDIS_PASSWORD_FILE" }), file.source != .default,
           let url = settings[urlIndex].value, settings[urlIndex].source != .default
        {
            do throws(ConfigurationProblem) {
                settings[urlIndex].problem = Checks.redisURL(try ConnectionSecrets.redisURLExpectingFile(url, urlVariable: "REDIS_URL"))
            } catch {
                settings[urlIndex].problem = nil  // reported once, as a combination problem
            }
        }
        let configuration = EffectiveConfiguration(settings: settings, otherProblems: other, configFile: path)
        return EffectiveConfiguration(
            settings: settings, otherProblems: other + configuration.combinationProblems(), configFile: path)
    }

    /// The value a command would use (nil when unset), whatever its validity.
    func value(_ name: String) -> String? { settings.first { $0.spec.name == name }?.value }

    private func setValue(_ name: String) -> String? {
        settings.first { $0.spec.name == name && $0.source != .default }?.value
    }

    private func isValid(_ name: String) -> Bool { settings.first { $0.spec.name == name }?.problem == nil }

    /// Checks across settings, using the same code as the commands.
    private func combinationProblems() -> [ConfigurationProblem] {
        var problems: [ConfigurationProblem] = []
        if isValid("MQTT_URL"), isValid("MQTT_PASSWORD_FILE"), setValue("MQTT_PASSWORD_FILE") != nil {
            do {
                _ = try ConnectionSecrets.mqttEndpoint(url: value("MQTT_URL") ?? "", urlVariable: "MQTT_URL",
                                                       passwordFile: setValue("MQTT_PASSWORD_FILE"))
            } catch {
                problems.append(error)
            }
        }
        if isValid("REDIS_URL"), isValid("REDIS_PASSWORD_FILE"), setValue("REDIS_PASSWORD_FILE") != nil {
            do {
                _ = try ConnectionSecrets.redisEndpoint(url: value("REDIS_URL") ?? "", urlVariable: "REDIS_URL",
                                                        passwordFile: setValue("REDIS_PASSWORD_FILE"))
            } catch {
                problems.append(error)
            }
        }
        let tlsNames = MQTTTLSConfiguration.variableNames
        if isValid("MQTT_URL"), tlsNames.allSatisfy(isValid), let url = try? MQTTEndpoint(url: value("MQTT_URL") ?? "") {
            do throws(MQTTTLSConfiguration.VariableProblem) {
                _ = try MQTTTLSConfiguration.fromVariables(
                    tlsNames.reduce(into: [:]) { $0[$1] = setValue($1) }, useTLS: url.useTLS)
            } catch {
                problems.append(ConfigurationProblem(error))
            }
        }
        let webhookNames = ["NOTIFICATION_SERVICE_URL", "NOTIFICATION_SECRET", "NOTIFICATION_SECRET_FILE"]
        if webhookNames.allSatisfy(isValid) {
            var environment: [String: String] = [:]
            for name in webhookNames { environment[name] = setValue(name) }
            do {
                _ = try WebhookEndpoint.fromEnvironment(environment)
            } catch {
                problems.append(ConfigurationProblem(variable: "NOTIFICATION_*", message: "\(error)"))
            }
        }
        return problems
    }
}

/// Broker and Redis endpoints with their passwords from the URL or from a `*_PASSWORD_FILE`.
enum ConnectionSecrets {
    /// `url`'s endpoint, its password taken from `passwordFile` when given (the rules are
    /// `MQTTEndpoint.applyingPasswordFile`'s, shared with `EventPublisher.connectFromEnvironment`).
    static func mqttEndpoint(url: String, urlVariable: String, passwordFile: String?) throws(ConfigurationProblem) -> MQTTEndpoint {
        let endpoint: MQTTEndpoint
        do {
            endpoint = try MQTTEndpoint(url: url)
        } catch {
            throw ConfigurationProblem(variable: urlVariable, message: "\(error)")
        }
        do throws(MQTTVariableProblem) {
            return try endpoint.applyingPasswordFile(path: passwordFile, urlVariable: urlVariable)
        } catch {
            throw ConfigurationProblem(error)
        }
    }

    /// `url` with a placeholder password where REDIS_PASSWORD_FILE's content goes, so the URL parser accepts a URL
    /// that names only the user.
    /// - Throws: when the URL has a password too.
    static func redisURLExpectingFile(_ url: String, urlVariable: String) throws(ConfigurationProblem) -> String {
        var text = url
        if let schemeEnd = url.range(of: "://") {
            let authorityEnd = url[schemeEnd.upperBound...].firstIndex(where: { $0 == "/" || $0 == "?" }) ?? url.endIndex
            let authority = url[schemeEnd.upperBound..<authorityEnd]
            if let at = authority.lastIndex(of: "@") {
                if authority[..<at].contains(":") {
                    throw ConfigurationProblem(
                        variable: "\(urlVariable) and REDIS_PASSWORD_FILE",
                        message: "both give a password; put it in only one of them")
                }
                text.insert(contentsOf: ":file", at: at)  // replaced by the file's content
            } else {
                text.insert(contentsOf: ":file@", at: schemeEnd.upperBound)
            }
        }
        return text
    }

    /// As `mqttEndpoint`; Redis accepts a password without a user name (the `default` user). The URL then names
    /// only the user (`redis://opsbus@redis:6379`), which the URL parser alone refuses as ambiguous.
    static func redisEndpoint(url: String, urlVariable: String, passwordFile: String?) throws(ConfigurationProblem) -> RedisEndpoint {
        let text = passwordFile != nil ? try redisURLExpectingFile(url, urlVariable: urlVariable) : url
        var endpoint: RedisEndpoint
        do {
            endpoint = try RedisEndpoint(url: text)
        } catch {
            throw ConfigurationProblem(variable: urlVariable, message: "\(error)")
        }
        guard let passwordFile else { return endpoint }
        do throws(MQTTVariableProblem) {
            endpoint.password = try SecretFile.read(path: passwordFile, variable: "REDIS_PASSWORD_FILE")
        } catch {
            throw ConfigurationProblem(error)
        }
        return endpoint
    }
}
