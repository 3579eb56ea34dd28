/// An ordered JSON object: members keep insertion (or parse) order.
///
/// Order matters here because events are re-serialised by the processor and the bridge; keeping the
/// producer's order makes the output deterministic and diffable. Assigning to an existing key replaces the
/// value in place (keeps the first position), which is also how duplicate keys are resolved on parse.
///
/// Equality is order-sensitive: two objects are equal when they serialise to the same bytes.
public struct JSONObject: Sendable, Hashable, Sequence {
    public typealias Element = (key: String, value: JSONValue)

    @usableFromInline
    struct Member: Sendable, Hashable {
        @usableFromInline var key: String
        @usableFromInline var value: JSONValue
        @inlinable init(key: String, value: JSONValue) {
            self.key = key
            self.value = value
        }
    }

    @usableFromInline var members: [Member]
    /// Key → position, only built for larger objects; small objects are scanned linearly, which is faster
    /// than hashing for the handful of keys a typical event has.
    @usableFromInline var index: [String: Int]?

    /// Objects larger than this get a hash index so hostile inputs with many keys stay linear. An event envelope
    /// has 15–25 members: at 12, every event paid for a dictionary and a hash per key on parse and per lookup,
    /// about 3 % of the processor's instructions per event; a scan of up to 32 short keys costs less
    /// (`Benchmarks/service_callgrind.py`), and the worst case stays bounded at 32 × 32 comparisons.
    @usableFromInline static let indexThreshold = 32

    public init() {
        members = []
        index = nil
    }

    /// Builds an object from literal-style pairs; a repeated key keeps its first position, last value wins.
    public init(_ pairs: KeyValuePairs<String, JSONValue>) {
        self.init()
        members.reserveCapacity(pairs.count)
        for (key, value) in pairs { self[key] = value }
    }

    /// Builds an object from a sequence of pairs; a repeated key keeps its first position, last value wins.
    public init<S: Sequence>(pairs: S) where S.Element == (String, JSONValue) {
        self.init()
        for (key, value) in pairs { self[key] = value }
    }

    public var count: Int { members.count }
    public var isEmpty: Bool { members.isEmpty }

    /// Keys in order.
    public var keys: [String] { members.map(\.key) }

    /// Values in key order.
    public var values: [JSONValue] { members.map(\.value) }

    @usableFromInline
    func position(of key: String) -> Int? { position(of: key, hint: 0) }

    /// `position(of:)`, scanning from `hint` (wrapping around): a reader that takes the keys in the order they were
    /// written finds each at the hint (`EventEnvelope.decode` takes 18 keys per event).
    @usableFromInline
    func position(of key: String, hint: Int) -> Int? {
        if let index { return index[key] }
        // Lengths first (stored, so free for native strings): a `==` of two different strings is an out-of-line
        // call, and a lookup compared its key with most members (issue 6: 270 comparisons, 7 k instructions, per
        // event in the processor).
        // One plain loop (a `first(where:)` with a local predicate was not inlined: 2 k instructions per event).
        let length = key.utf8.count
        let count = members.count
        var position = hint > 0 && hint < count ? hint : 0
        for _ in 0..<count {
            if members[position].key.utf8.count == length && members[position].key == key { return position }
            position = position + 1 == count ? 0 : position + 1
        }
        return nil
    }

    /// Reads, adds (at the end), replaces (in place) or — when set to `nil` — removes a member.
    public subscript(key: String) -> JSONValue? {
        get {
            guard let position = position(of: key) else { return nil }
            return members[position].value
        }
        set {
            if let newValue {
                if let position = position(of: key) {
                    members[position].value = newValue
                } else {
                    members.append(Member(key: key, value: newValue))
                    if index != nil {
                        index![key] = members.count - 1
                    } else if members.count > Self.indexThreshold {
                        rebuildIndex()
                    }
                }
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Removes a member, keeping the order of the others. Returns the removed value.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> JSONValue? {
        guard let position = position(of: key) else { return nil }
        let removed = members.remove(at: position).value
        if index != nil {
            if members.count > Self.indexThreshold { rebuildIndex() } else { index = nil }
        }
        return removed
    }

    /// Whether the object has a member with that key (even if its value is `null`).
    public func contains(key: String) -> Bool { position(of: key) != nil }

    /// Appends a member without a duplicate check; only for callers that know the key is new (the parser
    /// checks before calling). Keeps the index in step.
    @usableFromInline
    mutating func appendUnchecked(key: String, value: JSONValue) {
        members.append(Member(key: key, value: value))
        if index != nil {
            index![key] = members.count - 1
        } else if members.count > Self.indexThreshold {
            rebuildIndex()
        }
    }

    @usableFromInline
    mutating func rebuildIndex() {
        var newIndex = [String: Int](minimumCapacity: members.count)
        for (position, member) in members.enumerated() { newIndex[member.key] = position }
        index = newIndex
    }

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        lhs.members == rhs.members
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(members)
    }

    public struct Iterator: IteratorProtocol {
        @usableFromInline var base: IndexingIterator<[Member]>
        @inlinable public mutating func next() -> Element? {
            guard let member = base.next() else { return nil }
            return (member.key, member.value)
        }
    }

    public func makeIterator() -> Iterator {
        Iterator(base: members.makeIterator())
    }

    public var underestimatedCount: Int { members.count }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init()
        for (key, value) in elements { self[key] = value }
    }
}

extension JSONObject: CustomStringConvertible {
    public var description: String { JSONValue.object(self).serialized() }
}
