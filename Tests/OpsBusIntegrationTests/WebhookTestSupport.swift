import Foundation
import Logging
import OpsBusCore
import OpsBusLocalServers
import OpsBusProcessor
import OpsBusRedis

/// The Python receiver in `Tests/Fixtures/webhook_receiver.py` on a loopback port: a real HTTP server that records
/// every request (logged on arrival) and can fail or hang the first requests.
final class WebhookReceiver: Sendable {
    let port: UInt16
    private let child: ChildProcess
    private let logFile: URL

    struct Request: Sendable {
        let index: Int
        let path: String
        /// `ok`, `fail` or `hang`.
        let outcome: String
        /// Lower-cased names.
        let headers: [String: String]
        let body: String
        /// Python's verdict on `X-Opsbus-Signature` (nil: no secret given or no header sent).
        let signatureValid: Bool?
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/webhook_receiver.py").path
    }

    /// Starts the receiver on `port` (a free one when nil; another one if that was taken meanwhile, as the tests
    /// run in parallel) and waits until it accepts connections.
    convenience init(
        port: UInt16? = nil, failFirst: Int = 0, hangFirst: Int = 0, hangSeconds: Double = 3600, secret: String? = nil,
        status: Int = 200, location: String? = nil
    ) async throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try await self.init(
                    fixedPort: try port ?? LoopbackPort.allocate(), failFirst: failFirst, hangFirst: hangFirst,
                    hangSeconds: hangSeconds, secret: secret, status: status, location: location)
                return
            } catch let error as TestFailure where port == nil && attempt < 4 && error.description.contains("in use") {
                continue
            }
        }
    }

    private init(
        fixedPort port: UInt16, failFirst: Int, hangFirst: Int, hangSeconds: Double, secret: String?,
        status: Int, location: String?
    ) async throws {
        let logFile = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-webhook-\(UUID().uuidString).jsonl")
        _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        var arguments = [
            Self.script, "--port", String(port), "--log", logFile.path, "--fail-first", String(failFirst),
            "--hang-first", String(hangFirst), "--hang-seconds", String(hangSeconds), "--status", String(status),
        ]
        if let secret { arguments += ["--secret", secret] }
        if let location { arguments += ["--location", location] }
        let child = try ChildProcess("/usr/bin/env", ["python3"] + arguments)
        self.port = port
        self.child = child
        self.logFile = logFile
        // The receiver's own line, printed after its bind: a connect test would also succeed on a server that
        // another test started on the same port meanwhile.
        let listening = try await waitUntil(timeout: 15) { child.stdout.contains("listening on") || !child.isRunning }
        guard listening, child.isRunning, child.stdout.contains("listening on") else {
            throw TestFailure("webhook receiver did not start on port \(port): \(child.stderr)")
        }
    }

    var url: String { "http://127.0.0.1:\(port)/hooks/opsbus" }

    /// Every request so far, in order of arrival.
    var requests: [Request] {
        let text = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line -> Request? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return Request(
                index: object["index"] as? Int ?? -1, path: object["path"] as? String ?? "",
                outcome: object["outcome"] as? String ?? "", headers: object["headers"] as? [String: String] ?? [:],
                body: object["body"] as? String ?? "", signatureValid: object["signature_valid"] as? Bool)
        }.sorted { $0.index < $1.index }
    }

    /// Requests the receiver answered with its `status`.
    var accepted: [Request] { requests.filter { $0.outcome == "ok" } }

    func stop() {
        child.signal(SIGKILL)
    }

    deinit {
        child.signal(SIGKILL)
        try? FileManager.default.removeItem(at: logFile)
    }
}

/// A redis-server of the test's own, stopped when the value goes away.
final class WebhookTestRedis: Sendable {
    let server: ServerProcess

    init() throws { server = try LocalRedis.start() }

    var endpoint: RedisEndpoint { try! RedisEndpoint(url: server.url) }

    func connection() throws -> RedisConnection { try RedisConnection(endpoint: endpoint) }

    deinit { server.stop(timeout: 3) }
}

/// A `WebhookDeliverer` running in a task of its own until `stop()`.
final class RunningDeliverer: Sendable {
    let deliverer: WebhookDeliverer
    private let task: Task<Void, Never>

    /// Small backoffs and a short poll interval so the suite stays fast.
    init(
        redis: RedisEndpoint, endpoints: [WebhookEndpoint], outbox: WebhookOutbox,
        backoff: Backoff = Backoff(initial: 0.05, maximum: 0.2, multiplier: 2, jitter: .proportional(0.2))
    ) throws {
        let deliverer = try WebhookDeliverer(
            redis: redis, endpoints: endpoints, outbox: outbox, backoff: backoff, pollInterval: 0.05, logger: testLogger)
        self.deliverer = deliverer
        task = Task.detached { await deliverer.run() }
    }

    var counters: WebhookCounters { deliverer.counters }

    /// Cancels the deliverer and waits until it has stopped.
    func stop() async {
        task.cancel()
        await task.value
    }

    deinit { task.cancel() }
}

extension WebhookOutbox {
    /// A JSON notification body for tests.
    static func testBody(_ id: String) -> [UInt8] {
        Array(#"{"notification_id":"\#(id)","event":"job.completed","job_id":"job-\#(id)"}"#.utf8)
    }
}

/// The value of `field` in the hash at `key`, as an integer (0 when absent).
func hashInteger(_ redis: RedisConnection, _ key: String, _ field: String) throws -> Int {
    Int(try redis.command(["HGET", key, field]).int ?? 0)
}
