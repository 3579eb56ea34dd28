#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A response read by `HTTPGet`.
public struct HTTPGetResponse: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: String
}

public struct HTTPGetError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// A one-shot HTTP/1.1 GET over IPv4 for health probes and tests (reads until the server closes: the server here
/// always sends `Connection: close`). `maxBytes` bounds what is read, e.g. from an event stream.
public enum HTTPGet {
    public static func fetch(host: String = "127.0.0.1", port: Int, path: String, timeout: Double = 5,
                             maxBytes: Int = 8 * 1024 * 1024) throws(HTTPGetError) -> HTTPGetResponse
    {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(clamping: port)).bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw HTTPGetError(description: "bad host \(host)") }
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw HTTPGetError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: .init((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            throw HTTPGetError(description: "connect to \(host):\(port): \(String(cString: strerror(errno)))")
        }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nConnection: close\r\n\r\n".utf8)
        guard HTTPServer.writeAll(fd, request) else { throw HTTPGetError(description: "send failed") }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        // `timeout` bounds the whole read too: an event stream never ends by itself.
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while data.count < maxBytes && ContinuousClock.now < deadline {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            data += chunk[0..<count]
        }
        guard let end = HTTPServer.headerEnd(data) else {
            throw HTTPGetError(description: "no complete response from \(host):\(port)\(path) (\(data.count) bytes)")
        }
        let head = String(decoding: data[0..<end], as: UTF8.self).split(separator: "\r\n")
        let statusParts = head.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else {
            throw HTTPGetError(description: "bad status line \(head.first ?? "")")
        }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return HTTPGetResponse(status: status, headers: headers,
                               body: String(decoding: data[(end + 4)...], as: UTF8.self))
    }
}
