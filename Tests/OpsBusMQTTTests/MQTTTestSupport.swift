import Foundation
import OpsBusLocalServers
import Synchronization
import Testing

@testable import OpsBusMQTT

/// Runs `body` (which launches child processes) with SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 unblocked on this thread.
///
/// Swift concurrency runs on libdispatch worker threads, which block those signals, and a child launched by
/// `Process` inherits the launching thread's signal mask: a mosquitto started from a test would ignore SIGTERM, so
/// `ServerProcess.stop()` would wait its full timeout and then SIGKILL it (no clean shutdown, no saved sessions).
func withTerminationSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
    var signals = sigset_t()
    sigemptyset(&signals)
    for signal in [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2] { sigaddset(&signals, signal) }
    var previous = sigset_t()
    pthread_sigmask(SIG_UNBLOCK, &signals, &previous)
    defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
    return try body()
}

/// `LocalMosquitto.start` with a child that honours SIGTERM (see `withTerminationSignalsUnblocked`).
func startBroker(_ configuration: MosquittoConfiguration = .init()) throws -> ServerProcess {
    try withTerminationSignalsUnblocked { try LocalMosquitto.start(configuration: configuration) }
}

extension ServerProcess {
    /// `start()` with a child that honours SIGTERM.
    func startAgain() throws { try withTerminationSignalsUnblocked { try start() } }
}

/// Polls `condition` every 20 ms until it holds or `timeout` seconds pass (generous by default: the test machine is a
/// noisy 2-core box). Returns whether it held.
func eventually(timeout: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// Thread-safe append-only list, for things observed on the network thread.
final class Collector<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])
    func append(_ item: Element) { items.withLock { $0.append(item) } }
    var all: [Element] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }
}

func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
func bytes(_ string: String) -> [UInt8] { Array(string.utf8) }

/// A configuration for a broker on 127.0.0.1 with fast reconnects and short timeouts suited to tests.
func testConfiguration(port: UInt16, clientID: String, cleanSession: Bool = true) -> MQTTClientConfiguration {
    MQTTClientConfiguration(
        endpoint: MQTTEndpoint(host: "127.0.0.1", port: Int(port)),
        clientID: clientID,
        keepAlive: 10,
        cleanSession: cleanSession,
        reconnect: MQTTReconnectPolicy(initialDelay: 0.1, maxDelay: 0.5, multiplier: 2, jitter: 0.2),
        connectTimeout: 10,
        publishTimeout: 20)
}

/// A unique-enough client id per test run (brokers are per test, but ids also show up in logs).
func uniqueID(_ prefix: String) -> String { "\(prefix)-\(UUID().uuidString.prefix(8))" }

/// Collects connection events of a client in the background.
final class EventRecorder: Sendable {
    let events = Collector<MQTTConnectionEvent>()
    private let task: Mutex<Task<Void, Never>?> = Mutex(nil)

    init(_ client: MQTTClient) {
        let events = self.events
        let stream = client.connectionEvents
        task.withLock { $0 = Task { for await event in stream { events.append(event) } } }
    }

    var connectedCount: Int {
        events.all.filter { if case .connected = $0 { return true } else { return false } }.count
    }
    var disconnectedCount: Int {
        events.all.filter { if case .disconnected = $0 { return true } else { return false } }.count
    }
    var reconnectingCount: Int {
        events.all.filter { if case .reconnecting = $0 { return true } else { return false } }.count
    }
    var sessionPresentFlags: [Bool] {
        events.all.compactMap { if case let .connected(present) = $0 { return present } else { return nil } }
    }
}

/// `mosquitto_sub` as an independent real peer. Runs with `-d` so we can see its SUBACK before publishing.
final class MosquittoSubProcess: Sendable {
    private let process: Process
    let outputFile: URL

    init(port: UInt16, topic: String, count: Int, qos: Int = 1, clientID: String) throws {
        outputFile = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mqtt-sub-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: outputFile.path, contents: nil)
        let output = try FileHandle(forWritingTo: outputFile)
        process = Process()
        // stdbuf: unbuffered stdout, so the SUBACK debug line is visible while mosquitto_sub runs.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/stdbuf")
        process.arguments = [
            "-o0", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", "\(port)", "-t", topic, "-q", "\(qos)", "-C", "\(count)", "-v", "-d",
            "-i", clientID, "-W", "60",
        ]
        process.standardOutput = output
        process.standardError = output
        try ChildLauncher.run(process)
    }

    var output: String { (try? String(contentsOf: outputFile, encoding: .utf8)) ?? "" }
    var isSubscribed: Bool { output.contains("received SUBACK") }
    var hasExited: Bool { !process.isRunning }

    /// `topic payload` lines (the `-v` output), without the `-d` debug lines.
    func messageLines(topicPrefix: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { $0.hasPrefix(topicPrefix) }
    }

    func terminate() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: outputFile)
    }
}

/// A mosquitto on a port we choose, for "client starts before the broker" tests (`LocalMosquitto` picks its own).
final class FixedPortBroker: Sendable {
    private let process: Process
    let port: UInt16

    init(port: UInt16) throws {
        self.port = port
        let directory = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("opsbus-mqtt-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("mosquitto.conf")
        var lines = ["listener \(port) 127.0.0.1", "allow_anonymous true", "log_dest stdout"]
        if getuid() == 0 { lines.append("user root") }
        try (lines.joined(separator: "\n") + "\n").write(to: config, atomically: true, encoding: .utf8)
        let log = directory.appendingPathComponent("mosquitto.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/mosquitto")
        process.arguments = ["-c", config.path]
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = process.standardOutput
        try ChildLauncher.run(process)
    }

    func waitUntilListening() async -> Bool {
        await eventually { LoopbackPort.isAcceptingConnections(port) }
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// A TCP listener on 127.0.0.1 that never accepts: the kernel completes the handshake, our CONNECT is never answered.
/// Stands in for a hung broker (or a black hole after the TCP handshake) without root or netem.
final class SilentListener: Sendable {
    let port: UInt16
    private let fd: Int32

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw CocoaError(.featureUnsupported)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
        self.fd = fd
    }

    deinit { close(fd) }
}
