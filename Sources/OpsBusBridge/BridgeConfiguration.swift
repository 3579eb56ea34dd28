import Foundation
import OpsBusJournal
import OpsBusCore
import OpsBusMQTT
import OpsBusRedis

/// How long and how many message ids the bridge remembers per stream to suppress duplicates.
///
/// Each stream `S` has a sorted set `bridge:dedup:S` (member: dedup id, score: Redis time in ms). An id is
/// forgotten when it is older than `seconds` **or** pushed out by `size` newer ids, whichever comes first (checked
/// after each writer batch, so the set briefly holds up to `size` + one batch); the set itself expires `seconds`
/// after the last batch that wrote to the stream. A duplicate arriving after its id was forgotten creates a second
/// entry, so the window must cover the longest redelivery delay you expect (bridge outage + broker queue).
///
/// Sizing: the duplicates the bridge itself causes are few and recent (a journal replay repeats at most the
/// records after the last committed batch; a broker redelivery at most the in-flight window plus PUBACKs not yet
/// sent), and publisher retries come within seconds. The defaults (24 h, 100,000 ids per stream) cover those with
/// a wide margin; raise `size` if you expect re-publishes of older events (e.g. a `replay --to-mqtt` of a whole
/// stream would otherwise append the events a second time). Memory: about 100 bytes per remembered id, so the
/// default costs up to ~10 MB per stream.
public struct DedupWindow: Sendable, Hashable {
    public var seconds: Int
    public var size: Int

    public init(seconds: Int = 86_400, size: Int = 100_000) {
        self.seconds = seconds
        self.size = size
    }
}

/// Everything `Bridge` needs. See `BridgeRoute` for routes and `Journal` for the durability design.
public struct BridgeConfiguration: Sendable {
    public var mqtt: MQTTEndpoint
    public var redis: RedisEndpoint
    public var routes: [BridgeRoute]
    /// Names this bridge in entries (`bridge` field) and in the default client id and journal directory.
    public var instance: String?
    /// Fixed MQTT client id (durable session): `opsbus-bridge` or `opsbus-bridge-<instance>`.
    public var clientID: String
    public var journalDirectory: String
    public var journalMaxBytes: Int64 = 1 << 30
    public var fsync: JournalFsync = .never
    public var dedupWindow = DedupWindow()
    /// Records per Redis pipeline.
    public var batchSize = 1_000
    public var deadLetterStream = "bridge:deadletter"
    /// `MAXLEN ~` of the dead-letter stream.
    public var deadLetterMaxLength = 100_000
    /// Dead letters keep at most this many bytes of the payload.
    public var deadLetterPayloadBytes = 4_096
    public var statsKey = "opsbus:stats"
    /// On stop, how long to keep trying to write the journal's rest to Redis before leaving it for the next start.
    public var drainTimeout: Double = 10
    public var redisCommandTimeout: Double = 5
    public var keepAlive = 30
    /// Publish end-to-end acknowledgements (`acks/<owner>/<session_id>`, retained, QoS 1) after each batch for every
    /// session of `ack: true` envelopes it touched. When false, such envelopes are still committed in order and
    /// exactly once, but their publishers hear nothing and re-send after their timeout.
    public var acknowledgements = true
    /// TTL of a session's committed position in Redis (`opsbus:session:{<id>}:acked`), refreshed whenever the
    /// session is seen. Every publisher process start is a new session, so without a TTL the keys would pile up
    /// forever; a session silent for longer than this starts again at 0 (its remaining events would then be held
    /// back as out of order), so keep it above the longest time a publisher may hold unacknowledged events.
    public var sessionTTLSeconds = 7 * 86_400
    /// The topic prefix for the ack topics (the routes are configured separately).
    public var topicScheme = TopicScheme.unprefixed

    public init(mqtt: MQTTEndpoint, redis: RedisEndpoint, routes: [BridgeRoute], instance: String? = nil,
                clientID: String? = nil, journalDirectory: String? = nil) {
        self.mqtt = mqtt
        self.redis = redis
        self.routes = routes
        self.instance = instance
        self.clientID = clientID ?? (instance.map { "opsbus-bridge-\($0)" } ?? "opsbus-bridge")
        self.journalDirectory = journalDirectory ?? Self.defaultJournalDirectory(instance: instance)
    }

    /// `stateDirectory` (default `$OPSBUS_STATE_DIR`, else `./.opsbus`), then `bridge[-<instance>]/journal`.
    public static func defaultJournalDirectory(instance: String?, stateDirectory: String? = nil) -> String {
        let base = stateDirectory ?? ProcessInfo.processInfo.environment["OPSBUS_STATE_DIR"] ?? ".opsbus"
        return base + "/bridge" + (instance.map { "-\($0)" } ?? "") + "/journal"
    }

    /// The `bridge` field of entries.
    public var bridgeName: String { instance ?? clientID }

    public func validate() throws(BridgeError) {
        if routes.isEmpty { throw .invalidConfiguration(reason: "no routes") }
        for route in routes { try route.validate() }
        if let instance {
            do { _ = try Identifier(validating: instance, field: "instance") } catch {
                throw .invalidConfiguration(reason: "instance: \(error)")
            }
        }
        if dedupWindow.seconds < 1 || dedupWindow.size < 1 {
            throw .invalidConfiguration(reason: "the dedup window needs at least 1 second and 1 id")
        }
        if sessionTTLSeconds < 60 {
            throw .invalidConfiguration(reason: "the session TTL must be at least 60 seconds (got \(sessionTTLSeconds))")
        }
        if batchSize < 1 || batchSize > 100_000 {
            throw .invalidConfiguration(reason: "batch size must be from 1 to 100000")
        }
        let largest = Int64(routes.map(\.maxPayloadBytes).max() ?? 0) + 70_000
        if journalMaxBytes < max(64 * 1024, 4 * largest) {
            throw .invalidConfiguration(
                reason: "journal max bytes \(journalMaxBytes) must be at least 4 × the largest route maxPayloadBytes "
                    + "plus topic (\(4 * largest)) and at least 65536")
        }
    }
}

/// The JSON configuration file (`opsbus bridge --config bridge.json`):
///
/// ```json
/// {
///   "routes": [
///     {"filter": "jobs/#", "stream": "events:{1}", "maxLength": 1000000, "maxAgeSeconds": 86400,
///      "requireJSON": true, "maxPayloadBytes": 262144},
///     {"filter": "workers/+/health", "stream": "health:{2}", "maxLength": null}
///   ],
///   "dedupWindowSeconds": 86400, "dedupWindowSize": 100000,
///   "journalMaxBytes": 1073741824, "fsync": "never", "batchSize": 1000,
///   "acknowledgements": true, "sessionTTLSeconds": 604800
/// }
/// ```
/// Only `routes` with `filter` and `stream` is required; omitted keys take the defaults (`maxLength` 1,000,000,
/// `null` for no cap). Unknown keys are rejected so a typo does not silently fall back to a default.
public struct BridgeConfigurationFile: Sendable {
    public var routes: [BridgeRoute]
    public var dedupWindow: DedupWindow?
    public var journalMaxBytes: Int64?
    public var fsync: JournalFsync?
    public var batchSize: Int?
    public var acknowledgements: Bool?
    public var sessionTTLSeconds: Int?

    public static func load(path: String) throws(BridgeError) -> BridgeConfigurationFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .configurationFile(path: path, reason: "cannot read the file")
        }
        return try parse(Array(data), path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String = "<config>") throws(BridgeError) -> BridgeConfigurationFile {
        let value: JSONValue
        do { value = try JSONValue.parse(bytes) } catch {
            throw .configurationFile(path: path, reason: "not valid JSON: \(error)")
        }
        guard let object = value.objectValue else {
            throw .configurationFile(path: path, reason: "expected a JSON object at the top level")
        }
        let known = [
            "routes", "dedupWindowSeconds", "dedupWindowSize", "journalMaxBytes", "fsync", "batchSize", "acknowledgements",
            "sessionTTLSeconds",
        ]
        if let unknown = object.keys.first(where: { !known.contains($0) }) {
            throw .configurationFile(path: path, reason: "unknown key '\(unknown)' (known: \(known.joined(separator: ", ")))")
        }
        func integer(_ value: JSONValue?, _ name: String) throws(BridgeError) -> Int? {
            guard let value, !value.isNull else { return nil }
            guard let number = value.intValue else {
                throw .configurationFile(path: path, reason: "'\(name)' must be a whole number")
            }
            return Int(number)
        }
        guard let list = object["routes"]?.arrayValue, !list.isEmpty else {
            throw .configurationFile(path: path, reason: "'routes' must be a non-empty array")
        }
        var routes: [BridgeRoute] = []
        for (index, item) in list.enumerated() {
            let name = "routes[\(index)]"
            guard let route = item.objectValue else {
                throw .configurationFile(path: path, reason: "\(name) must be an object")
            }
            let routeKeys = ["filter", "stream", "maxLength", "maxAgeSeconds", "requireJSON", "maxPayloadBytes"]
            if let unknown = route.keys.first(where: { !routeKeys.contains($0) }) {
                throw .configurationFile(path: path, reason: "\(name): unknown key '\(unknown)'")
            }
            guard let filterText = route["filter"]?.stringValue, let streamText = route["stream"]?.stringValue else {
                throw .configurationFile(path: path, reason: "\(name) needs string 'filter' and 'stream'")
            }
            let requireJSON: Bool
            switch route["requireJSON"] {
            case nil, .null?: requireJSON = false
            case let value?:
                guard let flag = value.boolValue else {
                    throw .configurationFile(path: path, reason: "\(name).requireJSON must be true or false")
                }
                requireJSON = flag
            }
            do {
                let filter: TopicFilter
                do { filter = try TopicFilter(filterText) } catch {
                    throw BridgeError.invalidRoute(spec: filterText, reason: "\(error)")
                }
                let maxLength: Int? = route.contains(key: "maxLength")
                    ? try integer(route["maxLength"], "\(name).maxLength") : BridgeRoute.defaultMaxLength
                routes.append(try BridgeRoute(
                    filter: filter, stream: StreamKeyTemplate(streamText), maxLength: maxLength,
                    maxAgeSeconds: try integer(route["maxAgeSeconds"], "\(name).maxAgeSeconds"), requireJSON: requireJSON,
                    maxPayloadBytes: try integer(route["maxPayloadBytes"], "\(name).maxPayloadBytes")
                        ?? BridgeRoute.defaultMaxPayloadBytes))
            } catch {
                throw .configurationFile(path: path, reason: "\(name): \(error)")
            }
        }
        var file = BridgeConfigurationFile(routes: routes)
        let seconds = try integer(object["dedupWindowSeconds"], "dedupWindowSeconds")
        let size = try integer(object["dedupWindowSize"], "dedupWindowSize")
        if seconds != nil || size != nil {
            file.dedupWindow = DedupWindow(seconds: seconds ?? DedupWindow().seconds, size: size ?? DedupWindow().size)
        }
        file.journalMaxBytes = try integer(object["journalMaxBytes"], "journalMaxBytes").map(Int64.init)
        file.batchSize = try integer(object["batchSize"], "batchSize")
        file.sessionTTLSeconds = try integer(object["sessionTTLSeconds"], "sessionTTLSeconds")
        if let value = object["acknowledgements"], !value.isNull {
            guard let flag = value.boolValue else {
                throw .configurationFile(path: path, reason: "'acknowledgements' must be true or false")
            }
            file.acknowledgements = flag
        }
        if let text = object["fsync"]?.stringValue {
            guard let mode = JournalFsync(rawValue: text) else {
                throw .configurationFile(path: path, reason: "'fsync' must be always, batch or never")
            }
            file.fsync = mode
        }
        return file
    }

    public init(routes: [BridgeRoute]) {
        self.routes = routes
    }
}
