import Foundation
import OpsBusCore
import Testing

/// `opsbus pump`, `opsbus spool` and `opsbus publish` with a spool, as an operator runs them.
@Suite("The spool on the command line")
struct SpoolCommandTests {
    let servers: TestServers
    init() throws { servers = try TestServers() }

    static func lines(_ text: String) -> [JSONObject] {
        text.split(separator: "\n").compactMap { try? JSONValue.parse(Array($0.utf8)).objectValue }
    }

    @Test func pumpWithoutABrokerSpoolsEverythingAndSpoolShowsIt() async throws {
        let directory = bridgeTestDirectory()
        let executable = try opsbusExecutable()
        let offline = try await run(executable, [
            "pump", "--mqtt-url", "mqtt://127.0.0.1:1", "--spool", directory, "--jobs", "3", "--drain-timeout", "1",
            "--worker-id", "edge-cli",
        ], timeout: 60)
        #expect(offline.status == 3, "not drained → exit 3; stderr: \(offline.stderr)")
        let accepted = Self.lines(offline.stdout).filter { $0["accepted"]?.stringValue != nil }
        #expect(accepted.count == 9, "3 jobs × 3 events accepted into the spool: \(offline.stdout)")
        #expect(accepted.compactMap { $0["seq"]?.intValue } == Array(1...9))
        let summary = try #require(Self.lines(offline.stdout).last)
        #expect(summary["drained"] == .bool(false) && summary["pending"]?.intValue == 9)

        let shown = try await run(executable, ["spool", directory, "--json"])
        #expect(shown.status == 0, "stderr: \(shown.stderr)")
        let status = try #require(try JSONValue.parse(Array(shown.stdout.utf8)).objectValue)
        #expect(status["depth"]?.intValue == 9)
        #expect(status["dropped"]?.intValue == 0)
        #expect(status["oldest_age_ms"]?.intValue != nil)
        #expect(status["sessions"]?.arrayValue?.count == 1)
        let text = try await run(executable, ["spool", directory])
        #expect(text.stdout.contains("9 events"), "\(text.stdout)")

        // The next run reaches the broker and, acknowledged by the broker (no bridge here), empties the spool:
        // first the earlier run's nine events, then its own.
        let online = try await run(executable, [
            "pump", "--mqtt-url", servers.mqttURL, "--spool", directory, "--jobs", "1", "--ack", "broker",
            "--worker-id", "edge-cli",
        ], timeout: 60)
        #expect(online.status == 0, "stderr: \(online.stderr)")
        let after = try await run(executable, ["spool", directory, "--json"])
        #expect(try JSONValue.parse(Array(after.stdout.utf8)).objectValue?["depth"]?.intValue == 0)
    }

    @Test func spoolOfAMissingDirectoryIsAClearError() async throws {
        let result = try await run(try opsbusExecutable(), ["spool", "/nonexistent/opsbus-spool"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("/nonexistent/opsbus-spool"), "stderr: \(result.stderr)")
    }

    @Test func publishWithAWorkerSpoolsAndWarnsWhenNoBridgeAcknowledges() async throws {
        let directory = bridgeTestDirectory()
        let result = try await run(try opsbusExecutable(), [
            "publish", "job.received", "--job", "j-spooled", "--worker", "w-cli", "--spool", directory,
            "--ack-wait", "1",
        ], environment: ["MQTT_URL": servers.mqttURL])
        #expect(result.status == 0, "accepted into the spool; stderr: \(result.stderr)")
        #expect(result.stderr.contains("not yet acknowledged"), "stderr: \(result.stderr)")
        let shown = try await run(try opsbusExecutable(), ["spool", directory, "--json"])
        #expect(try JSONValue.parse(Array(shown.stdout.utf8)).objectValue?["depth"]?.intValue == 1)
    }
}
