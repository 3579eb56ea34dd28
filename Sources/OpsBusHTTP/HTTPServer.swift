#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import Synchronization

/// A GET request as the server saw it.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path without the query, e.g. `/metrics`.
    public var path: String
    /// Query parameters (`?limit=5`), percent-decoded; the last of repeated names wins.
    public var query: [String: String]
    /// Header names lowercased.
    public var headers: [String: String]
}

/// What a handler answers: a complete body, or a stream (server-sent events) written until the client goes away.
public struct HTTPResponse: Sendable {
    public enum Body: Sendable {
        case bytes([UInt8])
        /// Called on the connection's thread; writes with the writer until it returns false (client gone, server
        /// stopping) or the closure returns.
        case stream(@Sendable (HTTPStreamWriter) -> Void)
    }

    public var status: Int
    public var contentType: String
    public var headers: [(String, String)]
    public var body: Body

    public init(status: Int = 200, contentType: String, headers: [(String, String)] = [], body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.headers = headers
        self.body = .bytes(body)
    }

    public init(status: Int = 200, contentType: String, headers: [(String, String)] = [],
                stream: @escaping @Sendable (HTTPStreamWriter) -> Void) {
        self.status = status
        self.contentType = contentType
        self.headers = headers
        self.body = .stream(stream)
    }

    public static func text(_ text: String, status: Int = 200, contentType: String = "text/plain; charset=utf-8")
        -> HTTPResponse
    {
        HTTPResponse(status: status, contentType: contentType, body: Array(text.utf8))
    }

    public static func json(_ text: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json", body: Array(text.utf8))
    }

    public static let notFound = HTTPResponse.text("not found\n", status: 404)
}

/// Writes chunks of a streamed response (the response has no Content-Length; the connection closes at the end).
public final class HTTPStreamWriter: Sendable {
    private let socket: Int32
    private let server: HTTPServer

    init(socket: Int32, server: HTTPServer) {
        self.socket = socket
        self.server = server
    }

    /// False once the client is gone or the server is stopping: the producer should return.
    public var isOpen: Bool { !server.isStopping && HTTPServer.peerIsOpen(socket) }

    /// Writes `text`; false when the client is gone or the server stops.
    @discardableResult
    public func write(_ text: String) -> Bool {
        guard !server.isStopping else { return false }
        return HTTPServer.writeAll(socket, Array(text.utf8))
    }

    /// Sleeps up to `seconds`, returning early (false) when the server stops or the client hangs up.
    public func pause(seconds: Double) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if !isOpen { return false }
            Thread.sleep(forTimeInterval: min(0.1, seconds))
        }
        return isOpen
    }
}

public enum HTTPServerError: Error, CustomStringConvertible, Sendable, Equatable {
    case invalidHost(String)
    case bindFailed(host: String, port: Int, reason: String)

    public var description: String {
        switch self {
        case .invalidHost(let host): return "HTTP host '\(host)' is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)"
        case .bindFailed(let host, let port, let reason): return "cannot listen on \(host):\(port): \(reason)"
        }
    }
}

/// A deliberately small HTTP/1.1 server for /metrics, health checks and the dashboard.
///
/// Why not SwiftNIO/Hummingbird: these endpoints serve a scraper every few seconds and a handful of browsers, and NIO
/// would add minutes to every clean CI build. Scope: GET and HEAD, `Connection: close` (one request per
/// connection), requests up to 16 KiB read within 5 s, one thread per connection up to `maxConnections` (more get
/// 503), streamed responses for server-sent events. IPv4 only.
public final class HTTPServer: Sendable {
    public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse

    public let host: String
    private let requestedPort: Int
    private let handler: Handler
    private let logger: Logger
    private let maxConnections: Int
    private let state = Mutex(State())

    struct State {
        var listener: Int32 = -1
        var port: Int = 0
        var stopping = false
        var connections = 0
        var acceptExited = false
    }

    static let maxRequestBytes = 16 * 1024
    static let ioTimeoutSeconds = 5

    public init(host: String = "127.0.0.1", port: Int, maxConnections: Int = 64, logger: Logger,
                handler: @escaping Handler) {
        self.host = host
        self.requestedPort = port
        self.maxConnections = maxConnections
        self.logger = logger
        self.handler = handler
    }

    /// The port it listens on (the kernel's choice when started with port 0).
    public var port: Int { state.withLock { $0.port } }

    var isStopping: Bool { state.withLock { $0.stopping } }

    /// Binds and starts accepting on a thread of its own.
    /// - Throws: `.invalidHost`, `.bindFailed` (port in use, no permission).
    public func start() throws(HTTPServerError) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(clamping: requestedPort)).bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw .invalidHost(host) }
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw .bindFailed(host: host, port: requestedPort, reason: Self.errnoText()) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let reason = Self.errnoText()
            close(fd)
            throw .bindFailed(host: host, port: requestedPort, reason: reason)
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        state.withLock {
            $0.listener = fd
            $0.port = Int(UInt16(bigEndian: actual.sin_port))
        }
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "opsbus-http-accept"
        thread.start()
        logger.info("HTTP endpoints listening", metadata: ["address": "\(host):\(port)"])
    }

    /// Stops accepting, ends streams, and closes the listening socket. Requests in progress finish on their own.
    public func stop() {
        let fd = state.withLock { state -> Int32 in
            state.stopping = true
            return state.listener
        }
        guard fd >= 0 else { return }
        // The accept loop polls with a timeout and closes the socket itself once it sees `stopping`.
        let deadline = ContinuousClock.now + .seconds(2)
        while !state.withLock({ $0.acceptExited }) && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.02) }
    }

    private func acceptLoop(_ listener: Int32) {
        defer {
            close(listener)
            state.withLock { $0.acceptExited = true }
        }
        while !isStopping {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) > 0 else { continue }
            let client = accept(listener, nil, nil)
            if client < 0 { continue }
            var timeout = timeval(tv_sec: Self.ioTimeoutSeconds, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let admitted = state.withLock { state -> Bool in
                guard state.connections < maxConnections else { return false }
                state.connections += 1
                return true
            }
            guard admitted else {
                _ = Self.writeAll(client, Self.simple(503, "busy\n"))
                close(client)
                continue
            }
            let thread = Thread { [self] in
                serve(client)
                close(client)
                state.withLock { $0.connections -= 1 }
            }
            thread.name = "opsbus-http-conn"
            thread.start()
        }
    }

    private func serve(_ client: Int32) {
        let request: HTTPRequest
        switch Self.readRequest(client) {
        case .success(let parsed): request = parsed
        case .failure(let failure):
            if failure.status > 0 { _ = Self.writeAll(client, Self.simple(failure.status, failure.message)) }
            return
        }
        guard request.method == "GET" || request.method == "HEAD" else {
            _ = Self.writeAll(client, Self.simple(405, "only GET and HEAD\n", extra: [("Allow", "GET, HEAD")]))
            return
        }
        let response = handler(request)
        var head = "HTTP/1.1 \(response.status) \(Self.reason(response.status))\r\n"
        head += "Content-Type: \(response.contentType)\r\nConnection: close\r\nCache-Control: no-store\r\n"
        for (name, value) in response.headers { head += "\(name): \(value)\r\n" }
        switch response.body {
        case .bytes(let body):
            head += "Content-Length: \(body.count)\r\n\r\n"
            _ = Self.writeAll(client, Array(head.utf8) + (request.method == "HEAD" ? [] : body))
        case .stream(let producer):
            head += "\r\n"
            guard Self.writeAll(client, Array(head.utf8)), request.method == "GET" else { return }
            producer(HTTPStreamWriter(socket: client, server: self))
        }
    }

    struct RequestFailure: Error {
        /// 0: close without answering (the client went away or timed out).
        let status: Int
        let message: String
    }

    static func readRequest(_ client: Int32) -> Result<HTTPRequest, RequestFailure> {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let end: Int
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return .failure(RequestFailure(status: count == 0 ? 0 : 408, message: "request timeout\n")) }
            buffer += chunk[0..<count]
            if let found = headerEnd(buffer) {
                end = found
                break
            }
            if buffer.count > maxRequestBytes { return .failure(RequestFailure(status: 431, message: "request too large\n")) }
        }
        let text = String(decoding: buffer[0..<end], as: UTF8.self)
        let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
        let parts = lines.first?.split(separator: " ") ?? []
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return .failure(RequestFailure(status: 400, message: "bad request line\n"))
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let target = String(parts[1])
        let pathPart = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var query: [String: String] = [:]
        if pathPart.count == 2 {
            for pair in pathPart[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                let value = kv.count > 1 ? (String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "") : ""
                query[name] = value
            }
        }
        let path = String(pathPart.first ?? "/").removingPercentEncoding ?? String(pathPart.first ?? "/")
        return .success(HTTPRequest(method: String(parts[0]), path: path, query: query, headers: headers))
    }

    /// Index of the blank line ending the header block (`\r\n\r\n`), excluded.
    static func headerEnd(_ buffer: [UInt8]) -> Int? {
        guard buffer.count >= 4 else { return nil }
        for index in 0...(buffer.count - 4)
        where buffer[index] == 13 && buffer[index + 1] == 10 && buffer[index + 2] == 13 && buffer[index + 3] == 10 {
            return index
        }
        return nil
    }

    static func head(status: Int, contentType: String, length: Int, extra: [(String, String)] = []) -> String {
        var head = "HTTP/1.1 \(status) \(reason(status))\r\nContent-Type: \(contentType)\r\nContent-Length: \(length)\r\n"
        for (name, value) in extra { head += "\(name): \(value)\r\n" }
        return head + "Connection: close\r\n\r\n"
    }

    static func simple(_ status: Int, _ message: String, extra: [(String, String)] = []) -> [UInt8] {
        Array((head(status: status, contentType: "text/plain; charset=utf-8", length: message.utf8.count, extra: extra)
            + message).utf8)
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }

    /// Sends everything (retrying short writes); false when the peer is gone or the send timed out.
    static func writeAll(_ socket: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 {
                if sent < 0 && errno == EINTR { continue }
                return false
            }
            offset += sent
        }
        return true
    }

    /// True unless the peer closed its side (a readable socket with nothing to read) or the socket failed.
    static func peerIsOpen(_ socket: Int32) -> Bool {
        var poller = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        let ready = poll(&poller, 1, 0)
        if ready == 0 { return true }
        if ready < 0 || poller.revents & Int16(POLLERR | POLLHUP) != 0 { return false }
        var byte: UInt8 = 0
        return recv(socket, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}
