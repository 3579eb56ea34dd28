import Foundation
import Synchronization

/// A userspace TCP proxy that adds latency: it listens in the root namespace on the veth address and forwards each
/// connection to a loopback port, holding every chunk for `delay` before passing it on (each direction separately,
/// order kept). There is no `tc netem` on this kernel, so this is how the tests get a long round trip.
///
/// Blocking sockets, two threads per direction (reader queues chunks with a due time, writer sends them when due):
/// a handful of connections per test, so simplicity wins over an event loop.
final class DelayProxy: Sendable {
    let listenAddress: String
    let port: UInt16
    let upstreamPort: UInt16
    let delay: Duration
    private let listener: Int32
    private let state = Mutex(State())

    /// Every descriptor is shut down and closed under this lock: a descriptor number closed by one thread and then
    /// shut down by another could by then belong to someone else (Foundation's process-exit socket, say), and a
    /// stray shutdown there makes `Process.waitUntilExit` wait forever.
    private struct State {
        var stopped = false
        var listenerClosed = false
        var connections: [Int32] = []
        var accepted = 0
    }

    /// Listens on `listenAddress`:(free port) and forwards to 127.0.0.1:`upstreamPort`.
    init(listenAddress: String, upstreamPort: UInt16, delay: Duration) throws(LinkTestError) {
        self.listenAddress = listenAddress
        self.upstreamPort = upstreamPort
        self.delay = delay
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .setup("delay proxy: socket() failed, errno \(errno)") }
        var address = Self.address(listenAddress, port: 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw .setup("delay proxy: cannot listen on \(listenAddress): errno \(code)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = UInt16(bigEndian: address.sin_port)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// Connections accepted so far (the pump reconnects after faults).
    var acceptedConnections: Int { state.withLock { $0.accepted } }

    /// Stops accepting and cuts every connection (threads see EOF and end; descriptors are closed by their owners).
    func stop() {
        state.withLock { state in
            guard !state.stopped else { return }
            state.stopped = true
            if !state.listenerClosed { shutdown(listener, Int32(SHUT_RDWR)) }
            for fd in state.connections { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    deinit { stop() }

    private func acceptLoop() {
        defer {
            state.withLock { state in
                state.listenerClosed = true
                close(listener)
            }
        }
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.address("127.0.0.1", port: upstreamPort)
            let connected = upstream >= 0 && withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            } == 0
            guard connected else {
                // The broker is down (a restart test): refuse the way the broker itself would.
                close(client)
                if upstream >= 0 { close(upstream) }
                continue
            }
            let registered = state.withLock { state in
                guard !state.stopped else { return false }
                state.connections += [client, upstream]
                state.accepted += 1
                return true
            }
            guard registered else {
                close(client)
                close(upstream)
                return
            }
            let remaining = Mutex(2)
            let finished: @Sendable () -> Void = { [self] in
                guard remaining.withLock({ count in count -= 1; return count == 0 }) else { return }
                state.withLock { state in
                    state.connections.removeAll { $0 == client || $0 == upstream }
                    close(client)
                    close(upstream)
                }
            }
            DelayedPipe(from: client, to: upstream, delay: delay, finished: finished).start()
            DelayedPipe(from: upstream, to: client, delay: delay, finished: finished).start()
        }
    }

    static func address(_ text: String, port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr(text)
        return address
    }
}

/// One direction of a proxied connection: chunks read from `from` are written to `to` `delay` later.
private final class DelayedPipe: Sendable {
    let from: Int32
    let to: Int32
    let delayNanoseconds: UInt64
    let finished: @Sendable () -> Void
    /// Chunks waiting, with the monotonic time they are due; nil data = end of stream.
    private let queue = Mutex<[(due: UInt64, data: [UInt8]?)]>([])
    private let available = DispatchSemaphore(value: 0)

    init(from: Int32, to: Int32, delay: Duration, finished: @escaping @Sendable () -> Void) {
        self.from = from
        self.to = to
        let (seconds, attoseconds) = delay.components
        delayNanoseconds = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        self.finished = finished
    }

    func start() {
        Thread.detachNewThread { [self] in readLoop() }
        Thread.detachNewThread { [self] in writeLoop() }
    }

    private func enqueue(_ data: [UInt8]?) {
        let due = DispatchTime.now().uptimeNanoseconds + delayNanoseconds
        queue.withLock { $0.append((due, data)) }
        available.signal()
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = recv(from, &buffer, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                enqueue(nil)
                return
            }
            enqueue(Array(buffer[..<count]))
        }
    }

    private func writeLoop() {
        defer { finished() }
        while true {
            available.wait()
            let item = queue.withLock { $0.removeFirst() }
            let now = DispatchTime.now().uptimeNanoseconds
            if item.due > now { usleep(useconds_t(min((item.due - now) / 1000, 10_000_000))) }
            guard let data = item.data else {
                shutdown(to, Int32(SHUT_WR))
                return
            }
            var sent = 0
            while sent < data.count {
                let count = data[sent...].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else {
                    // The receiver is gone: stop reading the sender too, so the reader thread ends.
                    shutdown(from, Int32(SHUT_RDWR))
                    shutdown(to, Int32(SHUT_RDWR))
                    drain()
                    return
                }
                sent += count
            }
        }
    }

    /// After a failed send: wait for the reader's end-of-stream marker so it has stopped touching `from`.
    private func drain() {
        while true {
            available.wait()
            if queue.withLock({ $0.removeFirst().data }) == nil { return }
        }
    }
}
