import ArgumentParser
import Foundation
import Logging

/// `opsbus`: run the services, publish and watch events, inspect jobs, and run the demo.
public struct OpsBusCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "opsbus",
        abstract: "An operational event bus: job and worker events over MQTT, turned into Redis state.",
        discussion: """
            Connection settings come from flags or the environment: MQTT_URL (mqtt://user:pass@host:1883, \
            mqtts:// for TLS) and REDIS_URL (redis://user:pass@host:6379/0). The publisher context comes from \
            MACHINE_ID, WORKER_ID, SERVICE_TYPE and CONNECTOR_ID. Log level: --log-level or OPSBUS_LOG_LEVEL \
            (trace, debug, info, notice, warning, error, critical; default notice, logs go to stderr).

            Every setting: flag > environment > config file (--config FILE or $OPSBUS_CONFIG, KEY=value lines) > \
            default; `opsbus config check` shows the result.

            \(ExitStatus.helpText)

            Start with `opsbus demo`: it starts its own mosquitto and redis-server and shows everything working.
            Topics, QoS and payloads: topics.md.
            """,
        subcommands: [
            PublishCommand.self, TailCommand.self, ProcessorCommand.self, JobCommand.self, JobsCommand.self,
            WorkersCommand.self, HealthCommand.self, DemoCommand.self, SimulateCommand.self,
            BridgeCommand.self, StreamsCommand.self, ReplayCommand.self, SpoolCommand.self, PumpCommand.self,
            ConfigCommand.self,
        ]
    )

    public init() {}
}

/// Options every subcommand has.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Configuration file: KEY=value lines with the environment variables' names (default $OPSBUS_CONFIG). Flags win over the environment, the environment over the file.",
        valueName: "file"))
    var config: String?

    @Option(name: .long, help: "Log level (trace … critical). Default: $OPSBUS_LOG_LEVEL or notice.")
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp(
        "Log format: text, or json for one JSON object per line (level, label, message, metadata). Default: $OPSBUS_LOG_FORMAT or text.",
        valueName: "text|json"))
    var logFormat: String?

    @Flag(name: .long, help: "Same as --log-format json.")
    var logJSON = false

    /// Loads the configuration (`RuntimeSettings`), sets up swift-log once for the process and returns the logger
    /// for `label`. Every command calls it first.
    /// - Parameter bridgeJSON: the command takes the bridge's JSON route file, which `--config` may name too.
    /// - Throws: `ExitCode(78)` for an invalid config file or log setting.
    func makeLogger(_ label: String, bridgeJSON: Bool = false) throws -> Logger {
        let settings = try RuntimeSettings.load(configPath: config, acceptBridgeJSON: bridgeJSON)
        let name = try settings.value("OPSBUS_LOG_LEVEL", flag: logLevel, flagName: "--log-level") ?? "notice"
        let format = logJSON ? "json" : try settings.value("OPSBUS_LOG_FORMAT", flag: logFormat, flagName: "--log-format") ?? "text"
        LoggingBootstrap.once(json: format.lowercased() == "json")
        var logger = Logger(label: label)
        logger.logLevel = Logger.Level(rawValue: name.lowercased()) ?? .notice
        return logger
    }
}

/// swift-log may be bootstrapped only once per process.
enum LoggingBootstrap {
    private static let done = LockedFlag()

    static func once(json: Bool) {
        guard done.setOnce() else { return }
        LoggingSystem.bootstrap { label in
            json ? JSONLogHandler(label: label) as LogHandler : StreamLogHandler.standardError(label: label)
        }
    }
}
