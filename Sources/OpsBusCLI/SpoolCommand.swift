import ArgumentParser
import Foundation
import OpsBusCore
import OpsBusPublisher
import OpsBusSpool

/// Shows an edge spool: what is waiting for acknowledgement, how old it is, and what the overflow policy dropped.
struct SpoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spool",
        abstract: "Show a publisher's disk spool: depth, oldest age, sessions, drops.",
        discussion: """
            Reads the spool read-only, so it works while the worker runs. The spool holds every spooled event \
            until the bridge acknowledged it (acks/<owner>/<session_id>, see topics.md); a growing depth or an \
            old oldest event means the link, the broker or the bridge is not keeping up.

            Default directory: $OPSBUS_SPOOL_DIR, else ~/.local/state/opsbus/spool/<worker id> ($WORKER_ID).
            Exit codes: 0 ok, 1 the spool cannot be read.
            """)

    @Argument(help: "Spool directory (default: see below).")
    var directory: String?

    @Option(help: "Worker id whose default spool to show (default $WORKER_ID).")
    var worker: String?

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func run() throws {
        let environment = try RuntimeSettings.current.environment
        let owner = worker ?? environment["WORKER_ID"] ?? environment["MACHINE_ID"] ?? "default"
        let path = directory ?? environment["OPSBUS_SPOOL_DIR"]
            ?? EventPublisher.defaultSpoolDirectory(environment: environment, owner: owner)
        let statistics: SpoolStatistics
        do {
            statistics = try Spool.inspect(directory: path)
        } catch {
            throw CLIError("cannot read the spool at \(path): \(error)")
        }
        let nowMilliseconds = Int64(Date().timeIntervalSince1970 * 1000)
        let oldestAge = statistics.oldestAppendedAtMilliseconds.map { max(0, nowMilliseconds - $0) }
        if json {
            var object: JSONObject = [
                "directory": .string(path), "depth": .int(Int64(statistics.records)),
                "bytes": .int(Int64(statistics.bytes)), "live_bytes": .int(Int64(statistics.liveBytes)),
                "oldest_age_ms": oldestAge.map { .int($0) } ?? .null,
                "appended": .int(Int64(clamping: statistics.appended)),
                "acknowledged": .int(Int64(clamping: statistics.acknowledged)),
                "dropped": .int(Int64(clamping: statistics.dropped)),
                "coalesced": .int(Int64(clamping: statistics.coalesced)),
                "torn_records_skipped": .int(Int64(clamping: statistics.tornRecordsSkipped)),
            ]
            object["sessions"] = .array(statistics.sessions.map { session in
                .object([
                    "session_id": .string(session.sessionID), "first_seq": .int(Int64(clamping: session.firstSeq)),
                    "last_seq": .int(Int64(clamping: session.lastSeq)), "events": .int(Int64(session.count)),
                ])
            })
            print(JSONValue.object(object).serialized())
            return
        }
        print("spool \(path)")
        print("  depth        \(statistics.records) events, \(statistics.liveBytes) bytes live, \(statistics.bytes) bytes on disk")
        print("  oldest       " + (oldestAge.map { Self.age(milliseconds: $0) } ?? "-"))
        print("  appended     \(statistics.appended)   acknowledged \(statistics.acknowledged)")
        print("  dropped      \(statistics.dropped)   coalesced \(statistics.coalesced)   torn records skipped \(statistics.tornRecordsSkipped)")
        for session in statistics.sessions {
            print("  session \(session.sessionID): seq \(session.firstSeq)…\(session.lastSeq), \(session.count) waiting")
        }
    }

    static func age(milliseconds: Int64) -> String {
        if milliseconds < 1_000 { return "\(milliseconds) ms" }
        if milliseconds < 120_000 { return String(format: "%.1f s", Double(milliseconds) / 1000) }
        if milliseconds < 7_200_000 { return "\(milliseconds / 60_000) min" }
        return String(format: "%.1f h", Double(milliseconds) / 3_600_000)
    }
}
