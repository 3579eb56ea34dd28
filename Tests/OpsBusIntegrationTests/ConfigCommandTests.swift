import Foundation
import OpsBusCore
import Testing

/// `opsbus config check`, run as a real process.
@Suite("opsbus config check")
struct ConfigCommandTests {
    struct Report {
        let status: Int32
        let stdout: String
        let stderr: String
        let json: JSONValue?

        func setting(_ name: String) -> (value: String?, source: String?)? {
            guard let entry = json?["settings"]?.arrayValue?.first(where: { $0["name"]?.stringValue == name }) else {
                return nil
            }
            return (entry["value"]?.stringValue, entry["source"]?.stringValue)
        }

        var problemVariables: [String] {
            json?["problems"]?.arrayValue?.compactMap { $0["variable"]?.stringValue } ?? []
        }

        func problem(_ variable: String) -> String? {
            json?["problems"]?.arrayValue?.first { $0["variable"]?.stringValue == variable }?["message"]?.stringValue
        }
    }

    /// The seed's and opsbus's variables, cleared so the developer's environment cannot leak into a test.
    static let cleared = [
        "EVENT_PROCESSING_BATCH_SIZE", "BUSINESS_LOGIC_TIMEOUT_MS", "BUSINESS_LOGIC_AUTOMATION", "MODEL_USAGE_TRACKING",
        "USER_NOTIFICATIONS_ENABLED", "CONNECTOR_LOGGING_ENABLED", "PATTERN_ANALYSIS_INTERVAL", "NOTIFICATION_SERVICE_URL",
        "NOTIFICATION_SECRET", "NOTIFICATION_SECRET_FILE", "RESOURCE_MANAGER_URL", "OPSBUS_TOPIC_PREFIX", "OPSBUS_LOG_LEVEL",
        "OPSBUS_QOS_OVERRIDES", "OPSBUS_SPOOL", "OPSBUS_SPOOL_DIR", "OPSBUS_SPOOL_MAX_BYTES", "OPSBUS_SPOOL_DURABILITY",
        "OPSBUS_ACK", "OPSBUS_ACK_TIMEOUT", "WORKER_LINK_GRACE_SECONDS", "GAP_REPORT_AFTER_SECONDS", "OPSBUS_CONFIG",
        "MQTT_PASSWORD_FILE", "REDIS_PASSWORD_FILE",
    ]

    func check(_ arguments: [String] = [], environment: [String: String] = [:], json: Bool = true) async throws -> Report {
        var env = Dictionary(uniqueKeysWithValues: Self.cleared.map { ($0, "") })
        env.merge(environment) { $1 }
        let result = try await run(
            try opsbusExecutable(), ["config", "check"] + arguments + (json ? ["--json"] : []), environment: env)
        let parsed = json ? try? JSONValue.parse(result.stdout) : nil
        return Report(status: result.status, stdout: result.stdout, stderr: result.stderr, json: parsed)
    }

    func temporaryFile(_ text: String) throws -> String {
        let url = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("opsbus-config-\(UUID().uuidString)")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    @Test("defaults: valid, every seed variable listed with its default")
    func defaults() async throws {
        let report = try await check()
        #expect(report.status == 0, "\(report.stderr) \(report.stdout)")
        #expect(report.json?["valid"]?.boolValue == true)
        for name in ["MACHINE_ID", "WORKER_ID", "SERVICE_TYPE", "CONNECTOR_ID", "CONNECTOR_LOGGING_ENABLED",
                     "BUSINESS_LOGIC_AUTOMATION", "MODEL_USAGE_TRACKING", "USER_NOTIFICATIONS_ENABLED",
                     "EVENT_PROCESSING_BATCH_SIZE", "BUSINESS_LOGIC_TIMEOUT_MS", "PATTERN_ANALYSIS_INTERVAL", "REDIS_URL",
                     "MQTT_URL", "NOTIFICATION_SERVICE_URL", "RESOURCE_MANAGER_URL", "OPSBUS_TOPIC_PREFIX", "OPSBUS_LOG_LEVEL"] {
            #expect(report.setting(name) != nil, "\(name) missing")
        }
        #expect(report.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("100", "default"))
        #expect(report.setting("MQTT_URL")! == ("mqtt://127.0.0.1:1883", "default"))
        let text = try await check(json: false)
        #expect(text.status == 0)
        #expect(text.stdout.contains("configuration valid"))
        #expect(text.stdout.contains("EVENT_PROCESSING_BATCH_SIZE") && text.stdout.contains("default"))
    }

    @Test("precedence: flag > env > config file > default, for --config and OPSBUS_CONFIG")
    func precedence() async throws {
        let file = try temporaryFile("""
            # opsbus settings
            EVENT_PROCESSING_BATCH_SIZE=10
            export WORKER_ID="w-file"
            MQTT_URL = mqtt://file-host:1884

            BUSINESS_LOGIC_TIMEOUT_MS='7000'
            """)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let all = try await check(["--config", file, "--set", "EVENT_PROCESSING_BATCH_SIZE=30", "--mqtt-url", "mqtt://flag-host:1"],
                                  environment: ["EVENT_PROCESSING_BATCH_SIZE": "20", "MQTT_URL": "mqtt://env-host:1"])
        #expect(all.status == 0, "\(all.stdout) \(all.stderr)")
        #expect(all.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("30", "flag"))
        #expect(all.setting("MQTT_URL")! == ("mqtt://flag-host:1", "flag"))
        #expect(all.setting("WORKER_ID")! == ("w-file", "file"))
        #expect(all.setting("BUSINESS_LOGIC_TIMEOUT_MS")! == ("7000", "file"))
        #expect(all.json?["config_file"]?.stringValue == file)

        let envOverFile = try await check(["--config", file], environment: ["EVENT_PROCESSING_BATCH_SIZE": "20"])
        #expect(envOverFile.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("20", "env"))
        #expect(envOverFile.setting("MQTT_URL")! == ("mqtt://file-host:1884", "file"))

        let viaVariable = try await check(environment: ["OPSBUS_CONFIG": file])
        #expect(viaVariable.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("10", "file"))

        let otherFile = try temporaryFile("EVENT_PROCESSING_BATCH_SIZE=11\n")
        defer { try? FileManager.default.removeItem(atPath: otherFile) }
        let flagFileWins = try await check(["--config", otherFile], environment: ["OPSBUS_CONFIG": file])
        #expect(flagFileWins.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("11", "file"))
        #expect(flagFileWins.setting("WORKER_ID")?.source == "default", "--config replaces OPSBUS_CONFIG")
    }

    @Test("secrets are masked in text and JSON, from the environment, the file and flags")
    func masking() async throws {
        let file = try temporaryFile("REDIS_URL=redis://opsbus:fileRedisPw1@redis:6379/2\nNOTIFICATION_SERVICE_URL=https://hooks.example/x?token=tokPw4\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let environment = ["MQTT_URL": "mqtt://processor:envMqttPw2@broker:1883", "NOTIFICATION_SECRET": "hookPw3"]
        for json in [true, false] {
            let report = try await check(["--config", file], environment: environment, json: json)
            #expect(report.status == 0, "\(report.stdout) \(report.stderr)")
            for secret in ["fileRedisPw1", "envMqttPw2", "hookPw3", "tokPw4"] {
                #expect(!(report.stdout + report.stderr).contains(secret), "json \(json): \(secret) shown")
            }
            #expect(report.stdout.contains("mqtt://processor:****@broker:1883"))
            #expect(report.stdout.contains("redis://opsbus:****@redis:6379/2"))
            #expect(report.stdout.contains("https://hooks.example/x?token=****"))
        }
        let report = try await check(["--config", file], environment: environment)
        #expect(report.setting("NOTIFICATION_SECRET")! == ("****", "env"))
        let flag = try await check(["--redis-url", "redis://:flagPw5@h:1"], json: false)
        #expect(!flag.stdout.contains("flagPw5") && flag.stdout.contains("redis://:****@h:1"))
        // An invalid URL is reported without its password too.
        let bad = try await check(environment: ["MQTT_URL": "mqtt://processor:badUrlPw6@broker:99999"], json: false)
        #expect(bad.status == 1)
        #expect(!(bad.stdout + bad.stderr).contains("badUrlPw6"), "\(bad.stdout)")
        #expect(bad.stdout.contains("MQTT_URL"))
    }

    @Test("every invalid value is listed at once, with the variable and what was expected; exit 1")
    func everyKindOfInvalidValue() async throws {
        let bad: [String: (value: String, expected: String)] = [
            "EVENT_PROCESSING_BATCH_SIZE": ("abc", "whole number from 1 to 10000"),
            "BUSINESS_LOGIC_TIMEOUT_MS": ("5", "whole number from 10 to 600000"),
            "PATTERN_ANALYSIS_INTERVAL": ("-1", "whole number"),
            "WORKER_LINK_GRACE_SECONDS": ("soon", "whole number"),
            "GAP_REPORT_AFTER_SECONDS": ("0", "whole number from 1"),
            "BUSINESS_LOGIC_AUTOMATION": ("maybe", "true or false"),
            "MODEL_USAGE_TRACKING": ("2", "true or false"),
            "USER_NOTIFICATIONS_ENABLED": ("yes please", "true or false"),
            "CONNECTOR_LOGGING_ENABLED": ("enabled", "true or false"),
            "MQTT_URL": ("http://broker:1883", "scheme"),
            "REDIS_URL": ("redis://host:0", "port"),
            "WORKER_ID": ("a/b", "worker_id"),
            "MACHINE_ID": ("with space", "machine_id"),
            "CONNECTOR_ID": ("tab\there", "control characters"),
            "NOTIFICATION_SERVICE_URL": ("ftp://hooks.example/", "http:// or https://"),
            "RESOURCE_MANAGER_URL": ("not a url", "http:// or https://"),
            "OPSBUS_TOPIC_PREFIX": ("a/+/b", "wildcard"),
            "OPSBUS_LOG_LEVEL": ("loud", "expected one of"),
            "OPSBUS_QOS_OVERRIDES": ("job.progress=7", "QoS"),
            "OPSBUS_SPOOL": ("sometimes", "on or off"),
            "OPSBUS_SPOOL_MAX_BYTES": ("10", "≥ 1048576"),
            "OPSBUS_SPOOL_DURABILITY": ("weekly", "interval:<ms>"),
            "OPSBUS_ACK": ("nobody", "bridge, broker"),
            "OPSBUS_ACK_TIMEOUT": ("0", "seconds in (0, 3600]"),
            "MQTT_PASSWORD_FILE": ("/nonexistent/opsbus-secret", "No such file"),
        ]
        let report = try await check(environment: bad.mapValues(\.value))
        #expect(report.status == 1)
        #expect(report.json?["valid"]?.boolValue == false)
        #expect(report.stderr.contains("invalid configuration (\(bad.count) problems)"), "\(report.stderr)")
        for (name, expectation) in bad {
            let message = report.problem(name)
            #expect(message?.localizedCaseInsensitiveContains(expectation.expected) == true, "\(name): \(message ?? "not listed")")
            #expect(message?.contains("(from env)") == true, "\(name): \(message ?? "")")
        }
        #expect(report.problemVariables.count == bad.count, "\(report.problemVariables)")
        let text = try await check(environment: bad.mapValues(\.value), json: false)
        #expect(text.status == 1)
        #expect(text.stdout.contains("invalid configuration:"))
        for name in bad.keys { #expect(text.stdout.contains("  \(name): "), "\(name) not listed in the text report") }
    }

    @Test("config file mistakes and settings that conflict are reported")
    func fileAndCombinationProblems() async throws {
        let secret = try temporaryFile("fromFilePw7\n")
        let empty = try temporaryFile("")
        let file = try temporaryFile("""
            EVENT_PROCESSING_BATCH_SIZE=50
            this line has no equals sign
            NOT_A_SETTING=1
            """)
        defer { for path in [secret, empty, file] { try? FileManager.default.removeItem(atPath: path) } }
        let report = try await check(["--config", file], environment: [
            "MQTT_URL": "mqtt://processor:urlPw8@broker:1883", "MQTT_PASSWORD_FILE": secret,
            "REDIS_URL": "redis://opsbus@redis:6379", "REDIS_PASSWORD_FILE": empty,
            "NOTIFICATION_SECRET": "lonelyPw9",
        ])
        #expect(report.status == 1)
        #expect(report.problem("\(file):2")?.contains("KEY=value") == true, "\(report.problemVariables)")
        #expect(report.problem("\(file):3")?.contains("NOT_A_SETTING") == true)
        #expect(report.problem("MQTT_URL and MQTT_PASSWORD_FILE")?.contains("only one") == true, "\(report.problemVariables)")
        #expect(report.problem("REDIS_PASSWORD_FILE")?.contains("empty") == true)
        #expect(report.problem("NOTIFICATION_*")?.contains("NOTIFICATION_SERVICE_URL") == true)
        #expect(report.setting("EVENT_PROCESSING_BATCH_SIZE")! == ("50", "file"), "good lines still count")
        for leaked in ["fromFilePw7", "urlPw8", "lonelyPw9"] {
            #expect(!(report.stdout + report.stderr).contains(leaked))
        }
        let missing = try await check(["--config", "/nonexistent/opsbus.env"])
        #expect(missing.status == 1)
        #expect(missing.problem("--config")?.contains("/nonexistent/opsbus.env") == true)
        let passwordFileWithoutUser = try await check(environment: ["MQTT_URL": "mqtt://broker:1883", "MQTT_PASSWORD_FILE": secret])
        #expect(passwordFileWithoutUser.problem("MQTT_PASSWORD_FILE")?.contains("user name") == true)
        let good = try await check(environment: ["MQTT_URL": "mqtt://processor@broker:1883", "MQTT_PASSWORD_FILE": secret])
        #expect(good.status == 0, "\(good.stdout)")
        #expect(good.setting("MQTT_PASSWORD_FILE")! == (secret, "env"))
    }
}
