import OpsBusCore

/// A stream key, fixed or built from the levels of the topic a message arrived on.
///
/// `{N}` is replaced by topic level N, **counted from 1** over the whole topic (prefix levels included):
/// for `jobs/j-1/completed`, `{1}` is `jobs`, `{2}` is `j-1`, `{3}` is `completed`. So `events:{1}` maps
/// `jobs/j-1/completed` to `events:jobs`. `{0}` is rejected (there is no level 0, and 1-based matches how people
/// read topics). Everything outside `{digits}` is copied literally; a lone `{` or `}` is literal too.
/// A topic with fewer levels than the template needs cannot be mapped: `streamKey(for:)` returns nil and the
/// bridge dead-letters the message (possible with `#` filters, which also match the parent level).
public struct StreamKeyTemplate: Sendable, Hashable, CustomStringConvertible {
    enum Part: Sendable, Hashable {
        case literal(String)
        case level(Int)
    }

    public let rawValue: String
    let parts: [Part]

    public init(_ template: String) throws(BridgeError) {
        guard !template.isEmpty else { throw .invalidTemplate(template: template, reason: "empty stream key") }
        var parts: [Part] = []
        var literal = ""
        var index = template.startIndex
        while index < template.endIndex {
            let character = template[index]
            if character == "{",
                let close = template[index...].firstIndex(of: "}"),
                close > template.index(after: index),
                template[template.index(after: index)..<close].allSatisfy({ $0.isASCII && $0.isNumber })
            {
                let digits = template[template.index(after: index)..<close]
                guard let level = Int(digits), level >= 1, level <= 10_000 else {
                    throw .invalidTemplate(
                        template: template, reason: "{\(digits)}: topic levels are counted from 1 ({1} is the first level)")
                }
                if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
                parts.append(.level(level))
                index = template.index(after: close)
            } else {
                literal.append(character)
                index = template.index(after: index)
            }
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        rawValue = template
        self.parts = parts
    }

    public var description: String { rawValue }

    /// True when the key does not depend on the topic.
    public var isFixed: Bool { parts.allSatisfy { if case .literal = $0 { true } else { false } } }

    /// The highest level the template uses (0 for a fixed key).
    public var highestLevel: Int {
        parts.reduce(0) { if case let .level(n) = $1 { max($0, n) } else { $0 } }
    }

    /// The key for `topic`, or nil when the topic has fewer levels than the template uses.
    public func streamKey(for topic: String) -> String? {
        if isFixed { return rawValue }
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        var key = ""
        for part in parts {
            switch part {
            case let .literal(text): key += text
            case let .level(n):
                guard n <= levels.count else { return nil }
                key += levels[n - 1]
            }
        }
        return key
    }

    /// A `SCAN MATCH` pattern covering every key this template can produce (`events:{1}` → `events:*`), with glob
    /// characters in the literal parts escaped.
    public var scanPattern: String {
        parts.map { part -> String in
            switch part {
            case .level: return "*"
            case let .literal(text):
                var escaped = ""
                for character in text {
                    if "*?[]\\".contains(character) { escaped.append("\\") }
                    escaped.append(character)
                }
                return escaped
            }
        }.joined()
    }
}

/// One mapping from MQTT topics to a Redis stream, with its retention and validation.
///
/// A message goes to the **first** route (in configuration order) whose filter matches its topic, never to several:
/// one MQTT message gives at most one stream entry, and overlapping routes are resolved by their order.
public struct BridgeRoute: Sendable, Hashable, CustomStringConvertible {
    /// Default cap on a stream's length (`MAXLEN ~`), so an unattended stream cannot eat Redis memory.
    public static let defaultMaxLength = 1_000_000
    /// Default payload limit (the envelope limit of `topics.md`).
    public static let defaultMaxPayloadBytes = EventEnvelope.defaultMaximumBytes

    public var filter: TopicFilter
    public var stream: StreamKeyTemplate
    /// `XADD … MAXLEN ~ N`: approximate, so Redis trims whole radix-tree nodes (cheap); the stream keeps at least N.
    public var maxLength: Int?
    /// `MINID ~ <now − age>-0` after each XADD: entries older than this many seconds (by their id's time) go.
    public var maxAgeSeconds: Int?
    /// Payloads that are not valid JSON (RFC 8259, any value) are dead-lettered instead of mirrored.
    public var requireJSON: Bool
    /// Larger payloads are dead-lettered (reason `oversize`); the journal keeps only their first bytes.
    public var maxPayloadBytes: Int

    public init(
        filter: TopicFilter, stream: StreamKeyTemplate, maxLength: Int? = BridgeRoute.defaultMaxLength,
        maxAgeSeconds: Int? = nil, requireJSON: Bool = false, maxPayloadBytes: Int = BridgeRoute.defaultMaxPayloadBytes
    ) throws(BridgeError) {
        self.filter = filter
        self.stream = stream
        self.maxLength = maxLength
        self.maxAgeSeconds = maxAgeSeconds
        self.requireJSON = requireJSON
        self.maxPayloadBytes = maxPayloadBytes
        try validate()
    }

    func validate() throws(BridgeError) {
        let spec = description
        if filter.shareGroup != nil {
            throw .invalidRoute(spec: spec, reason: "shared subscriptions ($share/…) are not supported by the bridge")
        }
        if let maxLength, maxLength < 1 { throw .invalidRoute(spec: spec, reason: "maxLength must be at least 1") }
        if let maxAgeSeconds, maxAgeSeconds < 1 {
            throw .invalidRoute(spec: spec, reason: "maxAgeSeconds must be at least 1")
        }
        if maxPayloadBytes < 1 || maxPayloadBytes > 256 * 1024 * 1024 {
            throw .invalidRoute(spec: spec, reason: "maxPayloadBytes must be from 1 to 268435456")
        }
    }

    public var description: String {
        var text = "\(filter.rawValue)=\(stream.rawValue)"
        if let maxLength { text += ";maxlen=\(maxLength)" }
        if let maxAgeSeconds { text += ";maxage=\(maxAgeSeconds)" }
        if requireJSON { text += ";json" }
        if maxPayloadBytes != Self.defaultMaxPayloadBytes { text += ";maxbytes=\(maxPayloadBytes)" }
        return text
    }

    /// Parses the flag/environment form: `FILTER=STREAM[;maxlen=N|none][;maxage=SECONDS][;json][;maxbytes=N]`,
    /// e.g. `jobs/#=events:jobs;maxlen=100000;json`. The filter ends at the first `=` (MQTT filters rarely contain
    /// one; use the config file for such a filter). `maxlen` defaults to 1,000,000; `maxlen=none` removes the cap.
    public init(parsing spec: String) throws(BridgeError) {
        let trimmed = spec.trimmingWhitespace()
        let sections = trimmed.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingWhitespace() }
        guard let mapping = sections.first, let equals = mapping.firstIndex(of: "=") else {
            throw .invalidRoute(spec: spec, reason: "expected FILTER=STREAM (e.g. 'jobs/#=events:jobs')")
        }
        let filterText = String(mapping[..<equals])
        let streamText = String(mapping[mapping.index(after: equals)...])
        let filter: TopicFilter
        do { filter = try TopicFilter(filterText) } catch { throw .invalidRoute(spec: spec, reason: "\(error)") }
        let stream = try StreamKeyTemplate(streamText)
        var maxLength: Int? = Self.defaultMaxLength
        var maxAge: Int?
        var requireJSON = false
        var maxBytes = Self.defaultMaxPayloadBytes
        for option in sections.dropFirst() where !option.isEmpty {
            let pair = option.split(separator: "=", maxSplits: 1).map { String($0) }
            let name = pair[0].lowercased()
            let value = pair.count > 1 ? pair[1] : nil
            func number() throws(BridgeError) -> Int {
                guard let value, let number = Int(value) else {
                    throw .invalidRoute(spec: spec, reason: "option '\(name)' needs a whole number")
                }
                return number
            }
            switch name {
            case "maxlen": maxLength = value?.lowercased() == "none" ? nil : try number()
            case "maxage": maxAge = try number()
            case "maxbytes": maxBytes = try number()
            case "json":
                switch value?.lowercased() {
                case nil, "true": requireJSON = true
                case "false": requireJSON = false
                default: throw .invalidRoute(spec: spec, reason: "option 'json' takes true or false")
                }
            default:
                throw .invalidRoute(
                    spec: spec, reason: "unknown option '\(name)' (known: maxlen, maxage, json, maxbytes)")
            }
        }
        do {
            try self.init(
                filter: filter, stream: stream, maxLength: maxLength, maxAgeSeconds: maxAge, requireJSON: requireJSON,
                maxPayloadBytes: maxBytes)
        } catch {
            throw .invalidRoute(spec: spec, reason: Self.reason(of: error))
        }
    }

    private static func reason(of error: BridgeError) -> String {
        if case let .invalidRoute(_, reason) = error { return reason }
        return error.description
    }

    /// The default routes: every opsbus topic family to `events:<family>` (`events:{N}` with N the family's level,
    /// 1 without a topic prefix), capped at 1,000,000 entries each. Payloads need not be JSON (so a malformed event
    /// is still mirrored for forensics; the processor dead-letters it).
    public static func defaults(scheme: TopicScheme = .unprefixed) -> [BridgeRoute] {
        let familyLevel = (scheme.prefix.map { $0.split(separator: "/").count } ?? 0) + 1
        return scheme.subscriptionFilters().map { filter in
            // Both parts are generated from validated constants, so these cannot fail.
            try! BridgeRoute(filter: TopicFilter(filter), stream: StreamKeyTemplate("events:{\(familyLevel)}"))
        }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

/// The first route that matches a topic, in configuration order.
public struct RouteTable: Sendable {
    public let routes: [BridgeRoute]

    public init(_ routes: [BridgeRoute]) { self.routes = routes }

    public func route(for topic: String) -> BridgeRoute? { routes.first { $0.filter.matches(topic) } }

    /// The filters to subscribe to, without repeats.
    public var subscriptionFilters: [String] {
        var seen: Set<String> = []
        return routes.map(\.filter.rawValue).filter { seen.insert($0).inserted }
    }
}
