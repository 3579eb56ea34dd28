/// Where the broker is and how to log in: parsed from `mqtt://[user[:pass]@]host[:port]` or `mqtts://...`.
///
/// The password never appears in `description`, `debugDescription` or any error message (it is shown as `***`),
/// so endpoints can be logged freely.
public struct MQTTEndpoint: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var useTLS: Bool
    /// CA, client certificate and key for `mqtts://` (nil: the system CA store, no client certificate). A client
    /// configuration's own `tls` takes precedence.
    public var tls: MQTTTLSConfiguration?

    public static let defaultPort = 1883
    public static let defaultTLSPort = 8883

    public init(host: String, port: Int? = nil, username: String? = nil, password: String? = nil, useTLS: Bool = false) {
        self.host = host
        self.port = port ?? (useTLS ? Self.defaultTLSPort : Self.defaultPort)
        self.username = username
        self.password = password
        self.useTLS = useTLS
    }

    /// Parses `mqtt://[user[:pass]@]host[:port]` (port 1883 by default) or `mqtts://…` (8883, TLS).
    /// User and password are percent-decoded; IPv6 hosts are written in brackets (`mqtt://[::1]:1883`).
    /// A single trailing `/` is accepted; any other path, a query or a fragment is rejected.
    public init(url: String) throws(MQTTError) {
        let masked = Self.maskPassword(in: url)
        func fail(_ reason: String) -> MQTTError { .invalidURL(url: masked, reason: reason) }

        if url.isEmpty { throw fail("empty URL") }
        if url.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            throw fail("contains whitespace or control characters")
        }
        guard let schemeEnd = url.range(of: "://") else {
            throw fail("missing scheme; expected mqtt://host[:port] or mqtts://host[:port]")
        }
        let scheme = url[url.startIndex..<schemeEnd.lowerBound].lowercased()
        let useTLS: Bool
        switch scheme {
        case "mqtt": useTLS = false
        case "mqtts": useTLS = true
        default: throw fail("unsupported scheme '\(scheme)'; expected mqtt or mqtts")
        }
        var rest = Substring(url[schemeEnd.upperBound...])
        if rest.contains("?") { throw fail("query strings are not supported") }
        if rest.contains("#") { throw fail("fragments are not supported ('#' must be percent-encoded as %23)") }
        if let slash = rest.firstIndex(of: "/") {
            // A password may legally contain '/' only when percent-encoded, so the first '/' ends the authority.
            let path = rest[slash...]
            if path != "/" { throw fail("a path ('\(path)') is not supported") }
            rest = rest[..<slash]
        }

        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let user: Substring
            if let colon = userInfo.firstIndex(of: ":") {
                user = userInfo[..<colon]
                guard let decoded = Self.percentDecode(userInfo[userInfo.index(after: colon)...]) else {
                    throw fail("invalid percent-encoding in the password")
                }
                password = decoded
            } else {
                user = userInfo
            }
            guard let decodedUser = Self.percentDecode(user) else {
                throw fail("invalid percent-encoding in the user name")
            }
            if decodedUser.isEmpty { throw fail("empty user name before '@'") }
            username = decodedUser
        }

        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw fail("unterminated IPv6 address (missing ']')") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected '\(after)' after the IPv6 address") }
                portText = after.dropFirst()
            }
            if host.isEmpty { throw fail("empty host") }
            if !host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." || $0 == "%" }) {
                throw fail("'\(host)' is not an IPv6 address")
            }
        } else {
            if let colon = rest.firstIndex(of: ":") {
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
                if portText!.contains(":") {
                    throw fail("too many ':' (write IPv6 addresses in brackets, e.g. mqtt://[::1]:1883)")
                }
            } else {
                host = rest
            }
            if host.isEmpty { throw fail("empty host") }
            if host.contains("[") || host.contains("]") { throw fail("misplaced '[' or ']' in the host") }
        }

        var port = useTLS ? Self.defaultTLSPort : Self.defaultPort
        if let portText {
            guard !portText.isEmpty else { throw fail("empty port after ':'") }
            guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), portText.count <= 5, let value = Int(portText)
            else { throw fail("port '\(portText)' is not a number in 1...65535") }
            guard (1...65535).contains(value) else { throw fail("port \(value) is outside 1...65535") }
            port = value
        }
        self.init(host: String(host), port: port, username: username, password: password, useTLS: useTLS)
    }

    /// `mqtt://user:***@host:port`: safe to log.
    public var description: String {
        var text = useTLS ? "mqtts://" : "mqtt://"
        if let username {
            text += Self.percentEncode(username)
            if password != nil { text += ":***" }
            text += "@"
        }
        return text + Self.hostPort(host, port)
    }

    public var debugDescription: String { "MQTTEndpoint(\(description))" }

    /// `host:port`, with IPv6 hosts in brackets.
    static func hostPort(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Replaces the password part of `scheme://user:password@host` with `***` (on the raw text, before parsing, so
    /// even an unparseable URL is reported without its secret).
    static func maskPassword(in url: String) -> String {
        guard let schemeEnd = url.range(of: "://") else {
            // Still hide anything that looks like user:password@
            guard let at = url.lastIndex(of: "@"), let colon = url[..<at].lastIndex(of: ":") else { return url }
            return String(url[...colon]) + "***" + String(url[at...])
        }
        let authorityStart = schemeEnd.upperBound
        let authorityEnd = url[authorityStart...].firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" })
            ?? url.endIndex
        let authority = url[authorityStart..<authorityEnd]
        guard let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") else {
            return url
        }
        return String(url[..<authority.index(after: colon)]) + "***" + String(url[at...])
    }

    static func percentDecode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue)
                else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            let scalar = Unicode.Scalar(byte)
            if byte < 0x80, scalar.properties.isAlphabetic || ("0"..."9").contains(Character(scalar))
                || "-._~".unicodeScalars.contains(scalar)
            {
                out.unicodeScalars.append(scalar)
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}
