import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Loopback TCP helpers: pick a free port, and probe whether something listens on one.
public enum LoopbackPort {
    /// Asks the kernel for a free port by binding port 0 on 127.0.0.1.
    /// The port is released before the server binds it, so a race is possible; callers retry on `exitedEarly`.
    public static func allocate() throws(LocalServerError) -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .noFreePort(reason: "socket() failed, errno \(errno)") }
        defer { close(fd) }
        var address = loopbackAddress(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw .noFreePort(reason: "bind() failed, errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw .noFreePort(reason: "getsockname() failed, errno \(errno)") }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Holds a free port with a bound socket that does not listen: connections to it are refused, and `allocate()`
    /// does not hand it out, until `release()`. The socket sets `SO_REUSEADDR`, so a server that sets it too
    /// (Python's `HTTPServer`, mosquitto, redis-server) can bind and listen while the port is held, then take over
    /// without a window in which a server started by someone else grabs the port.
    public static func reserve() throws(LocalServerError) -> PortReservation {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .noFreePort(reason: "socket() failed, errno \(errno)") }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = loopbackAddress(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = bound == 0 && withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        } == 0
        guard named else {
            let reason = "bind() or getsockname() failed, errno \(errno)"
            close(fd)
            throw .noFreePort(reason: reason)
        }
        return PortReservation(port: UInt16(bigEndian: address.sin_port), descriptor: fd)
    }

    /// True when a TCP connect to 127.0.0.1:`port` succeeds.
    public static func isAcceptingConnections(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = loopbackAddress(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return result == 0
    }

    /// Connects to 127.0.0.1:`port`, sends `request`, and returns the first reply bytes (1 s timeout), or nil.
    public static func exchange(_ port: UInt16, request: String) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopbackAddress(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        let bytes = Array(request.utf8)
        guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 256)
        let received = recv(fd, &buffer, buffer.count, 0)
        guard received > 0 else { return nil }
        return String(decoding: buffer[..<received], as: UTF8.self)
    }

    private static func loopbackAddress(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }
}

/// A loopback port held by a bound, non-listening socket (`LoopbackPort.reserve()`); released on `release()` or when
/// the value goes away.
public final class PortReservation: Sendable {
    public let port: UInt16
    private let descriptor: Mutex<Int32?>

    init(port: UInt16, descriptor: Int32) {
        self.port = port
        self.descriptor = Mutex(descriptor)
    }

    public func release() {
        if let fd = descriptor.withLock({ fd -> Int32? in defer { fd = nil }; return fd }) { close(fd) }
    }

    deinit { release() }
}
