import Foundation
import Testing

@testable import OpsBusSpool

/// A fresh directory under the system temp directory, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init(_ label: String = "spool") {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-\(label)-\(UUID().uuidString)").path
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Segment files, oldest first.
    func segments() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: path)
            .filter { $0.hasPrefix("segment-") && $0.hasSuffix(".spool") }
            .sorted()
            .map { path + "/" + $0 }
    }

    /// The newest segment file that holds at least one event record.
    func newestSegmentWithEvents() throws -> String {
        for path in try segments().reversed() {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            if SegmentScan.scan(bytes).entries.contains(where: { if case .event = $0.record { true } else { false } }) {
                return path
            }
        }
        throw TestFailure("no segment holds events")
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func configuration(_ directory: TemporaryDirectory, maxBytes: Int = 64 << 20, segmentBytes: Int = 4 << 20,
                   durability: SpoolDurability = .never, dropNormal: Bool = false) -> SpoolConfiguration {
    var configuration = SpoolConfiguration(directory: directory.path)
    configuration.maxBytes = maxBytes
    configuration.segmentBytes = segmentBytes
    configuration.durability = durability
    configuration.dropNormalWhenFull = dropNormal
    // A close releases the flock at once, except while a child process another test is spawning still holds a copy
    // of the descriptor (between its fork and exec): a reopen waits a little, as a restarting publisher does.
    configuration.lockTimeoutMilliseconds = 5000
    return configuration
}

func event(_ session: String, _ seq: UInt64, bytes: Int = 32, priority: SpoolPriority = .normal,
           key: String? = nil) -> SpoolRecord {
    var payload = Array("{\"session\":\"\(session)\",\"seq\":\(seq),\"pad\":\"".utf8)
    payload += [UInt8](repeating: UInt8(ascii: "x"), count: max(0, bytes - payload.count - 2))
    payload += Array("\"}".utf8)
    return SpoolRecord(sessionID: session, seq: seq, topic: "jobs/\(session)/progress", payload: payload, qos: 1,
                       retain: false, priority: priority, coalesceKey: key)
}

func seqs(_ records: [SpoolRecord]) -> [UInt64] { records.map(\.seq) }

/// Runs `body` and returns the SpoolError it threw (nil if it did not throw).
func spoolError<T>(_ body: () async throws(SpoolError) -> T) async -> SpoolError? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error
    }
}

func fileSize(_ path: String) throws -> Int {
    (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
}

func truncateFile(_ path: String, by bytes: Int) throws {
    let size = try fileSize(path)
    guard truncate(path, off_t(size - bytes)) == 0 else { throw TestFailure("truncate \(path) failed") }
}

func appendToFile(_ path: String, _ bytes: [UInt8]) throws {
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seekToEnd()
    try handle.write(contentsOf: Data(bytes))
}
