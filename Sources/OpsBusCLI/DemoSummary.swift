import Foundation
import Logging
import OpsBusCore
import OpsBusMQTT
import OpsBusProcessor
import OpsBusRedis

/// What the demo found in Redis once the processor caught up.
struct DemoSummary {
    var statusCounts: [(String, Int)]
    var workers: [(String, [String: String])]
    var models: [(String, [String: String])]
    var deadLetters: Int
    var sampleJobs: [JobView]

    static let statuses = ["received", "processing", "completed", "failed", "retry_scheduled", "dead_lettered"]

    /// Polls Redis until `expectedTerminalJobs` jobs are completed or failed and a dead letter arrived (or 30 s).
    static func waitForState(redis endpoint: RedisEndpoint, expectedTerminalJobs: Int, logger: Logger) throws -> DemoSummary {
        let redis = try RedisConnection(endpoint: endpoint, logger: logger)
        let keys = RedisKeys()
        let deadline = Date().addingTimeInterval(30)
        var summary = try read(redis, keys)
        while Date() < deadline {
            let terminal = summary.statusCounts.filter { ["completed", "failed", "retry_scheduled", "dead_lettered"].contains($0.0) }
                .reduce(0) { $0 + $1.1 }
            if terminal >= expectedTerminalJobs && summary.deadLetters > 0
                && summary.workers.contains(where: { $0.1["status"] == "offline" }) { break }
            Thread.sleep(forTimeInterval: 0.2)
            summary = try read(redis, keys)
        }
        return summary
    }

    static func read(_ redis: RedisConnection, _ keys: RedisKeys) throws -> DemoSummary {
        let counts = try redis.pipeline(statuses.map { ["SCARD", keys.jobsByStatus($0)] })
        let statusCounts = zip(statuses, counts).map { ($0, Int($1.int ?? 0)) }
        let workerIDs = (try redis.command(["ZRANGE", keys.entityIndex("worker"), "0", "-1"]).array ?? []).compactMap(\.string)
        let workers = try workerIDs.map { id in (id, try redis.command(["HGETALL", keys.entity("worker", id)]).hashDictionary()) }
        let modelIDs = (try redis.command(["ZRANGE", keys.entityIndex("model"), "0", "-1"]).array ?? []).compactMap(\.string)
        let models = try modelIDs.map { id in (id, try redis.command(["HGETALL", keys.entity("model", id)]).hashDictionary()) }
        let deadLetters = Int(try redis.command(["XLEN", keys.deadLetters]).int ?? 0)
        var samples: [JobView] = []
        for status in ["completed", "retry_scheduled", "dead_lettered"] {
            if let id = try redis.command(["SRANDMEMBER", keys.jobsByStatus(status)]).string,
               let view = try JobView.load(id, keys: keys, redis: redis) {
                samples.append(view)
            }
        }
        return DemoSummary(statusCounts: statusCounts, workers: workers, models: models, deadLetters: deadLetters,
                           sampleJobs: samples)
    }

    /// The bridge's streams: how many entries each family got.
    static func streams(redis endpoint: RedisEndpoint, logger: Logger) throws -> String {
        let redis = try RedisConnection(endpoint: endpoint, logger: logger)
        let families = ["jobs", "workers", "resources", "queues", "services", "models", "triggers"]
        let lengths = try redis.pipeline(families.map { ["XLEN", "events:\($0)"] })
        let parts = zip(families, lengths).compactMap { family, reply -> String? in
            guard let count = reply.int, count > 0 else { return nil }
            return "events:\(family) \(count)"
        }
        return "\nstreams    " + parts.joined(separator: " · ") + "   (the bridge's copy; opsbus streams, opsbus replay)"
    }

    func render(mqtt: MQTTEndpoint, mqttURL: String, redis: RedisEndpoint, counters: ProcessorCounters,
                reports: [WorkerSimulation.Report]) -> String {
        let published = reports.reduce(0) { $0 + $1.eventsPublished }
        var lines = ["", "══ opsbus demo: what happened ══", ""]
        lines.append("processor  received \(counters.received) messages · applied \(counters.applied) · duplicates \(counters.duplicates) · dead-lettered \(counters.deadLettered)")
        lines.append("           (\(published) events published by the in-process workers, plus the dying worker's; progress is QoS 0)")
        lines.append("jobs       " + statusCounts.filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: " · "))
        lines.append("workers")
        for (id, fields) in workers {
            let status = fields["status"] ?? "?"
            let note = fields["reason"].map { " (\($0))" } ?? ""
            lines.append("  \(id.padding(toLength: 18, withPad: " ", startingAt: 0)) \(status)\(note)")
        }
        lines.append("models")
        for (id, fields) in models {
            let loads = Double(fields["loads"] ?? "0") ?? 0
            let hits = Double(fields["cache_hits"] ?? "0") ?? 0
            let total = Double(fields["total_load_time_ms"] ?? "0") ?? 0
            let average = loads > 0 ? total / loads / 1000 : 0
            lines.append("  \(id.padding(toLength: 18, withPad: " ", startingAt: 0)) loads \(Int(loads)) · cache hits \(Int(hits)) · average load \(String(format: "%.1f", average)) s")
        }
        lines.append("dead letters  \(deadLetters) (malformed JSON sent on purpose; see XRANGE opsbus:deadletter)")
        for view in sampleJobs {
            lines.append("")
            lines.append(view.text(colour: false))
        }
        var redisCLI = "redis-cli"
        if case let .tcp(host, port) = redis.address { redisCLI = "redis-cli -h \(host) -p \(port)" }
        lines += [
            "",
            "look for yourself (while the servers run, e.g. with --keep-running):",
            "  mosquitto_sub -h \(mqtt.host) -p \(mqtt.port) -v -t '#'",
            "  \(redisCLI) SMEMBERS jobs:status:dead_lettered",
            "  \(redisCLI) HGETALL 'job:{job-1-1}'",
            "  \(redisCLI) XRANGE opsbus:deadletter - +",
            "  \(redisCLI) XRANGE events:jobs - + COUNT 3",
            "  opsbus tail --mqtt-url \(mqttURL)",
            "  opsbus job job-1-1 --redis-url '\(redis)'",
        ]
        return lines.joined(separator: "\n")
    }
}
