import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusSpool

extension EventPublisher {
    /// Connects the way the seed's `ConnectorLogger` was configured: broker from `MQTT_URL`
    /// (default `mqtt://127.0.0.1:1883`; the password from the URL or from the file `MQTT_PASSWORD_FILE` names, not
    /// both; for `mqtts://`, `MQTT_CA_FILE` and optionally `MQTT_CERT_FILE` + `MQTT_KEY_FILE`), context from `MACHINE_ID`, `WORKER_ID`, `SERVICE_TYPE`, `CONNECTOR_ID`,
    /// topic prefix from `OPSBUS_TOPIC_PREFIX`, QoS overrides from `OPSBUS_QOS_OVERRIDES` (syntax in topics.md).
    /// Workers (a `WORKER_ID` is set) spool by default (`spoolOptions(from:context:)`: `OPSBUS_SPOOL`,
    /// `OPSBUS_SPOOL_DIR`, `OPSBUS_SPOOL_MAX_BYTES`, `OPSBUS_SPOOL_DURABILITY`, `OPSBUS_ACK`, `OPSBUS_ACK_TIMEOUT`).
    /// A bad value fails here, naming the variable.
    public static func connectFromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment, waitForBroker: Bool = false,
        logger: Logger = Logger(label: "opsbus.publisher")
    ) async throws(EventPublisherError) -> EventPublisher {
        let url = environment["MQTT_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "mqtt://127.0.0.1:1883"
        var endpoint: MQTTEndpoint
        do {
            endpoint = try MQTTEndpoint(url: url)
        } catch {
            throw .invalidContext(variable: "MQTT_URL", reason: "\(error)")
        }
        // The rules of the CLI, from the same code: a password file needs a user and excludes a URL password.
        do throws(MQTTVariableProblem) {
            endpoint = try endpoint.applyingPasswordFile(
                path: environment[MQTTEndpoint.passwordFileVariable].flatMap { $0.isEmpty ? nil : $0 })
            endpoint.tls = try MQTTTLSConfiguration.fromVariables(
                MQTTTLSConfiguration.variableNames.reduce(into: [:]) { $0[$1] = environment[$1] }, useTLS: endpoint.useTLS)
        } catch {
            throw .invalidContext(variable: error.variable, reason: error.reason)
        }
        let scheme: TopicScheme
        do {
            scheme = try TopicScheme(prefix: environment["OPSBUS_TOPIC_PREFIX"])
        } catch {
            throw .invalidContext(variable: "OPSBUS_TOPIC_PREFIX", reason: "\(error)")
        }
        var policy = QoSPolicy.default
        if let spec = environment["OPSBUS_QOS_OVERRIDES"], !spec.isEmpty {
            do {
                policy = QoSPolicy(overrides: try QoSPolicy.parseOverrides(spec))
            } catch {
                throw .invalidContext(variable: "OPSBUS_QOS_OVERRIDES", reason: "\(error)")
            }
        }
        let context = try PublisherContext.fromEnvironment(environment)
        let spool = try spoolOptions(from: environment, context: context)
        return try await connect(
            endpoint: endpoint, context: context, scheme: scheme, policy: policy, waitForBroker: waitForBroker,
            spool: spool, logger: logger)
    }

    /// The spool settings from the environment; nil when spooling is off.
    ///
    /// - `OPSBUS_SPOOL`: `on` / `off`; default on for workers (`WORKER_ID` set), off otherwise.
    /// - `OPSBUS_SPOOL_DIR`: default `$XDG_STATE_HOME/opsbus/spool/<worker or machine id>` (`~/.local/state/…`).
    /// - `OPSBUS_SPOOL_MAX_BYTES` (default 64 MiB), `OPSBUS_SPOOL_DURABILITY` (`always` (default): fdatasync before
    ///   `publish` returns; `interval:<ms>`; `never`).
    /// - `OPSBUS_ACK`: `bridge` (default: end to end) or `broker` (no bridge deployed); `OPSBUS_ACK_TIMEOUT`
    ///   seconds before unacknowledged events are sent again (default 10).
    public static func spoolOptions(from environment: [String: String], context: PublisherContext)
        throws(EventPublisherError) -> SpoolOptions?
    {
        switch environment["OPSBUS_SPOOL"]?.lowercased() {
        case nil, "": if context.workerID == nil { return nil }
        case "on", "true", "1": break
        case "off", "false", "0": return nil
        case let other?: throw .invalidContext(variable: "OPSBUS_SPOOL", reason: "expected on or off, got \"\(other)\"")
        }
        let owner = context.workerID?.rawValue ?? context.machineID?.rawValue ?? "default"
        let directory = environment["OPSBUS_SPOOL_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? defaultSpoolDirectory(environment: environment, owner: owner)
        var spool = SpoolConfiguration(directory: directory)
        if let text = environment["OPSBUS_SPOOL_MAX_BYTES"], !text.isEmpty {
            guard let bytes = Int(text), bytes >= 1 << 20 else {
                throw .invalidContext(variable: "OPSBUS_SPOOL_MAX_BYTES", reason: "expected a byte count ≥ 1048576, got \"\(text)\"")
            }
            spool.maxBytes = bytes
        }
        if let text = environment["OPSBUS_SPOOL_DURABILITY"], !text.isEmpty {
            do {
                spool.durability = try SpoolDurability(parsing: text)
            } catch {
                throw .invalidContext(variable: "OPSBUS_SPOOL_DURABILITY", reason: "\(error)")
            }
        }
        var options = SpoolOptions(spool: spool)
        if let text = environment["OPSBUS_ACK"], !text.isEmpty {
            guard let mode = AcknowledgementMode(rawValue: text.lowercased()) else {
                throw .invalidContext(variable: "OPSBUS_ACK", reason: "expected bridge or broker, got \"\(text)\"")
            }
            options.acknowledgement = mode
        }
        if let text = environment["OPSBUS_ACK_TIMEOUT"], !text.isEmpty {
            guard let seconds = Double(text), seconds > 0, seconds <= 3600 else {
                throw .invalidContext(variable: "OPSBUS_ACK_TIMEOUT", reason: "expected seconds in (0, 3600], got \"\(text)\"")
            }
            options.ackTimeout = seconds
        }
        return options
    }

    /// `$XDG_STATE_HOME/opsbus/spool/<owner>`, else `$HOME/.local/state/opsbus/spool/<owner>`, else under /tmp.
    public static func defaultSpoolDirectory(environment: [String: String], owner: String) -> String {
        let base = environment["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? environment["HOME"].flatMap { $0.isEmpty ? nil : $0 + "/.local/state" }
            ?? "/tmp"
        return base + "/opsbus/spool/" + owner
    }
}
