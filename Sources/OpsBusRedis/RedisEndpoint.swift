/// Where a Redis server is and how to log in to it.
///
/// Accepted URLs:
/// - `redis://[[user]:password@]host[:port][/db]` — default port 6379, db 0; IPv6 hosts in brackets (`[::1]`);
///   user and password are percent-decoded (`%40` for `@`, `%3A` for `:`, `%2F` for `/`).
/// - `unix://[[user]:password@]/path/to/redis.sock[?db=N]`
/// - `rediss://...` is refused: TLS needs hiredis ≥ 1.0 and Debian bookworm ships 0.14.1.
///
/// The password is masked as `***` in `description`, `debugDescription` and the mirror, so endpoints can be logged.
public struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    public enum Address: Sendable, Hashable {
        /// `host` is a name or an IP literal; IPv6 without brackets.
        case tcp(host: String, port: Int)
        case unixSocket(path: String)
    }

    public static let defaultPort = 6379

    public var address: Address
    /// Selected with `SELECT` after connecting (and after every reconnect).
    public var database: Int
    /// An ACL user (Redis ≥ 6); nil means the `default` user.
    public var username: String?
    public var password: String?

    public init(host: String = "127.0.0.1", port: Int = Self.defaultPort, database: Int = 0,
                username: String? = nil, password: String? = nil) {
        self.address = .tcp(host: host, port: port)
        self.database = database
        self.username = username
        self.password = password
    }

    public init(unixSocketPath: String, database: Int = 0, username: String? = nil, password: String? = nil) {
        self.address = .unixSocket(path: unixSocketPath)
        self.database = database
        self.username = username
        self.password = password
    }

    public init(url: String) throws(RedisError) {
        self = try RedisURLParser.parse(url)
    }

    /// `host:port` (`[v6]:port`) or `unix:/path`, the form used in error messages.
    public var addressDescription: String {
        switch address {
        case let .tcp(host, port):
            return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unixSocket(path):
            return "unix:\(path)"
        }
    }

    /// The endpoint as a URL with the password replaced by `***`.
    public var description: String {
        var userinfo = ""
        if password != nil {
            userinfo = (username.map { RedisURLParser.percentEncode($0) } ?? "") + ":***@"
        } else if let username {
            userinfo = RedisURLParser.percentEncode(username) + "@"
        }
        switch address {
        case let .tcp(host, port):
            let hostPart = host.contains(":") ? "[\(host)]" : host
            return "redis://\(userinfo)\(hostPart):\(port)/\(database)"
        case let .unixSocket(path):
            return "unix://\(userinfo)\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    public var debugDescription: String { "RedisEndpoint(\(description))" }

    public var customMirror: Mirror {
        Mirror(self, children: [
            "address": address, "database": database, "username": username as Any,
            "password": password == nil ? "nil" : "***",
        ])
    }

    /// A best-effort redaction of a URL string that may not parse: everything between the scheme and the last `@`
    /// after the user name is masked.
    public static func redact(url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://") else {
            return url.contains("@") ? "***" : url
        }
        let rest = url[schemeEnd.upperBound...]
        guard let at = rest.lastIndex(of: "@") else { return url }
        let userinfo = rest[..<at]
        let masked = userinfo.firstIndex(of: ":").map { String(userinfo[..<$0]) + ":***" } ?? "***"
        return String(url[..<schemeEnd.upperBound]) + masked + String(rest[at...])
    }
}

/// Parses Redis URLs by hand: Foundation's URL is lenient in ways that would hide typos (and is not needed here).
enum RedisURLParser {
    static func parse(_ url: String) throws(RedisError) -> RedisEndpoint {
        let redacted = RedisEndpoint.redact(url: url)
        func fail(_ reason: String) -> RedisError { .invalidURL(url: redacted, reason: reason) }

        guard let schemeEnd = url.firstRange(of: "://") else {
            throw fail("expected redis://host[:port][/db] or unix:///path/to/redis.sock")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = Substring(url[schemeEnd.upperBound...])
        if rest.contains("#") { throw fail("fragments ('#') are not allowed; percent-encode '#' as %23") }
        if rest.contains(where: { $0.isWhitespace }) { throw fail("whitespace is not allowed; percent-encode it") }

        var query: Substring?
        if let questionMark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: questionMark)...]
            rest = rest[..<questionMark]
        }

        switch scheme {
        case "rediss":
            throw RedisError.unsupported(
                "TLS needs hiredis ≥ 1.0; Debian bookworm ships 0.14.1, which has no TLS support. "
                    + "Use redis:// on a trusted network, a unix socket, or a TLS tunnel (stunnel/spiped).")
        case "redis":
            let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<authorityEnd]
            let path = rest[authorityEnd...]
            let (username, password, hostPort) = try splitUserinfo(authority, fail: fail)
            let (host, port) = try splitHostPort(hostPort, fail: fail)
            var database = 0
            if path.count > 1 {
                let text = path.dropFirst()
                guard let number = parseDatabase(text) else {
                    throw fail("the path must be a database number like /0, got '\(text)'")
                }
                database = number
            }
            if let query {
                let parameters = try parseQuery(query, allowed: ["db"], fail: fail)
                if let dbText = parameters["db"] {
                    guard let number = parseDatabase(Substring(dbText)) else {
                        throw fail("db must be a non-negative integer, got '\(dbText)'")
                    }
                    if path.count > 1 && number != database {
                        throw fail("the database is given twice (path /\(database) and ?db=\(number))")
                    }
                    database = number
                }
            }
            return RedisEndpoint(host: host, port: port, database: database, username: username, password: password)
        case "unix":
            guard let pathStart = rest.firstIndex(of: "/") else {
                throw fail("expected unix:///absolute/path/to/redis.sock")
            }
            let (username, password, hostPart) = try splitUserinfo(rest[..<pathStart], fail: fail)
            guard hostPart.isEmpty || hostPart == "localhost" else {
                throw fail("a unix socket URL has no host (unix:///path), got '\(hostPart)'")
            }
            let path = try percentDecode(rest[pathStart...], what: "socket path", fail: fail)
            guard path.count > 1 else { throw fail("the socket path is empty") }
            var database = 0
            if let query {
                let parameters = try parseQuery(query, allowed: ["db"], fail: fail)
                if let dbText = parameters["db"] {
                    guard let number = parseDatabase(Substring(dbText)) else {
                        throw fail("db must be a non-negative integer, got '\(dbText)'")
                    }
                    database = number
                }
            }
            return RedisEndpoint(
                unixSocketPath: path, database: database, username: username, password: password)
        default:
            throw fail("unknown scheme '\(scheme)'; use redis://, or unix:// for a unix socket")
        }
    }

    /// `[user]:password@rest` → (user, password, rest). The last `@` separates, so an unencoded `@` in a password
    /// still works.
    private static func splitUserinfo(
        _ authority: Substring, fail: (String) -> RedisError
    ) throws(RedisError) -> (String?, String?, Substring) {
        guard let at = authority.lastIndex(of: "@") else { return (nil, nil, authority) }
        let userinfo = authority[..<at]
        let remainder = authority[authority.index(after: at)...]
        guard let colon = userinfo.firstIndex(of: ":") else {
            throw fail(
                "credentials need a ':' — write redis://:password@host for a password, "
                    + "or redis://user:password@host for an ACL user")
        }
        let userText = userinfo[..<colon]
        let passwordText = userinfo[userinfo.index(after: colon)...]
        let username = userText.isEmpty ? nil : try percentDecode(userText, what: "user name", fail: fail)
        let password = try percentDecode(passwordText, what: "password", fail: fail)
        if password.isEmpty {
            throw fail("the password is empty; leave out the credentials if the server needs none")
        }
        return (username, password, remainder)
    }

    private static func splitHostPort(
        _ hostPort: Substring, fail: (String) -> RedisError
    ) throws(RedisError) -> (String, Int) {
        var host: Substring
        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw fail("unterminated IPv6 literal '['") }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected '\(after)' after the IPv6 address") }
                portText = after.dropFirst()
            }
            if host.isEmpty { throw fail("empty IPv6 address '[]'") }
        } else {
            let colons = hostPort.filter { $0 == ":" }.count
            if colons > 1 { throw fail("an IPv6 address needs brackets, e.g. redis://[::1]:6379") }
            if let colon = hostPort.firstIndex(of: ":") {
                host = hostPort[..<colon]
                portText = hostPort[hostPort.index(after: colon)...]
            } else {
                host = hostPort
            }
        }
        var port = RedisEndpoint.defaultPort
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), portText.count <= 5,
                let number = Int(portText), (1...65535).contains(number)
            else { throw fail("the port must be a number from 1 to 65535, got '\(portText)'") }
            port = number
        }
        let hostName = try percentDecode(host, what: "host", fail: fail)
        return (hostName.isEmpty ? "127.0.0.1" : hostName, port)
    }

    private static func parseDatabase(_ text: Substring) -> Int? {
        guard !text.isEmpty, text.count <= 9, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(text)
    }

    private static func parseQuery(
        _ query: Substring, allowed: Set<String>, fail: (String) -> RedisError
    ) throws(RedisError) -> [String: String] {
        var result: [String: String] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            guard let equals = pair.firstIndex(of: "=") else { throw fail("query parameter '\(pair)' has no value") }
            let name = String(pair[..<equals])
            guard allowed.contains(name) else {
                throw fail("unknown query parameter '\(name)' (supported: \(allowed.sorted().joined(separator: ", ")))")
            }
            guard result[name] == nil else { throw fail("query parameter '\(name)' is given twice") }
            result[name] = try percentDecode(pair[pair.index(after: equals)...], what: name, fail: fail)
        }
        return result
    }

    static func percentDecode(
        _ text: Substring, what: String, fail: (String) -> RedisError
    ) throws(RedisError) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(hexValue), let low = utf8.next().flatMap(hexValue) else {
                throw fail("bad percent-escape in the \(what) (expected %XX)")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw fail("the percent-decoded \(what) is not valid UTF-8")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Percent-encodes everything outside RFC 3986 "unreserved", for user names in descriptions.
    static func percentEncode(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            let scalar = Unicode.Scalar(byte)
            if scalar.properties.isAlphabetic && byte < 0x80 || (0x30...0x39).contains(byte)
                || "-._~".unicodeScalars.contains(scalar)
            {
                result.unicodeScalars.append(scalar)
            } else {
                result += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return result
    }
}
