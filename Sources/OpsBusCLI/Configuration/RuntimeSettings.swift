import ArgumentParser
import Foundation
import Synchronization

/// The exit statuses of opsbus (README, "Operating opsbus"; `opsbus --help`). `opsbus health` and
/// `opsbus config check` keep their own documented verdicts (0/1/2 and 0/1).
enum ExitStatus {
    /// Clean exit, including a graceful stop on SIGTERM/SIGINT.
    static let success: Int32 = 0
    /// A runtime failure (broker or Redis refused us, an I/O error …).
    static let failure: Int32 = 1
    /// Bad command-line usage (ArgumentParser's `EX_USAGE`).
    static let usage: Int32 = 64
    /// A service did not finish its graceful shutdown within `--shutdown-timeout` (`EX_TEMPFAIL`: restarting it is
    /// safe, the broker and the journal keep what was not finished).
    static let shutdownTimeout: Int32 = 75
    /// An invalid setting (flag, environment or config file) or an unreadable config file (`EX_CONFIG`).
    static let configuration: Int32 = 78

    /// The text `--help` shows.
    static let helpText = """
        Exit status: 0 clean exit (also a graceful stop on SIGTERM/SIGINT), 1 runtime failure, 64 usage error, \
        75 graceful shutdown not finished within --shutdown-timeout, 78 configuration error (the message names the \
        variable, its source and what was expected).
        """
}

/// Prints configuration problems (they never contain a secret) and gives the exit status for them.
enum ConfigurationFailure {
    static func exit(_ problems: [ConfigurationProblem]) -> ExitCode {
        var text = "error: invalid configuration\n"
        for problem in problems { text += "  \(problem)\n" }
        FileHandle.standardError.write(Data(text.utf8))
        return ExitCode(ExitStatus.configuration)
    }

    static func exit(_ problem: ConfigurationProblem) -> ExitCode { exit([problem]) }
}

/// The configuration one command runs with: the same loader and checks as `opsbus config check`
/// (flag > environment > config file > default).
///
/// Loaded once per process by `CommonOptions` (every command has them and reads `--config` there) and kept in
/// `current`, because ArgumentParser's option groups cannot see each other: `ConnectionOptions`, `HTTPOptions` and
/// `SpoolingOptions` read it from there. One command runs per process.
struct RuntimeSettings: Sendable {
    let effective: EffectiveConfiguration
    /// The process environment with the config file's values filled in where the environment has none (empty
    /// counts as none, as in the loader): for library functions that read an environment dictionary.
    let environment: [String: String]
    /// `--config` named a JSON file: the bridge's route configuration (accepted by `bridge`, `streams`, `replay`).
    let bridgeJSONConfig: String?

    private static let loaded = Mutex<RuntimeSettings?>(nil)

    /// The settings loaded at start, else (a command that has no `CommonOptions`) the environment and
    /// `$OPSBUS_CONFIG`.
    static var current: RuntimeSettings {
        get throws {
            if let settings = loaded.withLock({ $0 }) { return settings }
            return try load(configPath: nil, acceptBridgeJSON: false)
        }
    }

    /// Loads and keeps the settings. Every problem of a value taken from the config file (and the file's own
    /// syntax) fails here, whatever the command: the file is opsbus's own. Environment values are checked by the
    /// commands that read them (`value(_:)`), so a stray variable another tool uses does not stop `opsbus tail`.
    /// - Throws: `ExitCode(78)` after printing the problems.
    @discardableResult
    static func load(configPath: String?, acceptBridgeJSON: Bool) throws -> RuntimeSettings {
        let processEnvironment = ProcessInfo.processInfo.environment
        let path = configPath ?? processEnvironment["OPSBUS_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        var bridgeJSON: String?
        if let candidate = path, Self.isJSON(path: candidate) {
            guard acceptBridgeJSON else {
                throw ConfigurationFailure.exit(ConfigurationProblem(
                    variable: configPath != nil ? "--config" : "OPSBUS_CONFIG",
                    message: "\(candidate) is JSON (a bridge route configuration); expected KEY=value lines"))
            }
            // The bridge's JSON file, given with --config before env files existed: routes, not settings.
            bridgeJSON = candidate
        }
        var loaderEnvironment = processEnvironment
        if bridgeJSON != nil { loaderEnvironment["OPSBUS_CONFIG"] = nil }
        let effective = EffectiveConfiguration.load(
            flags: [:], environment: loaderEnvironment, configPath: bridgeJSON != nil ? nil : configPath)
        let fileProblems = effective.otherProblems.filter { problem in
            // File syntax and an unreadable file; combinations are checked by the commands that use them.
            problem.variable == "--config" || problem.variable == "OPSBUS_CONFIG"
                || (effective.configFile.map { problem.variable.hasPrefix($0 + ":") } ?? false)
        } + effective.settings.compactMap { setting in
            guard setting.source == .file, let problem = setting.problem else { return nil }
            return ConfigurationProblem(variable: setting.spec.name, message: "\(problem) (from file \(effective.configFile ?? ""))")
        }
        if !fileProblems.isEmpty { throw ConfigurationFailure.exit(fileProblems) }
        var environment = processEnvironment
        for setting in effective.settings where setting.source == .file {
            environment[setting.spec.name] = setting.value
        }
        let settings = RuntimeSettings(effective: effective, environment: environment, bridgeJSONConfig: bridgeJSON)
        loaded.withLock { $0 = settings }
        return settings
    }

    private static func isJSON(path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 512)) ?? Data()
        return head.first(where: { !($0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D) }) == UInt8(ascii: "{")
    }

    /// The value of `name` (flag given by the caller > environment > config file > default), checked with the
    /// setting's validator; nil when unset and without a default.
    /// - Throws: `ExitCode(78)` after printing the variable, its source and what was expected.
    /// - Parameter checkFlag: false when the caller checks the flag's value itself (a Redis URL that names only
    ///   the user, for REDIS_PASSWORD_FILE).
    func value(_ name: String, flag: String? = nil, flagName: String? = nil, checkFlag: Bool = true) throws -> String? {
        guard let setting = effective.settings.first(where: { $0.spec.name == name }) else {
            preconditionFailure("\(name) is not in SettingsCatalog")
        }
        if let flag {
            if checkFlag, let problem = setting.spec.check(flag) {
                throw ConfigurationFailure.exit(ConfigurationProblem(
                    variable: flagName ?? name, message: "\(problem) (from flag)"))
            }
            return flag
        }
        if let problem = setting.problem {
            let source = setting.source == .file ? "file \(effective.configFile ?? "")" : setting.source.rawValue
            throw ConfigurationFailure.exit(ConfigurationProblem(variable: name, message: "\(problem) (from \(source))"))
        }
        return setting.value
    }

    /// Where `name`'s value comes from (`env`, `file`, `default`).
    func source(_ name: String) -> SettingSource {
        effective.settings.first { $0.spec.name == name }?.source ?? .default
    }

    func bool(_ name: String, flag: Bool? = nil) throws -> Bool {
        if let flag { return flag }
        let text = try value(name)?.lowercased()
        return ["1", "true", "yes", "on"].contains(text ?? "")
    }

    func int(_ name: String, flag: Int? = nil, flagName: String? = nil) throws -> Int {
        let text = try value(name, flag: flag.map(String.init), flagName: flagName)
        guard let text, let number = Int(text) else {
            preconditionFailure("\(name) has a default and an integer check")
        }
        return number
    }
}
