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
    @Option(name: .long, help: "Log level (trace … critical). Default: $OPSBUS_LOG_LEVEL or notice.")
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp(
        "Log format: text, or json for one JSON object per line (level, label, message, metadata). Default: $OPSBUS_LOG_FORMAT or text.",
        valueName: "text|json"))
    var logFormat: String?

    @Flag(name: .long, help: "Same as --log-format json.")
    var logJSON = false

    /// Sets up swift-log once for the process; returns the logger for `label`.
    func makeLogger(_ label: String) throws -> Logger {
        let name = logLevel ?? ProcessInfo.processInfo.environment["OPSBUS_LOG_LEVEL"] ?? "notice"
        guard let level = Logger.Level(rawValue: name.lowercased()) else {
            throw ValidationError(
                "invalid log level '\(name)'; expected one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let format = logJSON ? "json" : (logFormat ?? ProcessInfo.processInfo.environment["OPSBUS_LOG_FORMAT"] ?? "text")
        guard ["text", "json"].contains(format.lowercased()) else {
            throw ValidationError("--log-format / OPSBUS_LOG_FORMAT: expected text or json, not '\(format)'")
        }
        LoggingBootstrap.once(json: format.lowercased() == "json")
        var logger = Logger(label: label)
        logger.logLevel = level
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
