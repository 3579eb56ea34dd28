/// An MQTT subscription filter, validated, with a matcher that follows MQTT 3.1.1/5 rules.
///
/// - `+` matches exactly one level (possibly empty) and must be a whole level.
/// - `#` matches the parent level and everything below; it must be the whole last level.
/// - Topics starting with `$` (e.g. `$SYS/...`) are not matched by a filter starting with a wildcard.
/// - `$share/<group>/<filter>` is accepted; the group is stripped and `<filter>` is used for matching.
public struct TopicFilter: Sendable, Hashable, CustomStringConvertible {
    /// Maximum encoded length of a filter in MQTT.
    public static let maximumBytes = 65_535

    enum Level: Sendable, Hashable {
        case literal([UInt8])
        case single
        case multi
    }

    /// The filter as given (including any `$share/<group>/`).
    public let rawValue: String
    /// Group of a shared subscription, `nil` for an ordinary one.
    public let shareGroup: String?
    /// The part used for matching (the filter without `$share/<group>/`).
    public let matchFilter: String
    let levels: [Level]

    public init(_ filter: String) throws(TopicError) {
        let byteCount = filter.utf8.count
        guard byteCount > 0 else { throw .emptyFilter }
        guard byteCount <= Self.maximumBytes else { throw .filterTooLong(bytes: byteCount) }
        guard !filter.utf8.contains(0) else { throw .nulInFilter }
        rawValue = filter
        if filter.hasPrefix("$share/") {
            let afterShare = filter.utf8.dropFirst(7)
            guard let slash = afterShare.firstIndex(of: UInt8(ascii: "/")) else {
                throw .invalidSharedSubscription(filter: filter, reason: "expected $share/<group>/<filter>")
            }
            let group = String(Substring(afterShare[..<slash]))
            guard !group.isEmpty else {
                throw .invalidSharedSubscription(filter: filter, reason: "the share group must not be empty")
            }
            guard !group.contains("+"), !group.contains("#") else {
                throw .invalidSharedSubscription(filter: filter, reason: "the share group must not contain '+' or '#'")
            }
            let inner = String(Substring(afterShare[afterShare.index(after: slash)...]))
            guard !inner.isEmpty else {
                throw .invalidSharedSubscription(filter: filter, reason: "the filter after the group must not be empty")
            }
            shareGroup = group
            matchFilter = inner
        } else {
            shareGroup = nil
            matchFilter = filter
        }
        levels = try Self.parseLevels(matchFilter, original: filter)
    }

    /// `$share/<group>/<filter>`.
    public static func shared(group: String, filter: String) throws(TopicError) -> TopicFilter {
        guard !group.isEmpty, !group.contains("/") else {
            throw .invalidSharedSubscription(filter: "$share/\(group)/\(filter)",
                                             reason: "the share group must be one non-empty level")
        }
        return try TopicFilter("$share/\(group)/\(filter)")
    }

    private static func parseLevels(_ filter: String, original: String) throws(TopicError) -> [Level] {
        let parts = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var levels: [Level] = []
        levels.reserveCapacity(parts.count)
        for (index, part) in parts.enumerated() {
            if part.count == 1 && part.first == UInt8(ascii: "#") {
                guard index == parts.count - 1 else { throw .misplacedMultiLevelWildcard(filter: original) }
                levels.append(.multi)
            } else if part.count == 1 && part.first == UInt8(ascii: "+") {
                levels.append(.single)
            } else {
                if part.contains(UInt8(ascii: "#")) { throw .misplacedMultiLevelWildcard(filter: original) }
                if part.contains(UInt8(ascii: "+")) {
                    throw .partialLevelWildcard(filter: original, level: String(Substring(part)))
                }
                levels.append(.literal(Array(part)))
            }
        }
        return levels
    }

    public var description: String { rawValue }

    /// Whether the filter has no wildcards (it then matches exactly one topic).
    public var isLiteral: Bool {
        !levels.contains { if case .literal = $0 { false } else { true } }
    }

    /// Whether `topic` matches. Walks the topic bytes once without splitting or allocating (for native strings).
    public func matches(_ topic: String) -> Bool {
        if let result = topic.utf8.withContiguousStorageIfAvailable({ matches(bytes: $0) }) {
            return result
        }
        return Array(topic.utf8).withUnsafeBufferPointer { matches(bytes: $0) }
    }

    func matches(bytes topic: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !topic.isEmpty else { return false }
        if topic[0] == UInt8(ascii: "$") {
            switch levels[0] {
            case .single, .multi: return false
            case .literal: break
            }
        }
        var position = 0
        for (index, level) in levels.enumerated() {
            if index > 0 {
                // Need a separator before the next level.
                if position == topic.count {
                    // Topic ended: only `#` may follow (`a/#` matches `a`).
                    if case .multi = level { return true }
                    return false
                }
                position += 1  // skip '/'
            }
            switch level {
            case .multi:
                return true
            case .single:
                while position < topic.count, topic[position] != UInt8(ascii: "/") { position += 1 }
            case .literal(let expected):
                for byte in expected {
                    guard position < topic.count, topic[position] == byte else { return false }
                    position += 1
                }
                // The topic level must end here too.
                if position < topic.count, topic[position] != UInt8(ascii: "/") { return false }
            }
        }
        return position == topic.count
    }
}
