import OpsBusCore
import OpsBusRedis

/// A `--from`/`--to` bound for reading a stream: a stream id (`<ms>` or `<ms>-<seq>`), `-`/`+`, or an ISO-8601
/// time, which becomes the id `<ms>` (Redis reads `<ms>` as `<ms>-0` for a start and `<ms>-<max>` for an end,
/// so both bounds are inclusive).
public enum StreamPosition {
    public static func parse(_ text: String) throws(BridgeError) -> String {
        if text == "-" || text == "+" { return text }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        if (parts.count == 1 || parts.count == 2), parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && UInt64($0) != nil }) {
            return text
        }
        if let time = EventTimestamp(iso8601: text), time.millisecondsSinceEpoch >= 0 {
            return String(time.millisecondsSinceEpoch)
        }
        throw .invalidStreamPosition(text)
    }
}

/// One stream entry read back (for `opsbus replay` and `opsbus streams`).
public struct StreamEntry: Sendable, Hashable {
    public var id: String
    /// Field/value pairs in stream order; values are raw bytes.
    public var fields: [(name: String, value: [UInt8])]

    public static func == (lhs: StreamEntry, rhs: StreamEntry) -> Bool {
        lhs.id == rhs.id && lhs.fields.map(\.name) == rhs.fields.map(\.name) && lhs.fields.map(\.value) == rhs.fields.map(\.value)
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(id) }

    public subscript(name: String) -> [UInt8]? { fields.first { $0.name == name }?.value }

    public var topic: String? { self["topic"].flatMap { String(validating: $0, as: UTF8.self) } }

    /// Decodes one element of an XRANGE/XREAD reply; nil for a malformed element.
    public init?(reply: RedisReply) {
        guard let parts = reply.array, parts.count == 2, let id = parts[0].string, let values = parts[1].array else {
            return nil
        }
        self.id = id
        var fields: [(name: String, value: [UInt8])] = []
        var index = 0
        while index + 1 < values.count {
            if let name = values[index].string { fields.append((name, values[index + 1].bytes ?? [])) }
            index += 2
        }
        self.fields = fields
    }

    /// A JSON line: `id`, then every field as a string; a value that is not valid UTF-8 is written as
    /// `<name>_base64` instead, so binary payloads survive the trip.
    public func jsonLine() -> String {
        var object = JSONObject()
        object["id"] = .string(id)
        for (name, value) in fields {
            if let text = String(validating: value, as: UTF8.self) {
                object[name] = .string(text)
            } else {
                object[name + "_base64"] = .string(Base64.encode(value))
            }
        }
        return object.serialized()
    }

    /// One page of `XRANGE stream from to COUNT n`, and the start of the next page (nil after the last).
    public static func page(_ redis: RedisConnection, stream: String, from: String, to: String, count: Int = 500)
        throws(RedisError) -> (entries: [StreamEntry], next: String?)
    {
        let reply = try redis.command(["XRANGE", stream, from, to, "COUNT", String(count)])
        let entries = (reply.array ?? []).compactMap(StreamEntry.init(reply:))
        guard entries.count == count, let last = entries.last else { return (entries, nil) }
        return (entries, "(" + last.id)
    }

    /// Pages through `XRANGE stream from to` (inclusive bounds), `pageSize` entries per round trip.
    public static func range(_ redis: RedisConnection, stream: String, from: String, to: String, pageSize: Int = 500,
                             _ body: (StreamEntry) throws -> Void) throws {
        var start = from
        while true {
            let reply = try redis.command(["XRANGE", stream, start, to, "COUNT", String(pageSize)])
            let entries = (reply.array ?? []).compactMap(StreamEntry.init(reply:))
            for entry in entries { try body(entry) }
            guard entries.count == pageSize, let last = entries.last else { return }
            start = "(" + last.id
        }
    }
}

/// RFC 4648 base64 with padding (for binary values in JSON lines).
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = UInt32(bytes[index])
            let b1 = index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0
            let b2 = index + 2 < bytes.count ? UInt32(bytes[index + 2]) : 0
            let triple = b0 << 16 | b1 << 8 | b2
            output.append(alphabet[Int(triple >> 18 & 63)])
            output.append(alphabet[Int(triple >> 12 & 63)])
            output.append(index + 1 < bytes.count ? alphabet[Int(triple >> 6 & 63)] : UInt8(ascii: "="))
            output.append(index + 2 < bytes.count ? alphabet[Int(triple & 63)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: output, as: UTF8.self)
    }
}
