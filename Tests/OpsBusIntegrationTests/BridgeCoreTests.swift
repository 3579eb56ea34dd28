import Foundation
@testable import OpsBusJournal
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis
import Testing

@testable import OpsBusBridge

private func temporaryDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-bridge-\(UUID().uuidString)").path
    return path
}

private func record(_ topic: String, _ payload: String, at time: Int64 = 1_700_000_000_000) -> JournalRecord {
    JournalRecord(topic: topic, payload: Array(payload.utf8), qos: 1, retain: false, receivedAtMilliseconds: time)
}

@Suite("Bridge routes and templates")
struct BridgeRouteTests {
    @Test("templates use 1-based topic levels")
    func templateLevels() throws {
        let template = try StreamKeyTemplate("events:{1}")
        #expect(template.streamKey(for: "jobs/j-1/completed") == "events:jobs")
        #expect(try StreamKeyTemplate("s:{2}:{3}").streamKey(for: "jobs/j-1/completed") == "s:j-1:completed")
        #expect(try StreamKeyTemplate("fixed").streamKey(for: "a/b") == "fixed")
        #expect(try StreamKeyTemplate("x:{3}").streamKey(for: "jobs") == nil)
        #expect(try StreamKeyTemplate("{not}:{1").streamKey(for: "a") == "{not}:{1")
        #expect(try StreamKeyTemplate("events:{1}").scanPattern == "events:*")
        #expect(try StreamKeyTemplate("a*b:{2}").scanPattern == "a\\*b:*")
        #expect(throws: BridgeError.self) { try StreamKeyTemplate("events:{0}") }
        #expect(throws: BridgeError.self) { try StreamKeyTemplate("") }
    }

    @Test("route specs parse options and reject bad ones")
    func routeSpecs() throws {
        let route = try BridgeRoute(parsing: "jobs/#=events:{1};maxlen=500;maxage=60;json;maxbytes=1024")
        #expect(route.filter.rawValue == "jobs/#")
        #expect(route.stream.rawValue == "events:{1}")
        #expect(route.maxLength == 500)
        #expect(route.maxAgeSeconds == 60)
        #expect(route.requireJSON)
        #expect(route.maxPayloadBytes == 1024)
        let plain = try BridgeRoute(parsing: "workers/+/health=health")
        #expect(plain.maxLength == BridgeRoute.defaultMaxLength)
        #expect(!plain.requireJSON)
        #expect(try BridgeRoute(parsing: "a/b=c;maxlen=none").maxLength == nil)
        for bad in ["jobs/#", "jobs/#/x=s", "a/b=", "a/b=c;maxlen=x", "a/b=c;colour=red", "a/b=c;maxlen=0",
                    "$share/g/a=c", "a/b=c;json=maybe"] {
            #expect(throws: BridgeError.self, "\(bad)") { try BridgeRoute(parsing: bad) }
        }
    }

    @Test("first matching route wins; default routes cover every family")
    func routeTable() throws {
        let table = RouteTable([try BridgeRoute(parsing: "jobs/+/failed=failures"), try BridgeRoute(parsing: "jobs/#=events:jobs")])
        #expect(table.route(for: "jobs/j-1/failed")?.stream.rawValue == "failures")
        #expect(table.route(for: "jobs/j-1/completed")?.stream.rawValue == "events:jobs")
        #expect(table.route(for: "workers/w/health") == nil)
        let defaults = RouteTable(BridgeRoute.defaults())
        #expect(defaults.route(for: "workers/w-1/health")?.stream.streamKey(for: "workers/w-1/health") == "events:workers")
        #expect(defaults.route(for: "triggers/retry/j-1")?.stream.streamKey(for: "triggers/retry/j-1") == "events:triggers")
        let prefixed = RouteTable(BridgeRoute.defaults(scheme: try TopicScheme(prefix: "prod/eu")))
        #expect(prefixed.route(for: "prod/eu/jobs/j-1/completed")?.stream.streamKey(for: "prod/eu/jobs/j-1/completed") == "events:jobs")
        #expect(prefixed.route(for: "jobs/j-1/completed") == nil)
    }

    @Test("JSON configuration file")
    func configurationFile() throws {
        let text = """
            {"routes": [{"filter": "jobs/#", "stream": "events:{1}", "maxLength": null, "maxAgeSeconds": 60,
                          "requireJSON": true, "maxPayloadBytes": 2048},
                         {"filter": "workers/+/health", "stream": "health"}],
             "dedupWindowSeconds": 30, "fsync": "batch", "journalMaxBytes": 1048576}
            """
        let file = try BridgeConfigurationFile.parse(Array(text.utf8))
        #expect(file.routes.count == 2)
        #expect(file.routes[0].maxLength == nil)
        #expect(file.routes[0].maxAgeSeconds == 60)
        #expect(file.routes[0].requireJSON)
        #expect(file.routes[1].maxLength == BridgeRoute.defaultMaxLength)
        #expect(file.dedupWindow == DedupWindow(seconds: 30, size: DedupWindow().size))
        #expect(file.fsync == .batch)
        #expect(file.journalMaxBytes == 1_048_576)
        for bad in ["[]", "{}", #"{"routes": []}"#, #"{"routes": [{"filter": "a/#"}]}"#,
                    #"{"routes": [{"filter": "a/#", "stream": "s"}], "colour": 1}"#,
                    #"{"routes": [{"filter": "a/#", "stream": "s", "maxlen": 1}]}"#,
                    #"{"routes": [{"filter": "a/#/b", "stream": "s"}]}"#, "{"] {
            #expect(throws: BridgeError.self, "\(bad)") { try BridgeConfigurationFile.parse(Array(bad.utf8)) }
        }
    }
}

@Suite("Bridge journal")
struct BridgeJournalTests {
    @Test("records round-trip, binary payloads included, and survive a reopen")
    func roundTrip() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let binary = JournalRecord(topic: "raw/x", payload: [0, 255, 10, 0, 13], qos: 0, retain: true,
                                   receivedAtMilliseconds: 42)
        do {
            let journal = try Journal(directory: directory)
            #expect(journal.append(record("jobs/j-1/completed", #"{"a":1}"#)) == .appended(JournalPosition(segment: 1, offset: 0)))
            guard case .appended = journal.append(binary) else { Issue.record("append failed"); return }
            let (entries, next) = try journal.read(from: journal.committed, maxRecords: 10)
            #expect(entries.map(\.record) == [record("jobs/j-1/completed", #"{"a":1}"#), binary])
            #expect(next == journal.appendedEnd)
            journal.close()
        }
        let reopened = try Journal(directory: directory)
        let (entries, _) = try reopened.read(from: reopened.committed, maxRecords: 10)
        #expect(entries.count == 2, "uncommitted records are replayed after a restart")
        #expect(entries[1].record == binary)
        try reopened.commit(entries[1].next)
        reopened.close()
        let identity = reopened.identity
        let again = try Journal(directory: directory)
        #expect(try again.read(from: again.committed, maxRecords: 10).entries.isEmpty, "committed records are not replayed")
        #expect(again.identity == identity, "the identity is kept across opens")
        #expect(again.appendedEnd.segment > entries[1].position.segment, "positions are never reused")
        again.close()
        try FileManager.default.removeItem(atPath: directory)
        let recreated = try Journal(directory: directory)
        #expect(recreated.identity != identity, "a recreated journal gets a new identity, so its j: dedup ids are new")
    }

    @Test("a lazy commit moves the position at once and writes the file once per interval, on a segment change and on close")
    func lazyCommit() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let journal = try Journal(directory: directory, maxBytes: 256 * 1024, segmentBytes: 16 * 1024)
        let payload = String(repeating: "x", count: 1000)
        for index in 0..<40 { _ = journal.append(record("t/\(index)", payload)) }
        let entries = try journal.read(from: journal.committed, maxRecords: 40).entries
        #expect(entries.count == 40)
        let hour = Duration.seconds(3600)

        // The first commit writes the file (nothing written yet); the next ones within the interval stay pending.
        try journal.commit(entries[0].next, persistAfter: hour)
        #expect(try Journal.readCommitted(directory) == entries[0].next)
        try journal.commit(entries[1].next, persistAfter: hour)
        try journal.commit(entries[2].next, persistAfter: hour)
        #expect(journal.committed == entries[2].next, "the in-memory position moves at once")
        #expect(try Journal.readCommitted(directory) == entries[0].next, "the file waits for the interval")
        #expect(journal.pendingCommitDue(after: hour) != nil)
        try journal.persistPendingCommit()
        #expect(try Journal.readCommitted(directory) == entries[2].next)
        #expect(journal.pendingCommitDue(after: hour) == nil)

        // Moving past a segment deletes it, so the file is written first, whatever the interval.
        let firstSegment = entries[0].position.segment
        let later = try #require(entries.first { $0.position.segment > firstSegment })
        try journal.commit(later.position, persistAfter: hour)
        #expect(try Journal.readCommitted(directory) == later.position)
        #expect(!FileManager.default.fileExists(atPath: Journal.segmentPath(directory, firstSegment)))

        // Reads still see every record after the position (through the kept-open descriptor, across segments).
        let rest = try journal.read(from: journal.committed, maxRecords: 100).entries
        #expect(rest.map(\.record) == entries.drop { $0.position < later.position }.map(\.record))

        // Pending at close: written, so a clean restart replays nothing already committed.
        try journal.commit(entries[39].next, persistAfter: hour)
        journal.close()
        let reopened = try Journal(directory: directory)
        #expect(reopened.committed == entries[39].next)
        #expect(try reopened.read(from: reopened.committed, maxRecords: 10).entries.isEmpty)
        reopened.close()
    }

    @Test("a torn last record is cut off at reopen; the records before it stay")
    func tornTail() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let journal = try Journal(directory: directory)
            for index in 0..<3 { _ = journal.append(record("t/\(index)", "payload-\(index)")) }
            journal.close()
        }
        let segment = Journal.segmentPath(directory, 1)
        let full = try Data(contentsOf: URL(fileURLWithPath: segment))
        // Cut the last record in half, as if the process died inside write(2).
        let lastSize = record("t/2", "payload-2").encoded().count
        try full.prefix(full.count - lastSize / 2).write(to: URL(fileURLWithPath: segment))
        let journal = try Journal(directory: directory)
        let (entries, _) = try journal.read(from: journal.committed, maxRecords: 10)
        #expect(entries.map(\.record.topic) == ["t/0", "t/1"])
        #expect(try Journal.fileSize(segment) == Int64(full.count - lastSize), "the torn bytes are truncated")
        _ = journal.append(record("t/3", "payload-3"))
        #expect(try journal.read(from: journal.committed, maxRecords: 10).entries.map(\.record.topic) == ["t/0", "t/1", "t/3"])
    }

    @Test("a flipped byte fails the CRC and ends the segment instead of producing a wrong record")
    func corruptRecord() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let journal = try Journal(directory: directory)
            for index in 0..<3 { _ = journal.append(record("t/\(index)", "payload-\(index)")) }
            journal.close()
        }
        let segment = Journal.segmentPath(directory, 1)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: segment)))
        let size = record("t/0", "payload-0").encoded().count
        bytes[size + size - 2] ^= 0x40  // inside the payload of the second record
        try Data(bytes).write(to: URL(fileURLWithPath: segment))
        let journal = try Journal(directory: directory)
        let (entries, _) = try journal.read(from: journal.committed, maxRecords: 10)
        #expect(entries.map(\.record.topic) == ["t/0"])
        #expect(JournalRecord.decode(UnsafeRawBufferPointer(start: nil, count: 0), at: 0) == .incomplete(needed: nil))
    }

    @Test("segments roll over, are read in order and deleted once committed; a full journal refuses appends")
    func segmentsAndLimit() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let journal = try Journal(directory: directory, maxBytes: 64 * 1024, segmentBytes: 16 * 1024)
        let payload = String(repeating: "x", count: 1000)
        var appended = 0
        while case .appended = journal.append(record("t/\(appended)", payload)) { appended += 1 }
        #expect(appended > 50 && appended < 70, "64 KiB hold about 60 records of 1 KiB")
        #expect(journal.append(record("t/x", payload)) == .full)
        #expect(try Journal.listSegments(directory).count >= 4)
        var position = journal.committed
        var topics: [String] = []
        while true {
            let (entries, next) = try journal.read(from: position, maxRecords: 7)
            if entries.isEmpty { break }
            topics += entries.map(\.record.topic)
            position = next
        }
        #expect(topics == (0..<appended).map { "t/\($0)" })
        try journal.commit(position)
        #expect(try Journal.listSegments(directory) == [journal.appendedEnd.segment], "committed segments are deleted")
        guard case .appended = journal.append(record("t/y", payload)) else {
            Issue.record("the journal should accept appends again after the commit")
            return
        }
    }

    @Test("a second bridge cannot open the same journal")
    func lock() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let journal = try Journal(directory: directory)
        #expect(throws: JournalError.self) { try Journal(directory: directory) }
        journal.close()
        _ = try Journal(directory: directory)
    }
}

@Suite("Bridge entry format")
struct BridgeEntryFormatTests {
    let configuration = BridgeConfiguration(
        mqtt: MQTTEndpoint(host: "localhost"), redis: RedisEndpoint(),
        routes: [try! BridgeRoute(parsing: "jobs/#=events:{1};json;maxbytes=100"), try! BridgeRoute(parsing: "raw/#=raw")],
        instance: "b1")

    func plan(_ topic: String, _ payload: [UInt8], offset: Int64 = 0, retain: Bool = true) -> PlannedWrite {
        var journalRecord = JournalRecord(topic: topic, payload: payload, qos: 1, retain: retain, receivedAtMilliseconds: 0)
        journalRecord.originalPayloadBytes = payload.count
        return StreamEntryFormat.plan(
            JournalEntry(position: JournalPosition(segment: 3, offset: offset), next: JournalPosition(segment: 3, offset: offset + 1),
                         record: journalRecord),
            routes: RouteTable(configuration.routes), configuration: configuration)
    }

    @Test("envelope fields are copied and the event id is the dedup id")
    func envelope() {
        let write = plan("jobs/j-1/completed", Array(#"{"event_id":"e-1","event_type":"job.completed","session_id":"s","seq":7}"#.utf8))
        #expect(write.kind == .entry)
        #expect(write.stream == "events:jobs")
        #expect(write.dedupID == "e:e-1")
        #expect(write.fields.map(\.0) == ["topic", "payload", "event_id", "event_type", "session_id", "seq", "qos", "retain", "received_at", "bridge"])
        #expect(write.field("seq") == Array("7".utf8))
        #expect(write.field("retain") == Array("1".utf8))
        #expect(write.field("received_at") == Array("1970-01-01T00:00:00.000Z".utf8))
        #expect(write.field("bridge") == Array("b1".utf8))
    }

    @Test("dedup ids: session+seq, else the journal position")
    func dedupIDs() {
        #expect(plan("jobs/j/x", Array(#"{"session_id":"s","seq":9}"#.utf8)).dedupID == "s:s:9")
        #expect(plan("raw/x", [0, 1, 2], offset: 77, retain: false).dedupID == "j:b1:3:77")
        #expect(plan("raw/x", [0, 1, 2]).field("payload") == [0, 1, 2])
        var retained = JournalRecord(topic: "raw/r", payload: [1, 2], qos: 1, retain: true, receivedAtMilliseconds: 0)
        func retainedID(_ record: JournalRecord, offset: Int64) -> String {
            StreamEntryFormat.plan(
                JournalEntry(position: .init(segment: 1, offset: offset), next: .init(segment: 1, offset: offset + 1), record: record),
                routes: RouteTable(configuration.routes), configuration: configuration, journalIdentity: "J").dedupID
        }
        let first = retainedID(retained, offset: 0)
        #expect(first.hasPrefix("r:raw/r:"))
        #expect(retainedID(retained, offset: 99) == first, "a re-sent retained message has the same id")
        retained.payload = [1, 3]
        #expect(retainedID(retained, offset: 99) != first, "new retained content is a new entry")
        retained.retain = false
        #expect(retainedID(retained, offset: 99) == "j:J:1:99")
    }

    @Test("validation failures become dead letters with the reason")
    func deadLetters() {
        let notJSON = plan("jobs/j/x", Array("not json".utf8))
        #expect(notJSON.stream == "bridge:deadletter")
        guard case let .deadLetter(reason) = notJSON.kind else { Issue.record("expected a dead letter"); return }
        #expect(reason.hasPrefix("not JSON"))
        var big = JournalRecord(topic: "jobs/j/x", payload: Array(repeating: 32, count: 10), qos: 1, retain: false, receivedAtMilliseconds: 0)
        big.originalPayloadBytes = 5000
        let oversize = StreamEntryFormat.plan(
            JournalEntry(position: .init(segment: 0, offset: 0), next: .init(segment: 0, offset: 1), record: big),
            routes: RouteTable(configuration.routes), configuration: configuration)
        guard case let .deadLetter(reason) = oversize.kind else { Issue.record("expected a dead letter"); return }
        #expect(reason.contains("oversize"))
        #expect(oversize.field("payload_bytes") == Array("5000".utf8))
        #expect(plan("raw/x", Array("not json".utf8)).kind == .entry, "raw route does not require JSON")
    }
}

@Suite("Bridge journal fsync modes")
struct BridgeJournalFsyncTests {
    @Test("fsync always and batch append, commit and reopen like never", arguments: [JournalFsync.always, .batch])
    func fsyncModes(mode: JournalFsync) throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let journal = try Journal(directory: directory, fsync: mode)
            for index in 0..<5 { _ = journal.append(record("t/\(index)", "p")) }
            journal.sync()
            let (entries, next) = try journal.read(from: journal.committed, maxRecords: 3)
            #expect(entries.count == 3)
            try journal.commit(next)
            journal.close()
        }
        let reopened = try Journal(directory: directory, fsync: mode)
        #expect(try reopened.read(from: reopened.committed, maxRecords: 10).entries.map(\.record.topic) == ["t/3", "t/4"])
    }
}
