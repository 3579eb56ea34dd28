import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusProcessor
import OpsBusRedis

struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "The processor's health checks from Redis, with a verdict: healthy, degraded or unhealthy.",
        discussion: """
            Shows events per minute (last minute, average over 5 and 15 minutes), the action and webhook success \
            rates, the last event's time and age, event types and outcomes seen, dead letters, jobs per status and \
            workers per status. The verdict is unhealthy when no event arrived for --idle-unhealthy seconds while \
            workers claim to be online, more than half the events are dead-lettered, or most actions fail; \
            degraded for milder versions of these (e.g. dead-letter rate above --dead-letter-rate), for stale \
            workers, and for gaps in publisher sessions (events that never arrived: a seq missing for longer than \
            the processor's GAP_REPORT_AFTER_SECONDS; listed with owner, session, missing range and age). Rates \
            are judged only over at least 20 events. Also shown: gap counters per publisher (opened, closed by a \
            late delivery, expired, dropped by the publisher itself and declared with prev_seq), unreachable \
            workers and link counters (last wills, reconnects, restarts, grace timeouts, stale wills), and the \
            latest recommendations of the processor's pattern analysis (PATTERN_ANALYSIS_INTERVAL: failure rates, \
            longer timeouts, more GPU memory, models to precache), most severe first; they do not change the verdict.
            Exit status: 0 healthy, 1 degraded, 2 unhealthy or Redis unreachable (monitoring-plugin convention).
            Examples:
              opsbus health                         a readable summary
              opsbus health --json | jq .verdict    for scripts and monitoring
              opsbus health --redis-url redis://:secret@cache:6379/2
            """)

    @Flag(help: "Print one JSON document (verdict, reasons, events, actions, webhooks, dead_letters, jobs, workers, links, sequence, recommendations).")
    var json = false

    @Option(help: "Seconds of silence after which a worker that claims to be up counts as stale.")
    var staleAfter: Double = 60

    @Option(help: "Seconds without any event, while workers are online, after which the verdict is degraded.")
    var idleDegraded: Double = 300

    @Option(help: "Seconds without any event, while workers are online, after which the verdict is unhealthy.")
    var idleUnhealthy: Double = 900

    @Option(help: "Dead-letter share of events above which the verdict is degraded (0.05 = 5 %).")
    var deadLetterRate: Double = 0.05

    @Flag(name: .customLong("no-colour"), help: "Never colour the output (colour is used only on a terminal).")
    var noColour = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        let durations = [("--stale-after", staleAfter), ("--idle-degraded", idleDegraded), ("--idle-unhealthy", idleUnhealthy)]
        for (name, value) in durations where !(value.isFinite && value > 0) {
            throw ValidationError("\(name) must be a positive number of seconds, not \(value)")
        }
        if idleUnhealthy < idleDegraded {
            throw ValidationError("--idle-unhealthy (\(idleUnhealthy)) must not be below --idle-degraded (\(idleDegraded))")
        }
        guard deadLetterRate.isFinite, (0...1).contains(deadLetterRate) else {
            throw ValidationError("--dead-letter-rate must be between 0 and 1, not \(deadLetterRate)")
        }
    }

    var thresholds: HealthThresholds {
        var limits = HealthThresholds()
        limits.staleAfterSeconds = staleAfter
        limits.idleDegradedSeconds = idleDegraded
        limits.idleUnhealthySeconds = idleUnhealthy
        limits.deadLetterRateDegraded = deadLetterRate
        limits.deadLetterRateUnhealthy = max(deadLetterRate, limits.deadLetterRateUnhealthy)
        return limits
    }

    func run() async throws {
        let logger = try common.makeLogger("opsbus.health")
        let endpoint = try connection.redisEndpoint()
        let style = TextStyle(enabled: !noColour && TextStyle.stdoutIsTerminal)
        let report: HealthReport
        do {
            let redis = try RedisConnection(endpoint: endpoint, connectTimeout: 5, commandTimeout: 10, logger: logger)
            report = try ProcessorHealth.read(redis: redis, keys: RedisKeys(), now: .now(), thresholds: thresholds)
        } catch {
            let redisError = (error as? RedisError) ?? (error as? InspectionError)?.redisError
            guard let redisError else { throw CLIError("\(error)") }
            // Unreadable Redis is itself a verdict: say so on stdout (monitors parse it) and explain on stderr.
            let verdict = ProcessorHealth.unreachableVerdict(endpoint: endpoint, error: redisError)
            if json {
                output(JSONValue.object([
                    "verdict": .string(verdict.status.rawValue), "reasons": .array(verdict.reasons.map(JSONValue.string)),
                    "notes": [], "redis": .string("\(endpoint)"), "generated_at": .string(EventTimestamp.now().iso8601),
                ]).serialized())
            } else {
                output(style.paint("UNHEALTHY", .red) + verdict.reasons.map { "\n  - " + $0 }.joined())
            }
            FileHandle.standardError.write(Data(
                "Error: \(InspectionConnection.message(endpoint: endpoint, error: redisError))\n".utf8))
            throw ExitCode(verdict.status.exitCode)
        }
        output(json ? report.json().serialized() : Self.text(report, style: style))
        let status = report.verdict.status
        if status != .healthy { throw ExitCode(status.exitCode) }
    }

    /// The human-readable summary.
    static func text(_ report: HealthReport, style: TextStyle) -> String {
        let verdict = report.verdict
        var lines = [style.paint(verdict.status.rawValue.uppercased(), style.tint(for: verdict.status))
            + style.paint("  (\(report.generatedAt.iso8601))", .dim)]
        for reason in verdict.reasons { lines.append("  - " + reason) }
        for note in verdict.notes { lines.append(style.paint("  · " + note, .dim)) }
        lines.append("")
        func row(_ label: String, _ value: String) {
            lines.append(style.paint(label.padding(toLength: 14, withPad: " ", startingAt: 0), .bold) + value)
        }
        func rate(_ value: Double) -> String { String(format: "%.1f", value) }
        row("events", "\(report.eventsTotal) total; last minute \(report.eventsLastMinute), this minute "
            + "\(report.eventsCurrentMinute); average \(rate(report.eventsPerMinute5))/min over 5 min, "
            + "\(rate(report.eventsPerMinute15))/min over 15 min")
        if let last = report.lastEventAt, let age = report.lastEventAgeSeconds {
            row("last event", "\(last.iso8601) (\(ProcessorHealth.describe(seconds: age)) ago)"
                + (report.lastEventType.map { ", \($0)" } ?? ""))
        } else {
            row("last event", "none yet")
        }
        func success(_ counts: SuccessCounts?, _ done: String, _ failed: String, none: String) -> String {
            guard let counts, let value = counts.rate else { return none }
            return "\(rate(value * 100)) % \(done) (\(counts.succeeded) \(done), \(counts.failed) \(failed))"
        }
        row("actions", success(report.actions, "succeeded", "failed", none: "no actions yet"))
        row("webhooks", success(report.webhooks, "delivered", "failed attempts", none: "no webhooks yet")
            + (report.webhooksDeadLettered > 0 ? "; \(report.webhooksDeadLettered) dead-lettered" : ""))
        row("dead letters", "\(report.deadLetters) in the stream; \(report.recentDeadLettered) of "
            + "\(report.recentEvents) events in the last \(ProcessorHealth.recentMinutes) min")
        row("jobs", report.jobsByStatus.map { "\($0.status) \($0.count)" }.joined(separator: ", "))
        let workers = report.workersByStatus.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
        row("workers", workers.isEmpty ? "none registered"
            : workers.joined(separator: ", ") + (report.staleWorkers > 0 ? "; \(report.staleWorkers) stale" : ""))
        func counts(_ dictionary: [String: Int64]) -> String {
            dictionary.isEmpty ? "none yet"
                : dictionary.sorted { ($1.value, $0.key) < ($0.value, $1.key) }.map { "\($0.key) \($0.value)" }
                    .joined(separator: ", ")
        }
        row("event types", counts(report.eventTypes))
        row("outcomes", counts(report.outcomes))
        let links = HealthReport.linkCounterNames.compactMap { name in
            report.linkCounters[name].flatMap { $0 > 0 ? "\(name.replacingOccurrences(of: "_", with: " ")) \($0)" : nil }
        }
        row("links", links.isEmpty ? "no link outages yet" : links.joined(separator: ", "))
        func gapCounts(_ counters: [String: Int64]) -> String {
            let shown = ["gaps_opened": "opened", "gaps_closed": "closed", "gaps_expired": "expired",
                         "gaps_abandoned": "abandoned", "declared_drops": "declared drops"]
            return ["gaps_opened", "gaps_closed", "gaps_expired", "gaps_abandoned", "declared_drops"].compactMap { name in
                let value = counters[name] ?? 0
                return value > 0 || name == "gaps_opened" ? "\(shown[name]!) \(value)" : nil
            }.joined(separator: ", ")
        }
        let sessions = report.sequenceCounters["sessions"] ?? 0
        row("gaps", sessions == 0 ? "no sequenced events yet"
            : gapCounts(report.sequenceCounters) + " (\(sessions) publisher sessions)")
        for gap in report.expiredGaps.prefix(20) {
            lines.append(style.paint("  ! ", .yellow) + "\(gap.owner) session \(gap.sessionID): seq \(gap.range) missing "
                + "(\(gap.count) events), open \(ProcessorHealth.describe(seconds: gap.ageSeconds))")
        }
        if report.expiredGaps.count > 20 { lines.append("  … \(report.expiredGaps.count - 20) more (--json lists them)") }
        let troubled = report.publishers.filter {
            ($0.counters["gaps_opened"] ?? 0) + ($0.counters["declared_drops"] ?? 0) > 0
        }
        for publisher in troubled.prefix(20) {
            lines.append("  \(publisher.owner): " + gapCounts(publisher.counters)
                + (publisher.openGaps > 0 ? ", \(publisher.openGaps) open now" : ""))
        }
        if let analysis = report.patternAnalysis {
            let age = ProcessorHealth.describe(
                seconds: Double(report.generatedAt.millisecondsSinceEpoch - analysis.generatedAt.millisecondsSinceEpoch) / 1000)
            row("recommended", analysis.recommendations.isEmpty
                ? "nothing (analysed \(age) ago, hours \(analysis.window))"
                : "\(analysis.recommendations.count) (analysed \(age) ago, hours \(analysis.window))")
            for recommendation in analysis.recommendations.prefix(20) {
                let tint: TextStyle.Tint = switch recommendation.severity {
                case .critical: .red
                case .warning: .yellow
                case .info: .dim
                }
                lines.append(style.paint("  \(recommendation.severity.rawValue) ", tint) + recommendation.summary)
            }
            if analysis.recommendations.count > 20 {
                lines.append("  … \(analysis.recommendations.count - 20) more (--json lists them)")
            }
        } else {
            row("recommended", "no pattern analysis yet")
        }
        return lines.joined(separator: "\n")
    }
}
