import Foundation
import OpsBusLocalServers

/// Why a lossy-link test could not set up, run or verify its scenario; each case says what was being done.
enum LinkTestError: Error, CustomStringConvertible {
    /// Network namespaces (or nftables) are not usable here; the text tells the developer what to do.
    case environmentUnavailable(String)
    case commandFailed(command: [String], status: Int32, output: String)
    case launchFailed(command: [String], reason: String)
    case timedOut(String)
    case setup(String)

    var description: String {
        switch self {
        case let .environmentUnavailable(text): return text
        case let .commandFailed(command, status, output):
            return "`\(command.joined(separator: " "))` exited with status \(status): \(output.trimmingCharacters(in: .whitespacesAndNewlines))"
        case let .launchFailed(command, reason): return "could not run `\(command.joined(separator: " "))`: \(reason)"
        case let .timedOut(text): return "timed out: \(text)"
        case let .setup(text): return text
        }
    }
}

/// Short-lived system commands (`ip`, `nft`), run to completion with their output captured.
enum Command {
    /// Runs `executable arguments` (stdin from `input` if given) and returns stdout+stderr; throws on a non-zero status.
    ///
    /// Output and input go through temp files, not pipes: Foundation's pipes are not close-on-exec, so a server
    /// another test spawns meanwhile inherits the write end, and reading to end of file would wait for that server
    /// to exit (a whole CI run hung that way).
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], input: String? = nil) throws(LinkTestError) -> String {
        let command = [executable] + arguments
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-cmd-\(UUID().uuidString)")
        let outputFile = base.appendingPathExtension("out")
        let inputFile = base.appendingPathExtension("in")
        defer {
            try? FileManager.default.removeItem(at: outputFile)
            try? FileManager.default.removeItem(at: inputFile)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        do {
            _ = FileManager.default.createFile(atPath: outputFile.path, contents: nil)
            let output = try FileHandle(forWritingTo: outputFile)
            defer { try? output.close() }
            process.standardOutput = output
            process.standardError = output
            if let input {
                try Data(input.utf8).write(to: inputFile)
                process.standardInput = try FileHandle(forReadingFrom: inputFile)
            } else {
                process.standardInput = FileHandle.nullDevice
            }
            try ChildLauncher.run(process)
        } catch {
            throw .launchFailed(command: command, reason: "\(error)")
        }
        process.waitUntilExit()
        let text = (try? String(contentsOf: outputFile, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            throw .commandFailed(command: command, status: process.terminationStatus, output: text)
        }
        return text
    }

    /// Where a system tool lives: Debian keeps `ip` and `nft` in /usr/sbin, which is not on every PATH.
    static func locate(_ name: String) -> String? {
        var directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        directories += ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        return directories.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// A long-running child (bridge, pump) with stdout and stderr in files, so it can be read while it runs.
final class ChildProcess: @unchecked Sendable {
    let process = Process()
    let label: String
    let stdoutFile: URL
    let stderrFile: URL

    init(_ label: String, _ executable: String, _ arguments: [String]) throws(LinkTestError) {
        self.label = label
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-link-\(UUID().uuidString.prefix(8))")
        stdoutFile = base.appendingPathExtension("out")
        stderrFile = base.appendingPathExtension("err")
        _ = FileManager.default.createFile(atPath: stdoutFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        // The scenario decides everything through flags; a developer's shell settings must not leak in.
        for key in environment.keys where key.hasPrefix("OPSBUS_") || ["MQTT_URL", "REDIS_URL", "WORKER_ID", "MACHINE_ID"].contains(key) {
            environment[key] = nil
        }
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        do {
            process.standardOutput = try FileHandle(forWritingTo: stdoutFile)
            process.standardError = try FileHandle(forWritingTo: stderrFile)
            try ChildLauncher.run(process)
        } catch {
            throw .launchFailed(command: [executable] + arguments, reason: "\(error)")
        }
    }

    var stdout: String { (try? String(contentsOf: stdoutFile, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }
    var pid: Int32 { process.processIdentifier }

    /// The last lines of stderr, for failure messages.
    func stderrTail(_ lines: Int = 25) -> String {
        stderr.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Waits for exit (SIGKILL after `timeout`) and returns the exit status.
    func wait(timeout: Double) async throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw LinkTestError.timedOut("\(label) did not exit within \(timeout) s; stderr tail:\n\(stderrTail())")
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Every thread's stack (gdb, where installed): where a stuck child is stuck.
    func threadBacktraces() -> String {
        guard let gdb = Command.locate("gdb") else { return "(no gdb for thread backtraces)" }
        let output = (try? Command.run(gdb, ["-p", String(pid), "-batch", "-ex", "thread apply all bt"])) ?? "(gdb failed)"
        return "thread backtraces of \(label):\n" + output.split(separator: "\n").filter { $0.hasPrefix("#") || $0.hasPrefix("Thread") }
            .joined(separator: "\n")
    }

    func signal(_ number: Int32) { if process.isRunning { kill(process.processIdentifier, number) } }

    /// SIGKILL and reap.
    func killHard() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        killHard()
        try? FileManager.default.removeItem(at: stdoutFile)
        try? FileManager.default.removeItem(at: stderrFile)
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
func waitUntil(timeout: Double, _ condition: () throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}

/// The built `opsbus` executable (swift build puts it beside the test bundle).
func opsbusExecutable() throws(LinkTestError) -> String {
    var candidates: [String] = []
    candidates.append(Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("opsbus").path)
    for argument in CommandLine.arguments where argument.contains(".build") {
        var url = URL(fileURLWithPath: argument)
        while url.path != "/" && !url.lastPathComponent.hasSuffix(".xctest") { url.deleteLastPathComponent() }
        candidates.append(url.deletingLastPathComponent().appendingPathComponent("opsbus").path)
    }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    candidates.append(root.appendingPathComponent(".build/debug/opsbus").path)
    if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
    throw .setup("opsbus executable not found (looked in \(candidates)); build with `swift build --build-tests`")
}

/// A fresh directory under the temp dir (spools, journals), removed by the caller.
func makeScratchDirectory(_ prefix: String) throws(LinkTestError) -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("opsbus-link-\(prefix)-\(getpid())-\(UUID().uuidString.prefix(8))")
    do {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    } catch {
        throw .setup("cannot create \(url.path): \(error)")
    }
    return url
}
