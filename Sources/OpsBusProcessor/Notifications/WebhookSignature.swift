import Foundation

/// The `X-Opsbus-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
///
/// Signing the timestamp together with the body lets a receiver reject replays: a captured request re-sent later
/// fails the tolerance check, and changing `t` breaks the HMAC. `body` is the raw request body, byte for byte, as
/// received (verify *before* parsing the JSON). Unknown `key=value` parts are ignored, so a later `v2` can be
/// added beside `v1`; several `v1` parts are accepted (any one matching is enough).
///
/// Receivers should also deduplicate by the `X-Opsbus-Notification-Id` header: delivery is at-least-once (see
/// `WebhookDeliverer`), so the same notification may arrive twice, each time freshly signed.
///
/// Receiver-side verification in Python 3 (standard library only; the test receiver
/// `Tests/Fixtures/webhook_receiver.py` runs this very function against every delivery):
///
/// ```python
/// import hashlib, hmac, time
///
/// def verify_opsbus_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
///     """header: the X-Opsbus-Signature value; body: the raw request body bytes, before JSON parsing."""
///     fields = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
///     timestamps = [value for key, value in fields if key == "t"]
///     signatures = [value for key, value in fields if key == "v1"]
///     if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
///         return False
///     if abs(time.time() - int(timestamps[0])) > tolerance:
///         return False  # a replay of an old request, or clocks too far apart
///     signed = timestamps[0].encode() + b"." + body
///     expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
///     return any(hmac.compare_digest(expected, candidate) for candidate in signatures)
/// ```
public enum WebhookSignature {
    /// The name of the HTTP header that carries the signature.
    public static let headerName = "X-Opsbus-Signature"

    /// The header value for `body` signed with `secret` at `timestamp` (unix seconds).
    public static func header(secret: String, body: [UInt8], timestamp: Int64) -> String {
        "t=\(timestamp),v1=\(SHA256.hex(signature(secret: secret, body: body, timestamp: timestamp)))"
    }

    /// The header value for `body` signed now.
    public static func header(secret: String, body: [UInt8], now: Date = Date()) -> String {
        header(secret: secret, body: body, timestamp: Int64(now.timeIntervalSince1970.rounded(.down)))
    }

    /// Checks a received `X-Opsbus-Signature` header against the raw `body`.
    /// - Parameter tolerance: seconds the header's timestamp may differ from `now`, either way (replay window and
    ///   clock skew).
    /// - Throws: `.malformedHeader`, `.timestampOutsideTolerance`, `.mismatch`.
    public static func verify(
        secret: String, header: String, body: [UInt8], now: Date = Date(), tolerance: Double = 300
    ) throws(WebhookSignatureError) {
        var timestamps: [Substring] = []
        var candidates: [Substring] = []
        for part in header.split(separator: ",") {
            let trimmed = part.drop { $0 == " " }
            guard let equals = trimmed.firstIndex(of: "=") else { continue }
            let key = trimmed[..<equals]
            let value = trimmed[trimmed.index(after: equals)...]
            if key == "t" { timestamps.append(value) } else if key == "v1" { candidates.append(value) }
        }
        guard timestamps.count == 1 else {
            throw .malformedHeader(reason: timestamps.isEmpty ? "no t=<unix seconds> part" : "more than one t= part")
        }
        guard !timestamps[0].isEmpty, timestamps[0].allSatisfy(\.isASCIIDigit), let timestamp = Int64(timestamps[0]) else {
            throw .malformedHeader(reason: "t= is not a unix time in whole seconds")
        }
        guard !candidates.isEmpty else { throw .malformedHeader(reason: "no v1=<hex HMAC-SHA256> part") }
        let age = now.timeIntervalSince1970 - Double(timestamp)
        guard abs(age) <= tolerance else {
            throw .timestampOutsideTolerance(timestamp: timestamp, secondsOff: age, tolerance: tolerance)
        }
        let expected = Array(SHA256.hex(signature(secret: secret, body: body, timestamp: timestamp)).utf8)
        // Compare every candidate in full, so the time taken does not reveal how many leading bytes matched.
        var matched = false
        for candidate in candidates where constantTimeEqual(expected, Array(candidate.lowercased().utf8)) {
            matched = true
        }
        guard matched else { throw .mismatch }
    }

    static func signature(secret: String, body: [UInt8], timestamp: Int64) -> [UInt8] {
        SHA256.hmac(key: Array(secret.utf8), message: Array("\(timestamp).".utf8) + body)
    }

    private static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}

/// Why a webhook signature was rejected. Never contains the secret or the expected signature.
public enum WebhookSignatureError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    case malformedHeader(reason: String)
    /// The signed timestamp is further than `tolerance` seconds from now (`secondsOff` > 0: in the past).
    case timestampOutsideTolerance(timestamp: Int64, secondsOff: Double, tolerance: Double)
    /// No `v1` value matches the HMAC of the timestamp and body under the secret.
    case mismatch

    public var description: String {
        switch self {
        case let .malformedHeader(reason):
            return "malformed \(WebhookSignature.headerName) header: \(reason)"
        case let .timestampOutsideTolerance(timestamp, secondsOff, tolerance):
            let direction = secondsOff >= 0 ? "old" : "in the future"
            return "webhook signature timestamp \(timestamp) is \(Int(abs(secondsOff))) s \(direction), "
                + "outside the \(tolerance) s tolerance (a replay, or clocks too far apart)"
        case .mismatch:
            return "webhook signature does not match the body (wrong secret, or the body was altered)"
        }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
