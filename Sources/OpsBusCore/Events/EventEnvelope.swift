/// One event as it travels on the bus: envelope keys plus event fields, all at the top level of one JSON object.
///
/// `fields` holds the event-specific fields *and* any keys this build does not know; they are kept, in order,
/// through decode and encode, so older consumers never strip data newer producers add.
public struct EventEnvelope: Sendable, Hashable {
    /// Bumped only for incompatible changes; additive changes (new fields, new event types for new consumers)
    /// keep the version.
    public static let currentSchemaVersion = 1
    /// Default decode limit, bytes.
    public static let defaultMaximumBytes = 262_144

    /// JSON keys of the envelope, in serialisation order.
    public static let envelopeKeys: [String] = [
        "event_id", "event_type", "timestamp", "source", "job_id", "machine_id", "worker_id", "service_type",
        "connector_id", "session_id", "seq", "prev_seq", "resume_after", "ack", "trace_id", "correlation_id", "attempt", "schema",
    ]

    /// Unique event id (a ULID from `EventID.make()` by default; any id-rule string is accepted).
    public var eventID: String
    public var eventType: EventType
    public var timestamp: EventTimestamp
    /// Who emitted the event (component name, e.g. `worker`, `api`, `opsbus-cli`).
    public var source: String
    public var jobID: Identifier?
    public var machineID: Identifier?
    public var workerID: Identifier?
    public var serviceType: String?
    public var connectorID: String?
    /// The producer's session (one per process start); with `seq` it orders and de-duplicates a producer's events.
    public var sessionID: String
    /// Per-session sequence number: 1, 2, 3, … with no gaps for the events a session sequences (everything it
    /// spools, or everything it sends at QoS ≥ 1 without a spool); 0 for best-effort events outside the sequence.
    public var seq: UInt64
    /// Set when the publisher itself dropped the events between `prevSeq` and `seq` (its spool was full): receivers
    /// treat those numbers as filled instead of waiting for them. JSON key `prev_seq`.
    public var prevSeq: UInt64?
    /// Set by a spooling publisher on an event whose lower seqs are all settled: acknowledged end to end, or dropped
    /// and declared. A bridge that no longer knows the session (its position expired) resumes it here instead of
    /// waiting forever for seqs that will never come again. JSON key `resume_after`, below `seq`.
    public var resumeAfter: UInt64?
    /// The emitter spools this session's sequenced events and waits for the bridge's end-to-end acknowledgement on
    /// `acks/<owner>/<session_id>`; the bridge then commits the session's events strictly in `seq` order.
    public var ack: Bool
    public var traceID: String?
    public var correlationID: String?
    /// Attempt number for job events (1 for the first run).
    public var attempt: Int?
    /// JSON key `schema`.
    public var schemaVersion: Int
    /// Event fields and unknown extra keys, in order.
    public var fields: JSONObject

    public init(
        eventID: String = EventID.make(),
        eventType: EventType,
        timestamp: EventTimestamp = .now(),
        source: String,
        jobID: Identifier? = nil,
        machineID: Identifier? = nil,
        workerID: Identifier? = nil,
        serviceType: String? = nil,
        connectorID: String? = nil,
        sessionID: String,
        seq: UInt64,
        prevSeq: UInt64? = nil,
        ack: Bool = false,
        traceID: String? = nil,
        correlationID: String? = nil,
        attempt: Int? = nil,
        schemaVersion: Int = EventEnvelope.currentSchemaVersion,
        fields: JSONObject = JSONObject()
    ) {
        self.eventID = eventID
        self.eventType = eventType
        self.timestamp = timestamp
        self.source = source
        self.jobID = jobID
        self.machineID = machineID
        self.workerID = workerID
        self.serviceType = serviceType
        self.connectorID = connectorID
        self.sessionID = sessionID
        self.seq = seq
        self.prevSeq = prevSeq
        self.ack = ack
        self.traceID = traceID
        self.correlationID = correlationID
        self.attempt = attempt
        self.schemaVersion = schemaVersion
        self.fields = fields
    }

    /// Convenience read of one event field.
    public subscript(field name: String) -> JSONValue? {
        get { fields[name] }
        set { fields[name] = newValue }
    }

    // MARK: Encoding

    /// Compact JSON: envelope keys in `envelopeKeys` order (absent optionals omitted), then `fields` in order.
    /// A field whose name is an envelope key is skipped so the output never has duplicate keys
    /// (`validate()` reports such a field).
    public func encoded() -> [UInt8] {
        var seqDigits = 0..<0
        return encoded(seqDigits: &seqDigits)
    }

    /// `encoded()`, and where the digits of `seq` are in it: a publisher encodes outside its ordering lock and
    /// sets the `seq` it takes inside (`setSeq(_:in:digits:)`), so the lock covers only the numbering and the write.
    public func encoded(seqDigits: inout Range<Int>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320 + fields.count * 32)
        out.append(UInt8(ascii: "{"))
        func key(_ name: StaticString) {
            if out.count > 1 { out.append(UInt8(ascii: ",")) }
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(UInt8(ascii: "\""))
            out.append(UInt8(ascii: ":"))
        }
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            JSONWriter.writeString(value, into: &out)
        }
        string("event_id", eventID)
        string("event_type", eventType.rawValue)
        key("timestamp")
        out.append(UInt8(ascii: "\""))
        timestamp.writeISO8601(into: &out)
        out.append(UInt8(ascii: "\""))
        string("source", source)
        string("job_id", jobID?.rawValue)
        string("machine_id", machineID?.rawValue)
        string("worker_id", workerID?.rawValue)
        string("service_type", serviceType)
        string("connector_id", connectorID)
        string("session_id", sessionID)
        key("seq")
        let seqStart = out.count
        JSONWriter.writeInteger(seq, into: &out)
        seqDigits = seqStart..<out.count
        if let prevSeq {
            key("prev_seq")
            JSONWriter.writeInteger(prevSeq, into: &out)
        }
        if let resumeAfter {
            key("resume_after")
            JSONWriter.writeInteger(resumeAfter, into: &out)
        }
        if ack {
            key("ack")
            out.append(contentsOf: "true".utf8)
        }
        string("trace_id", traceID)
        string("correlation_id", correlationID)
        if let attempt {
            key("attempt")
            JSONWriter.writeInteger(attempt, into: &out)
        }
        key("schema")
        JSONWriter.writeInteger(schemaVersion, into: &out)
        for member in fields.members where !Self.isEnvelopeKey(member.key) {
            out.append(UInt8(ascii: ","))
            JSONWriter.writeString(member.key, into: &out)
            out.append(UInt8(ascii: ":"))
            JSONWriter.write(member.value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Replaces the `seq` digits at `digits` (from `encoded(seqDigits:)`) in an encoding with `seq`: the result is
    /// the encoding of the same envelope with that `seq`.
    public static func setSeq(_ seq: UInt64, in encoding: inout [UInt8], digits: Range<Int>) {
        var text: [UInt8] = []
        JSONWriter.writeInteger(seq, into: &text)
        encoding.replaceSubrange(digits, with: text)
    }

    /// `encoded()` as a string.
    public func encodedString() -> String { String(decoding: encoded(), as: UTF8.self) }

    /// The envelope as one ordered JSON object (same content and order as `encoded()`).
    public var jsonObject: JSONObject {
        var object = JSONObject()
        object["event_id"] = .string(eventID)
        object["event_type"] = .string(eventType.rawValue)
        object["timestamp"] = .string(timestamp.iso8601)
        object["source"] = .string(source)
        if let jobID { object["job_id"] = .string(jobID.rawValue) }
        if let machineID { object["machine_id"] = .string(machineID.rawValue) }
        if let workerID { object["worker_id"] = .string(workerID.rawValue) }
        if let serviceType { object["service_type"] = .string(serviceType) }
        if let connectorID { object["connector_id"] = .string(connectorID) }
        object["session_id"] = .string(sessionID)
        object["seq"] = seq <= UInt64(Int64.max) ? .int(Int64(seq)) : .double(Double(seq))
        if let prevSeq { object["prev_seq"] = .int(Int64(clamping: prevSeq)) }
        if let resumeAfter { object["resume_after"] = .int(Int64(clamping: resumeAfter)) }
        if ack { object["ack"] = .bool(true) }
        if let traceID { object["trace_id"] = .string(traceID) }
        if let correlationID { object["correlation_id"] = .string(correlationID) }
        if let attempt { object["attempt"] = .int(Int64(attempt)) }
        object["schema"] = .int(Int64(schemaVersion))
        for member in fields.members where !Self.isEnvelopeKey(member.key) {
            object.appendUnchecked(key: member.key, value: member.value)
        }
        return object
    }

    static func isEnvelopeKey(_ key: String) -> Bool {
        // Cheap pre-filter: every envelope key starts with one of these letters.
        guard let first = key.utf8.first,
              first == UInt8(ascii: "e") || first == UInt8(ascii: "t") || first == UInt8(ascii: "s")
              || first == UInt8(ascii: "j") || first == UInt8(ascii: "m") || first == UInt8(ascii: "w")
              || first == UInt8(ascii: "c") || first == UInt8(ascii: "a") || first == UInt8(ascii: "p")
        else { return false }
        // By length, then bytes: `envelopeKeys.contains` compared the key with up to 18 strings, for every field
        // of every event encoded or validated (issue 6: 3 % of the publisher's instructions per event).
        let candidates = key.utf8.count < envelopeKeysByLength.count ? envelopeKeysByLength[key.utf8.count] : []
        return candidates.contains { $0.elementsEqual(key.utf8) }
    }

    /// `envelopeKeys` as bytes, grouped by length (index = length).
    private static let envelopeKeysByLength: [[[UInt8]]] = {
        var groups = [[[UInt8]]](repeating: [], count: (envelopeKeys.map(\.utf8.count).max() ?? 0) + 1)
        for key in envelopeKeys { groups[key.utf8.count].append(Array(key.utf8)) }
        return groups
    }()

    // MARK: Decoding

    /// Decodes and validates an incoming payload: size limit, strict JSON, an object, required envelope keys
    /// with the right kinds, a known event type, a supported schema version, valid ids and timestamp, the
    /// event type's required fields with the right kinds, and a derivable topic subject. Unknown keys are kept.
    public static func decode<Bytes: Collection>(
        _ bytes: Bytes, maxBytes: Int = EventEnvelope.defaultMaximumBytes
    ) throws(EnvelopeError) -> EventEnvelope where Bytes.Element == UInt8 {
        let size = bytes.count
        guard size <= maxBytes else { throw .oversize(bytes: size, limit: maxBytes) }
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes)
        } catch {
            throw .invalidJSON(error)
        }
        guard case .object(let object) = value else { throw .notAnObject(got: value.kind) }
        return try decode(object: object)
    }

    /// Decodes a payload given as a string (its UTF-8 bytes).
    public static func decode(
        _ string: String, maxBytes: Int = EventEnvelope.defaultMaximumBytes
    ) throws(EnvelopeError) -> EventEnvelope {
        try decode(Array(string.utf8), maxBytes: maxBytes)
    }

    /// Decodes and validates an already parsed object (same checks as `decode(_:maxBytes:)` minus size/JSON).
    public static func decode(object: JSONObject) throws(EnvelopeError) -> EventEnvelope {
        // The envelope keys read below; the other members become `fields`. (Removing each key from a copy instead
        // rebuilt the copy's hash index at every removal: 3.5 % of the batching processor's CPU in `perf`.)
        // Positions of the members read, as bits (an envelope has up to 20 such keys; a set of strings to check
        // every member against cost more than the reading).
        var taken: UInt64 = 0
        var takenBeyond64: Set<Int> = []
        // Where the next key probably is: the envelope's keys are read mostly in the order `encoded()` writes them.
        var hint = 0
        func take(_ key: String) -> JSONValue? {
            guard let position = object.position(of: key, hint: hint) else { return nil }
            hint = position + 1
            let value = object.members[position].value
            if position < 64 { taken |= 1 << UInt64(position) } else { takenBeyond64.insert(position) }
            // `null` counts as absent. (Spelled out: `cond ? nil : value` would type `nil` as JSONValue.null.)
            guard !value.isNull else { return nil }
            return value
        }
        func requiredString(_ key: String) throws(EnvelopeError) -> String {
            guard let value = take(key) else { throw .missingEnvelopeField(key) }
            guard case .string(let string) = value else {
                throw .wrongFieldType(field: key, expected: .string, got: value.kind)
            }
            return string
        }
        func optionalString(_ key: String) throws(EnvelopeError) -> String? {
            guard let value = take(key) else { return nil }
            guard case .string(let string) = value else {
                throw .wrongFieldType(field: key, expected: .string, got: value.kind)
            }
            return string
        }
        func optionalIdentifier(_ key: String) throws(EnvelopeError) -> Identifier? {
            guard let string = try optionalString(key) else { return nil }
            do {
                return try Identifier(validating: string, field: key)
            } catch {
                throw .invalidIdentifier(error)
            }
        }
        func integer(_ key: String, _ value: JSONValue) throws(EnvelopeError) -> Int64 {
            guard let number = value.intValue, FieldKind.int.accepts(value) else {
                throw .wrongFieldType(field: key, expected: .int, got: value.kind)
            }
            return number
        }

        // Event type first: it decides which fields are required, and an unknown type is the most useful error.
        let typeName = try requiredString("event_type")
        guard let eventType = EventType(rawValue: typeName) else { throw .unknownEventType(typeName) }

        guard let schemaValue = take("schema") else { throw .missingEnvelopeField("schema") }
        let schema = try integer("schema", schemaValue)
        guard schema >= 1, schema <= Int64(currentSchemaVersion) else {
            throw .unsupportedSchemaVersion(schema, supported: currentSchemaVersion)
        }

        let eventID = try requiredString("event_id")
        try checkIdentifierRule(eventID, field: "event_id")

        let timestampText = try requiredString("timestamp")
        let timestamp: EventTimestamp
        do {
            timestamp = try EventTimestamp.parse(timestampText)
        } catch {
            throw .invalidTimestamp(error)
        }

        let source = try requiredString("source")
        guard !source.isEmpty else { throw .invalidFieldValue(field: "source", value: "\"\"", reason: "must not be empty") }

        let sessionID = try requiredString("session_id")
        try checkIdentifierRule(sessionID, field: "session_id")

        guard let seqValue = take("seq") else { throw .missingEnvelopeField("seq") }
        let seq = try integer("seq", seqValue)
        guard seq >= 0 else {
            throw .invalidFieldValue(field: "seq", value: String(seq), reason: "must not be negative")
        }

        /// `prev_seq` and `resume_after`: optional positions below `seq`.
        func belowSeq(_ key: String) throws(EnvelopeError) -> UInt64? {
            guard let value = take(key) else { return nil }
            let number = try integer(key, value)
            guard number >= 0, number < seq else {
                throw .invalidFieldValue(field: key, value: String(number), reason: "must be 0...seq-1 (\(seq - 1))")
            }
            return UInt64(number)
        }
        let prevSeq = try belowSeq("prev_seq")
        let resumeAfter = try belowSeq("resume_after")
        var ack = false
        if let ackValue = take("ack") {
            guard case .bool(let flag) = ackValue else {
                throw .wrongFieldType(field: "ack", expected: .bool, got: ackValue.kind)
            }
            guard !flag || seq >= 1 else {
                throw .invalidFieldValue(field: "ack", value: "true", reason: "needs a sequenced event (seq ≥ 1)")
            }
            ack = flag
        }

        let jobID = try optionalIdentifier("job_id")
        let machineID = try optionalIdentifier("machine_id")
        let workerID = try optionalIdentifier("worker_id")
        let serviceType = try optionalString("service_type")
        let connectorID = try optionalString("connector_id")
        let traceID = try optionalString("trace_id")
        let correlationID = try optionalString("correlation_id")
        var attempt: Int?
        if let attemptValue = take("attempt") {
            let number = try integer("attempt", attemptValue)
            guard number >= 0, number <= Int64(Int32.max) else {
                throw .invalidFieldValue(field: "attempt", value: String(number), reason: "must be 0...\(Int32.max)")
            }
            attempt = Int(number)
        }

        var rest = JSONObject()
        for (position, member) in object.members.enumerated() {
            let read = position < 64 ? taken & (1 << UInt64(position)) != 0 : takenBeyond64.contains(position)
            if !read { rest.appendUnchecked(key: member.key, value: member.value) }  // parsed keys are unique
        }
        let envelope = EventEnvelope(
            eventID: eventID, eventType: eventType, timestamp: timestamp, source: source, jobID: jobID,
            machineID: machineID, workerID: workerID, serviceType: serviceType, connectorID: connectorID,
            sessionID: sessionID, seq: UInt64(seq), prevSeq: prevSeq, ack: ack, traceID: traceID, correlationID: correlationID,
            attempt: attempt, schemaVersion: Int(schema), fields: rest
        )
        var decoded = envelope
        decoded.resumeAfter = resumeAfter
        try decoded.validateEventFields()
        _ = try decoded.topicSubject()
        return decoded
    }

    /// Validates an outgoing envelope with the same rules `decode` applies, so a publisher refuses an event
    /// every consumer would refuse. Also refuses `fields` entries named like envelope keys.
    public func validate() throws(EnvelopeError) {
        guard schemaVersion >= 1, schemaVersion <= Self.currentSchemaVersion else {
            throw .unsupportedSchemaVersion(Int64(schemaVersion), supported: Self.currentSchemaVersion)
        }
        try Self.checkIdentifierRule(eventID, field: "event_id")
        guard !source.isEmpty else { throw .invalidFieldValue(field: "source", value: "\"\"", reason: "must not be empty") }
        try Self.checkIdentifierRule(sessionID, field: "session_id")
        guard seq <= UInt64(Int64.max) else {
            throw .invalidFieldValue(field: "seq", value: String(seq), reason: "must fit a signed 64-bit integer")
        }
        if let prevSeq, prevSeq >= seq {
            throw .invalidFieldValue(field: "prev_seq", value: String(prevSeq), reason: "must be below seq (\(seq))")
        }
        if let resumeAfter, resumeAfter >= seq {
            throw .invalidFieldValue(field: "resume_after", value: String(resumeAfter), reason: "must be below seq (\(seq))")
        }
        if ack && seq == 0 {
            throw .invalidFieldValue(field: "ack", value: "true", reason: "needs a sequenced event (seq ≥ 1)")
        }
        if let attempt, attempt < 0 || attempt > Int(Int32.max) {
            throw .invalidFieldValue(field: "attempt", value: String(attempt), reason: "must be 0...\(Int32.max)")
        }
        for member in fields.members where Self.isEnvelopeKey(member.key) {
            throw .reservedFieldName(member.key)
        }
        try validateEventFields()
        _ = try topicSubject()
    }

    static func checkIdentifierRule(_ value: String, field: String) throws(EnvelopeError) {
        do {
            try Identifier.validate(value, field: field)
        } catch {
            throw .invalidIdentifier(error)
        }
    }

    /// Checks the catalog fields of `eventType`: required ones present, present ones of the right kind
    /// (`null` counts as absent for optional fields), closed vocabularies and ranges respected.
    /// At most this many event fields (keys beside the envelope's): bounds the Redis hash writes and the work one
    /// hostile payload can cause, far above what any event type defines.
    public static let maximumEventFields = 256
    /// Longest event field name, bytes.
    public static let maximumFieldNameBytes = 128
    /// Longest free-text envelope value (`source`, `service_type`, `connector_id`, `trace_id`, `correlation_id`),
    /// bytes: they become log metadata, Redis hash values and dashboard text.
    public static let maximumEnvelopeTextBytes = 512

    private static func checkTextLength(_ value: String?, field: String) throws(EnvelopeError) {
        guard let value, value.utf8.count > maximumEnvelopeTextBytes else { return }
        throw .invalidFieldValue(field: field, value: "\(value.utf8.count) bytes",
                                 reason: "at most \(maximumEnvelopeTextBytes) bytes")
    }

    func validateEventFields() throws(EnvelopeError) {
        if fields.count > Self.maximumEventFields {
            throw .invalidFieldValue(field: "(event fields)", value: "\(fields.count) fields",
                                     reason: "at most \(Self.maximumEventFields) event fields")
        }
        for name in fields.keys where name.utf8.count > Self.maximumFieldNameBytes {
            throw .invalidFieldValue(field: String(name.prefix(40)) + "…", value: "\(name.utf8.count) bytes",
                                     reason: "field names are at most \(Self.maximumFieldNameBytes) bytes")
        }
        // Checked one by one, not from an array of pairs: this runs for every event published and received.
        try Self.checkTextLength(source, field: "source")
        try Self.checkTextLength(serviceType, field: "service_type")
        try Self.checkTextLength(connectorID, field: "connector_id")
        try Self.checkTextLength(traceID, field: "trace_id")
        try Self.checkTextLength(correlationID, field: "correlation_id")
        let schema = EventCatalog.schema(for: eventType)
        for spec in schema.fields {
            guard let value = fields[spec.name], !(value.isNull && !spec.required) else {
                if spec.required { throw .missingField(eventType: eventType, field: spec.name) }
                continue
            }
            guard spec.kind.accepts(value) else {
                throw .wrongFieldType(field: spec.name, expected: spec.kind, got: value.kind)
            }
            if let allowed = spec.allowedValues, let string = value.stringValue, !allowed.contains(string) {
                throw .invalidFieldValue(
                    field: spec.name, value: "\"\(string)\"",
                    reason: "must be one of \(allowed.joined(separator: ", "))")
            }
            if let range = spec.range, let number = value.doubleValue, !range.contains(number) {
                throw .invalidFieldValue(
                    field: spec.name, value: JSONValue.double(number).serialized(),
                    reason: "must be within \(JSONValue.double(range.lowerBound).serialized())...\(JSONValue.double(range.upperBound).serialized())")
            }
        }
    }
}

extension EventEnvelope {
    /// Whose acknowledgement topic this session's acks go to: the worker, else the machine, else `_`
    /// (`acks/<owner>/<session_id>`). Per-owner topics let a broker ACL give each worker only its own acks.
    public var ackOwner: Identifier {
        workerID ?? machineID ?? Identifier(rawValue: "_")!
    }

    /// The id the envelope's topic must carry as its subject level:
    ///
    /// - job events: `job_id`
    /// - worker and resource events: `worker_id`
    /// - `queue.state`, `service.health`, `model.loaded`: the `queue`, `service`, `model` field
    /// - trigger events: the `subject` field if present, otherwise `job_id`
    ///
    /// Throws `.missingField` when that id is absent and `.invalidIdentifier` when it breaks the id rule.
    public func topicSubject() throws(EnvelopeError) -> Identifier {
        switch eventType.subjectKind {
        case .job:
            guard let jobID else { throw .missingField(eventType: eventType, field: "job_id") }
            return jobID
        case .worker:
            guard let workerID else { throw .missingField(eventType: eventType, field: "worker_id") }
            return workerID
        case .queue:
            return try fieldIdentifier("queue")
        case .service:
            return try fieldIdentifier("service")
        case .model:
            return try fieldIdentifier("model")
        case .trigger:
            if let value = fields["subject"], !value.isNull {
                return try fieldIdentifier("subject")
            }
            guard let jobID else { throw .missingField(eventType: eventType, field: "subject") }
            return jobID
        }
    }

    private func fieldIdentifier(_ name: String) throws(EnvelopeError) -> Identifier {
        guard let value = fields[name], !value.isNull else { throw .missingField(eventType: eventType, field: name) }
        guard case .string(let string) = value else {
            throw .wrongFieldType(field: name, expected: .string, got: value.kind)
        }
        do {
            return try Identifier(validating: string, field: name)
        } catch {
            throw .invalidIdentifier(error)
        }
    }
}
