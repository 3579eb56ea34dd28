import Foundation
import Logging
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusRedis
import Testing

/// A mosquitto and a redis-server of the test's own, on free ports, stopped when the value goes away.
final class TestServers: Sendable {
    let broker: ServerProcess
    let redis: ServerProcess

    init() throws {
        broker = try LocalMosquitto.start()
        redis = try LocalRedis.start()
    }

    var mqttURL: String { broker.url }
    var redisURL: String { redis.url }
    var mqttEndpoint: MQTTEndpoint { try! MQTTEndpoint(url: broker.url) }
    var redisEndpoint: RedisEndpoint { try! RedisEndpoint(url: redis.url) }

    func redisConnection() throws -> RedisConnection {
        try RedisConnection(endpoint: redisEndpoint)
    }

    deinit {
        broker.stop(timeout: 3)
        redis.stop(timeout: 3)
    }
}

/// Multiplies every `waitUntil` deadline: `OPSBUS_TEST_WAIT_SCALE`, default 2. When the whole suite starts at once on
/// 2 cores (about 180 servers and 90 suites), single tests that take 5 s alone were measured taking over 60 s; a
/// wait that only fails when the machine stalls is a flake, not a finding. A real failure still fails, later.
let waitScale: Double = ProcessInfo.processInfo.environment["OPSBUS_TEST_WAIT_SCALE"].flatMap(Double.init) ?? 2

/// Polls `condition` until it holds or `timeout` × `waitScale` passes; the machine is shared and slow, so deadlines
/// are generous and nothing here measures speed.
/// The default deadline is long on purpose: CI machines have 2 cores shared by many concurrent test servers, and a
/// condition that holds returns at once anyway.
func waitUntil(timeout: Double = 60, _ description: String = "condition",
               _ condition: () throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout * waitScale)
    while Date() < deadline {
        if try condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}

/// The built `opsbus` executable (swift build puts it beside the test bundle).
func opsbusExecutable() throws -> String {
    var candidates: [String] = []
    let bundleDirectory = Bundle.main.bundleURL.deletingLastPathComponent()
    candidates.append(bundleDirectory.appendingPathComponent("opsbus").path)
    for argument in CommandLine.arguments where argument.contains(".build") {
        var url = URL(fileURLWithPath: argument)
        while url.path != "/" && !url.lastPathComponent.hasSuffix(".xctest") { url.deleteLastPathComponent() }
        candidates.append(url.deletingLastPathComponent().appendingPathComponent("opsbus").path)
    }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    candidates.append(root.appendingPathComponent(".build/debug/opsbus").path)
    for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    throw TestFailure("opsbus executable not found (looked in \(candidates)); build with `swift build --build-tests`")
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process with captured output, for running `opsbus` and `mosquitto_sub` as real peers.
final class ChildProcess: @unchecked Sendable {
    let process = Process()
    private let stdoutFile: URL
    private let stderrFile: URL

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        let directory = FileManager.default.temporaryDirectory
        let name = UUID().uuidString
        stdoutFile = directory.appendingPathComponent("opsbus-test-\(name).out")
        stderrFile = directory.appendingPathComponent("opsbus-test-\(name).err")
        _ = FileManager.default.createFile(atPath: stdoutFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for key in ["MQTT_URL", "REDIS_URL", "WORKER_ID", "MACHINE_ID", "SERVICE_TYPE", "CONNECTOR_ID"] { env[key] = nil }
        process.environment = env.merging(environment) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: stdoutFile)
        process.standardError = try FileHandle(forWritingTo: stderrFile)
        process.standardInput = FileHandle.nullDevice
        try ChildLauncher.run(process)
    }

    var stdout: String { (try? String(contentsOf: stdoutFile, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }

    /// Waits for exit (killing the process after `timeout`) and returns the exit status.
    @discardableResult
    func wait(timeout: Double = 60) async throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestFailure("\(process.executableURL?.lastPathComponent ?? "?") did not exit within \(timeout) s; stderr: \(stderr)")
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    func signal(_ number: Int32) { if process.isRunning { kill(process.processIdentifier, number) } }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: stdoutFile)
        try? FileManager.default.removeItem(at: stderrFile)
    }
}

/// Runs a command to completion and returns (status, stdout, stderr).
func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 60)
    async throws -> (status: Int32, stdout: String, stderr: String)
{
    let child = try ChildProcess(executable, arguments, environment: environment)
    let status = try await child.wait(timeout: timeout)
    return (status, child.stdout, child.stderr)
}

let testLogger: Logger = {
    var logger = Logger(label: "opsbus.tests")
    logger.logLevel = .warning
    return logger
}()

/// Every key of the current database with its type, contents and TTL, for "these two ways of
/// applying leave the same state" checks. Stream entries are compared by their fields (their ids are times).
func redisState(_ redis: RedisConnection) throws -> [String: String] {
    func strings(_ reply: RedisReply) -> [String] { reply.array?.compactMap(\.string) ?? [] }
    var state: [String: String] = [:]
    for key in strings(try redis.command(["KEYS", "*"])) {
        let type = try redis.command(["TYPE", key]).string ?? ""
        let contents: [String] = switch type {
        case "hash": try redis.command(["HGETALL", key]).hashDictionary().sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        case "zset": strings(try redis.command(["ZRANGE", key, "0", "-1", "WITHSCORES"]))
        case "list": strings(try redis.command(["LRANGE", key, "0", "-1"]))
        case "set": strings(try redis.command(["SMEMBERS", key])).sorted()
        case "stream": (try redis.command(["XRANGE", key, "-", "+"]).array ?? []).map { "\(strings($0.array?.last ?? .null))" }
        default: [try redis.command(["GET", key]).string ?? ""]
        }
        // The TTL's order of magnitude: two runs a few milliseconds apart agree on it.
        let ttl = try redis.command(["TTL", key]).int ?? -1
        state[key] = "\(type)\(ttl >= 0 ? " TTL ~1e\(String(ttl).count - 1) s" : "") \(contents)"
    }
    return state
}
