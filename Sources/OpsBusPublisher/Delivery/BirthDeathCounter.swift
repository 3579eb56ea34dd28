import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The publisher's birth/death sequence (Sparkplug's `bdSeq`): one number per MQTT connection, increasing across
/// connections *and* process restarts, carried by both the birth and the last will of that connection. A will whose
/// `bd_seq` is below the worker's latest birth belongs to a connection that is already gone, so the processor
/// ignores it however late it arrives.
///
/// With a spool directory the last value lives in `<directory>/bd_seq` (written to a temporary file, fsynced and
/// renamed, so a crash leaves the old or the new value, never a torn one). Without one, the counter starts at the
/// current Unix time in milliseconds, which also increases across restarts unless the clock goes back.
final class BirthDeathCounter: Sendable {
    private let path: String?
    private let value: Mutex<UInt64>

    init(directory: String?) {
        path = directory.map { $0 + "/bd_seq" }
        let stored = path.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }
            .flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let start = stored ?? (directory == nil ? UInt64(Date().timeIntervalSince1970 * 1000) : 0)
        value = Mutex(start)
    }

    /// The value of the current (or last attempted) connection.
    var current: UInt64 { value.withLock { $0 } }

    /// Advances for a new connection attempt and persists the new value before returning it.
    func next() -> UInt64 {
        value.withLock { value in
            value += 1
            if let path { Self.store(value, at: path) }
            return value
        }
    }

    private static func store(_ value: UInt64, at path: String) {
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return }
        let text = Array("\(value)\n".utf8)
        let written = text.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor) == 0
        close(descriptor)
        if written == text.count && synced { rename(temporary, path) }
    }
}
