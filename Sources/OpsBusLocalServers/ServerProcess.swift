import Foundation
import Synchronization

/// A child server process (mosquitto or redis-server) that can be stopped, killed and restarted on the same port
/// and data directory, the way the fault tests need.
///
/// Output goes to a log file in the server's directory, never to our stdout: a server that outlives us must not hold
/// the test runner's output pipe open.
public final class ServerProcess: Sendable {
    public let name: String
    public let port: UInt16
    public let directory: URL
    public let logFile: URL
    private let executable: String
    private let arguments: [String]
    private let process: Mutex<Process?>
    /// Sent after connecting; the server is ready when its reply starts with one of `readyReplies`.
    private let probe: (request: String, readyReplies: [String])?

    init(name: String, executable: String, arguments: [String], port: UInt16, directory: URL, logFile: URL,
         probe: (request: String, readyReplies: [String])? = nil) {
        self.name = name
        self.probe = probe
        self.executable = executable
        self.arguments = arguments
        self.port = port
        self.directory = directory
        self.logFile = logFile
        self.process = Mutex(nil)
    }

    /// The process id while running.
    public var pid: Int32? { process.withLock { $0?.isRunning == true ? $0?.processIdentifier : nil } }

    public var isRunning: Bool { process.withLock { $0?.isRunning ?? false } }

    /// Launches the server and waits until it accepts TCP connections.
    public func start(readyTimeout: Double = 15) throws(LocalServerError) {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: executable)
        child.arguments = arguments
        child.currentDirectoryURL = directory
        if !FileManager.default.fileExists(atPath: logFile.path) {
            _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        }
        do {
            let log = try FileHandle(forWritingTo: logFile)
            log.seekToEndOfFile()
            child.standardOutput = log
            child.standardError = log
            child.standardInput = FileHandle.nullDevice
            try ChildLauncher.run(child)
        } catch {
            throw .launchFailed(name: name, reason: "\(error)")
        }
        process.withLock { $0 = child }
        let deadline = Date().addingTimeInterval(readyTimeout)
        while Date() < deadline {
            if !child.isRunning {
                throw .exitedEarly(name: name, status: child.terminationStatus, logTail: logTail())
            }
            if let probe {
                // Redis accepts connections while it is still loading its AOF and answers LOADING until done.
                if let reply = LoopbackPort.exchange(port, request: probe.request),
                   probe.readyReplies.contains(where: reply.hasPrefix) { return }
            } else if LoopbackPort.isAcceptingConnections(port) {
                return
            }
            usleep(20_000)
        }
        kill()
        throw .notReady(name: name, port: port, seconds: readyTimeout, logTail: logTail())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout` seconds. Servers save their data on SIGTERM.
    public func stop(timeout: Double = 10) {
        guard let child = process.withLock({ $0 }), child.isRunning else { return }
        child.terminate()
        let deadline = Date().addingTimeInterval(timeout)
        while child.isRunning && Date() < deadline { usleep(10_000) }
        if child.isRunning { Foundation.kill(child.processIdentifier, SIGKILL) }
        child.waitUntilExit()
    }

    /// SIGKILL: the server gets no chance to save anything (the crash tests rely on that).
    public func kill() {
        guard let child = process.withLock({ $0 }), child.isRunning else { return }
        Foundation.kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
    }

    /// Stops (or kills) and starts again on the same port with the same data directory.
    public func restart(hard: Bool = false) throws(LocalServerError) {
        if hard { kill() } else { stop() }
        try start()
    }

    /// The last lines of the server's log, for error messages.
    public func logTail(lines: Int = 20) -> String {
        guard let text = try? String(contentsOf: logFile, encoding: .utf8) else { return "(no log)" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Kills the server and removes its private directory (data, config, log): a test run starts hundreds of
    /// servers, and their directories must not pile up in the temp dir.
    deinit {
        process.withLock { child in
            if let child, child.isRunning { Foundation.kill(child.processIdentifier, SIGKILL); child.waitUntilExit() }
        }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Launches child processes that honour termination signals.
///
/// A child inherits the signal mask of the thread that spawns it, and Swift concurrency runs code on libdispatch
/// worker threads that block the termination signals. A server or `opsbus` process started from there would ignore
/// SIGTERM (so a graceful stop always ran into the SIGKILL fallback and mosquitto never saved its database).
/// Only those signals are unblocked around the spawn: SIGCHLD must stay blocked in this thread, or a child that
/// exits meanwhile could have its SIGCHLD delivered here and lost, and Foundation would never reap it
/// (`waitUntilExit()` hangs; seen as `<defunct>` servers and a stalled test run).
public enum ChildLauncher {
    /// Signals a child must be able to receive: termination, plus SIGALRM (tools such as `mosquitto_sub -W` time
    /// out with `alarm()`, which a blocked SIGALRM silently disables).
    static let terminationSignals = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM]

    /// One launch at a time, process-wide. Foundation's `Process.run()` on Linux creates the socket pair that tells
    /// it a child has exited without close-on-exec and closes the child's end only after the spawn; a child launched
    /// concurrently from another thread inherits that end and holds it open. The first child's exit then goes
    /// unnoticed until the second one exits, and `waitUntilExit()` hangs — with the cooperative threads blocked in
    /// it, a whole test run stalled (seen with dozens of servers started in parallel). Launching is fast; waiting is
    /// not serialized.
    private static let launchLock = NSLock()

    public static func run(_ process: Process) throws {
        launchLock.lock()
        defer { launchLock.unlock() }
        var signals = sigset_t()
        var previous = sigset_t()
        sigemptyset(&signals)
        for signal in terminationSignals { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_UNBLOCK, &signals, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try process.run()
    }
}

/// Finds server binaries; Debian puts mosquitto in /usr/sbin, which is not on every user's PATH.
enum BinaryLocator {
    static func find(_ name: String, installHint: String) throws(LocalServerError) -> String {
        var searched = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        searched += ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin"]
        for directory in searched {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw .binaryNotFound(name: name, searched: searched, installHint: installHint)
    }

    /// A fresh private directory under the system temp dir, named so leftovers are easy to find and clean.
    static func makeDirectory(prefix: String) throws(LocalServerError) -> URL {
        let url = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("opsbus-local-\(prefix)-\(getpid())-\(UUID().uuidString.prefix(8))")
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw .launchFailed(name: prefix, reason: "cannot create \(url.path): \(error)")
        }
        return url
    }
}
