import Foundation
import OpsBusCore

/// One event the pump reported as accepted (durable in its spool): a stdout line
/// `{"accepted":"<event_id>","session_id":"…","seq":N,"job_id":"…","event_type":"…"}`.
struct AcceptedEvent: Hashable, Sendable {
    var eventID: String
    var sessionID: String
    var seq: Int64
    var jobID: String
    var eventType: String
}

/// The pump's last stdout line, `{"drained":true|false,"pending":K}`.
struct DrainResult: Sendable {
    var drained: Bool
    var pending: Int64
}

/// `opsbus pump` running inside the edge namespace (the edge publisher under test), with its stdout parsed.
final class EdgePump: Sendable {
    let child: ChildProcess
    let arguments: [String]

    struct Options {
        var workerID: String
        var spool: URL
        var jobs = 100
        var firstJob = 0
        var jobPrefix = "pump"
        var rate: Double = 0
        var ackTimeout: Double?
        var drainTimeout: Double?
        var extra: [String] = []
    }

    /// Starts the pump in `namespace`, connecting to mqtt://`host`:`port` (the root end of the veth, or the proxy).
    init(in namespace: Namespace, host: String, port: UInt16, _ options: Options) throws(LinkTestError) {
        var arguments = [
            "pump", "--mqtt-url", "mqtt://\(host):\(port)", "--worker-id", options.workerID, "--spool", options.spool.path,
            "--jobs", String(options.jobs), "--first-job", String(options.firstJob), "--job-prefix", options.jobPrefix,
            "--rate", String(options.rate), "--log-level", "info",
        ]
        if let seconds = options.ackTimeout { arguments += ["--ack-timeout", String(seconds)] }
        if let seconds = options.drainTimeout { arguments += ["--drain-timeout", String(seconds)] }
        // These tests are about the link, not power loss: without an fdatasync per event (still safe against
        // kill -9), a CI box full of fsyncing test servers does not slow the pump to a crawl.
        if !options.extra.contains("--durability") { arguments += ["--durability", "never"] }
        arguments += options.extra
        self.arguments = arguments
        let command = namespace.exec(try opsbusExecutable(), arguments)
        child = try ChildProcess("opsbus pump (\(options.workerID))", command.executable, command.arguments)
    }

    /// Every accepted line printed so far (a partial last line, e.g. after kill -9, is ignored).
    var accepted: [AcceptedEvent] {
        lines.compactMap { object in
            guard let id = object["accepted"]?.stringValue, let session = object["session_id"]?.stringValue,
                  let seq = object["seq"]?.intValue
            else { return nil }
            return AcceptedEvent(eventID: id, sessionID: session, seq: seq, jobID: object["job_id"]?.stringValue ?? "",
                                 eventType: object["event_type"]?.stringValue ?? "")
        }
    }

    var drainResult: DrainResult? {
        for object in lines.reversed() {
            if let drained = object["drained"]?.boolValue {
                return DrainResult(drained: drained, pending: object["pending"]?.intValue ?? -1)
            }
        }
        return nil
    }

    /// The highest job index (the number after the prefix) among accepted events; -1 before the first.
    var lastAcceptedJobIndex: Int {
        accepted.compactMap { Int($0.jobID.split(separator: "-").last ?? "") }.max() ?? -1
    }

    /// Complete stdout lines that parse as JSON objects.
    private var lines: [JSONObject] {
        let text = child.stdout
        let complete = text.hasSuffix("\n") ? Substring(text) : text[..<(text.lastIndex(of: "\n") ?? text.startIndex)]
        return complete.split(separator: "\n").compactMap { line in
            (try? JSONValue.parse(Array(line.utf8)))?.objectValue
        }
    }

    /// Waits until at least `count` events were accepted (fails early if the pump exits).
    func waitForAccepted(_ count: Int, timeout: Double) async throws {
        let reached = try await waitUntil(timeout: timeout) { accepted.count >= count || !child.isRunning }
        guard reached, accepted.count >= count else {
            throw LinkTestError.timedOut("""
                \(child.label) accepted \(accepted.count) of \(count) events within \(timeout) s \
                (running: \(child.isRunning)); stderr tail:
                \(child.stderrTail(60))
                \(child.isRunning ? child.threadBacktraces() : "")
                """)
        }
    }

    /// Waits for the pump to exit and returns its status (0 = drained, 3 = not drained).
    func finish(timeout: Double) async throws -> Int32 { try await child.wait(timeout: timeout) }
}
