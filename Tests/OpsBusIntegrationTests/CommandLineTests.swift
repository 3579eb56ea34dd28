import Foundation
import OpsBusCore
import Testing

@Suite("The opsbus command line")
struct CommandLineTests {
    @Test("bad MQTT_URLs give a clear error naming the variable, never a crash",
          arguments: ["http://broker:1883", "mqtt://", "mqtt://host:99999", "mqtt://host:abc", "mqtt://user:s3cret@host:0"])
    func badMQTTURL(url: String) async throws {
        let result = try await run(try opsbusExecutable(), ["publish", "job.received", "--job", "j-1"],
                                   environment: ["MQTT_URL": url])
        #expect(result.status != 0)
        #expect(result.stderr.contains("MQTT_URL"), "stderr: \(result.stderr)")
        #expect(!result.stderr.contains("s3cret"), "the password must not be shown: \(result.stderr)")
        #expect(!result.stderr.contains("Fatal error"), "stderr: \(result.stderr)")
    }

    @Test("a hostile job id is refused with the field name", arguments: ["a/b", "+", "#", "with space"])
    func badJobID(id: String) async throws {
        let result = try await run(try opsbusExecutable(), ["publish", "job.received", "--job", id],
                                   environment: ["MQTT_URL": "mqtt://127.0.0.1:1"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("job_id"), "stderr: \(result.stderr)")
    }

    @Test("an unknown event type lists the known ones")
    func unknownEventType() async throws {
        let result = try await run(try opsbusExecutable(), ["publish", "job.exploded", "--job", "j"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("job.completed"), "stderr: \(result.stderr)")
    }

    @Test("an unreachable broker is a clear error with host and port")
    func unreachableBroker() async throws {
        let result = try await run(try opsbusExecutable(), ["publish", "job.received", "--job", "j-1"],
                                   environment: ["MQTT_URL": "mqtt://127.0.0.1:1"], timeout: 60)
        #expect(result.status != 0)
        #expect(result.stderr.contains("127.0.0.1:1"), "stderr: \(result.stderr)")
    }

    @Test("publish, then tail shows readable lines and --json shows the raw payload")
    func publishAndTail() async throws {
        let servers = try TestServers()
        let executable = try opsbusExecutable()
        let tail = try ChildProcess(executable, ["tail", "--count", "2", "--no-colour", "--mqtt-url", servers.mqttURL, "--log-level", "info"])
        let json = try ChildProcess(executable, ["tail", "jobs/+/completed", "--json", "--count", "1", "--mqtt-url", servers.mqttURL, "--log-level", "info"])
        for child in [tail, json] {
            try #require(try await waitUntil { child.stderr.contains("subscribed") }, "tail did not subscribe: \(child.stderr)")
        }
        let env = ["MQTT_URL": servers.mqttURL, "WORKER_ID": "gpu-cli", "MACHINE_ID": "box-cli"]
        let first = try await run(executable, ["publish", "job.started", "--job", "j-cli", "--field", "worker_assigned=gpu-cli"], environment: env)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("published job.started"))
        let second = try await run(executable, ["publish", "job.completed", "--job", "j-cli", "--field", "processing_time=12.5",
                                                "--field", "output_size=2048", "--attempt", "2"], environment: env)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try await tail.wait(timeout: 30) == 0)
        #expect(try await json.wait(timeout: 30) == 0)
        let lines = tail.stdout.split(separator: "\n")
        try #require(lines.count == 2, "tail output: \(tail.stdout)")
        #expect(lines[0].contains("job.started") && lines[0].contains("job=j-cli") && lines[0].contains("worker=gpu-cli"))
        #expect(lines[1].contains("job.completed") && lines[1].contains("processing_time=12.5") && lines[1].contains("attempt=2"))
        #expect(lines[1].contains("jobs/j-cli/completed"))
        let object = try JSONValue.parse(json.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(object.objectValue?["topic"]?.stringValue == "jobs/j-cli/completed")
        let payload = try #require(object.objectValue?["payload"]?.objectValue)
        let envelope = try EventEnvelope.decode(object: payload)
        #expect(envelope.fields["output_size"]?.intValue == 2048)
        #expect(envelope.machineID?.rawValue == "box-cli")
    }

    @Test("the demo runs the whole pipeline on servers of its own and exits cleanly")
    func demoRunsEndToEnd() async throws {
        let demo = try ChildProcess(try opsbusExecutable(), ["demo", "--workers", "2", "--jobs", "3"])
        let pid = demo.process.processIdentifier
        let status = try await demo.wait(timeout: 180)
        let result = (status: status, stdout: demo.stdout, stderr: demo.stderr)
        #expect(result.status == 0, "stdout: \(result.stdout)\nstderr: \(result.stderr)")
        #expect(result.stdout.contains("what happened"))
        #expect(result.stdout.contains("completed"))
        #expect(result.stdout.contains("doomed-worker-1") && result.stdout.contains("offline"), "\(result.stdout)")
        #expect(result.stdout.contains("dead letters  1"), "\(result.stdout)")
        #expect(result.stdout.contains("mosquitto_sub -h 127.0.0.1"))
        #expect(result.stdout.contains("streams    events:jobs"), "the bridge mirrored the job events")
        // The demo stops the servers it started (their directories carry the demo's pid).
        let leftovers = try await run("/usr/bin/pgrep", ["-f", "opsbus-local-(mosquitto|redis)-\(pid)-"])
        #expect(leftovers.status == 1, "servers left running: \(leftovers.stdout)")
    }
}
