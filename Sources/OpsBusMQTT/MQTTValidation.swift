import CMosquitto

/// Pre-checks done before handing strings to libmosquitto, so callers get a specific typed error instead of a bare
/// MOSQ_ERR_INVAL / MOSQ_ERR_MALFORMED_UTF8.
enum MQTTValidation {
    /// MQTT's maximum payload (the remaining-length field's limit).
    static let maxPayload = 268_435_455

    /// MQTT UTF-8 rules as libmosquitto enforces them: no U+0000, no C0/C1 controls, no non-characters.
    static func isValidUTF8(_ text: String) -> Bool {
        var copy = text
        return copy.withUTF8 { buffer in
            guard buffer.count <= 65535 else { return false }
            guard let base = buffer.baseAddress else { return true }
            return base.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                mosquitto_validate_utf8($0, Int32(buffer.count)) == MOSQ_ERR_SUCCESS.rawValue
            }
        }
    }

    /// A topic *name* (for PUBLISH and the will): non-empty, no wildcards, ≤ 65535 bytes, valid MQTT UTF-8.
    static func checkTopicName(_ topic: String) throws(MQTTError) {
        // The common case in one pass: printable ASCII without wildcards is valid MQTT UTF-8 (no controls, no
        // non-characters), so libmosquitto's UTF-8 check is not needed here (issue 6: every publish runs this).
        let plain = topic.utf8.withContiguousStorageIfAvailable { bytes -> Bool in
            guard !bytes.isEmpty, bytes.count <= 65535 else { return false }
            for byte in bytes where byte < 0x20 || byte > 0x7E || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "#") {
                return false
            }
            return true
        }
        if plain == true { return }
        if topic.isEmpty { throw .invalidTopic(topic: topic, reason: "empty topic") }
        if topic.utf8.count > 65535 { throw .invalidTopic(topic: topic, reason: "longer than 65535 bytes") }
        // A byte scan: `String.contains` goes through Foundation's locale-aware search, ~1 µs per publish.
        if topic.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }) {
            throw .invalidTopic(topic: topic, reason: "wildcards '+' and '#' are only allowed in subscriptions")
        }
        if !isValidUTF8(topic) { throw .malformedUTF8(field: "topic", value: topic) }
    }

    /// A topic *filter* (for SUBSCRIBE/UNSUBSCRIBE): `+` must fill a whole level, `#` must be last and alone.
    static func checkTopicFilter(_ filter: String) throws(MQTTError) {
        if filter.isEmpty { throw .invalidTopic(topic: filter, reason: "empty topic filter") }
        if filter.utf8.count > 65535 { throw .invalidTopic(topic: filter, reason: "longer than 65535 bytes") }
        if !isValidUTF8(filter) { throw .malformedUTF8(field: "topic filter", value: filter) }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level.contains("#") && (level != "#" || index != levels.count - 1) {
                throw .invalidTopic(topic: filter, reason: "'#' must be a whole level and the last one")
            }
            if level.contains("+") && level != "+" {
                throw .invalidTopic(topic: filter, reason: "'+' must be a whole level")
            }
        }
    }
}
