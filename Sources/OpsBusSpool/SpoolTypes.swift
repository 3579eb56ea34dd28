import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// When an append is durable against power loss (it is always durable against `kill -9` once `append` returned,
/// because the bytes were handed to the kernel with `write(2)` first).
public enum SpoolDurability: Sendable, Hashable, CustomStringConvertible {
    /// `fdatasync` before `append` returns. Appenders that arrive while a sync runs share the next one (group
    /// commit), so N concurrent appenders cost about one flush per round, not N.
    case everyEvent
    /// `write(2)` before `append` returns; a background thread runs `fdatasync` at most every `milliseconds` while
    /// there is something unsynced. Power loss can lose about the last interval.
    case interval(milliseconds: Int)
    /// `write(2)` only: `kill -9` loses nothing, power loss may lose what the kernel had not written back.
    case never

    /// Parses `always`, `interval:<ms>` (ms ≥ 1) or `never`; `description` gives the same text back.
    public init(parsing text: String) throws(SpoolError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        switch trimmed {
        case "always": self = .everyEvent
        case "never": self = .never
        default:
            guard trimmed.hasPrefix("interval:"), let milliseconds = Int(trimmed.dropFirst("interval:".count)),
                  milliseconds >= 1
            else { throw .invalidDurability(text) }
            self = .interval(milliseconds: milliseconds)
        }
    }

    public var description: String {
        switch self {
        case .everyEvent: return "always"
        case let .interval(milliseconds): return "interval:\(milliseconds)"
        case .never: return "never"
        }
    }
}

/// What a full spool may give up (see `Spool` "Overflow").
public enum SpoolPriority: UInt8, Sendable, Hashable, CaseIterable {
    /// Best-effort events: the first to go when the spool is full.
    case droppable = 0
    /// Dropped only when `SpoolConfiguration.dropNormalWhenFull` is set.
    case normal = 1
    /// Never dropped (terminal job events): a full spool refuses a new event (`SpoolError.full`) instead.
    case essential = 2
}

public struct SpoolConfiguration: Sendable, Hashable {
    public var directory: String
    /// Bound on the spool's disk usage (segment files). At least 64 KiB.
    public var maxBytes: Int = 64 << 20
    /// Segment files roll over at this size (clamped to 16 KiB … maxBytes / 4).
    public var segmentBytes: Int = 4 << 20
    public var durability: SpoolDurability = .everyEvent
    /// Whether a full spool may drop `.normal` events (oldest first) after the `.droppable` ones.
    public var dropNormalWhenFull: Bool = false
    /// How long `open` retries when another process holds the directory's lock (a process that is just exiting).
    public var lockTimeoutMilliseconds: Int = 1000

    public init(directory: String) {
        self.directory = directory
    }
}

/// One spooled event.
public struct SpoolRecord: Sendable, Hashable {
    public var sessionID: String
    /// ≥ 1, increasing per session in append order.
    public var seq: UInt64
    public var topic: String
    public var payload: [UInt8]
    public var qos: UInt8
    public var retain: Bool
    public var priority: SpoolPriority
    /// Records with the same key supersede each other when the spool is full: only the newest live one is kept
    /// (e.g. `job.progress/<job_id>`).
    public var coalesceKey: String?
    /// Set by the spool when it appends the record (wall clock, ms since the epoch).
    public var appendedAtMilliseconds: Int64

    public init(sessionID: String, seq: UInt64, topic: String, payload: [UInt8], qos: UInt8 = 1, retain: Bool = false,
                priority: SpoolPriority = .normal, coalesceKey: String? = nil, appendedAtMilliseconds: Int64 = 0) {
        self.sessionID = sessionID
        self.seq = seq
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.priority = priority
        self.coalesceKey = coalesceKey
        self.appendedAtMilliseconds = appendedAtMilliseconds
    }
}

/// A snapshot of the spool's figures (what `opsbus spool` shows and the birth message's `spool_depth`).
public struct SpoolStatistics: Sendable, Hashable {
    /// The live records of one session.
    public struct SessionRange: Sendable, Hashable {
        public var sessionID: String
        public var firstSeq: UInt64
        public var lastSeq: UInt64
        public var count: Int

        public init(sessionID: String, firstSeq: UInt64, lastSeq: UInt64, count: Int) {
            self.sessionID = sessionID
            self.firstSeq = firstSeq
            self.lastSeq = lastSeq
            self.count = count
        }
    }

    /// Live (unacknowledged, not dropped) records.
    public var records: Int = 0
    /// Bytes of the segment files on disk (live records, markers and not yet reclaimed dead records).
    public var bytes: Int = 0
    /// Bytes of the live records as stored.
    public var liveBytes: Int = 0
    public var segments: Int = 0
    public var oldestAppendedAtMilliseconds: Int64?
    /// Sessions with live records, oldest first.
    public var sessions: [SessionRange] = []
    // Cumulative across restarts (persisted in the log's checkpoints and markers).
    public var appended: UInt64 = 0
    public var acknowledged: UInt64 = 0
    public var dropped: UInt64 = 0
    public var coalesced: UInt64 = 0
    /// Torn or corrupt stretches of the log found (and skipped) on open.
    public var tornRecordsSkipped: UInt64 = 0

    public init() {}
}

public enum SpoolAppendOutcome: Sendable, Equatable {
    case appended
    /// The spool was full: it coalesced and/or dropped older records first (see `Spool` "Overflow").
    case appendedAfterMakingRoom(dropped: Int, coalesced: Int)
}

/// Everything the spool can refuse or fail at, with the context needed to act on it.
public enum SpoolError: Error, CustomStringConvertible, Sendable, Hashable {
    /// Another process (or another `Spool` in this one) holds the directory.
    case locked(directory: String)
    /// No room could be made for a record (`needed` bytes; `available` is what dropping everything allowed would
    /// leave): the spool holds only events it must not drop. Nothing was written or dropped.
    case full(needed: Int, available: Int, directory: String)
    /// A file operation failed; `errno` is the C error number.
    case io(operation: String, path: String, errno: Int32)
    /// A record larger than the spool accepts (`limit` = min(segment size, max bytes / 4) minus framing).
    case recordTooLarge(bytes: Int, limit: Int)
    /// `SpoolDurability(parsing:)` got something other than `always`, `interval:<ms>` or `never`.
    case invalidDurability(String)
    case invalidConfiguration(String)
    /// The record cannot be stored: empty session id, seq 0, a seq not above the session's last one, a field too
    /// long for the format (65535 bytes), QoS above 2.
    case invalidRecord(String)
    /// `close()` was called.
    case closed

    public var description: String {
        switch self {
        case let .locked(directory):
            return "spool \(directory) is in use by another process (each publisher needs its own spool directory)"
        case let .full(needed, available, directory):
            return "spool \(directory) is full: a record of \(needed) bytes does not fit (\(available) bytes could be "
                + "made free; the rest are events that must not be dropped)"
        case let .io(operation, path, errno):
            return "spool \(operation) failed for \(path): \(String(cString: strerror(errno)))"
        case let .recordTooLarge(bytes, limit):
            return "spool record of \(bytes) bytes exceeds the limit of \(limit) bytes"
        case let .invalidDurability(text):
            return "invalid spool durability '\(text)' (expected always, interval:<ms> or never)"
        case let .invalidConfiguration(reason):
            return "invalid spool configuration: \(reason)"
        case let .invalidRecord(reason):
            return "invalid spool record: \(reason)"
        case .closed:
            return "spool is closed"
        }
    }
}
