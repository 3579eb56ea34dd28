import Foundation
import OpsBusCore
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusPublisher
import OpsBusRedis
import Synchronization
import Testing

/// The repository's root (for the shipped `deploy/` files the tests run with).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// mosquitto with the project's `deploy/mosquitto/acl` and a password file, Redis with the project's
/// `deploy/redis/users.acl.template` (default user off): the security setup docker-compose ships.
final class SecuredServers: Sendable {
    static let passwords = [
        "w1": "pw-w1-Qx7", "w2": "pw-w2-Lm3", "processor": "pw-proc-Zt9", "bridge": "pw-bridge-Kd4",
        "publisher": "pw-pub-Hs2", "operator": "pw-op-Vn8",
    ]
    static let redisPassword = "redis-S3cret-Wq5"

    let broker: ServerProcess
    let redis: ServerProcess
    let directory: URL

    init() throws {
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("opsbus-sec-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let passwordFile = directory.appendingPathComponent("passwd")
        try MosquittoPasswordFile.write(
            users: Self.passwords.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, to: passwordFile)
        var mosquitto = MosquittoConfiguration()
        mosquitto.requireAuthentication(
            passwordFile: passwordFile, aclFile: repositoryRoot.appendingPathComponent("deploy/mosquitto/acl"))
        broker = try LocalMosquitto.start(configuration: mosquitto)

        let template = try String(
            contentsOf: repositoryRoot.appendingPathComponent("deploy/redis/users.acl.template"), encoding: .utf8)
        let aclFile = directory.appendingPathComponent("users.acl")
        // Redis ACL files allow no comments: drop them, as deploy/redis/entrypoint.sh does.
        let users = template.split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n") + "\n"
        try users.replacingOccurrences(of: "@OPSBUS_PASSWORD@", with: ">" + Self.redisPassword)
            .write(to: aclFile, atomically: true, encoding: .utf8)
        var redisConfiguration = RedisConfiguration()
        redisConfiguration.useACLFile(aclFile)
        redis = try LocalRedis.start(configuration: redisConfiguration)
    }

    func mqttURL(user: String? = nil, password: String? = nil) -> String {
        guard let user else { return "mqtt://127.0.0.1:\(broker.port)" }
        return "mqtt://\(user)\(password.map { ":" + $0 } ?? "")@127.0.0.1:\(broker.port)"
    }

    var redisURL: String { "redis://opsbus:\(Self.redisPassword)@127.0.0.1:\(redis.port)" }

    func client(_ user: String?, password: String? = nil, version: MQTTProtocolVersion = .v311) throws -> MQTTClient {
        var configuration = MQTTClientConfiguration(
            endpoint: try MQTTEndpoint(url: mqttURL(user: user, password: user.map { password ?? Self.passwords[$0]! })),
            clientID: "\(user ?? "anon")-\(UUID().uuidString.prefix(8))")
        configuration.protocolVersion = version
        configuration.connectTimeout = 10
        configuration.publishTimeout = 20
        return try MQTTClient(configuration: configuration)
    }

    /// A file holding `secret`, for `*_PASSWORD_FILE` (with the trailing newline `echo` would add).
    func secretFile(_ name: String, _ secret: String) throws -> String {
        let url = directory.appendingPathComponent(name)
        try (secret + "\n").write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    deinit {
        broker.stop(timeout: 3)
        redis.stop(timeout: 3)
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Collects the messages of one client.
final class MessageLog: Sendable {
    private let messages = Mutex<[MQTTMessage]>([])
    init(_ client: MQTTClient) {
        client.setMessageHandler { [self] message in
            self.messages.withLock { $0.append(message) }
            return .accept
        }
    }
    var all: [MQTTMessage] { messages.withLock { $0 } }
    var topics: [String] { all.map(\.topic) }
}

@Suite("Security: the shipped mosquitto ACL and Redis ACL user, authentication, secrets", .serialized)
struct SecurityTests {
    let servers: SecuredServers

    init() throws { servers = try SecuredServers() }

    @Test("a worker cannot publish as another worker: denied silently with MQTT 3.1.1, 0x87 with MQTT 5, never delivered")
    func workerCannotPublishAsAnotherWorker() async throws {
        let watcher = try servers.client("operator")
        let log = MessageLog(watcher)
        try await watcher.connect()
        _ = try await watcher.subscribe(["workers/#"], qos: .atLeastOnce)

        // MQTT 3.1.1 has no way to say "denied": mosquitto 2.0.11 drops a QoS 0 publish and PUBACKs a QoS 1 one.
        let w1 = try servers.client("w1")
        try await w1.connect()
        try await w1.publish(topic: "workers/w2/health", payload: Array("forged-q0".utf8), qos: .atMostOnce)
        try await w1.publish(topic: "workers/w2/health", payload: Array("forged-q1".utf8), qos: .atLeastOnce)
        try await w1.publish(topic: "resources/w2/allocated", payload: Array("forged-res".utf8), qos: .atLeastOnce)

        // MQTT 5: the PUBACK carries reason code 0x87 (not authorized), and the client reports it.
        let w1v5 = try servers.client("w1", version: .v5)
        try await w1v5.connect()
        await #expect {
            try await w1v5.publish(topic: "workers/w2/health", payload: Array("forged-v5".utf8), qos: .atLeastOnce)
        } throws: { error in
            guard case let .publishRejected(reasonCode, topic) = error as? MQTTError else { return false }
            return reasonCode == 0x87 && topic == "workers/w2/health"
        }

        // Its own topics pass. Each connection's marker comes after its denied publishes, and mosquitto handles one
        // connection's packets in order, so once both markers arrived the forged messages would have too.
        try await w1.publish(topic: "workers/w1/health", payload: Array("own-v3".utf8), qos: .atLeastOnce)
        try await w1v5.publish(topic: "workers/w1/health", payload: Array("own-v5".utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { log.all.filter { $0.topic == "workers/w1/health" }.count == 2 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(log.topics.allSatisfy { $0 == "workers/w1/health" }, "delivered: \(log.topics)")
        let forged = log.all.map { String(decoding: $0.payload, as: UTF8.self) }.filter { $0.hasPrefix("forged") }
        #expect(forged.isEmpty)
        await w1.disconnect()
        await w1v5.disconnect()
        await watcher.disconnect()
    }

    @Test("a worker's last will on another worker's topic is accepted at CONNECT (mosquitto 2.0.11) but never published")
    func forgedWillIsNeverPublished() async throws {
        let watcher = try servers.client("processor")
        let log = MessageLog(watcher)
        try await watcher.connect()
        _ = try await watcher.subscribe(["workers/#"], qos: .atLeastOnce)
        // A retained message the worker receives once connected and subscribed (its readiness signal).
        let bridge = try servers.client("bridge")
        try await bridge.connect()
        try await bridge.publish(topic: "acks/w1/ready", payload: Array("ready".utf8), qos: .atLeastOnce, retain: true)
        await bridge.disconnect()
        // mosquitto_sub as the worker, killed with SIGKILL so the broker publishes its will.
        func dieWithWill(topic: String, payload: String) async throws {
            let id = "w1-will-\(UUID().uuidString.prefix(6))"
            let child = try ChildProcess("/usr/bin/mosquitto_sub", [
                "-h", "127.0.0.1", "-p", "\(servers.broker.port)", "-u", "w1", "-P", SecuredServers.passwords["w1"]!,
                "-i", id, "-t", "acks/w1/ready", "-q", "1",
                "--will-topic", topic, "--will-payload", payload, "--will-qos", "1",
            ])
            // Connected (and so holding its will) once it printed the retained message.
            #expect(try await waitUntil { child.stdout.contains("ready") }, "stderr: \(child.stderr)")
            child.signal(SIGKILL)
            _ = try? await child.wait(timeout: 10)
        }
        try await dieWithWill(topic: "workers/w2/health", payload: "forged-will")
        try await dieWithWill(topic: "workers/w1/health", payload: "own-will")
        #expect(try await waitUntil { log.topics.contains("workers/w1/health") }, "the control will arrives")
        try await Task.sleep(for: .milliseconds(300))
        #expect(log.topics == ["workers/w1/health"], "delivered: \(log.topics)")
        await watcher.disconnect()
    }

    @Test("a worker cannot read other workers' acks or traffic: subscriptions are granted (mosquitto 2.0.11) but nothing arrives")
    func workerCannotReadOtherWorkersAcks() async throws {
        let w1 = try servers.client("w1")
        let log = MessageLog(w1)
        try await w1.connect()
        let granted = try await w1.subscribe(["acks/w2/#", "workers/#", "jobs/#", "acks/w1/#"], qos: .atLeastOnce)
        #expect(granted == [.atLeastOnce, .atLeastOnce, .atLeastOnce, .atLeastOnce], "granted silently, as pinned in aclDeniedSubscriptionIsGrantedByMosquitto2011")

        let bridge = try servers.client("bridge")
        try await bridge.connect()
        try await bridge.publish(topic: "acks/w2/s-1", payload: Array("other".utf8), qos: .atLeastOnce)
        let w2 = try servers.client("w2")
        try await w2.connect()
        try await w2.publish(topic: "workers/w2/health", payload: Array("w2-health".utf8), qos: .atLeastOnce)
        try await w2.publish(topic: "jobs/j-9/started", payload: Array("w2-job".utf8), qos: .atLeastOnce)
        // Markers after the denied deliveries, on the same connections.
        try await w2.publish(topic: "acks/w2/marker", payload: Array("w2-own-ack".utf8), qos: .atLeastOnce)
        try await bridge.publish(topic: "acks/w1/s-1", payload: Array("mine".utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { log.topics.contains("acks/w1/s-1") })
        try await Task.sleep(for: .milliseconds(300))
        #expect(log.topics == ["acks/w1/s-1"], "delivered to w1: \(log.topics)")
        // The processor user may not publish acks (only the bridge does): w1 never sees it.
        let processor = try servers.client("processor")
        try await processor.connect()
        try await processor.publish(topic: "acks/w1/s-2", payload: Array("forged-ack".utf8), qos: .atLeastOnce)
        try await bridge.publish(topic: "acks/w1/s-3", payload: Array("mine-2".utf8), qos: .atLeastOnce)
        #expect(try await waitUntil { log.topics.contains("acks/w1/s-3") })
        try await Task.sleep(for: .milliseconds(300))
        #expect(!log.topics.contains("acks/w1/s-2"), "delivered to w1: \(log.topics)")
        for client in [w1, w2, bridge, processor] { await client.disconnect() }
    }

    @Test("anonymous and wrong-password connections are refused; Redis refuses the default user")
    func unauthenticatedAccessIsRefused() async throws {
        for (user, password) in [(nil, nil), ("w1", "wrong-password"), ("nobody", "x")] as [(String?, String?)] {
            let client = try servers.client(user, password: password)
            await #expect {
                try await client.connect()
            } throws: { error in
                guard case let .connectionRefused(reason, _) = error as? MQTTError else { return false }
                return reason.isPermanent && !"\(error)".contains("wrong-password")
            }
            await client.disconnect()
        }
        // Redis: no password → NOAUTH; the opsbus user works.
        let port = Int(servers.redis.port)
        #expect(throws: (any Error).self) {
            try RedisConnection(endpoint: RedisEndpoint(host: "127.0.0.1", port: port)).command(["SET", "k", "v"])
        }
        let opsbus = try RedisConnection(endpoint: try RedisEndpoint(url: servers.redisURL))
        try opsbus.command(["SET", "k", "v"])
        // …but not administrative or dangerous commands.
        #expect(throws: (any Error).self) { try opsbus.command(["FLUSHALL"]) }
        #expect(throws: (any Error).self) { try opsbus.command(["CONFIG", "GET", "dir"]) }
    }

    @Test("EventPublisher.connectFromEnvironment reads MQTT_PASSWORD_FILE; a password in the URL and a file is an error; no secret in errors")
    func libraryReadsPasswordFile() async throws {
        let observer = try servers.client("operator")
        let log = MessageLog(observer)
        try await observer.connect()
        _ = try await observer.subscribe(["jobs/+/started"], qos: .atLeastOnce)
        let secret = SecuredServers.passwords["w1"]!
        let file = try servers.secretFile("lib-mqtt-w1", secret)
        let base = ["OPSBUS_SPOOL": "off", "OPSBUS_TOPIC_PREFIX": "", "OPSBUS_QOS_OVERRIDES": ""]

        // Anonymous access is off: connecting at all proves the password came from the file.
        let publisher = try await EventPublisher.connectFromEnvironment(
            base.merging(["MQTT_URL": servers.mqttURL(user: "w1"), "MQTT_PASSWORD_FILE": file]) { $1 }, logger: testLogger)
        _ = try await publisher.withJobContext("j-lib-file").started(workerAssigned: "w1")
        #expect(try await waitUntil(timeout: 60) { log.topics.contains("jobs/j-lib-file/started") }, "\(log.topics)")
        await publisher.disconnect()

        func failure(_ environment: [String: String]) async -> String? {
            do {
                let publisher = try await EventPublisher.connectFromEnvironment(base.merging(environment) { $1 }, logger: testLogger)
                await publisher.disconnect()
                return nil
            } catch {
                return "\(error)"
            }
        }
        let both = await failure(["MQTT_URL": servers.mqttURL(user: "w1", password: secret), "MQTT_PASSWORD_FILE": file])
        #expect(both?.contains("MQTT_URL and MQTT_PASSWORD_FILE") == true, "\(both ?? "connected")")
        let noUser = await failure(["MQTT_URL": servers.mqttURL(), "MQTT_PASSWORD_FILE": file])
        #expect(noUser?.contains("needs a user name") == true, "\(noUser ?? "connected")")
        let missing = await failure(["MQTT_URL": servers.mqttURL(user: "w1"), "MQTT_PASSWORD_FILE": file + ".missing"])
        #expect(missing?.contains("MQTT_PASSWORD_FILE") == true && missing?.contains(file + ".missing") == true,
                "\(missing ?? "connected")")
        let wrongFile = try servers.secretFile("lib-mqtt-wrong", "wrong-Secret-4u")
        let refused = await failure(["MQTT_URL": servers.mqttURL(user: "w1"), "MQTT_PASSWORD_FILE": wrongFile])
        #expect(refused != nil, "a wrong password in the file is refused")
        for message in [both, noUser, missing, refused].compactMap({ $0 }) {
            #expect(!message.contains(secret) && !message.contains("wrong-Secret-4u"), "secret in error: \(message)")
        }
        await observer.disconnect()
    }

    @Test("end to end with the shipped ACLs: worker w1 publishes, the processor (user processor) applies it, the bridge (user bridge) acks it to w1 only; passwords from *_FILE")
    func processorAndBridgeHaveWhatTheyNeed() async throws {
        let opsbus = try opsbusExecutable()
        let redisFile = try servers.secretFile("redis-password", SecuredServers.redisPassword)
        let redisURL = "redis://opsbus@127.0.0.1:\(servers.redis.port)"
        func environment(_ user: String) throws -> [String: String] {
            [
                "MQTT_URL": servers.mqttURL(user: user),
                "MQTT_PASSWORD_FILE": try servers.secretFile("mqtt-\(user)", SecuredServers.passwords[user]!),
                "REDIS_URL": redisURL, "REDIS_PASSWORD_FILE": redisFile, "OPSBUS_LOG_LEVEL": "info",
            ]
        }
        let processor = try ChildProcess(opsbus, ["processor"], environment: try environment("processor"))
        let journal = servers.directory.appendingPathComponent("journal").path
        let bridge = try ChildProcess(opsbus, ["bridge", "--journal", journal], environment: try environment("bridge"))
        defer {
            processor.signal(SIGKILL)
            bridge.signal(SIGKILL)
        }
        // Both subscribed before the event goes out: a first start has no broker session that would keep it.
        #expect(try await waitUntil(timeout: 90) {
            processor.stderr.contains("processor running") && bridge.stderr.contains("bridge subscribed")
        }, "processor: \(processor.stderr.suffix(2000))\nbridge: \(bridge.stderr.suffix(2000))")
        let spool = servers.directory.appendingPathComponent("spool").path
        let result = try await run(
            opsbus,
            ["publish", "job.started", "--job", "j-sec-1", "--worker", "w1", "--field", "worker_assigned=w1",
             "--spool", spool, "--ack-wait", "60"],
            environment: [
                "MQTT_URL": servers.mqttURL(user: "w1"),
                "MQTT_PASSWORD_FILE": try servers.secretFile("mqtt-w1", SecuredServers.passwords["w1"]!),
            ], timeout: 90)
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(!result.stderr.contains("not yet acknowledged"), "the bridge's ack reached w1: \(result.stderr)")
        let redis = try RedisConnection(endpoint: try RedisEndpoint(url: servers.redisURL))
        #expect(try await waitUntil(timeout: 90) {
            try redis.command(["HGET", "job:{j-sec-1}", "status"]).string == "processing"
        }, "processor stderr: \(processor.stderr.suffix(2000))")
        #expect(try redis.command(["XLEN", "events:jobs"]).int == 1, "bridge stderr: \(bridge.stderr.suffix(2000))")
        #expect(processor.isRunning && bridge.isRunning)
        for password in SecuredServers.passwords.values + [SecuredServers.redisPassword] {
            #expect(!processor.stderr.contains(password) && !bridge.stderr.contains(password) && !result.stderr.contains(password))
        }
        processor.signal(SIGTERM)
        bridge.signal(SIGTERM)
        _ = try await processor.wait(timeout: 30)
        _ = try await bridge.wait(timeout: 30)
    }
}

@Suite("Secrets never appear in output")
struct SecretOutputTests {
    static let mqttSecret = "mqttPw-9f1c2e"
    static let redisSecret = "redisPw-7a4b1d"
    static let webhookSecret = "hookSecret-3e8d0a"

    /// Every subcommand path, from `opsbus --help` (and `config check`).
    static func subcommands() async throws -> [[String]] {
        let help = try await run(try opsbusExecutable(), ["--help"])
        var names: [String] = []
        var inSection = false
        for line in help.stdout.split(separator: "\n") {
            if line.hasPrefix("SUBCOMMANDS:") { inSection = true; continue }
            // Entries are indented by two spaces; continuation lines by more.
            if inSection, line.hasPrefix("  "), !line.hasPrefix("   "), let word = line.split(separator: " ").first,
               word.allSatisfy({ $0.isLetter || $0 == "-" }) {
                names.append(String(word))
            }
        }
        return names.map { [$0] } + [["config", "check"]]
    }

    @Test("--help of every subcommand shows no secret, even with secrets in the environment")
    func helpShowsNoSecret() async throws {
        let commands = try await Self.subcommands()
        #expect(commands.count >= 15, "found \(commands)")
        #expect(commands.contains(["config"]) && commands.contains(["processor"]))
        for command in commands {
            let result = try await run(try opsbusExecutable(), command + ["--help"], environment: [
                "MQTT_URL": "mqtt://processor:\(Self.mqttSecret)@broker:1883",
                "REDIS_URL": "redis://opsbus:\(Self.redisSecret)@redis:6379",
                "NOTIFICATION_SECRET": Self.webhookSecret,
            ])
            #expect(result.status == 0, "\(command): \(result.stderr)")
            #expect(result.stdout.contains("USAGE"), "\(command)")
            for secret in [Self.mqttSecret, Self.redisSecret, Self.webhookSecret] {
                #expect(!(result.stdout + result.stderr).contains(secret), "\(command) --help shows a secret")
            }
        }
    }

    @Test("commands that fail to connect, at --log-level debug, never print the password (in the URL or from a *_FILE)")
    func failingCommandsShowNoSecret() async throws {
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("opsbus-secrets-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let mqttFile = directory.appendingPathComponent("mqtt").path
        let redisFile = directory.appendingPathComponent("redis").path
        try (Self.mqttSecret + "\n").write(toFile: mqttFile, atomically: true, encoding: .utf8)
        try (Self.redisSecret + "\n").write(toFile: redisFile, atomically: true, encoding: .utf8)
        // Port 1 on loopback: nothing listens, connections are refused at once.
        let inURL = [
            "MQTT_URL": "mqtt://processor:\(Self.mqttSecret)@127.0.0.1:1",
            "REDIS_URL": "redis://opsbus:\(Self.redisSecret)@127.0.0.1:1",
        ]
        let inFiles = [
            "MQTT_URL": "mqtt://processor@127.0.0.1:1", "MQTT_PASSWORD_FILE": mqttFile,
            "REDIS_URL": "redis://opsbus@127.0.0.1:1", "REDIS_PASSWORD_FILE": redisFile,
        ]
        // Both a URL password and a file: refused, naming both variables, showing neither secret.
        let both = inURL.merging(["MQTT_PASSWORD_FILE": mqttFile, "REDIS_PASSWORD_FILE": redisFile]) { $1 }
        let invalid = ["MQTT_URL": "mqtt://processor:\(Self.mqttSecret)@127.0.0.1:99999",
                       "REDIS_URL": "redis://opsbus:\(Self.redisSecret)@127.0.0.1:notaport"]
        let commands: [[String]] = [
            ["publish", "job.received", "--job", "j-1", "--no-spool"], ["job", "j-1"], ["jobs"], ["workers"],
            ["health"], ["streams"], ["processor"], ["bridge", "--journal", directory.appendingPathComponent("j").path],
            ["tail", "--count", "1"], ["config", "check"],
        ]
        var printedSomething = 0
        for environment in [inURL, inFiles, both, invalid] {
            for command in commands {
                let child = try ChildProcess(try opsbusExecutable(), command + ["--log-level", "debug"], environment: environment)
                // Services retry a refused connection: give them time to log a few attempts, then stop them.
                let deadline = Date().addingTimeInterval(5)
                while child.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
                if child.isRunning { child.signal(SIGKILL) }
                _ = try? await child.wait(timeout: 10)
                let text = child.stdout + child.stderr
                if !child.stderr.isEmpty { printedSomething += 1 }
                for secret in [Self.mqttSecret, Self.redisSecret] {
                    #expect(!text.contains(secret), "\(command) with \(environment.keys.sorted()) printed a secret:\n\(text)")
                }
                if environment == both, command == ["jobs"] {
                    #expect(child.stderr.contains("REDIS_PASSWORD_FILE"), "\(child.stderr)")
                }
            }
        }
        #expect(printedSomething >= commands.count * 3, "the commands must have said something for this test to mean anything")
    }
}
