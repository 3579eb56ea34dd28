import Foundation
import Logging
import OpsBusBridge
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import OpsBusSpool

/// One configuration variable: its name (the same in the environment and in a config file), default, whether it is
/// a secret, and how a value is checked. The checks call the same parsers the commands use at start, so
/// `opsbus config check` and the services agree on what is valid.
struct SettingSpec: Sendable {
    enum Secrecy: Sendable {
        case none
        /// A URL whose password (and query values) are masked.
        case url
        /// The whole value is masked.
        case whole
    }

    let name: String
    /// Shown when the variable is unset; nil when unset means "not used".
    let defaultValue: String?
    let secrecy: Secrecy
    let help: String
    /// Returns what was expected when `value` is invalid (never echoing a secret).
    let check: @Sendable (String) -> String?

    init(_ name: String, default defaultValue: String? = nil, secrecy: Secrecy = .none, _ help: String,
         check: @escaping @Sendable (String) -> String?) {
        self.name = name
        self.defaultValue = defaultValue
        self.secrecy = secrecy
        self.help = help
        self.check = check
    }

    /// The value as it may be shown.
    func display(_ value: String) -> String {
        switch secrecy {
        case .none: value
        case .url: SecretMask.url(value)
        case .whole: SecretMask.mask
        }
    }
}

/// Every variable opsbus reads: the seed's and the `OPSBUS_*` ones (README, "Configuration").
enum SettingsCatalog {
    static let all: [SettingSpec] = [
        SettingSpec("MQTT_URL", default: "mqtt://127.0.0.1:1883", secrecy: .url,
                    "broker, mqtt://[user[:pass]@]host[:port] or mqtts://…", check: Checks.mqttURL),
        SettingSpec("MQTT_PASSWORD_FILE", "file holding the broker password for MQTT_URL's user",
                    check: Checks.secretFile("MQTT_PASSWORD_FILE")),
        SettingSpec("MQTT_CA_FILE", "mqtts://: CA certificates (PEM) to verify the broker; default the system store",
                    check: Checks.readableFile),
        SettingSpec("MQTT_CERT_FILE", "mqtts://: client certificate (PEM), with MQTT_KEY_FILE",
                    check: Checks.readableFile),
        SettingSpec("MQTT_KEY_FILE", "mqtts://: client key (PEM), with MQTT_CERT_FILE", check: Checks.readableFile),
        SettingSpec("REDIS_URL", default: "redis://127.0.0.1:6379", secrecy: .url,
                    "redis://[[user]:pass@]host[:port][/db]", check: Checks.redisURL),
        SettingSpec("REDIS_PASSWORD_FILE", "file holding the Redis password for REDIS_URL's user",
                    check: Checks.secretFile("REDIS_PASSWORD_FILE")),
        SettingSpec("MACHINE_ID", "machine stamped on events", check: Checks.identifier("machine_id")),
        SettingSpec("WORKER_ID", "worker stamped on events (also the MQTT user name with the shipped ACL)",
                    check: Checks.identifier("worker_id")),
        SettingSpec("SERVICE_TYPE", "service type stamped on events", check: Checks.label),
        SettingSpec("CONNECTOR_ID", "connector stamped on events", check: Checks.label),
        SettingSpec("CONNECTOR_LOGGING_ENABLED", default: "true", "connector event logging", check: Checks.bool),
        SettingSpec("BUSINESS_LOGIC_AUTOMATION", default: "true", "processor: automated actions", check: Checks.bool),
        SettingSpec("MODEL_USAGE_TRACKING", default: "true", "processor: model usage counters", check: Checks.bool),
        SettingSpec("USER_NOTIFICATIONS_ENABLED", default: "true", "processor: webhooks", check: Checks.bool),
        SettingSpec("EVENT_PROCESSING_BATCH_SIZE", default: "100", "outbox entries relayed per round",
                    check: Checks.integer(1...10_000)),
        SettingSpec("BUSINESS_LOGIC_TIMEOUT_MS", default: "5000", "Redis timeout for an event's script, ms",
                    check: Checks.integer(10...600_000)),
        SettingSpec("PATTERN_ANALYSIS_INTERVAL", default: "300", "seconds between pattern analyses, 0 = off",
                    check: Checks.integer(0...86_400)),
        SettingSpec("WORKER_LINK_GRACE_SECONDS", default: "30", "how long an unreachable worker keeps its jobs",
                    check: Checks.integer(0...86_400)),
        SettingSpec("GAP_REPORT_AFTER_SECONDS", default: "60", "when an open seq gap is reported",
                    check: Checks.integer(1...86_400)),
        SettingSpec("NOTIFICATION_SERVICE_URL", secrecy: .url, "webhook target, http(s)://…", check: Checks.httpURL),
        SettingSpec("NOTIFICATION_SECRET", secrecy: .whole, "webhook signing secret", check: Checks.nonEmpty),
        SettingSpec("NOTIFICATION_SECRET_FILE", "file holding the webhook signing secret",
                    check: Checks.secretFile("NOTIFICATION_SECRET_FILE")),
        SettingSpec("RESOURCE_MANAGER_URL", secrecy: .url, "resource manager, http(s)://…", check: Checks.httpURL),
        SettingSpec("OPSBUS_TOPIC_PREFIX", "namespace prepended to every topic", check: Checks.topicPrefix),
        SettingSpec("OPSBUS_LOG_LEVEL", default: "notice", "trace … critical", check: Checks.logLevel),
        SettingSpec("OPSBUS_LOG_FORMAT", default: "text", "text or json", check: Checks.oneOf(["text", "json"])),
        SettingSpec("OPSBUS_HTTP_PORT", "processor/bridge: port of /metrics, /health, the dashboard; off when unset",
                    check: Checks.integer(0...65_535)),
        SettingSpec("OPSBUS_HTTP_HOST", default: "127.0.0.1", "address the HTTP endpoints listen on (IPv4)",
                    check: Checks.ipv4),
        SettingSpec("OPSBUS_STATE_DIR", default: ".opsbus", "bridge: base of the default journal directory",
                    check: Checks.nonEmpty),
        SettingSpec("OPSBUS_PROCESSOR_JOURNAL", "processor: journal directory; set, events are applied in batches",
                    check: Checks.nonEmpty),
        SettingSpec("OPSBUS_BRIDGE_ROUTES", "bridge routes FILTER=STREAM[;…], separated by whitespace",
                    check: Checks.bridgeRoutes),
        SettingSpec("OPSBUS_QOS_OVERRIDES", "per-type QoS/retain, e.g. job.progress=1", check: Checks.qosOverrides),
        SettingSpec("OPSBUS_SPOOL", default: "on for workers", "publisher spool, on or off", check: Checks.onOff),
        SettingSpec("OPSBUS_SPOOL_DIR", default: "$XDG_STATE_HOME/opsbus/spool/<worker>", "spool directory",
                    check: Checks.nonEmpty),
        SettingSpec("OPSBUS_SPOOL_MAX_BYTES", default: "67108864", "spool bound, bytes",
                    check: Checks.integer((1 << 20)...Int.max)),
        SettingSpec("OPSBUS_SPOOL_DURABILITY", default: "always", "always, interval:<ms> or never",
                    check: Checks.durability),
        SettingSpec("OPSBUS_ACK", default: "bridge", "bridge or broker", check: Checks.oneOf(["bridge", "broker"])),
        SettingSpec("OPSBUS_ACK_TIMEOUT", default: "10", "seconds before unacknowledged events are re-sent",
                    check: Checks.seconds(maximum: 3600)),
    ]

    static let byName: [String: SettingSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
}

/// Value checks; each returns what was expected, or nil when the value is fine.
enum Checks {
    @Sendable static func mqttURL(_ value: String) -> String? {
        do { _ = try MQTTEndpoint(url: value); return nil } catch { return "\(error)" }
    }

    @Sendable static func redisURL(_ value: String) -> String? {
        do { _ = try RedisEndpoint(url: value); return nil } catch { return "\(error)" }
    }

    static func secretFile(_ variable: String) -> @Sendable (String) -> String? {
        { path in
            do throws(MQTTVariableProblem) {
                _ = try SecretFile.read(path: path, variable: variable)
                return nil
            } catch {
                return error.reason
            }
        }
    }

    static func identifier(_ field: String) -> @Sendable (String) -> String? {
        { value in
            do throws(IdentifierError) {
                _ = try Identifier(validating: value, field: field)
                return nil
            } catch {
                return error.description
            }
        }
    }

    /// Free text stamped on events: not empty, at most 128 characters, no control characters.
    @Sendable static func label(_ value: String) -> String? {
        if value.isEmpty || value.count > 128 || value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "expected 1 to 128 characters without control characters"
        }
        return nil
    }

    /// The spellings the commands accept (`ProcessorCommand`'s environment reader).
    @Sendable static func bool(_ value: String) -> String? {
        ["1", "true", "yes", "on", "0", "false", "no", "off"].contains(value.lowercased())
            ? nil : "expected true or false"
    }

    @Sendable static func onOff(_ value: String) -> String? {
        ["on", "true", "1", "off", "false", "0"].contains(value.lowercased()) ? nil : "expected on or off"
    }

    static func integer(_ range: ClosedRange<Int>) -> @Sendable (String) -> String? {
        { value in
            guard let number = Int(value), range.contains(number) else {
                return range.upperBound == Int.max
                    ? "expected a whole number ≥ \(range.lowerBound)"
                    : "expected a whole number from \(range.lowerBound) to \(range.upperBound)"
            }
            return nil
        }
    }

    static func seconds(maximum: Double) -> @Sendable (String) -> String? {
        { value in
            guard let seconds = Double(value), seconds > 0, seconds <= maximum else {
                return "expected seconds in (0, \(Int(maximum))]"
            }
            return nil
        }
    }

    static func oneOf(_ allowed: [String]) -> @Sendable (String) -> String? {
        { value in allowed.contains(value.lowercased()) ? nil : "expected one of: \(allowed.joined(separator: ", "))" }
    }

    @Sendable static func nonEmpty(_ value: String) -> String? { value.isEmpty ? "expected a non-empty value" : nil }

    /// A file this process can read (certificates and keys: the path is checked, the content is the library's).
    @Sendable static func readableFile(_ value: String) -> String? {
        FileManager.default.isReadableFile(atPath: value) ? nil : "expected a readable file, cannot read '\(value)'"
    }

    /// An absolute http or https URL with a host (webhook and resource manager targets).
    @Sendable static func httpURL(_ value: String) -> String? {
        guard let components = URLComponents(string: value),
              let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = components.host, !host.isEmpty
        else { return "expected an http:// or https:// URL with a host" }
        return nil
    }

    @Sendable static func topicPrefix(_ value: String) -> String? {
        do { _ = try TopicScheme(prefix: value.isEmpty ? nil : value); return nil } catch { return "\(error)" }
    }

    @Sendable static func ipv4(_ value: String) -> String? {
        var address = in_addr()
        return inet_pton(AF_INET, value, &address) == 1 ? nil : "expected an IPv4 address, e.g. 127.0.0.1 or 0.0.0.0"
    }

    @Sendable static func bridgeRoutes(_ value: String) -> String? {
        do {
            for spec in value.split(whereSeparator: { $0 == "\n" || $0 == " " || $0 == "\t" }) {
                _ = try BridgeRoute(parsing: String(spec))
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Sendable static func logLevel(_ value: String) -> String? {
        Logger.Level(rawValue: value.lowercased()) != nil
            ? nil : "expected one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))"
    }

    @Sendable static func qosOverrides(_ value: String) -> String? {
        do { _ = try QoSPolicy.parseOverrides(value); return nil } catch { return "\(error)" }
    }

    @Sendable static func durability(_ value: String) -> String? {
        do { _ = try SpoolDurability(parsing: value); return nil } catch {
            return "expected always, interval:<ms> (ms ≥ 1) or never"
        }
    }
}
