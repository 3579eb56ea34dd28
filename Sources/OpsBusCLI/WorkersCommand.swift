import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusProcessor
import OpsBusRedis

struct WorkersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workers",
        abstract: "List the worker registry: status, current job, machine, last seen, reason.",
        discussion: """
            Reads the `workers` sorted set and each worker:{<id>} hash as the processor writes them; most recently \
            seen first. A worker that claims to be up (online, busy, idle, degraded) but sent nothing for longer \
            than --stale-after seconds is marked STALE: it probably died without its last will reaching the broker. \
            A worker whose last will arrived is unreachable (link down, LINK DOWN column: since when) until it \
            reconnects or the processor's link grace is over; BD is its birth/death counter (bd_seq), LAST OUTAGE \
            how its newest outage ended: link_down (the same process reconnected) or worker_restarted.
            Examples:
              opsbus workers                     the registry as a table
              opsbus workers --stale-after 300   tolerate five minutes of silence
              opsbus workers --json              for jq: {stale_after_seconds, workers: [...]}
            """)

    @Option(help: "Seconds of silence after which a worker that claims to be up is marked stale.")
    var staleAfter: Double = 60

    @Flag(help: "Print one JSON document {stale_after_seconds, count, stale, workers} instead of a table.")
    var json = false

    @Flag(name: .customLong("no-colour"), help: "Never colour the output (colour is used only on a terminal).")
    var noColour = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard staleAfter.isFinite, staleAfter > 0 else {
            throw ValidationError("--stale-after must be a positive number of seconds, not \(staleAfter)")
        }
    }

    func run() async throws {
        let logger = try common.makeLogger("opsbus.workers")
        let redis = try InspectionConnection.open(connection, logger: logger)
        let now = EventTimestamp.now()
        let workers: [WorkerEntry]
        do { workers = try WorkerRegistry.read(redis: redis, keys: RedisKeys(), now: now, staleAfter: staleAfter) } catch {
            throw InspectionConnection.failure(error, endpoint: redis.endpoint)
        }
        let staleCount = workers.filter(\.isStale).count
        if json {
            output(JSONValue.object([
                "stale_after_seconds": .double(staleAfter), "count": .int(Int64(workers.count)),
                "stale": .int(Int64(staleCount)), "workers": .array(workers.map { $0.json() }),
            ]).serialized())
            return
        }
        guard !workers.isEmpty else {
            output("no workers registered")
            return
        }
        let style = TextStyle(enabled: !noColour && TextStyle.stdoutIsTerminal)
        var table = TextTable(["WORKER", "STATUS", "CURRENT JOB", "MACHINE", "LAST SEEN", "AGO", "BD", "LINK DOWN",
                               "LAST OUTAGE", "REASON"])
        for worker in workers {
            let status = worker.isStale ? "\(worker.status) STALE" : worker.status
            let linkDown = worker.status == "unreachable"
                ? worker.linkDownMs.map { "\(ProcessorHealth.describe(seconds: Double(now.millisecondsSinceEpoch - $0) / 1000)) ago" }
                : nil
            table.add([
                .plain(worker.id), .init(status, style.tint(forWorkerStatus: worker.status, stale: worker.isStale)),
                .plain(worker.currentJob ?? "-"), .plain(worker.machineID ?? "-"),
                .plain(worker.lastSeenMs.map { EventTimestamp(millisecondsSinceEpoch: $0).iso8601 } ?? "-"),
                .plain(worker.ageSeconds.map { ProcessorHealth.describe(seconds: $0) } ?? "-"),
                .plain(worker.bdSeq.map { String($0) } ?? "-"), .plain(linkDown ?? "-"),
                .plain(worker.lastOutageText ?? "-"), .plain(worker.reason ?? ""),
            ])
        }
        output(table.render(style: style))
        var counts: [String: Int] = [:]
        for worker in workers { counts[worker.status, default: 0] += 1 }
        var summary = "\(workers.count) workers: " + counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }
            .joined(separator: ", ")
        if staleCount > 0 { summary += "; \(staleCount) stale (silent > \(ProcessorHealth.describe(seconds: staleAfter)))" }
        output(style.paint(summary, staleCount > 0 ? .yellow : .dim))
    }
}
