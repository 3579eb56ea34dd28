import Foundation
@testable import OpsBusProcessor
import Testing

/// SHA-256 and HMAC-SHA256 against the published vectors, and the signature header format.
@Suite("Webhook signatures")
struct WebhookSignatureTests {
    // FIPS 180-4 examples (NIST CSRC), plus lengths around the 56-byte padding boundary.
    @Test("SHA-256 matches the NIST vectors", arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        ("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
        (String(repeating: "a", count: 55), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"),
        (String(repeating: "a", count: 56), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"),
        (String(repeating: "a", count: 64), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"),
    ])
    func sha256(message: String, digest: String) {
        #expect(SHA256.hex(SHA256.digest(Array(message.utf8))) == digest)
    }

    @Test("SHA-256 of one million 'a'")
    func sha256Million() {
        let digest = SHA256.hex(SHA256.digest([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)))
        #expect(digest == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    // RFC 4231 test cases 1–4, 6, 7 (case 5 is a truncated output, checked by its prefix).
    @Test("HMAC-SHA256 matches RFC 4231", arguments: [
        ([UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        ([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        (Array(1...25), [UInt8](repeating: 0xcd, count: 50),
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        ([UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        ([UInt8](repeating: 0xaa, count: 131),
         Array(("This is a test using a larger than block-size key and a larger than block-size data. "
             + "The key needs to be hashed before being used by the HMAC algorithm.").utf8),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ] as [([UInt8], [UInt8], String)])
    func hmac(key: [UInt8], message: [UInt8], expected: String) {
        #expect(SHA256.hex(SHA256.hmac(key: key, message: message)) == expected)
    }

    @Test("HMAC-SHA256 RFC 4231 case 5 (truncated to 128 bits)")
    func hmacTruncated() {
        let mac = SHA256.hex(SHA256.hmac(key: [UInt8](repeating: 0x0c, count: 20), message: Array("Test With Truncation".utf8)))
        #expect(mac.hasPrefix("a3b6167473100ee06e0c796c2955552b"))
    }

    @Test("the header is t=<unix seconds>,v1=<hex HMAC of \"<t>.<body>\">, as computed by Python's hmac")
    func headerFormat() {
        let header = WebhookSignature.header(secret: "s3cret", body: Array(#"{"a":1}"#.utf8), timestamp: 1_700_000_000)
        #expect(header == "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940")
    }

    @Test("verify accepts a fresh signature and rejects altered, stale, future and malformed ones")
    func verify() throws {
        let body = Array(#"{"job_id":"job-1"}"#.utf8)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let header = WebhookSignature.header(secret: "k", body: body, now: now)
        try WebhookSignature.verify(secret: "k", header: header, body: body, now: now)
        try WebhookSignature.verify(secret: "k", header: header, body: body, now: now.addingTimeInterval(299))
        try WebhookSignature.verify(secret: "k", header: header.uppercased().replacingOccurrences(of: "T=", with: "t=")
            .replacingOccurrences(of: "V1=", with: "v1="), body: body, now: now)
        try WebhookSignature.verify(secret: "k", header: "v0=zz, " + header + ",v2=ignored", body: body, now: now)
        try WebhookSignature.verify(
            secret: "k", header: "t=1800000000,v1=\(String(repeating: "0", count: 64)),"
                + header.split(separator: ",")[1], body: body, now: now)

        #expect(throws: WebhookSignatureError.mismatch) {
            try WebhookSignature.verify(secret: "k", header: header, body: body + [0x20], now: now)
        }
        #expect(throws: WebhookSignatureError.mismatch) {
            try WebhookSignature.verify(secret: "other", header: header, body: body, now: now)
        }
        // Moving t breaks the HMAC, so a replayed request cannot be refreshed.
        let moved = header.replacingOccurrences(of: "t=1800000000", with: "t=1800000100")
        #expect(throws: WebhookSignatureError.mismatch) {
            try WebhookSignature.verify(secret: "k", header: moved, body: body, now: now)
        }
        #expect(throws: WebhookSignatureError.timestampOutsideTolerance(timestamp: 1_800_000_000, secondsOff: 301, tolerance: 300)) {
            try WebhookSignature.verify(secret: "k", header: header, body: body, now: now.addingTimeInterval(301))
        }
        #expect(throws: WebhookSignatureError.timestampOutsideTolerance(timestamp: 1_800_000_000, secondsOff: -301, tolerance: 300)) {
            try WebhookSignature.verify(secret: "k", header: header, body: body, now: now.addingTimeInterval(-301))
        }
        for malformed in ["", "v1=abc", "t=1800000000", "t=abc,v1=00", "t=-5,v1=00", "t=1,t=2,v1=00"] {
            #expect(throws: WebhookSignatureError.self, "\(malformed)") {
                try WebhookSignature.verify(secret: "k", header: malformed, body: body, now: now)
            }
            do {
                try WebhookSignature.verify(secret: "k", header: malformed, body: body, now: now)
            } catch {
                guard case .malformedHeader = error else { Issue.record("\(malformed): \(error)"); continue }
            }
        }
    }

    @Test("outbox entries round-trip and garbage is recognised")
    func entryEncoding() {
        let entry = WebhookOutboxEntry(attempts: 3, notificationID: "n-1", lastError: "HTTP 500\nsecond line", body: Array("{\"a\":\n1}".utf8))
        #expect(entry.lastError == "HTTP 500 second line")
        #expect(WebhookOutboxEntry.decode(entry.encoded()) == entry)
        #expect(WebhookOutboxEntry.decode(Array("hello".utf8)) == nil)
        #expect(WebhookOutboxEntry.decode(Array("opsbus-webhook-v1\nx\nn\n\n{}".utf8)) == nil)
        #expect(WebhookOutboxEntry.decode(Array("opsbus-webhook-v1\n0\nn\n\n".utf8))?.body == [])
    }
}
