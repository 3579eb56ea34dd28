/// A pipeline that can mix plain commands and script calls, built with `RedisConnection.makePipeline()`.
///
/// `execute()` returns one reply per appended entry, in order; error replies stay in their slot as `.error`.
/// Scripts not yet loaded on this connection are `SCRIPT LOAD`ed at the head of the same write, so after a restart
/// or on a fresh connection every slot runs in order. If a script still answers `NOSCRIPT` (someone ran
/// `SCRIPT FLUSH` in between), it is loaded and only those slots are re-run, after the rest of the pipeline.
/// That is safe (a NOSCRIPT reply means the script did not run) but changes their order relative to the other
/// commands, so do not rely on ordering between a script slot and later slots beyond that.
public struct RedisPipeline {
    enum Entry {
        case command([[UInt8]])
        /// A script call, encoded (`RedisArguments`): its header (`*n`, `EVALSHA`, SHA, key count) in the wire
        /// format, then its keys and its arguments.
        case evaluate(RedisScript, header: [UInt8], keys: RedisArguments, arguments: RedisArguments)

        var script: RedisScript? {
            switch self {
            case .command: nil
            case let .evaluate(script, _, _, _): script
            }
        }

        var wire: RedisConnection.WireCommand {
            switch self {
            case let .command(arguments): .arguments(arguments)
            case let .evaluate(_, header, keys, arguments): .encoded(header: header, bodies: [keys, arguments])
            }
        }
    }

    private let connection: RedisConnection
    private(set) var entries: [Entry] = []

    public init(connection: RedisConnection) {
        self.connection = connection
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    public mutating func append(_ arguments: [String]) {
        entries.append(.command(arguments.map { Array($0.utf8) }))
    }

    public mutating func append(_ arguments: [[UInt8]]) {
        entries.append(.command(arguments))
    }

    public mutating func appendEvaluate(_ script: RedisScript, keys: [String], arguments: [String]) {
        appendEvaluate(script, keys: RedisArguments(keys), arguments: RedisArguments(arguments))
    }

    public mutating func appendEvaluate(_ script: RedisScript, keys: [[UInt8]], arguments: [[UInt8]]) {
        appendEvaluate(script, keys: RedisArguments(keys), arguments: RedisArguments(arguments))
    }

    /// A script call whose keys and arguments are already encoded: no per-argument arrays, no hiredis formatting
    /// (the batching processor's calls hold thousands of arguments). Every script call of a pipeline goes this way.
    public mutating func appendEvaluate(_ script: RedisScript, keys: RedisArguments, arguments: RedisArguments) {
        var head = RedisArguments(reservingCapacity: 64)
        head.append("EVALSHA")
        head.append(script.sha)
        head.append(keys.count)
        let header = RedisArguments.arrayHeader(head.count + keys.count + arguments.count) + head.encoded
        entries.append(.evaluate(script, header: header, keys: keys, arguments: arguments))
    }

    /// Runs the pipeline. Throws only for connection failures (I/O, timeout: some slots may have run) and for
    /// refused commands; error replies, including script errors, are returned in their slots.
    public func execute() throws(RedisError) -> [RedisReply] {
        guard !entries.isEmpty else { return [] }

        // Scripts this connection has not loaded yet: SCRIPT LOAD them first, in the same round trip.
        var preload: [RedisScript] = []
        for entry in entries {
            if let script = entry.script, !connection.isLoaded(script), !preload.contains(script) { preload.append(script) }
        }
        let loadCommands = preload.map {
            RedisConnection.WireCommand.arguments([Array("SCRIPT".utf8), Array("LOAD".utf8), Array($0.source.utf8)])
        }
        let allReplies = try connection.pipeline(wire: loadCommands + entries.map(\.wire))
        var loadErrors: [String: RedisReply] = [:]
        for (script, reply) in zip(preload, allReplies) {
            do {
                try connection.checkLoaded(script, reply: reply)
            } catch {
                loadErrors[script.sha] = .error("could not load \(script.name): \(error)")
            }
        }
        var replies = Array(allReplies.dropFirst(preload.count))

        // Slots whose script is missing: substitute the load error, or collect for one retry.
        var retrySlots: [Int] = []
        for (index, entry) in entries.enumerated() {
            guard let script = entry.script, replies[index].errorCode == "NOSCRIPT" else { continue }
            if let loadError = loadErrors[script.sha] {
                replies[index] = loadError
            } else {
                retrySlots.append(index)
            }
        }
        guard !retrySlots.isEmpty else { return replies }

        var reloaded: Set<String> = []
        var failedLoads: [String: RedisReply] = [:]
        var rerun: [(slot: Int, wire: RedisConnection.WireCommand)] = []
        for slot in retrySlots {
            guard let script = entries[slot].script else { continue }
            if let failure = failedLoads[script.sha] {
                replies[slot] = failure
                continue
            }
            if !reloaded.contains(script.sha) {
                do {
                    try connection.load(script)
                } catch let error where !error.isConnectionFailure {
                    let failure = RedisReply.error("could not load \(script.name): \(error)")
                    failedLoads[script.sha] = failure
                    replies[slot] = failure
                    continue
                }
                reloaded.insert(script.sha)
            }
            rerun.append((slot, entries[slot].wire))
        }
        let rerunReplies = try connection.pipeline(wire: rerun.map(\.wire))
        for (entry, reply) in zip(rerun, rerunReplies) { replies[entry.slot] = reply }
        return replies
    }
}
