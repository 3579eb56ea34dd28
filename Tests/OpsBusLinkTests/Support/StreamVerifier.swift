import Foundation
import OpsBusCore
import OpsBusRedis

/// One bridge entry of the job stream, as far as the checks need it.
struct StreamRecord: Sendable {
    var id: String
    var eventID: String
    var sessionID: String
    var seq: Int64
    /// `prev_seq` from the payload: the publisher itself skipped prev_seq+1 … seq-1.
    var prevSeq: Int64?
}

/// What the bridge wrote compared with what the pump accepted.
///
/// The end-to-end promise under test: every accepted event is in the stream exactly once, and within a session the
/// bridge commits strictly in seq order without holes (the bridge writes seq == acked+1 only, or across a declared
/// prev_seq), whatever the link did.
struct StreamReport: CustomStringConvertible {
    var streamEntries = 0
    var acceptedEvents = 0
    var sessions = 0
    /// Accepted, but not in the stream.
    var missing: [AcceptedEvent] = []
    /// event_id → number of stream entries (> 1).
    var duplicates: [String: Int] = [:]
    /// "session: seq 7 after seq 9".
    var orderViolations: [String] = []
    /// "session: seqs 5…6 missing between 4 and 7".
    var gaps: [String] = []
    /// Accepted events whose stream entry carries another session or seq.
    var mismatches: [String] = []
    /// In the stream but never printed as accepted (possible only when the pump was killed between its spool write
    /// and its stdout line); reported, not a failure.
    var unaccepted = 0

    var problems: [String] {
        var problems: [String] = []
        if !missing.isEmpty {
            let sample = missing.prefix(15).map { "\($0.eventID) (\($0.jobID) \($0.eventType), session \($0.sessionID) seq \($0.seq))" }
            let bySession = Dictionary(grouping: missing, by: \.sessionID).map { session, events in
                "\(session): seqs \(Self.ranges(events.map(\.seq)))"
            }.sorted()
            problems.append("\(missing.count) accepted events missing from the stream, e.g. \(sample); by session: \(bySession)")
        }
        if !duplicates.isEmpty {
            let sample = duplicates.sorted { $0.key < $1.key }.prefix(15).map { "\($0.key) ×\($0.value)" }
            problems.append("\(duplicates.count) event ids written more than once, e.g. \(sample)")
        }
        if !orderViolations.isEmpty {
            problems.append("\(orderViolations.count) out-of-order entries, e.g. \(orderViolations.prefix(15))")
        }
        if !gaps.isEmpty { problems.append("\(gaps.count) seq holes, e.g. \(gaps.prefix(15))") }
        if !mismatches.isEmpty { problems.append("\(mismatches.count) session/seq mismatches, e.g. \(mismatches.prefix(15))") }
        return problems
    }

    var description: String {
        "\(streamEntries) stream entries, \(acceptedEvents) accepted, \(sessions) sessions, \(missing.count) missing, "
            + "\(duplicates.count) duplicated, \(orderViolations.count) out of order, \(gaps.count) holes, "
            + "\(unaccepted) written but not reported accepted"
    }

    /// "1…4, 9, 12…13".
    static func ranges(_ values: [Int64]) -> String {
        var parts: [String] = []
        var sorted = values.sorted()[...]
        while let first = sorted.popFirst() {
            var last = first
            while sorted.first == last + 1 { last = sorted.removeFirst() }
            parts.append(first == last ? "\(first)" : "\(first)…\(last)")
        }
        return parts.joined(separator: ", ")
    }
}

enum StreamVerifier {
    /// Reads the whole stream (XRANGE, paged).
    static func read(_ redis: RedisConnection, stream: String = "events:jobs") throws(LinkTestError) -> [StreamRecord] {
        var records: [StreamRecord] = []
        var start = "-"
        let page = 1000
        while true {
            let reply: RedisReply
            do {
                reply = try redis.command(["XRANGE", stream, start, "+", "COUNT", String(page)])
            } catch {
                throw .setup("XRANGE \(stream) failed: \(error)")
            }
            let elements = reply.array ?? []
            for element in elements {
                guard let parts = element.array, parts.count == 2, let id = parts[0].string, let values = parts[1].array
                else { continue }
                var fields: [String: [UInt8]] = [:]
                var index = 0
                while index + 1 < values.count {
                    if let name = values[index].string { fields[name] = values[index + 1].bytes ?? [] }
                    index += 2
                }
                func text(_ name: String) -> String { fields[name].map { String(decoding: $0, as: UTF8.self) } ?? "" }
                let payload = fields["payload"].flatMap { try? JSONValue.parse($0) }?.objectValue
                records.append(StreamRecord(
                    id: id, eventID: text("event_id"), sessionID: text("session_id"), seq: Int64(text("seq")) ?? 0,
                    prevSeq: payload?["prev_seq"]?.intValue))
                start = "(" + id
            }
            if elements.count < page { return records }
        }
    }

    static func check(_ records: [StreamRecord], accepted: [AcceptedEvent]) -> StreamReport {
        var report = StreamReport()
        report.streamEntries = records.count
        let acceptedByID = Dictionary(accepted.map { ($0.eventID, $0) }, uniquingKeysWith: { first, _ in first })
        report.acceptedEvents = acceptedByID.count
        var entriesByID: [String: [StreamRecord]] = [:]
        for record in records { entriesByID[record.eventID, default: []].append(record) }
        for (id, entries) in entriesByID where entries.count > 1 { report.duplicates[id] = entries.count }
        for event in acceptedByID.values.sorted(by: { ($0.sessionID, $0.seq) < ($1.sessionID, $1.seq) }) {
            guard let entry = entriesByID[event.eventID]?.first else {
                report.missing.append(event)
                continue
            }
            if entry.sessionID != event.sessionID || entry.seq != event.seq {
                report.mismatches.append("\(event.eventID): accepted as \(event.sessionID)/\(event.seq), written as \(entry.sessionID)/\(entry.seq)")
            }
        }
        report.unaccepted = entriesByID.keys.filter { acceptedByID[$0] == nil }.count
        var last: [String: Int64] = [:]
        for record in records where record.seq > 0 {
            let previous = last[record.sessionID] ?? 0
            if record.seq <= previous {
                report.orderViolations.append("\(record.sessionID): seq \(record.seq) after seq \(previous) (entry \(record.id))")
                continue
            }
            if record.seq != previous + 1 && !(record.prevSeq.map { $0 <= previous } ?? false) {
                report.gaps.append("\(record.sessionID): seqs \(previous + 1)…\(record.seq - 1) missing before entry \(record.id)")
            }
            last[record.sessionID] = record.seq
        }
        report.sessions = last.count
        return report
    }
}
