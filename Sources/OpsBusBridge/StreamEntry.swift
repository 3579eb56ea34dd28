import OpsBusJournal
import OpsBusCore
import OpsBusRedis

/// What the writer does with one journal record: its part of a `BridgeScripts.appendBatch` call.
public struct PlannedWrite: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case entry
        /// The record failed its route's validation; `reason` says why.
        case deadLetter(reason: String)
    }

    public var kind: Kind
    public var stream: String
    /// Empty when the record has nothing to deduplicate on (never happens for journal records: see `dedupID`).
    public var dedupID: String
    public var maxLength: Int?
    public var maxAgeSeconds: Int?
    /// Field/value pairs in entry order.
    public var fields: [(String, [UInt8])]
    /// Set for an envelope sent with `ack: true`: the write goes through `BridgeScripts.appendInSession` (ordered,
    /// exactly once per session seq) instead of `BridgeScripts.appendBatch`.
    public var session: SessionSequence?

    public static func == (lhs: PlannedWrite, rhs: PlannedWrite) -> Bool {
        lhs.kind == rhs.kind && lhs.stream == rhs.stream && lhs.dedupID == rhs.dedupID && lhs.session == rhs.session
            && lhs.fields.map(\.0) == rhs.fields.map(\.0) && lhs.fields.map(\.1) == rhs.fields.map(\.1)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(stream)
        hasher.combine(dedupID)
    }

    public func field(_ name: String) -> [UInt8]? { fields.first { $0.0 == name }?.1 }

    /// The arguments every append script takes first, in this order: dedup id, maxlen (0 = none), the stats counter
    /// the record counts in.
    var leadingArguments: [[UInt8]] {
        [Array(dedupID.utf8), Array(String(maxLength ?? 0).utf8), Array(statsCounter.utf8)]
    }

    /// The stats counter the record counts in.
    var statsCounter: String { kind == .entry ? "bridge_entries" : "bridge_dead_lettered" }

    /// Appends the field/value pairs, the arguments every append script takes last.
    func appendFields(to arguments: inout [[UInt8]]) {
        for (name, value) in fields {
            arguments.append(Array(name.utf8))
            arguments.append(value)
        }
    }
}

/// The stream entry format, and how a journal record becomes one.
///
/// Entry fields, in this order (all values are strings; `payload` is the exact bytes received, binary-safe):
///
/// | field | value |
/// |---|---|
/// | `topic` | the MQTT topic |
/// | `payload` | the payload bytes, unchanged |
/// | `event_id`, `event_type`, `session_id`, `seq` | copied from the payload when it is a JSON object that has them (strings; `seq` a whole number) |
/// | `qos` | `0`, `1` or `2`, as delivered to the bridge |
/// | `retain` | `1` for a retained message, else `0` |
/// | `received_at` | when the bridge received it, ISO-8601 UTC with milliseconds |
/// | `bridge` | the bridge instance name |
///
/// The payload is parsed with `JSONValue.parse` only to copy those four fields (and to check `requireJSON`); the
/// bridge does not validate envelopes (it mirrors what was published; the processor validates).
///
/// **Dedup id** (`PlannedWrite.dedupID`): `e:<event_id>` when the payload has an `event_id`; else
/// `s:<session_id>:<seq>` when it has both; else, for a retained message, `r:<topic>:<content hash>` (the broker
/// re-sends retained messages at every SUBSCRIBE, i.e. every bridge start); else `j:<journal identity>:<segment>:
/// <offset>`, the record's journal position, which makes journal replays after a crash idempotent even for raw
/// payloads (but not broker redeliveries of raw payloads: those are new journal records).
///
/// Dead letters go to `bridge:deadletter` with `topic`, `reason`, `payload` (first `deadLetterPayloadBytes` bytes),
/// `payload_bytes` (original size), `qos`, `retain`, `received_at`, `bridge`, and `route` (the route's filter).
///
/// **Sessions** (`PlannedWrite.session`): an envelope with `ack: true`, a valid `session_id` and `seq` ≥ 1 is
/// committed in its session's order (`BridgeScripts.appendInSession`). Only `ack`, `prev_seq`, `worker_id` and
/// `machine_id` are read in addition, from the same parse. A dead-lettered record is scanned for those keys
/// (`SessionSequence.scan`, tolerant of the truncated head of an oversize payload), so a sequenced event that is
/// dead-lettered still advances its session instead of blocking it.
public enum StreamEntryFormat {
    public static func plan(_ entry: JournalEntry, routes: RouteTable, configuration: BridgeConfiguration,
                            journalIdentity: String = "") -> PlannedWrite {
        let record = entry.record
        let journalID = "j:\(journalIdentity.isEmpty ? configuration.bridgeName : journalIdentity):"
            + "\(entry.position.segment):\(entry.position.offset)"
        func deadLetter(_ reason: String, route: BridgeRoute?) -> PlannedWrite {
            var fields: [(String, [UInt8])] = [
                ("topic", Array(record.topic.utf8)), ("reason", Array(reason.utf8)),
                ("payload", Array(record.payload.prefix(configuration.deadLetterPayloadBytes))),
                ("payload_bytes", Array(String(record.originalPayloadBytes).utf8)),
            ]
            fields += common(record, configuration)
            if let route { fields.append(("route", Array(route.filter.rawValue.utf8))) }
            return PlannedWrite(
                kind: .deadLetter(reason: reason), stream: configuration.deadLetterStream, dedupID: journalID,
                maxLength: configuration.deadLetterMaxLength, maxAgeSeconds: nil, fields: fields,
                session: SessionSequence.scan(record.payload))
        }
        guard let route = routes.route(for: record.topic) else {
            return deadLetter("no route matches the topic (routes changed since it was journaled?)", route: nil)
        }
        if record.originalPayloadBytes > route.maxPayloadBytes {
            return deadLetter(
                "oversize: \(record.originalPayloadBytes) bytes, the route allows \(route.maxPayloadBytes)", route: route)
        }
        guard let stream = route.stream.streamKey(for: record.topic) else {
            return deadLetter(
                "the topic has fewer levels than the stream key '\(route.stream)' needs (\(route.stream.highestLevel))",
                route: route)
        }
        var parsed: JSONValue?
        do {
            parsed = try JSONValue.parse(record.payload)
        } catch {
            if route.requireJSON { return deadLetter("not JSON: \(error)", route: route) }
        }
        var fields: [(String, [UInt8])] = [("topic", Array(record.topic.utf8)), ("payload", record.payload)]
        var eventID: String?
        var sessionID: String?
        var seq: Int64?
        var session: SessionSequence?
        if let object = parsed?.objectValue {
            eventID = object["event_id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            sessionID = object["session_id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
            seq = object["seq"]?.intValue
            if let eventID { fields.append(("event_id", Array(eventID.utf8))) }
            if let type = object["event_type"]?.stringValue { fields.append(("event_type", Array(type.utf8))) }
            if let sessionID { fields.append(("session_id", Array(sessionID.utf8))) }
            if let seq { fields.append(("seq", Array(String(seq).utf8))) }
            session = SessionSequence.from(object)
        }
        fields += common(record, configuration)
        let dedupID: String
        if let eventID {
            dedupID = "e:" + eventID
        } else if let sessionID, let seq {
            dedupID = "s:\(sessionID):\(seq)"
        } else if record.retain {
            // The broker re-sends retained messages on every SUBSCRIBE (each bridge start): same topic and bytes
            // within the window are the same retained state, mirrored once.
            dedupID = "r:\(record.topic):\(contentHash(record.payload))"
        } else {
            dedupID = journalID
        }
        return PlannedWrite(
            kind: .entry, stream: stream, dedupID: dedupID, maxLength: route.maxLength, maxAgeSeconds: route.maxAgeSeconds,
            fields: fields, session: session)
    }

    private static func common(_ record: JournalRecord, _ configuration: BridgeConfiguration) -> [(String, [UInt8])] {
        [
            ("qos", Array(String(record.qos).utf8)), ("retain", Array((record.retain ? "1" : "0").utf8)),
            ("received_at", Array(EventTimestamp(millisecondsSinceEpoch: record.receivedAtMilliseconds).iso8601.utf8)),
            ("bridge", Array(configuration.bridgeName.utf8)),
        ]
    }

    /// 96 bits (CRC-32 and FNV-1a 64) plus the length: enough to tell retained payloads of one topic apart.
    static func contentHash(_ bytes: [UInt8]) -> String {
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { fnv = (fnv ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        let crc = CRC32.checksum(bytes)
        return String(crc, radix: 16) + String(fnv, radix: 16) + ":" + String(bytes.count)
    }

    /// The dedup set of a stream.
    public static func dedupKey(stream: String) -> String { "bridge:dedup:" + stream }

    /// A session's committed position: a string holding the highest contiguous seq written (absent = 0). The braces
    /// are a Redis Cluster hash tag, so a session's key stays in one slot whatever else is stored beside it later.
    public static func sessionKey(sessionID: String) -> String { "opsbus:session:{\(sessionID)}:acked" }
}

/// The Lua scripts of the writer. `appendBatch` runs once per run of up to 200 records (`append`, its one-record
/// form, when a batch call failed for a lasting reason) and does only what must be atomic with each XADD;
/// `trim` runs once per stream per batch and does the housekeeping (dedup window, age retention), which keeps the
/// per-record cost low. Both take time from the Redis server (`TIME`), so trimming and the window do not depend on
/// the bridge host's clock (Redis 7 replicates script effects, so `TIME` is safe).
public enum BridgeScripts {
    /// KEYS: stream, dedup set, stats hash. ARGV: dedup id ('' = none), maxlen (0 = none), counter field, then
    /// field/value pairs. Returns the new entry id, or nil for a duplicate (counted in `bridge_duplicates`).
    /// `MAXLEN ~` is applied by the XADD itself (cheap: whole radix-tree nodes only).
    public static let append = RedisScript(name: "bridge_append", source: """
        local id = ARGV[1]
        if id ~= '' and redis.call('ZSCORE', KEYS[2], id) then
          redis.call('HINCRBY', KEYS[3], 'bridge_duplicates', 1)
          return false
        end
        local args = {'XADD', KEYS[1]}
        if ARGV[2] ~= '0' then
          args[#args + 1] = 'MAXLEN'
          args[#args + 1] = '~'
          args[#args + 1] = ARGV[2]
        end
        args[#args + 1] = '*'
        for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
        local entry = redis.call(unpack(args))
        if id ~= '' then
          local t = redis.call('TIME')
          redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
        end
        redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
        return entry
        """)

    /// `append` for a run of records in one call: per record the same dedup check, `XADD` and dedup id, with the
    /// server's `TIME` read and the stats counted once per call. One `EVALSHA` per record cost Redis about 10 µs of
    /// its ~32 µs per bridged event (the call's dispatch and the script's setup); see BENCHMARKS.md.
    ///
    /// KEYS: stats hash, then per stream its key and its dedup set (`KEYS[2k]`, `KEYS[2k+1]` for stream `k` ≥ 1).
    /// ARGV, per record: stream number `k`, dedup id ('' = none), maxlen (0 = none), counter field, number of
    /// field/value pairs, the pairs.
    /// Returns one string per record: the new entry id; `''` for a duplicate (counted in `bridge_duplicates`); or
    /// `'!'` and the error Redis gave for that record (e.g. `WRONGTYPE`: the stream key holds another type), which
    /// the writer dead-letters. Every command runs under `pcall`, so one bad key fails its record, not the call
    /// (a script has no rollback: a call failing half-way would leave its first records written).
    public static let appendBatch = RedisScript(name: "bridge_append_batch", source: """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local results, counts, duplicates = {}, {}, 0
        local i, n = 1, 0
        while i <= #ARGV do
          local k, id, maxlen, counter = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
          local last = i + 4 + 2 * tonumber(ARGV[i + 4])
          local stream, dedup = KEYS[2 * k], KEYS[2 * k + 1]
          n = n + 1
          local seen = false
          if id ~= '' then seen = redis.pcall('ZSCORE', dedup, id) end
          if type(seen) == 'table' and seen.err then
            results[n] = '!' .. seen.err
          elseif seen then
            duplicates = duplicates + 1
            results[n] = ''
          else
            local args = {'XADD', stream}
            if maxlen ~= '0' then
              args[3] = 'MAXLEN'
              args[4] = '~'
              args[5] = maxlen
            end
            args[#args + 1] = '*'
            for j = i + 5, last do args[#args + 1] = ARGV[j] end
            local entry = redis.pcall(unpack(args))
            if type(entry) == 'table' and entry.err then
              results[n] = '!' .. entry.err
            else
              if id ~= '' then redis.pcall('ZADD', dedup, now, id) end
              counts[counter] = (counts[counter] or 0) + 1
              results[n] = entry
            end
          end
          i = last + 1
        end
        for field, count in pairs(counts) do redis.pcall('HINCRBY', KEYS[1], field, count) end
        if duplicates > 0 then redis.pcall('HINCRBY', KEYS[1], 'bridge_duplicates', duplicates) end
        return results
        """)

    /// Records per `appendBatch` call: large enough that the call's own cost vanishes, small enough that one call
    /// does not hold Redis for long (about 2 ms at 400-byte events).
    static let recordsPerBatchCall = 200

    /// The `append` of an envelope with `ack: true`: commits a session's events in `seq` order, exactly once, in one
    /// atomic call with the XADD. With `acked` the session's stored position (absent = 0):
    /// * `seq ≤ acked`: duplicate, not written (`bridge_duplicates`, `bridge_seq_duplicates`);
    /// * `resume_after` above `acked` raises `acked` to it first: the publisher says everything up to it is settled
    ///   (acknowledged by a bridge, or dropped and declared), so a session whose key expired (or a Redis that lost
    ///   it) resumes instead of holding every later event back;
    /// * `seq == acked + 1`, or `prev_seq ≤ acked < seq` (the publisher dropped the numbers between): written, and
    ///   `acked = seq`. If the dedup set already holds the event id the entry is not written again but the position
    ///   still moves (the event is in the stream). If Redis refuses the XADD (e.g. `WRONGTYPE`), the record is
    ///   dead-lettered here, with the reason, and the position moves too: refusing it would hold the session back
    ///   until the publisher re-sent every later event once more per refused one;
    /// * otherwise: out of order, not written, position unchanged (`bridge_out_of_order`); the publisher re-sends
    ///   from `acked + 1` (go-back-N).
    /// Every call that finds the session refreshes its key's TTL (one key per publisher process start: without a TTL
    /// they would pile up forever; with it, a session silent for longer than the TTL starts again at 0, so the TTL
    /// must exceed the longest time a publisher may hold unacknowledged events).
    /// Seqs are compared as Lua numbers: exact up to 2^53.
    ///
    /// KEYS: stream, dedup set, stats hash, session key, dead-letter stream. ARGV: dedup id ('' = none), maxlen
    /// (0 = none), counter field (`bridge_dead_lettered` when the record is itself a dead letter), seq, prev_seq
    /// ('' = none), TTL seconds, dead-letter maxlen, dead-letter payload bytes, resume_after ('' = none), then
    /// field/value pairs.
    /// Returns `{code, acked, detail}`: code `w` written, `x` dead-lettered, `s` duplicate by seq, `d` duplicate by
    /// event id (position moved), `o` out of order, `e` dropped (a dead letter Redis refused too; `detail` has Redis's
    /// message); `acked` the position afterwards.
    public static let appendInSession = RedisScript(name: "bridge_append_session", source: """
        local seq = tonumber(ARGV[4])
        local acked = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
        if ARGV[9] ~= '' and tonumber(ARGV[9]) > acked then acked = tonumber(ARGV[9]) end
        if seq <= acked then
          redis.call('EXPIRE', KEYS[4], ARGV[6])
          redis.call('HINCRBY', KEYS[3], 'bridge_duplicates', 1)
          redis.call('HINCRBY', KEYS[3], 'bridge_seq_duplicates', 1)
          return {'s', acked, ''}
        end
        if seq ~= acked + 1 and (ARGV[5] == '' or tonumber(ARGV[5]) > acked) then
          if acked > 0 then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
          redis.call('HINCRBY', KEYS[3], 'bridge_out_of_order', 1)
          return {'o', acked, ''}
        end
        local id = ARGV[1]
        local code = 'w'
        local detail = ''
        if id ~= '' and redis.call('ZSCORE', KEYS[2], id) then
          redis.call('HINCRBY', KEYS[3], 'bridge_duplicates', 1)
          code = 'd'
        else
          local args = {'XADD', KEYS[1]}
          if ARGV[2] ~= '0' then
            args[#args + 1] = 'MAXLEN'
            args[#args + 1] = '~'
            args[#args + 1] = ARGV[2]
          end
          args[#args + 1] = '*'
          for i = 10, #ARGV do args[#args + 1] = ARGV[i] end
          local entry = redis.pcall(unpack(args))
          if type(entry) == 'table' and entry.err then
            detail = entry.err
            code = 'e'
            if ARGV[3] ~= 'bridge_dead_lettered' then
              local letter = {'XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'stream', KEYS[1],
                'reason', 'redis rejected the entry: ' .. entry.err}
              local payload = ''
              for i = 10, #ARGV - 1, 2 do
                if ARGV[i] == 'payload' then
                  payload = ARGV[i + 1]
                else
                  letter[#letter + 1] = ARGV[i]
                  letter[#letter + 1] = ARGV[i + 1]
                end
              end
              letter[#letter + 1] = 'payload'
              letter[#letter + 1] = string.sub(payload, 1, tonumber(ARGV[8]))
              local written = redis.pcall(unpack(letter))
              if type(written) == 'table' and written.err then
                detail = detail .. '; the dead letter failed too: ' .. written.err
              else
                code = 'x'
                redis.call('HINCRBY', KEYS[3], 'bridge_dead_lettered', 1)
              end
            end
          else
            if id ~= '' then
              local t = redis.call('TIME')
              redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
            end
            redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
            if ARGV[3] == 'bridge_dead_lettered' then code = 'x' end
          end
        end
        redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[6])
        return {code, seq, detail}
        """)

    /// KEYS: stream, dedup set. ARGV: window seconds, window size, max age seconds (0 = none).
    /// Forgets dedup ids older than the window, keeps at most `size` of them, lets an idle dedup set expire, and
    /// applies `MINID ~ <now − max age>-0` to the stream.
    public static let trim = RedisScript(name: "bridge_trim", source: """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local window = tonumber(ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', now - window * 1000))
        local size = tonumber(ARGV[2])
        if redis.call('ZCARD', KEYS[2]) > size then
          redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(size + 1))
        end
        redis.call('PEXPIRE', KEYS[2], window * 1000)
        local maxage = tonumber(ARGV[3])
        if maxage > 0 then
          redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', now - maxage * 1000))
        end
        return 0
        """)

    static func trimArguments(stream: String, maxAgeSeconds: Int?, window: DedupWindow) -> (keys: [[UInt8]], arguments: [[UInt8]]) {
        ([Array(stream.utf8), Array(StreamEntryFormat.dedupKey(stream: stream).utf8)],
         [Array(String(window.seconds).utf8), Array(String(window.size).utf8), Array(String(maxAgeSeconds ?? 0).utf8)])
    }

    static func arguments(_ write: PlannedWrite, statsKey: String) -> (keys: [[UInt8]], arguments: [[UInt8]]) {
        var arguments = write.leadingArguments
        write.appendFields(to: &arguments)
        return ([Array(write.stream.utf8), Array(StreamEntryFormat.dedupKey(stream: write.stream).utf8), Array(statsKey.utf8)], arguments)
    }

    /// Arguments of one `appendBatch` call for `writes` (none of them with a `session`), encoded as they are built
    /// (`RedisArguments`: an array per argument and hiredis's formatting were a third of the bridge's instructions
    /// per event, `Benchmarks/service_callgrind.py`).
    static func batchArguments(_ writes: ArraySlice<PlannedWrite>, statsKey: String) -> (keys: [[UInt8]], arguments: RedisArguments) {
        var keys: [[UInt8]] = [Array(statsKey.utf8)]
        var streamNumbers: [String: Int] = [:]
        var arguments = RedisArguments(reservingCapacity: writes.reduce(0) {
            $0 + 96 + $1.fields.reduce(0) { $0 + $1.0.utf8.count + $1.1.count + 16 }
        })
        for write in writes {
            let number: Int
            if let known = streamNumbers[write.stream] {
                number = known
            } else {
                number = streamNumbers.count + 1
                streamNumbers[write.stream] = number
                keys.append(Array(write.stream.utf8))
                keys.append(Array(StreamEntryFormat.dedupKey(stream: write.stream).utf8))
            }
            arguments.append(number)
            arguments.append(write.dedupID)
            arguments.append(write.maxLength ?? 0)
            arguments.append(write.statsCounter)
            arguments.append(write.fields.count)
            for (name, value) in write.fields {
                arguments.append(name)
                arguments.append(value)
            }
        }
        return (keys, arguments)
    }

    /// The reply of one record in an `appendBatch` reply, as `append` would have given it: the entry id, `.null`
    /// for a duplicate, `.error` for a record Redis refused.
    static func recordReply(_ element: RedisReply) -> RedisReply {
        guard let bytes = element.bytes else { return element }
        if bytes.isEmpty { return .null }
        if bytes.first == UInt8(ascii: "!") { return .error(String(decoding: bytes.dropFirst(), as: UTF8.self)) }
        return element
    }

    /// Arguments of `appendInSession` for a write with a `session`.
    static func sessionArguments(_ write: PlannedWrite, _ session: SessionSequence, configuration: BridgeConfiguration)
        -> (keys: [[UInt8]], arguments: [[UInt8]])
    {
        var arguments = write.leadingArguments + [
            Array(String(session.seq).utf8), session.prevSeq.map { Array(String($0).utf8) } ?? [],
            Array(String(configuration.sessionTTLSeconds).utf8), Array(String(configuration.deadLetterMaxLength).utf8),
            Array(String(configuration.deadLetterPayloadBytes).utf8),
            session.resumeAfter.map { Array(String($0).utf8) } ?? [],
        ]
        arguments.reserveCapacity(arguments.count + 2 * write.fields.count)
        write.appendFields(to: &arguments)
        let keys = [
            Array(write.stream.utf8), Array(StreamEntryFormat.dedupKey(stream: write.stream).utf8),
            Array(configuration.statsKey.utf8), Array(StreamEntryFormat.sessionKey(sessionID: session.sessionID).utf8),
            Array(configuration.deadLetterStream.utf8),
        ]
        return (keys, arguments)
    }
}
