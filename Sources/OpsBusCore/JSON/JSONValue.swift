/// A JSON document value.
///
/// Integers that fit `Int64` are kept as `.int` so ids, counters and sizes survive a round trip exactly;
/// every other number is a `.double`. Objects are ordered (`JSONObject`) so that re-serialising an event
/// keeps the producer's key order and the output is deterministic.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// The JSON kind of a value, for error messages and schema checks.
    public enum Kind: String, Sendable, Hashable, CustomStringConvertible {
        case null, bool, int, double, string, array, object
        public var description: String { rawValue }
    }

    public var kind: Kind {
        switch self {
        case .null: .null
        case .bool: .bool
        case .int: .int
        case .double: .double
        case .string: .string
        case .array: .array
        case .object: .object
        }
    }

    // MARK: Convenience accessors

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The integer value; an integral `.double` that fits `Int64` also counts (producers written in
    /// JavaScript or Python often send `3.0` for `3`).
    public var intValue: Int64? {
        switch self {
        case .int(let value):
            return value
        case .double(let value):
            // -2^63 ... 2^63 (exclusive) are exactly the doubles that convert without trapping.
            guard value.isFinite, value == value.rounded(.towardZero),
                  value >= -9_223_372_036_854_775_808.0, value < 9_223_372_036_854_775_808.0
            else { return nil }
            return Int64(value)
        default:
            return nil
        }
    }

    /// The numeric value; `.int` converts (possibly rounding beyond 2^53).
    public var doubleValue: Double? {
        switch self {
        case .int(let value): Double(value)
        case .double(let value): value
        default: nil
        }
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    public var objectValue: JSONObject? {
        if case .object(let value) = self { return value }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// Member lookup when the value is an object; `nil` otherwise or when the key is absent.
    public subscript(key: String) -> JSONValue? {
        objectValue?[key]
    }
}

extension JSONValue: CustomStringConvertible {
    /// The compact serialisation.
    public var description: String { serialized() }
}

// MARK: - Literals (mainly for readable test and example code)

extension JSONValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .int(value) }
}

extension JSONValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension JSONValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}

extension JSONValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
}

extension JSONValue: ExpressibleByDictionaryLiteral {
    /// Keeps literal order; a repeated key keeps its first position and takes the last value.
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        var object = JSONObject()
        for (key, value) in elements { object[key] = value }
        self = .object(object)
    }
}
