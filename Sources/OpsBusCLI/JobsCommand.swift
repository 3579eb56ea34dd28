import ArgumentParser
import Foundation
import Logging
import OpsBusCore
import OpsBusProcessor
import OpsBusRedis

struct JobsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "List jobs from Redis by status and/or worker, newest activity first.",
        discussion: """
            Reads the processor's index sets (jobs:status:<status>, jobs:worker:<worker>) and each job's hash; \
            never KEYS or SCAN. Columns: job id, status, attempt, worker, error type, time of the newest event \
            and its age. `opsbus job <id>` shows one job's full state and timeline.
            Statuses: received, processing, completed, failed, retry_scheduled, dead_lettered.
            Examples:
              opsbus jobs --status failed                 the 50 most recent failures
              opsbus jobs --worker gpu-7 --limit 0        everything worker gpu-7 ran
              opsbus jobs --status processing --json      for jq: {matched, shown, jobs: [...]}
            """)

    @Option(help: "Only jobs in this status.")
    var status: String?

    @Option(help: "Only jobs this worker ran.")
    var worker: String?

    @Option(help: "Show at most this many (newest first); 0 shows all.")
    var limit: Int = 50

    @Flag(help: "Print one JSON document {status, worker, matched, shown, jobs} instead of a table.")
    var json = false

    @Flag(name: .customLong("no-colour"), help: "Never colour the output (colour is used only on a terminal).")
    var noColour = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if let status, !JobIndex.statuses.contains(status) {
            let known = JobIndex.statuses.joined(separator: ", ")
            throw ValidationError("--status: unknown status '\(status)'; expected one of: \(known)")
        }
        if let worker {
            do { _ = try Identifier(validating: worker, field: "worker_id") } catch {
                throw ValidationError("--worker: \(error)")
            }
        }
        if limit < 0 { throw ValidationError("--limit must be 0 (no limit) or positive, not \(limit)") }
    }

    func run() async throws {
        let logger = try common.makeLogger("opsbus.jobs")
        let redis = try InspectionConnection.open(connection, logger: logger)
        let query = JobQuery(status: status, worker: worker, limit: limit)
        let listing: JobListing
        do { listing = try JobIndex.list(redis: redis, keys: RedisKeys(), query: query) } catch {
            throw InspectionConnection.failure(error, endpoint: redis.endpoint)
        }
        if json {
            output(listing.json(query: query).serialized())
            return
        }
        let now = EventTimestamp.now()
        let style = TextStyle(enabled: !noColour && TextStyle.stdoutIsTerminal)
        var table = TextTable(["JOB", "STATUS", "ATTEMPT", "WORKER", "ERROR", "UPDATED", "AGE"])
        for job in listing.jobs {
            let age = job.updated.map {
                ProcessorHealth.describe(seconds: Double(now.millisecondsSinceEpoch - $0.millisecondsSinceEpoch) / 1000)
            }
            table.add([
                .plain(job.id), .init(job.status, style.tint(forJobStatus: job.status)),
                .plain(job.attempt.map(String.init) ?? "-"), .plain(job.workerID ?? "-"),
                .init(job.errorType ?? "-", job.errorType == nil ? nil : .red),
                .plain(job.updatedAt ?? "-"), .plain(age ?? "-"),
            ])
        }
        let scope = [status.map { "status \($0)" }, worker.map { "worker \($0)" }].compactMap { $0 }
        let what = scope.isEmpty ? "jobs" : "jobs (\(scope.joined(separator: ", ")))"
        if listing.jobs.isEmpty {
            output("no \(what)")
            return
        }
        output(table.render(style: style))
        let shown = listing.jobs.count < listing.matched
            ? "\(listing.jobs.count) of \(listing.matched) \(what), newest first (--limit 0 for all)"
            : "\(listing.matched) \(what)"
        output(style.paint(shown, .dim))
    }
}

// MARK: - Shared by jobs, workers and health

/// Opening the Redis connection the inspection commands read from, with errors that name the (password-masked)
/// endpoint.
enum InspectionConnection {
    static func open(_ options: ConnectionOptions, logger: Logger) throws -> RedisConnection {
        let endpoint = try options.redisEndpoint()
        do {
            return try RedisConnection(endpoint: endpoint, connectTimeout: 5, commandTimeout: 10, logger: logger)
        } catch {
            throw CLIError(message(endpoint: endpoint, error: error))
        }
    }

    /// `Redis unreachable at <masked URL>: <reason> (…)`: what to fix and where.
    static func message(endpoint: RedisEndpoint, error: RedisError) -> String {
        let reason = ProcessorHealth.unreachableReason(endpoint: endpoint, error: error)
        return error.isConnectionFailure ? reason + " (check --redis-url / REDIS_URL and that Redis runs)" : reason
    }

    /// A read that failed half-way.
    static func failure(_ error: InspectionError, endpoint: RedisEndpoint) -> CLIError {
        guard let redisError = error.redisError else { return CLIError("\(error)") }
        return CLIError(message(endpoint: endpoint, error: redisError))
    }
}

/// ANSI colour for terminals only.
struct TextStyle {
    enum Tint: String {
        case red = "31", green = "32", yellow = "33", blue = "34", magenta = "35", cyan = "36", bold = "1", dim = "2"
    }

    var enabled: Bool

    /// Colour only when stdout is a terminal, NO_COLOR (https://no-color.org) is unset or empty, and TERM is not
    /// `dumb`.
    static var stdoutIsTerminal: Bool {
        let environment = ProcessInfo.processInfo.environment
        return isatty(STDOUT_FILENO) == 1 && (environment["NO_COLOR"] ?? "").isEmpty && environment["TERM"] != "dumb"
    }

    func paint(_ text: String, _ tint: Tint?) -> String {
        guard enabled, let tint else { return text }
        return "\u{1B}[\(tint.rawValue)m\(text)\u{1B}[0m"
    }

    func tint(forJobStatus status: String) -> Tint? {
        switch status {
        case "completed": .green
        case "failed", "dead_lettered": .red
        case "retry_scheduled": .yellow
        case "processing": .cyan
        case "received": .blue
        default: nil
        }
    }

    func tint(forWorkerStatus status: String, stale: Bool) -> Tint? {
        if stale { return .yellow }
        switch status {
        case "online": return .green
        case "busy": return .cyan
        case "offline": return .red
        case "unreachable": return .yellow
        case "deregistered": return .dim
        default: return nil
        }
    }

    func tint(for health: HealthStatus) -> Tint {
        switch health {
        case .healthy: .green
        case .degraded: .yellow
        case .unhealthy: .red
        }
    }
}

/// Left-aligned columns, two spaces apart; widths come from the plain text so colour codes do not skew them.
struct TextTable {
    struct Cell {
        var text: String
        var tint: TextStyle.Tint?
        init(_ text: String, _ tint: TextStyle.Tint? = nil) {
            self.text = text
            self.tint = tint
        }
        static func plain(_ text: String) -> Cell { Cell(text) }
    }

    let header: [String]
    private(set) var rows: [[Cell]] = []

    init(_ header: [String]) { self.header = header }

    mutating func add(_ row: [Cell]) { rows.append(row) }

    func render(style: TextStyle) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.text.count)
            }
        }
        func line(_ cells: [Cell]) -> String {
            var parts: [String] = []
            for (index, cell) in cells.enumerated() {
                let isLast = index == cells.count - 1
                let padding = isLast ? "" : String(repeating: " ", count: max(0, widths[index] - cell.text.count))
                parts.append(style.paint(cell.text, cell.tint) + padding)
            }
            var text = parts.joined(separator: "  ")
            while text.hasSuffix(" ") { text.removeLast() }  // empty last cells leave no trailing blanks
            return text
        }
        return ([line(header.map { Cell($0, .bold) })] + rows.map(line)).joined(separator: "\n")
    }
}
