import Testing
@testable import OpsBusCore

private func parse(_ text: String) throws(JSONParseError) -> JSONValue { try JSONValue.parse(text) }
private func parseBytes(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue { try JSONValue.parse(bytes) }

/// Returns the parse error for `bytes`, failing the test if parsing succeeds.
private func parseError(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> JSONParseError? {
    do {
        let value = try JSONValue.parse(bytes)
        Issue.record("expected a parse error, got \(value)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

private func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> JSONParseError? {
    parseError(Array(text.utf8), sourceLocation: sourceLocation)
}

@Suite struct JSONParserAcceptTests {
    @Test(arguments: [
        ("null", JSONValue.null),
        ("true", .bool(true)),
        ("false", .bool(false)),
        ("0", .int(0)),
        ("-0", .int(0)),
        ("42", .int(42)),
        ("-17", .int(-17)),
        ("9223372036854775807", .int(Int64.max)),
        ("-9223372036854775808", .int(Int64.min)),
        ("9223372036854775808", .double(9_223_372_036_854_775_808.0)),
        ("-9223372036854775809", .double(-9_223_372_036_854_775_809.0)),
        ("123456789012345678901234567890", .double(1.2345678901234568e29)),
        ("1.5", .double(1.5)),
        ("-0.25", .double(-0.25)),
        ("1e3", .double(1000)),
        ("1E+3", .double(1000)),
        ("2.5e-3", .double(0.0025)),
        ("1.0", .double(1.0)),
        ("0.1", .double(0.1)),
        ("1e-400", .double(0)),
        ("\"\"", .string("")),
        ("\"abc\"", .string("abc")),
        (" \t\r\n 7 \t\r\n ", .int(7)),
        ("[]", .array([])),
        ("{}", .object(JSONObject())),
        ("[1,\"a\",null,true,[],{}]", .array([1, "a", nil, true, [], .object(JSONObject())])),
    ])
    func scalarsAndContainers(text: String, expected: JSONValue) throws {
        #expect(try parse(text) == expected)
    }

    @Test func stringEscapes() throws {
        #expect(try parse(#""\" \\ \/ \b \f \n \r \t""#) == .string("\" \\ / \u{08} \u{0C} \n \r \t"))
        #expect(try parse(#""\u0041\u00e9\u20AC""#) == .string("Aé€"))
        #expect(try parse(#""\u0000""#) == .string("\u{0}"))
        // Surrogate pair → one scalar outside the BMP.
        #expect(try parse(#""\uD83D\uDE00""#) == .string("😀"))
        #expect(try parse(#""\ud834\udd1e""#) == .string("𝄞"))
        // Escapes mixed with raw non-ASCII before and after.
        #expect(try parse("\"é\\n€\"") == .string("é\n€"))
    }

    @Test func rawUTF8IsAccepted() throws {
        #expect(try parse("\"héllo wörld ✓ 😀\"") == .string("héllo wörld ✓ 😀"))
        // U+10FFFF, the largest scalar, as raw bytes.
        #expect(try parseBytes([0x22, 0xF4, 0x8F, 0xBF, 0xBF, 0x22]) == .string("\u{10FFFF}"))
        // DEL (0x7F) is not a control character in JSON's sense.
        #expect(try parseBytes([0x22, 0x7F, 0x22]) == .string("\u{7F}"))
    }

    @Test func objectKeepsParseOrder() throws {
        let value = try parse(#"{"z":1,"a":2,"m":3}"#)
        #expect(value.objectValue?.keys == ["z", "a", "m"])
    }

    @Test func duplicateKeysLastWinsFirstPositionKept() throws {
        let value = try parse(#"{"a":1,"b":2,"a":3}"#)
        let object = try #require(value.objectValue)
        #expect(object.keys == ["a", "b"])
        #expect(object["a"] == .int(3))
        #expect(value.serialized() == #"{"a":3,"b":2}"#)
    }

    /// The parser's key filter (length and last byte) lets keys that share both through to the real comparison.
    @Test func keysThatShareLengthAndLastByteAreDistinctAndDuplicatesStillFound() throws {
        let value = try parse(#"{"ab":1,"cb":2,"xyzb":3,"cb":4,"ab":5,"qrsb":6}"#)
        let object = try #require(value.objectValue)
        #expect(object.keys == ["ab", "cb", "xyzb", "qrsb"])
        #expect(object["ab"] == .int(5) && object["cb"] == .int(4))
    }

    /// A lookup from a hint wraps around and finds keys before it, and misses absent ones.
    @Test func lookupFromAHintWrapsAround() throws {
        let object = try #require(try parse(#"{"a":1,"bb":2,"c":3,"dd":4}"#).objectValue)
        for hint in -1...5 {
            #expect(object.position(of: "a", hint: hint) == 0)
            #expect(object.position(of: "dd", hint: hint) == 3)
            #expect(object.position(of: "zz", hint: hint) == nil)
        }
    }

    @Test func manyKeysUseIndexAndStayCorrect() throws {
        var text = "{"
        for number in 0..<200 { text += "\"k\(number)\":\(number)," }
        text += "\"k5\":-1}"
        let object = try #require(try parse(text).objectValue)
        #expect(object.count == 200)
        #expect(object["k5"] == .int(-1))
        #expect(object["k199"] == .int(199))
        #expect(object.keys.first == "k0")
    }

    @Test func nestingUpToTheLimitIsAccepted() throws {
        let depth = JSONValue.maximumDepth
        let text = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        var value = try parse(text)
        var levels = 0
        while case .array(let inner) = value {
            levels += 1
            value = inner.first ?? .null
        }
        #expect(levels == depth)
        let objects = String(repeating: "{\"a\":", count: depth) + "1" + String(repeating: "}", count: depth)
        #expect(throws: Never.self) { try parse(objects) }
    }

    @Test func nonContiguousCollectionsParse() throws {
        // A lazily mapped collection has no contiguous storage: exercises the copying path.
        let bytes = Array(#"{"a":[1,2]}"#.utf8).lazy.map { $0 }
        #expect(try JSONValue.parse(bytes) == ["a": [1, 2]])
        // ArraySlice with non-zero start index.
        let padded = Array("xx[true]".utf8)
        #expect(try JSONValue.parse(padded[2...]) == [true])
    }
}

@Suite struct JSONParserRejectTests {
    @Test(arguments: [
        "", "   ", "nul", "nulll", "tru", "True", "NULL", "undefined", "NaN", "Infinity", "-Infinity",
        "01", "-01", "00", "+1", ".5", "1.", "1.e3", "-", "--1", "1e", "1e+", "1E-", "0x10", "1_000",
        "[", "]", "[1,]", "[,1]", "[1 2]", "{", "}", "{,}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\" 1}",
        "{a:1}", "{'a':1}", "'a'", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\U0041\"",
        "[1]]", "{}{}", "1 2", "true false", "[1]x", "\"a\"\"b\"", "// c\n1", "/* c */ 1", "[1,/*x*/2]",
    ])
    func malformedDocumentsAreRejected(text: String) {
        _ = parseError(text)
    }

    @Test func errorsCarryReasonAndOffset() throws {
        #expect(parseError("") == JSONParseError(.emptyInput, at: 0))
        #expect(parseError("  ") == JSONParseError(.emptyInput, at: 2))
        #expect(parseError("[1,]") == JSONParseError(.unexpectedByte(UInt8(ascii: "]"), expected: "a value"), at: 3))
        #expect(parseError("{\"a\":1 \"b\":2}") == JSONParseError(.unexpectedByte(UInt8(ascii: "\""), expected: "',' or '}'"), at: 7))
        #expect(parseError("[1] x") == JSONParseError(.trailingData, at: 4))
        #expect(parseError("012") == JSONParseError(.invalidNumber, at: 0))
        #expect(parseError("[1, -]") == JSONParseError(.invalidNumber, at: 4))
        #expect(parseError("1e400") == JSONParseError(.numberOutOfRange, at: 0))
        #expect(parseError("-1e400") == JSONParseError(.numberOutOfRange, at: 0))
        #expect(parseError("\"ab\\qc\"") == JSONParseError(.invalidEscape(UInt8(ascii: "q")), at: 3))
        #expect(parseError("\"abc") == JSONParseError(.unexpectedEnd(expected: "'\"' closing the string"), at: 4))
        #expect(parseError("[1,2") == JSONParseError(.unexpectedEnd(expected: "',' or ']'"), at: 4))
        #expect(parseError("tru") == JSONParseError(.unexpectedEnd(expected: "'true'"), at: 3))
        #expect(parseError("trux") == JSONParseError(.unexpectedByte(UInt8(ascii: "x"), expected: "'true'"), at: 3))
    }

    @Test func descriptionSaysWhatAndWhere() {
        let error = parseError("[1,]")
        #expect(error?.description == "invalid JSON at byte 3: unexpected ']', expected a value")
        #expect(parseError([0x22, 0x01, 0x22])?.description == "invalid JSON at byte 1: unescaped control character 0x01 in string")
    }

    @Test func rawControlCharactersInStringsAreRejected() {
        for byte in UInt8(0)..<0x20 {
            #expect(parseError([0x22, 0x61, byte, 0x22]) == JSONParseError(.unescapedControlCharacter(byte), at: 2))
        }
        // Also after an escape (slow path).
        #expect(parseError([0x22, 0x5C, 0x6E, 0x0A, 0x22]) == JSONParseError(.unescapedControlCharacter(0x0A), at: 3))
    }

    @Test(arguments: [
        [0x22, 0x80, 0x22],                    // lone continuation byte
        [0x22, 0xC0, 0xAF, 0x22],              // overlong '/'
        [0x22, 0xC1, 0xBF, 0x22],              // overlong
        [0x22, 0xE0, 0x80, 0xAF, 0x22],        // overlong 3-byte
        [0x22, 0xF0, 0x80, 0x80, 0xAF, 0x22],  // overlong 4-byte
        [0x22, 0xED, 0xA0, 0x80, 0x22],        // UTF-8 encoded surrogate U+D800
        [0x22, 0xED, 0xBF, 0xBF, 0x22],        // UTF-8 encoded surrogate U+DFFF
        [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],  // above U+10FFFF
        [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22],  // invalid lead byte
        [0x22, 0xFF, 0x22],                    // invalid byte
        [0x22, 0xC3, 0x22],                    // truncated 2-byte sequence
        [0x22, 0xE2, 0x82, 0x22],              // truncated 3-byte sequence
        [0x22, 0x5C, 0x6E, 0xC3, 0x28, 0x22],  // bad sequence after an escape (slow path)
    ] as [[UInt8]])
    func invalidUTF8IsRejected(bytes: [UInt8]) {
        let error = parseError(bytes)
        #expect(error?.reason == .invalidUTF8)
    }

    @Test func truncatedSequenceAtEndOfInputIsAnUnterminatedString() {
        #expect(parseError([0x22, 0xE2, 0x82])?.reason == .unexpectedEnd(expected: "'\"' closing the string"))
    }

    @Test func invalidUTF8OffsetPointsAtTheBadSequence() {
        #expect(parseError([0x22, 0x61, 0x62, 0xFF, 0x22]) == JSONParseError(.invalidUTF8, at: 3))
    }

    @Test func byteOrderMarkIsRejected() {
        #expect(parseError([0xEF, 0xBB, 0xBF, 0x31])?.offset == 0)
    }

    @Test(arguments: [
        (#""\uD800""#, UInt16(0xD800)),
        (#""\uDBFF x""#, 0xDBFF),
        (#""\uDC00""#, 0xDC00),
        (#""\uDFFF\uD800""#, 0xDFFF),
        (#""\uD800\u0041""#, 0xD800),
        (#""\uD800\uD800""#, 0xD800),
        (#""\uD83D\n""#, 0xD83D),
    ])
    func loneSurrogatesAreRejected(text: String, unit: UInt16) {
        #expect(parseError(text)?.reason == .loneSurrogate(unit))
    }

    @Test func nestingBeyondTheLimitIsRejected() {
        let depth = JSONValue.maximumDepth + 1
        let arrays = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        #expect(parseError(arrays)?.reason == .depthLimitExceeded(limit: 64))
        let objects = String(repeating: "{\"a\":", count: depth) + "1" + String(repeating: "}", count: depth)
        #expect(parseError(objects)?.reason == .depthLimitExceeded(limit: 64))
        // A very deep unterminated document fails on depth, without exhausting the stack.
        #expect(parseError(String(repeating: "[", count: 100_000))?.reason == .depthLimitExceeded(limit: 64))
    }
}

@Suite struct JSONSerializationTests {
    @Test func compactDeterministicOutput() {
        let value: JSONValue = ["b": 1, "a": [true, false, nil], "c": ["x": "y"], "d": 1.5]
        #expect(value.serialized() == #"{"b":1,"a":[true,false,null],"c":{"x":"y"},"d":1.5}"#)
        #expect(value.serializedBytes() == Array(value.serialized().utf8))
    }

    @Test func stringEscaping() {
        let value = JSONValue.string("q\" b\\ n\n r\r t\t b\u{08} f\u{0C} nul\u{0} us\u{1F} del\u{7F} é / 😀")
        #expect(value.serialized() == #""q\" b\\ n\n r\r t\t b\b f\f nul\u0000 us\u001f del"# + "\u{7F} é / 😀\"")
        #expect(JSONValue.string("").serialized() == #""""#)
        #expect(JSONValue.object(["k\"\n": 1]).serialized() == #"{"k\"\n":1}"#)
    }

    @Test(arguments: [
        (Int64(0), "0"), (7, "7"), (-7, "-7"), (1_000_000, "1000000"),
        (Int64.max, "9223372036854775807"), (Int64.min, "-9223372036854775808"),
    ])
    func integers(value: Int64, text: String) {
        #expect(JSONValue.int(value).serialized() == text)
    }

    @Test(arguments: [
        (1.5, "1.5"), (100.0, "100.0"), (-0.0, "-0.0"), (0.1, "0.1"), (1e20, "1e20"), (1e-5, "1e-5"),
        (1.7976931348623157e308, "1.7976931348623157e308"), (Double.leastNonzeroMagnitude, "5e-324"), (1e16, "1e16"),
        (123456.789, "123456.789"), (-2.5e-10, "-2.5e-10"),
    ])
    func doubles(value: Double, text: String) {
        #expect(JSONValue.double(value).serialized() == text)
    }

    @Test func nonFiniteDoublesBecomeNull() {
        #expect(JSONValue.double(.nan).serialized() == "null")
        #expect(JSONValue.double(.infinity).serialized() == "null")
        #expect(JSONValue.array([.double(-.infinity)]).serialized() == "[null]")
    }

    @Test(arguments: [
        0.1, 1.0 / 3.0, 1e20, 1e-5, 123456789.123456789, -0.0, 2.2250738585072014e-308, Double.leastNonzeroMagnitude,
        1.7976931348623157e308, 9007199254740992.0, 4.35, 1e300, 100.0,
    ])
    func doublesRoundTripExactly(value: Double) throws {
        let reparsed = try JSONValue.parse(JSONValue.double(value).serialized())
        guard case .double(let back) = reparsed else {
            Issue.record("a double reparsed as \(reparsed)")
            return
        }
        #expect(back.bitPattern == value.bitPattern)
    }

    @Test func documentsRoundTrip() throws {
        let documents = [
            #"{"a":[1,-2,3.5,"x\u0001y",null,true,false,{}],"b":{"c":{"d":[]}},"é":"😀"}"#,
            #"[[[[[]]]]]"#,
            #""\"\\/\b\f\n\r\t""#,
            #"{"big":9223372036854775807,"small":-9223372036854775808,"huge":1e300}"#,
        ]
        for document in documents {
            let once = try JSONValue.parse(document)
            let text = once.serialized()
            let twice = try JSONValue.parse(text)
            #expect(once == twice)
            #expect(twice.serialized() == text)
        }
    }

    @Test func everyScalarClassRoundTripsThroughEscaping() throws {
        var scalars = String()
        for value in [0x0, 0x1F, 0x20, 0x22, 0x5C, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFD, 0xFFFF, 0x10000, 0x10FFFF] {
            scalars.unicodeScalars.append(Unicode.Scalar(UInt32(value))!)
        }
        let reparsed = try JSONValue.parse(JSONValue.string(scalars).serializedBytes())
        #expect(reparsed == .string(scalars))
    }
}

@Suite struct JSONValueAccessorTests {
    @Test func accessors() {
        let value: JSONValue = ["s": "x", "i": 3, "d": 2.5, "id": 4.0, "b": true, "a": [1], "o": ["k": nil]]
        #expect(value["s"]?.stringValue == "x")
        #expect(value["i"]?.intValue == 3)
        #expect(value["i"]?.doubleValue == 3.0)
        #expect(value["d"]?.doubleValue == 2.5)
        #expect(value["d"]?.intValue == nil)
        #expect(value["id"]?.intValue == 4)
        #expect(value["b"]?.boolValue == true)
        #expect(value["a"]?.arrayValue == [1])
        #expect(value["o"]?.objectValue?["k"] == .null)
        #expect(value["o"]?["k"]?.isNull == true)
        #expect(value["missing"] == nil)
        #expect(value["s"]?.intValue == nil)
        #expect(value["s"]?.boolValue == nil)
        #expect(JSONValue.int(1)["x"] == nil)
        #expect(JSONValue.double(.nan).intValue == nil)
        #expect(JSONValue.double(1e19).intValue == nil)
        #expect(JSONValue.double(-9_223_372_036_854_775_808.0).intValue == Int64.min)
        #expect(JSONValue.double(9_223_372_036_854_775_808.0).intValue == nil)
        #expect(JSONValue.bool(true).kind == .bool)
        #expect(JSONValue.int(1).kind == .int)
    }

    @Test func objectEditing() {
        var object = JSONObject(["a": 1, "b": 2, "c": 3])
        object["b"] = 20
        #expect(object.keys == ["a", "b", "c"])
        object["d"] = 4
        #expect(object.keys == ["a", "b", "c", "d"])
        #expect(object.removeValue(forKey: "a") == 1)
        #expect(object.removeValue(forKey: "zz") == nil)
        object["c"] = nil
        #expect(object.keys == ["b", "d"])
        #expect(object.values == [20, 4])
        #expect(object.count == 2)
        #expect(object.contains(key: "b"))
        #expect(!object.contains(key: "a"))
        object["n"] = .null
        #expect(object.contains(key: "n"))
        #expect(Array(object.map(\.key)) == ["b", "d", "n"])
    }

    @Test func largeObjectEditingKeepsIndexConsistent() {
        var object = JSONObject()
        for number in 0..<40 { object["k\(number)"] = .int(Int64(number)) }
        object.removeValue(forKey: "k0")
        #expect(object["k1"] == 1)
        #expect(object["k39"] == 39)
        object["k0"] = 100
        #expect(object.keys.last == "k0")
        for number in 0..<35 { object.removeValue(forKey: "k\(number)") }
        #expect(object.keys == ["k35", "k36", "k37", "k38", "k39"])
        #expect(object["k37"] == 37)
        #expect(object["k3"] == nil)
    }

    @Test func equalityIsOrderSensitive() {
        let first = JSONObject(["a": 1, "b": 2])
        let second = JSONObject(["b": 2, "a": 1])
        #expect(first != second)
        #expect(first == JSONObject(["a": 1, "b": 2]))
        #expect(Set([first, JSONObject(["a": 1, "b": 2])]).count == 1)
    }

    @Test func literalWithRepeatedKeyKeepsFirstPosition() {
        let value: JSONValue = ["a": 1, "b": 2, "a": 3]
        #expect(value.serialized() == #"{"a":3,"b":2}"#)
    }
}
