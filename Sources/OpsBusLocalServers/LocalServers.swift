import Foundation

/// A real mosquitto broker on a free loopback port, configured the way opsbus needs a broker:
/// persistence on (so durable sessions survive a restart), no per-client queue count limit (mosquitto's default of
/// 1000 silently drops the newest messages for a slow or offline durable subscriber), a byte cap instead.
public struct MosquittoConfiguration: Sendable {
    /// Seconds between persistence snapshots; mosquitto writes its database only then and on clean exit.
    public var autosaveInterval: Int = 1
    public var persistence: Bool = true
    /// 0 means no count limit.
    public var maxQueuedMessages: Int = 0
    public var maxQueuedBytes: Int = 512 * 1024 * 1024
    public var maxInflightMessages: Int = 20
    /// Extra `mosquitto.conf` lines (e.g. `password_file`, `acl_file`, TLS listeners).
    public var extraLines: [String] = []
    /// More IPv4 addresses to listen on, on the same port as 127.0.0.1 (e.g. a veth address the lossy-link tests
    /// reach from another network namespace). Each must already be configured on an interface, or mosquitto exits.
    public var additionalListenAddresses: [String] = []

    public init() {}
}

public enum LocalMosquitto {
    public static func start(
        configuration: MosquittoConfiguration = .init(), attempts: Int = 3
    ) throws(LocalServerError) -> ServerProcess {
        let binary = try BinaryLocator.find("mosquitto", installHint: "apt-get install mosquitto (or scripts/setup)")
        var lastError: LocalServerError = .noFreePort(reason: "no attempt made")
        for _ in 0..<max(1, attempts) {
            let port = try LoopbackPort.allocate()
            let directory = try BinaryLocator.makeDirectory(prefix: "mosquitto")
            var lines = [
                "listener \(port) 127.0.0.1",
                "allow_anonymous true",
                "persistence \(configuration.persistence)",
                "persistence_location \(directory.path)/",
                "autosave_interval \(configuration.autosaveInterval)",
                "max_queued_messages \(configuration.maxQueuedMessages)",
                "max_queued_bytes \(configuration.maxQueuedBytes)",
                "max_inflight_messages \(configuration.maxInflightMessages)",
                // Without it the broker's sockets use Nagle's algorithm: small packets wait for the peer's (delayed)
                // ACK, tens of milliseconds on loopback (BENCHMARKS.md, latency).
                "set_tcp_nodelay true",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            ]
            lines += configuration.additionalListenAddresses.map { "listener \(port) \($0)" }
            if getuid() == 0 { lines.append("user root") }  // keep access to our temp dir
            lines += configuration.extraLines
            let configFile = directory.appendingPathComponent("mosquitto.conf")
            do {
                try (lines.joined(separator: "\n") + "\n").write(to: configFile, atomically: true, encoding: .utf8)
            } catch {
                throw .launchFailed(name: "mosquitto", reason: "cannot write \(configFile.path): \(error)")
            }
            let server = ServerProcess(
                name: "mosquitto", executable: binary, arguments: ["-c", configFile.path], port: port,
                directory: directory, logFile: directory.appendingPathComponent("mosquitto.log"))
            do {
                try server.start()
                return server
            } catch {
                lastError = error  // most likely the port was taken between allocate() and bind; try another
            }
        }
        throw lastError
    }
}

/// A real redis-server on a free loopback port with AOF on (so a restart keeps the data) and RDB snapshots off.
public struct RedisConfiguration: Sendable {
    public var appendOnly: Bool = true
    /// `always`, `everysec` or `no`.
    public var appendFsync: String = "everysec"
    public var extraLines: [String] = []
    public init() {}
}

public enum LocalRedis {
    public static func start(
        configuration: RedisConfiguration = .init(), attempts: Int = 3
    ) throws(LocalServerError) -> ServerProcess {
        let binary = try BinaryLocator.find("redis-server", installHint: "apt-get install redis-server (or scripts/setup)")
        var lastError: LocalServerError = .noFreePort(reason: "no attempt made")
        for _ in 0..<max(1, attempts) {
            let port = try LoopbackPort.allocate()
            let directory = try BinaryLocator.makeDirectory(prefix: "redis")
            let lines = [
                "port \(port)",
                "bind 127.0.0.1",
                "protected-mode no",
                "daemonize no",
                "dir \(directory.path)",
                "save \"\"",
                "appendonly \(configuration.appendOnly ? "yes" : "no")",
                "appendfsync \(configuration.appendFsync)",
                "loglevel notice",
            ] + configuration.extraLines
            let configFile = directory.appendingPathComponent("redis.conf")
            do {
                try (lines.joined(separator: "\n") + "\n").write(to: configFile, atomically: true, encoding: .utf8)
            } catch {
                throw .launchFailed(name: "redis-server", reason: "cannot write \(configFile.path): \(error)")
            }
            let server = ServerProcess(
                name: "redis-server", executable: binary, arguments: [configFile.path], port: port,
                directory: directory, logFile: directory.appendingPathComponent("redis.log"),
                // NOAUTH: a password is set, and the server has loaded its data (else it would say LOADING).
                probe: (request: "PING\r\n", readyReplies: ["+PONG", "-NOAUTH"]))
            do {
                try server.start()
                return server
            } catch {
                lastError = error
            }
        }
        throw lastError
    }
}

extension ServerProcess {
    /// `mqtt://127.0.0.1:<port>` or `redis://127.0.0.1:<port>`, by server kind.
    public var url: String {
        name == "mosquitto" ? "mqtt://127.0.0.1:\(port)" : "redis://127.0.0.1:\(port)"
    }
}
