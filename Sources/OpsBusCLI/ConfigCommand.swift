import ArgumentParser
import Foundation
import OpsBusCore

/// `opsbus config`: the effective configuration.
struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check and show the effective configuration.",
        subcommands: [ConfigCheckCommand.self]
    )
}

/// `opsbus config check`: loads the configuration the way the commands do, validates every value, prints each
/// setting with its source, secrets masked. Exit 0 when valid, 1 with every problem listed.
struct ConfigCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the configuration and print every setting, its value (secrets masked) and its source.",
        discussion: """
            Precedence: flags > environment > config file > defaults. The config file (--config FILE or \
            $OPSBUS_CONFIG) has KEY=value lines with the environment variables' names (env-file format; # starts \
            a comment line), so it also works with `docker run --env-file`.

            Passwords may live in files instead of URLs: MQTT_PASSWORD_FILE, REDIS_PASSWORD_FILE, \
            NOTIFICATION_SECRET_FILE (one trailing newline is dropped). Secrets are shown as ****.

            Exit status: 0 valid, 1 invalid (every problem is listed, with the variable and what was expected).

            Examples:
              opsbus config check
              opsbus config check --config /etc/opsbus/opsbus.env --json
              opsbus config check --set EVENT_PROCESSING_BATCH_SIZE=500 --mqtt-url mqtt://processor@broker:1883
            """
    )

    @Option(name: .long, help: "Configuration file with KEY=value lines (default: $OPSBUS_CONFIG).")
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Set a variable as a flag would (repeatable).", valueName: "NAME=VALUE"))
    var set: [String] = []

    @Option(name: .long, help: "Broker URL (the MQTT_URL setting).")
    var mqttURL: String?

    @Option(name: .long, help: "Redis URL (the REDIS_URL setting).")
    var redisURL: String?

    @Option(name: .long, help: "Topic prefix (the OPSBUS_TOPIC_PREFIX setting).")
    var topicPrefix: String?

    @Option(name: .long, help: "Log level (the OPSBUS_LOG_LEVEL setting).")
    var logLevel: String?

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() async throws {
        var flags: [String: String] = [:]
        var flagProblems: [ConfigurationProblem] = []
        for assignment in set {
            guard let equals = assignment.firstIndex(of: "=") else {
                flagProblems.append(ConfigurationProblem(variable: "--set", message: "expected NAME=VALUE"))
                continue
            }
            let name = String(assignment[..<equals])
            guard SettingsCatalog.byName[name] != nil else {
                flagProblems.append(ConfigurationProblem(variable: "--set", message: "unknown setting '\(name)'"))
                continue
            }
            flags[name] = String(assignment[assignment.index(after: equals)...])
        }
        if let mqttURL { flags["MQTT_URL"] = mqttURL }
        if let redisURL { flags["REDIS_URL"] = redisURL }
        if let topicPrefix { flags["OPSBUS_TOPIC_PREFIX"] = topicPrefix }
        if let logLevel { flags["OPSBUS_LOG_LEVEL"] = logLevel }

        let effective = EffectiveConfiguration.load(
            flags: flags, environment: ProcessInfo.processInfo.environment, configPath: config)
        let problems = flagProblems + effective.problems
        if json {
            output(Self.json(effective, problems: problems))
        } else {
            Self.printText(effective, problems: problems)
        }
        if !problems.isEmpty {
            FileHandle.standardError.write(Data("error: invalid configuration (\(problems.count) problem\(problems.count == 1 ? "" : "s"))\n".utf8))
            throw ExitCode(1)
        }
    }

    static func printText(_ effective: EffectiveConfiguration, problems: [ConfigurationProblem]) {
        let rows = [["SETTING", "VALUE", "SOURCE"]] + effective.settings.map { setting in
            [setting.spec.name, setting.displayValue ?? "(unset)", setting.source.rawValue]
        }
        let widths = (0..<2).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            output(row[0].padding(toLength: widths[0] + 2, withPad: " ", startingAt: 0)
                + row[1].padding(toLength: widths[1] + 2, withPad: " ", startingAt: 0) + row[2])
        }
        if let file = effective.configFile { output("config file: \(file)") }
        if problems.isEmpty {
            output("configuration valid")
        } else {
            output("invalid configuration:")
            for problem in problems { output("  \(problem)") }
        }
    }

    static func json(_ effective: EffectiveConfiguration, problems: [ConfigurationProblem]) -> String {
        let settings: [JSONValue] = effective.settings.map { setting in
            var object: JSONObject = [
                "name": .string(setting.spec.name),
                "value": setting.displayValue.map(JSONValue.string) ?? .null,
                "source": .string(setting.source.rawValue),
                "secret": .bool(setting.spec.secrecy != .none),
            ]
            if let problem = setting.problem { object["problem"] = .string(problem) }
            return .object(object)
        }
        let object: JSONObject = [
            "valid": .bool(problems.isEmpty),
            "config_file": effective.configFile.map(JSONValue.string) ?? .null,
            "settings": .array(settings),
            "problems": .array(problems.map { .object(["variable": .string($0.variable), "message": .string($0.message)]) }),
        ]
        return JSONValue.object(object).serialized()
    }
}
