import Foundation

/// The real `mosquitto_sub` as a peer: what operators run. Started with `-d` so we know when its SUBACK arrived.
final class MosquittoSub: @unchecked Sendable {
    let child: ChildProcess

    init(port: UInt16, filters: [String], extra: [String] = []) async throws {
        var arguments = ["-h", "127.0.0.1", "-p", String(port), "-v", "-d", "-q", "1", "-i", "opsbus-test-sub-\(UUID().uuidString.prefix(8))"]
        for filter in filters { arguments += ["-t", filter] }
        // stdbuf: mosquitto_sub's stdout is a file here, and its debug lines would otherwise sit in a block buffer.
        child = try ChildProcess("/usr/bin/stdbuf", ["-oL", "/usr/bin/mosquitto_sub"] + arguments + extra)
        let subscribed = try await waitUntil(timeout: 15) { self.child.stdout.contains("received SUBACK") }
        guard subscribed else { throw TestFailure("mosquitto_sub did not subscribe: \(child.stderr)") }
    }

    /// Received messages as (topic, payload) — the `-v` lines, without the `-d` debug lines.
    var messages: [(topic: String, payload: String)] {
        child.stdout.split(separator: "\n").compactMap { line in
            if line.hasPrefix("Client ") || line.hasPrefix("Subscribed") { return nil }
            guard let space = line.firstIndex(of: " ") else { return nil }
            return (String(line[..<space]), String(line[line.index(after: space)...]))
        }
    }

    func waitForMessages(_ count: Int, timeout: Double = 20) async throws -> [(topic: String, payload: String)] {
        _ = try await waitUntil(timeout: timeout) { self.messages.count >= count }
        return messages
    }

    func stop() { child.signal(SIGTERM) }
}
