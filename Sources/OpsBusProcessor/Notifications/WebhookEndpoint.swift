import Foundation

/// One webhook receiver: where notifications are POSTed, how they are signed, how long and how often to try.
///
/// Endpoints come only from configuration (`fromEnvironment`), never from event payloads: an event cannot make
/// the processor send requests to an address of its choosing (server-side request forgery).
///
/// The secret never appears in `description`, `debugDescription` or the mirror, and neither does the URL's path or
/// query (webhook URLs often carry a token there): logs show `https://host:port/…`.
public struct WebhookEndpoint: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The endpoint named by `NOTIFICATION_SERVICE_URL`.
    public static let defaultName = "default"
    public static let maximumNameLength = 64
    public static let maximumTimeout: Double = 300
    public static let maximumAttempts = 100

    /// Names the endpoint in Redis keys (`webhook:{<name>}:…`), logs and dead letters:
    /// 1…64 of `A-Z a-z 0-9 _ - .`.
    public let name: String
    /// An absolute `http` or `https` URL with a host and no user name or password.
    public let url: String
    /// The HMAC-SHA256 key for `X-Opsbus-Signature`; nil sends unsigned requests.
    public let secret: String?
    /// Seconds one delivery attempt may take in total (connect, send, response), > 0 and ≤ 300.
    public let timeout: Double
    /// Attempts before a notification goes to the dead-letter stream, first attempt included (1…100).
    public let maxAttempts: Int

    public init(
        name: String, url: String, secret: String? = nil, timeout: Double = 5, maxAttempts: Int = 8
    ) throws(WebhookConfigurationError) {
        try Self.validate(name: name)
        try Self.validate(url: url, setting: "url of webhook endpoint '\(name)'")
        if let secret, secret.isEmpty {
            throw .invalidSetting(setting: "secret of webhook endpoint '\(name)'", reason: "the secret is empty")
        }
        guard timeout.isFinite, timeout > 0, timeout <= Self.maximumTimeout else {
            throw .invalidSetting(
                setting: "timeout of webhook endpoint '\(name)'",
                reason: "expected seconds > 0 and ≤ \(Int(Self.maximumTimeout)), got \(timeout)")
        }
        guard (1...Self.maximumAttempts).contains(maxAttempts) else {
            throw .invalidSetting(
                setting: "maxAttempts of webhook endpoint '\(name)'",
                reason: "expected 1…\(Self.maximumAttempts), got \(maxAttempts)")
        }
        self.name = name
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.maxAttempts = maxAttempts
    }

    /// The endpoints configured in `environment`:
    /// - `NOTIFICATION_SERVICE_URL`: the `default` endpoint (unset or empty: no endpoints, notifications off);
    /// - `NOTIFICATION_SECRET`, or `NOTIFICATION_SECRET_FILE` (a file holding the secret; one trailing newline is
    ///   dropped): signs the default endpoint's requests. Setting both, or a secret without a URL, is an error.
    /// - Throws: `WebhookConfigurationError` naming the variable (never its secret value).
    public static func fromEnvironment(_ environment: [String: String]) throws(WebhookConfigurationError) -> [WebhookEndpoint] {
        let url = environment["NOTIFICATION_SERVICE_URL"].flatMap { $0.isEmpty ? nil : $0 }
        let inlineSecret = environment["NOTIFICATION_SECRET"].flatMap { $0.isEmpty ? nil : $0 }
        let secretFile = environment["NOTIFICATION_SECRET_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        if inlineSecret != nil && secretFile != nil {
            throw .invalidSetting(
                setting: "NOTIFICATION_SECRET and NOTIFICATION_SECRET_FILE",
                reason: "both are set; set only one of them")
        }
        var secret = inlineSecret
        if let secretFile { secret = try readSecret(path: secretFile, variable: "NOTIFICATION_SECRET_FILE") }
        guard let url else {
            if secret != nil {
                let variable = secretFile != nil ? "NOTIFICATION_SECRET_FILE" : "NOTIFICATION_SECRET"
                throw .invalidSetting(
                    setting: variable,
                    reason: "a webhook secret is set but NOTIFICATION_SERVICE_URL is not; set the URL or remove the secret")
            }
            return []
        }
        try validate(url: url, setting: "NOTIFICATION_SERVICE_URL")
        return [try WebhookEndpoint(name: defaultName, url: url, secret: secret)]
    }

    /// `scheme://host[:port]/…`: enough to tell endpoints apart, without a path or query that may hold a token.
    public var redactedURL: String { Self.redact(url: url) }

    public var description: String {
        "webhook '\(name)' → \(redactedURL) (\(secret == nil ? "unsigned" : "signed"), timeout \(timeout) s, "
            + "\(maxAttempts) attempts)"
    }

    public var debugDescription: String { "WebhookEndpoint(\(description))" }

    public var customMirror: Mirror {
        Mirror(self, children: [
            "name": name, "url": redactedURL, "secret": secret == nil ? "nil" : "***", "timeout": timeout,
            "maxAttempts": maxAttempts,
        ])
    }

    // MARK: Validation

    static func validate(name: String) throws(WebhookConfigurationError) {
        let allowed = name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
        }
        guard !name.isEmpty, name.utf8.count <= maximumNameLength, allowed else {
            throw .invalidSetting(
                setting: "webhook endpoint name",
                reason: "expected 1…\(maximumNameLength) characters of A-Z a-z 0-9 _ - ., got '\(String(name.prefix(80)))'")
        }
    }

    static func validate(url: String, setting: String) throws(WebhookConfigurationError) {
        let shown = redact(url: url)
        func fail(_ reason: String) -> WebhookConfigurationError {
            .invalidURL(setting: setting, url: shown, reason: reason)
        }
        guard !url.contains(where: { $0.isWhitespace || $0.asciiValue.map { $0 < 0x20 || $0 == 0x7f } == true }) else {
            throw fail("whitespace and control characters are not allowed")
        }
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw fail("expected an absolute http:// or https:// URL")
        }
        guard scheme == "http" || scheme == "https" else {
            throw fail("the scheme must be http or https, not '\(scheme)'")
        }
        guard let host = components.host, !host.isEmpty else { throw fail("the URL has no host") }
        guard components.user == nil && components.password == nil else {
            throw fail("credentials in the URL are not allowed (they would end up in logs); "
                + "sign requests with NOTIFICATION_SECRET instead")
        }
        if let port = components.port, !(1...65535).contains(port) { throw fail("port \(port) is out of range") }
        guard URL(string: url) != nil else { throw fail("not a valid URL") }
    }

    /// Best effort, also for URLs that do not parse: keeps the scheme and the authority (minus any user info).
    static func redact(url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://") else { return "(not a URL)" }
        let rest = url[schemeEnd.upperBound...]
        var authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        let hasMore = authority.endIndex < rest.endIndex
        return String(url[..<schemeEnd.upperBound]) + authority + (hasMore ? "/…" : "")
    }

    private static func readSecret(path: String, variable: String) throws(WebhookConfigurationError) -> String {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw .unreadableSecretFile(variable: variable, path: path, reason: Self.describe(error))
        }
        guard var secret = String(data: data, encoding: .utf8) else {
            throw .unreadableSecretFile(variable: variable, path: path, reason: "the file is not UTF-8 text")
        }
        // One line ending. "\r\n" is a single Character in Swift: `removeLast(2)` would eat the secret's last one.
        if secret.last == "\r\n" || secret.last == "\n" { secret.removeLast() }
        guard !secret.isEmpty else {
            throw .unreadableSecretFile(variable: variable, path: path, reason: "the file is empty")
        }
        return secret
    }

    private static func describe(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if nsError.domain == NSCocoaErrorDomain {
            switch nsError.code {
            case NSFileReadNoSuchFileError: return "no such file"
            case NSFileReadNoPermissionError: return "permission denied"
            default: break
            }
        }
        return nsError.localizedDescription
    }
}

/// A webhook setting that cannot work, named by its environment variable (or field) so it can be fixed.
/// Never contains a secret; URLs are shown without path, query or user info.
public enum WebhookConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidURL(setting: String, url: String, reason: String)
    case invalidSetting(setting: String, reason: String)
    case unreadableSecretFile(variable: String, path: String, reason: String)
    /// Two endpoints given to one `WebhookDeliverer` share a name (and so would share an outbox).
    case duplicateEndpointName(String)

    public var description: String {
        switch self {
        case let .invalidURL(setting, url, reason):
            return "invalid \(setting) '\(url)': \(reason)"
        case let .invalidSetting(setting, reason):
            return "invalid \(setting): \(reason)"
        case let .unreadableSecretFile(variable, path, reason):
            return "cannot read the webhook secret from \(variable)=\(path): \(reason)"
        case let .duplicateEndpointName(name):
            return "two webhook endpoints are named '\(name)'; endpoint names must be unique"
        }
    }
}
