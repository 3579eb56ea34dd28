import ArgumentParser
import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import Synchronization

/// A flag that can be set once, from any thread.
final class LockedFlag: Sendable {
    private let value = Mutex(false)
    /// True for the first caller only.
    func setOnce() -> Bool { value.withLock { was in defer { was = true }; return !was } }
}

/// Where the broker and Redis are: flags, then `MQTT_URL`/`REDIS_URL` from the environment or the config file, then
/// the local defaults (`RuntimeSettings`). Passwords may come from `MQTT_PASSWORD_FILE`/`REDIS_PASSWORD_FILE` instead
/// of the URL (docker secrets); they never appear in errors or logs (endpoints print them as `***`).
/// Invalid values exit with status 78, naming the variable and its source.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: "Broker URL, mqtt://[user[:pass]@]host[:port] or mqtts://… (default: $MQTT_URL or mqtt://127.0.0.1:1883).")
    var mqttURL: String?

    @Option(name: .long, help: "Redis URL, redis://[[user]:pass@]host[:port][/db] (default: $REDIS_URL or redis://127.0.0.1:6379).")
    var redisURL: String?

    @Option(name: .long, help: "Topic prefix (namespace) for a shared broker (default: $OPSBUS_TOPIC_PREFIX, none).")
    var topicPrefix: String?

    func mqttEndpoint() throws -> MQTTEndpoint {
        let settings = try RuntimeSettings.current
        let url = try settings.value("MQTT_URL", flag: mqttURL, flagName: "--mqtt-url") ?? "mqtt://127.0.0.1:1883"
        let passwordFile = try settings.value("MQTT_PASSWORD_FILE")
        var endpoint: MQTTEndpoint
        do throws(ConfigurationProblem) {
            endpoint = try ConnectionSecrets.mqttEndpoint(
                url: url, urlVariable: mqttURL != nil ? "--mqtt-url" : "MQTT_URL", passwordFile: passwordFile)
        } catch {
            throw ConfigurationFailure.exit(error)
        }
        var files: [String: String?] = [:]
        for name in MQTTTLSConfiguration.variableNames { files[name] = try settings.value(name) }
        do throws(MQTTTLSConfiguration.VariableProblem) {
            endpoint.tls = try MQTTTLSConfiguration.fromVariables(files, useTLS: endpoint.useTLS)
        } catch {
            throw ConfigurationFailure.exit(ConfigurationProblem(error))
        }
        return endpoint
    }

    func redisEndpoint() throws -> RedisEndpoint {
        let settings = try RuntimeSettings.current
        let passwordFile = try settings.value("REDIS_PASSWORD_FILE")
        // With a password file the URL names only the user: ConnectionSecrets checks it then.
        let url = try settings.value("REDIS_URL", flag: redisURL, flagName: "--redis-url", checkFlag: passwordFile == nil)
            ?? "redis://127.0.0.1:6379"
        do throws(ConfigurationProblem) {
            return try ConnectionSecrets.redisEndpoint(
                url: url, urlVariable: redisURL != nil ? "--redis-url" : "REDIS_URL", passwordFile: passwordFile)
        } catch {
            throw ConfigurationFailure.exit(error)
        }
    }

    func topicScheme() throws -> TopicScheme {
        let prefix = try RuntimeSettings.current.value("OPSBUS_TOPIC_PREFIX", flag: topicPrefix, flagName: "--topic-prefix")
        do {
            return try TopicScheme(prefix: prefix?.isEmpty == true ? nil : prefix)
        } catch {
            throw ConfigurationFailure.exit(ConfigurationProblem(variable: "OPSBUS_TOPIC_PREFIX / --topic-prefix", message: "\(error)"))
        }
    }
}

/// Runs `onSignal` on SIGINT/SIGTERM, so commands shut down cleanly (stop taking messages, disconnect, stop servers).
///
/// `@unchecked Sendable`: the sources are set once in `init` and never mutated; cancelling a dispatch source is
/// thread-safe.
final class SignalCanceller: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]

    init(onSignal: @escaping @Sendable (Int32) -> Void) {
        var created: [any DispatchSourceSignal] = []
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { onSignal(signalNumber) }
            source.resume()
            created.append(source)
        }
        sources = created
    }

    func cancel() {
        sources.forEach { $0.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}

/// Writes a line to standard output (CLI results, never diagnostics).
func output(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// A warning for the user on stderr (stdout stays machine-readable).
func warn(_ line: String) {
    FileHandle.standardError.write(Data(("warning: " + line + "\n").utf8))
}
