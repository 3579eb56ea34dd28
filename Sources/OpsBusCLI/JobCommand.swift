import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusProcessor
import OpsBusRedis

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Show a job's state and event timeline from Redis.",
        discussion: "Reads job:{<id>} and job:{<id>}:timeline as written by the processor.")

    @Argument(help: "The job id.")
    var jobID: String

    @Flag(help: "Print {state, timeline} as JSON.")
    var json = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let logger = try common.makeLogger("opsbus.job")
        do { _ = try Identifier(validating: jobID, field: "job_id") } catch { throw ValidationError("\(error)") }
        let redis: RedisConnection
        do { redis = try RedisConnection(endpoint: try connection.redisEndpoint(), logger: logger) } catch { throw CLIError("\(error)") }
        let view = try JobView.load(jobID, keys: RedisKeys(), redis: redis)
        guard let view else { throw CLIError("no job \(jobID) in Redis") }
        output(json ? view.json() : view.text(colour: TextStyle.stdoutIsTerminal))
    }
}

/// A job's hash and timeline, read back for display.
struct JobView {
    var jobID: String
    var state: [String: String]
    var timeline: [String]

    static func load(_ jobID: String, keys: RedisKeys, redis: RedisConnection) throws -> JobView? {
        do {
            let replies = try redis.pipeline([
                ["HGETALL", keys.job(jobID)], ["LRANGE", keys.jobTimeline(jobID), "0", "-1"],
            ])
            let state = replies[0].hashDictionary()
            if state.isEmpty { return nil }
            let timeline = (replies[1].array ?? []).compactMap(\.string)
            return JobView(jobID: jobID, state: state, timeline: timeline)
        } catch {
            throw CLIError("\(error)")
        }
    }

    func text(colour: Bool) -> String {
        let order = ["status", "attempt", "progress", "worker_id", "machine_id", "received_at", "started_at",
                     "completed_at", "failed_at", "processing_time", "output_size", "cost_estimate", "error_type",
                     "error_message", "retry_recommended"]
        var lines = ["job \(jobID)"]
        for key in order { if let value = state[key] { lines.append("  \(key): \(value)") } }
        lines.append("  timeline (\(timeline.count) events):")
        let formatter = EventLineFormatter(colour: colour)
        for entry in timeline {
            let line = formatter.format(topic: "", payload: Array(entry.utf8))
            lines.append("    " + line.trimmingCharacters(in: .whitespaces))
        }
        return lines.joined(separator: "\n")
    }

    func json() -> String {
        var stateObject = JSONObject()
        for key in state.keys.sorted() { stateObject[key] = .string(state[key]!) }
        let events = timeline.map { (try? JSONValue.parse($0)) ?? .string($0) }
        return JSONValue.object(["job_id": .string(jobID), "state": .object(stateObject), "timeline": .array(events)])
            .serialized()
    }
}
