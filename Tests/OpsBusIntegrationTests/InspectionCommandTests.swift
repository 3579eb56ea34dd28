import Foundation
import OpsBusCore
import OpsBusProcessor
import OpsBusPublisher
import OpsBusRedis
import Testing

/// `opsbus jobs`, `opsbus workers` and `opsbus health`: the real binary reading what a real processor wrote.
@Suite("Inspection commands (jobs, workers, health) against a real processor")
struct InspectionCommandTests {
    let keys = RedisKeys()

    func parse(_ text: String) throws -> JSONValue {
        try JSONValue.parse(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    func publisher(_ servers: TestServers, worker: String) async throws -> EventPublisher {
        let context = PublisherContext(
            machineID: try Identifier(validating: "box-\(worker)"), workerID: try Identifier(validating: worker),
            serviceType: "comfyui")
        return try await EventPublisher.connect(endpoint: servers.mqttEndpoint, context: context, logger: testLogger)
    }

    @Test("jobs, workers and health show what the processor applied")
    func commandsShowAppliedState() async throws {
        let servers = try TestServers()
        let processor = try await RunningProcessor.start(servers)
        let redis = try servers.redisConnection()
        let executable = try opsbusExecutable()
        let gpuA = try await publisher(servers, worker: "gpu-a")
        let gpuB = try await publisher(servers, worker: "gpu-b")
        let gpuGone = try await publisher(servers, worker: "gpu-gone")

        // Oldest activity first: job-ok completes, job-bad fails, job-run is still running (on gpu-b).
        let ok = try gpuA.withJobContext("job-ok")
        try await ok.received(inputSize: 1)
        try await ok.started()
        try await ok.completed(processingTime: 2, outputSize: 10)
        try await Task.sleep(for: .milliseconds(20))
        let bad = try gpuA.withJobContext("job-bad")
        try await bad.started()
        // Not retryable, so the outcome is final: `failed`, or `dead_lettered` where the processor dead-letters it.
        try await bad.failed(error: "prompt is empty", declaredType: "validation")
        try await Task.sleep(for: .milliseconds(20))
        let running = try gpuB.withJobContext("job-run")
        try await running.started()
        try await gpuB.workerHealth(status: "busy", currentJob: "job-run")
        await gpuGone.close(reason: "maintenance")
        try await gpuA.publishRaw(topic: "jobs/job-x/started", payload: Array("not json".utf8), qos: .atLeastOnce)

        func field(_ key: String, _ name: String) throws -> String? { try redis.command(["HGET", key, name]).string }
        #expect(try await waitUntil { try field(keys.job("job-ok"), "status") == "completed" })
        let finalFailures: Set<String?> = ["failed", "dead_lettered"]
        #expect(try await waitUntil { finalFailures.contains(try field(keys.job("job-bad"), "status")) })
        #expect(try await waitUntil { try field(keys.job("job-run"), "status") == "processing" })
        #expect(try await waitUntil { try field(keys.worker("gpu-b"), "status") == "busy" })
        #expect(try await waitUntil { try field(keys.worker("gpu-gone"), "status") == "offline" })
        #expect(try await waitUntil { try redis.command(["XLEN", keys.deadLetters]).int == 1 })
        // Let follow-up work (actions, triggers the processor publishes and consumes) settle before reading.
        var lastTotal: Int64 = -1
        var stableSince = Date()
        _ = try await waitUntil(timeout: 30) {
            let total = try redis.command(["HGET", keys.stats, "events_received"]).int ?? 0
            if total != lastTotal { lastTotal = total; stableSince = Date() }
            return Date().timeIntervalSince(stableSince) > 1.5
        }
        let failedStatus = try #require(try field(keys.job("job-bad"), "status"))
        let url = ["--redis-url", servers.redisURL]

        // jobs --status failed --json: exactly the failed job, with its error type.
        let failed = try await run(executable, ["jobs", "--status", failedStatus, "--json"] + url)
        #expect(failed.status == 0, "stderr: \(failed.stderr)")
        let failedDoc = try parse(failed.stdout)
        #expect(failedDoc["matched"]?.intValue == 1)
        let failedJobs = try #require(failedDoc["jobs"]?.arrayValue)
        try #require(failedJobs.count == 1, "\(failed.stdout)")
        #expect(failedJobs[0]["job_id"]?.stringValue == "job-bad")
        #expect(failedJobs[0]["status"]?.stringValue == failedStatus)
        #expect(failedJobs[0]["error_type"]?.stringValue == "validation")
        #expect(failedJobs[0]["worker_id"]?.stringValue == "gpu-a")
        #expect(failedJobs[0]["attempt"]?.intValue == 1)
        #expect(failedJobs[0]["updated_at"]?.stringValue == (try field(keys.job("job-bad"), "last_event_at")))

        // All jobs, newest activity first.
        let all = try await run(executable, ["jobs", "--json"] + url)
        #expect(all.status == 0, "stderr: \(all.stderr)")
        let allIDs = try parse(all.stdout)["jobs"]?.arrayValue?.compactMap { $0["job_id"]?.stringValue }
        #expect(allIDs == ["job-run", "job-bad", "job-ok"])

        // By worker, with a limit: the count before the limit is reported.
        let byWorker = try await run(executable, ["jobs", "--worker", "gpu-a", "--limit", "1", "--json"] + url)
        let byWorkerDoc = try parse(byWorker.stdout)
        #expect(byWorkerDoc["matched"]?.intValue == 2)
        #expect(byWorkerDoc["jobs"]?.arrayValue?.compactMap { $0["job_id"]?.stringValue } == ["job-bad"])
        let workerAndStatus = try parse(try await run(executable, ["jobs", "--worker", "gpu-a", "--status", "completed", "--json"] + url).stdout)
        #expect(workerAndStatus["jobs"]?.arrayValue?.compactMap { $0["job_id"]?.stringValue } == ["job-ok"])
        let nobody = try await run(executable, ["jobs", "--worker", "gpu-nobody"] + url)
        #expect(nobody.status == 0 && nobody.stdout == "no jobs (worker gpu-nobody)\n", "\(nobody.stdout)")

        // The table: aligned columns, no colour codes when stdout is not a terminal.
        let table = try await run(executable, ["jobs", "--status", failedStatus] + url)
        #expect(table.status == 0)
        let lines = table.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count >= 2, "\(table.stdout)")
        #expect(lines[0].hasPrefix("JOB"))
        #expect(lines[1].hasPrefix("job-bad"))
        #expect(lines[0].firstRange(of: "STATUS")?.lowerBound.utf16Offset(in: lines[0])
                == lines[1].firstRange(of: failedStatus)?.lowerBound.utf16Offset(in: lines[1]), "columns align")
        #expect(!table.stdout.contains("\u{1B}["), "no ANSI codes off a terminal")

        // workers --json: the registry with status, current job, machine; nobody stale within 60 s.
        let workers = try await run(executable, ["workers", "--json"] + url)
        #expect(workers.status == 0, "stderr: \(workers.stderr)")
        let workersDoc = try parse(workers.stdout)
        let entries = try #require(workersDoc["workers"]?.arrayValue)
        var byID: [String: JSONValue] = [:]
        for entry in entries { if let id = entry["worker_id"]?.stringValue { byID[id] = entry } }
        #expect(Set(byID.keys) == ["gpu-a", "gpu-b", "gpu-gone"])
        for id in ["gpu-a", "gpu-b", "gpu-gone"] {
            #expect(byID[id]?["status"]?.stringValue == (try field(keys.worker(id), "status")), "worker \(id)")
            #expect(byID[id]?["current_job"]?.stringValue == (try field(keys.worker(id), "current_job")), "worker \(id)")
        }
        #expect(["online", "idle"].contains(byID["gpu-a"]?["status"]?.stringValue), "gpu-a finished its jobs")
        #expect(byID["gpu-b"]?["status"]?.stringValue == "busy")
        #expect(byID["gpu-b"]?["current_job"]?.stringValue == "job-run")
        #expect(byID["gpu-b"]?["machine_id"]?.stringValue == "box-gpu-b")
        #expect(byID["gpu-gone"]?["status"]?.stringValue == "offline")
        #expect(byID["gpu-gone"]?["reason"]?.stringValue == "maintenance")
        #expect(byID["gpu-b"]?["last_seen"]?.stringValue != nil)
        #expect(workersDoc["stale"]?.intValue == 0)

        // With a tiny stale limit the live workers are stale, the offline one is not (its silence is expected).
        let strict = try parse(try await run(executable, ["workers", "--json", "--stale-after", "0.001"] + url).stdout)
        let stale = Set(strict["workers"]?.arrayValue?.filter { $0["stale"]?.boolValue == true }
            .compactMap { $0["worker_id"]?.stringValue } ?? [])
        #expect(stale == ["gpu-a", "gpu-b"])
        let workersTable = try await run(executable, ["workers", "--stale-after", "0.001"] + url)
        #expect(workersTable.stdout.contains("busy STALE"), "\(workersTable.stdout)")

        // health --json: counts match Redis, verdict healthy (one dead letter is below the judged sample).
        let health = try await run(executable, ["health", "--json"] + url)
        #expect(health.status == 0, "stdout: \(health.stdout) stderr: \(health.stderr)")
        let report = try parse(health.stdout)
        #expect(report["verdict"]?.stringValue == "healthy")
        let total = try #require(try redis.command(["HGET", keys.stats, "events_received"]).int)
        let events = try #require(report["events"])
        #expect(events["total"]?.intValue == total)
        let perMinute = (events["recent_minutes"]?.arrayValue ?? []).compactMap(\.intValue).reduce(0, +)
        #expect(perMinute + (events["current_minute"]?.intValue ?? -1000) == total, "per-minute buckets add up")
        #expect(events["types"]?["job.completed"]?.intValue == 1)
        #expect(events["types"]?["job.failed"]?.intValue == 1)
        #expect(events["types"]?["job.started"]?.intValue == 3)
        #expect(events["outcomes"]?["dead_lettered"]?.intValue == 1)
        #expect(events["last_event_at"]?.stringValue == (try field(keys.stats, "last_event_at")))
        #expect(report["dead_letters"]?["stream_length"]?.intValue == 1)
        #expect(report["jobs"]?[failedStatus]?.intValue == 1)
        #expect(report["jobs"]?["completed"]?.intValue == 1)
        #expect(report["jobs"]?["processing"]?.intValue == 1)
        #expect(report["jobs"]?["received"]?.intValue == 0)
        #expect(report["jobs"]?.objectValue?.keys == ["received", "processing", "completed", "failed", "retry_scheduled", "dead_lettered"])
        #expect(report["workers"]?["offline"]?.intValue == 1)
        #expect(report["workers"]?["live"]?.intValue == 2)
        #expect(["online", "idle", "busy"].map { report["workers"]?[$0]?.intValue ?? 0 }.reduce(0, +) == 2)
        let notes = report["notes"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if report["actions"]?.isNull == true {
            #expect(notes.contains("no actions yet"))
        } else {
            #expect(report["actions"]?["success_rate"]?.doubleValue != nil)
        }

        let healthText = try await run(executable, ["health"] + url)
        #expect(healthText.status == 0)
        #expect(healthText.stdout.hasPrefix("HEALTHY"), "\(healthText.stdout)")
        #expect(healthText.stdout.contains("job.started 3"))

        for publisher in [gpuA, gpuB] { await publisher.disconnect() }
        await processor.stop()
    }

    @Test("health reads per-minute counters, action rates and silence into a verdict and exit code")
    func healthFromHandWrittenState() async throws {
        let servers = try TestServers()
        let redis = try servers.redisConnection()
        let now = EventTimestamp.now()
        let minute = now.millisecondsSinceEpoch / 60_000
        // 30 events in each of the last 5 complete minutes, 60 in the 10 before, 7 so far in this one.
        for offset in 1...15 {
            _ = try redis.command(["HSET", keys.statsMinute(minute - Int64(offset)), "events", offset <= 5 ? "30" : "60"])
        }
        _ = try redis.command(["HSET", keys.statsMinute(minute), "events", "7", "outcome:dead_lettered", "2"])
        _ = try redis.command(["HSET", keys.statsMinute(minute - 16), "events", "1000"])  // outside the window
        let twentyMinutesAgo = EventTimestamp(millisecondsSinceEpoch: now.millisecondsSinceEpoch - 20 * 60_000)
        _ = try redis.command(["HSET", keys.stats, "events_received", "2000", "type:worker.heartbeat", "1990",
                               "outcome:applied", "1998", "outcome:dead_lettered", "2",
                               "last_event_at", twentyMinutesAgo.iso8601, "last_event_type", "worker.heartbeat",
                               "actions_succeeded", "90", "actions_failed", "10",
                               "webhooks_delivered", "40", "webhooks_failed_attempts", "60",
                               "webhooks_dead_lettered", "3"])
        _ = try redis.command(["HSET", keys.worker("w-1"), "status", "online",
                               "last_seen_ms", String(twentyMinutesAgo.millisecondsSinceEpoch)])
        _ = try redis.command(["ZADD", keys.workers, String(twentyMinutesAgo.millisecondsSinceEpoch), "w-1"])
        _ = try redis.command(["SADD", keys.jobsByStatus("failed"), "j-1", "j-2"])

        let report = try ProcessorHealth.read(redis: redis, keys: keys, now: now)
        #expect(report.eventsLastMinute == 30)
        #expect(report.eventsCurrentMinute == 7)
        #expect(report.eventsPerMinute5 == 30)
        #expect(report.eventsPerMinute15 == 50)
        #expect(report.recentEvents == 5 * 30 + 10 * 60 + 7)
        #expect(report.recentDeadLettered == 2)
        #expect(report.actions == SuccessCounts(succeeded: 90, failed: 10))
        #expect(report.webhooks == SuccessCounts(succeeded: 40, failed: 60))
        #expect(report.eventTypes == ["worker.heartbeat": 1990])
        #expect(report.jobsByStatus.first { $0.status == "failed" }?.count == 2)
        #expect(report.liveWorkers == 1 && report.staleWorkers == 1)
        #expect(report.lastEventAgeSeconds == 1200)
        let verdict = report.verdict
        #expect(verdict.status == .unhealthy)
        #expect(verdict.reasons.first?.contains("no events for 20 min") == true, "\(verdict.reasons)")
        #expect(verdict.reasons.contains { $0.contains("action success rate 90 %") })
        #expect(verdict.reasons.contains { $0.contains("webhook delivery rate 40 %") })
        #expect(verdict.reasons.contains { $0.contains("1 worker claims to be up but sent nothing") })
        #expect(verdict.notes == ["3 webhook notifications dead-lettered after their last attempt (all time)"])

        let executable = try opsbusExecutable()
        let cli = try await run(executable, ["health", "--json", "--redis-url", servers.redisURL])
        #expect(cli.status == 2, "unhealthy exits 2; stderr: \(cli.stderr)")
        let document = try parse(cli.stdout)
        #expect(document["verdict"]?.stringValue == "unhealthy")
        #expect(document["actions"]?["success_rate"]?.doubleValue == 0.9)
        #expect(document["jobs"]?["failed"]?.intValue == 2)

        // Recent activity again: only the action rate is left, and that is a degradation, exit 1.
        _ = try redis.command(["HSET", keys.stats, "last_event_at", now.iso8601, "webhooks_failed_attempts", "0"])
        _ = try redis.command(["HSET", keys.worker("w-1"), "last_seen_ms", String(EventTimestamp.now().millisecondsSinceEpoch)])
        let degraded = try await run(executable, ["health", "--redis-url", servers.redisURL])
        #expect(degraded.status == 1, "degraded exits 1: \(degraded.stdout)")
        #expect(degraded.stdout.hasPrefix("DEGRADED"))
        #expect(degraded.stdout.contains("action success rate 90 %"))
        #expect(degraded.stdout.contains("3 dead-lettered"))

        // Colour only on a terminal: under a pseudo-terminal (script(1)) the same command paints its verdict.
        let colourAllowed = ["NO_COLOR": "", "TERM": "xterm"]  // whatever the test runner's environment says
        let terminal = try await run("/usr/bin/script", ["-qec", "\(executable) health --redis-url \(servers.redisURL)", "/dev/null"],
                                     environment: colourAllowed)
        #expect(terminal.stdout.contains("\u{1B}[33mDEGRADED\u{1B}[0m"), "\(terminal.stdout)")
        let noColour = try await run("/usr/bin/script", ["-qec", "\(executable) health --no-colour --redis-url \(servers.redisURL)", "/dev/null"],
                                     environment: colourAllowed)
        #expect(noColour.stdout.contains("DEGRADED") && !noColour.stdout.contains("\u{1B}["), "\(noColour.stdout)")
    }

    @Test("unreachable Redis: a clear message with the masked URL and a non-zero exit",
          arguments: [["jobs", "--status", "failed"], ["workers"], ["health"], ["health", "--json"]])
    func unreachableRedis(arguments: [String]) async throws {
        let result = try await run(try opsbusExecutable(), arguments + ["--redis-url", "redis://ops:s3cret@127.0.0.1:1/0"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("Redis unreachable at redis://ops:***@127.0.0.1:1/0"), "stderr: \(result.stderr)")
        #expect(!result.stderr.contains("s3cret") && !result.stdout.contains("s3cret"), "the password must not be shown")
        #expect(!result.stderr.contains("Fatal error"))
        if arguments.first == "health" {
            #expect(result.status == 2, "health: unreachable is unhealthy (exit 2)")
        }
        if arguments == ["health", "--json"] {
            let document = try parse(result.stdout)
            #expect(document["verdict"]?.stringValue == "unhealthy")
            #expect(document["reasons"]?.arrayValue?.first?.stringValue?.contains("127.0.0.1:1") == true)
        }
    }

    @Test("bad arguments are refused with the accepted values")
    func badArguments() async throws {
        let executable = try opsbusExecutable()
        let status = try await run(executable, ["jobs", "--status", "exploded", "--redis-url", "redis://127.0.0.1:1"])
        #expect(status.status != 0)
        #expect(status.stderr.contains("retry_scheduled"), "stderr: \(status.stderr)")
        let worker = try await run(executable, ["jobs", "--worker", "a/b", "--redis-url", "redis://127.0.0.1:1"])
        #expect(worker.status != 0)
        #expect(worker.stderr.contains("--worker"), "stderr: \(worker.stderr)")
        let stale = try await run(executable, ["workers", "--stale-after", "0", "--redis-url", "redis://127.0.0.1:1"])
        #expect(stale.status != 0)
        #expect(stale.stderr.contains("--stale-after"), "stderr: \(stale.stderr)")
    }

    @Test("--help of each command shows examples", arguments: ["jobs", "workers", "health"])
    func helpHasExamples(command: String) async throws {
        let result = try await run(try opsbusExecutable(), [command, "--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("Examples:") && result.stdout.contains("opsbus \(command)"), "\(result.stdout)")
    }
}

/// The verdict is a pure function of the report: each rule, its thresholds and its sample-size guard.
@Suite("Health verdict")
struct HealthVerdictTests {
    let now = EventTimestamp(millisecondsSinceEpoch: 1_800_000_000_000)

    func report(_ configure: (inout HealthReport) -> Void = { _ in }) -> HealthReport {
        var report = HealthReport(generatedAt: now)
        configure(&report)
        return report
    }

    func ago(seconds: Int64) -> EventTimestamp {
        EventTimestamp(millisecondsSinceEpoch: now.millisecondsSinceEpoch - seconds * 1000)
    }

    @Test("an empty bus is healthy, with notes saying nothing happened yet")
    func emptyIsHealthy() {
        let verdict = ProcessorHealth.verdict(for: report())
        #expect(verdict.status == .healthy)
        #expect(verdict.reasons.isEmpty)
        #expect(verdict.notes == ["no events yet", "no actions yet"])
    }

    @Test("silence while workers are online: degraded after 5 min, unhealthy after 15",
          arguments: [(60, HealthStatus.healthy), (299, .healthy), (300, .degraded), (899, .degraded), (900, .unhealthy),
                      (7200, .unhealthy)])
    func silenceWithOnlineWorkers(seconds: Int, expected: HealthStatus) {
        let verdict = ProcessorHealth.verdict(for: report {
            $0.liveWorkers = 2
            $0.eventsTotal = 100
            $0.lastEventAt = ago(seconds: Int64(seconds))
        })
        #expect(verdict.status == expected)
        if expected != .healthy { #expect(verdict.reasons.first?.contains("while 2 workers claim to be up") == true) }
    }

    @Test("silence without online workers is just a quiet bus")
    func silenceWithoutWorkers() {
        let verdict = ProcessorHealth.verdict(for: report {
            $0.workersByStatus = ["offline": 3]
            $0.eventsTotal = 100
            $0.lastEventAt = ago(seconds: 86_400)
        })
        #expect(verdict.status == .healthy)
    }

    @Test("online workers but no event ever counted is unhealthy")
    func workersWithoutEvents() {
        #expect(ProcessorHealth.verdict(for: report { $0.liveWorkers = 1 }).status == .unhealthy)
    }

    @Test("dead-letter rate over the recent window: above 5 % degraded, above 50 % unhealthy",
          arguments: [(5, HealthStatus.healthy), (6, .degraded), (50, .degraded), (51, .unhealthy)])
    func deadLetterRate(deadLettered: Int, expected: HealthStatus) {
        let verdict = ProcessorHealth.verdict(for: report {
            $0.recentEvents = 100
            $0.recentDeadLettered = Int64(deadLettered)
            $0.eventsTotal = 100
        })
        #expect(verdict.status == expected)
        if expected != .healthy { #expect(verdict.reasons.first?.contains("dead-lettered in the last 15 minutes") == true) }
    }

    @Test("small samples are not judged; a quiet window falls back to all-time counters")
    func deadLetterSample() {
        let small = report {
            $0.recentEvents = 10
            $0.recentDeadLettered = 9
            $0.eventsTotal = 10
            $0.outcomes = ["dead_lettered": 9]
        }
        #expect(ProcessorHealth.verdict(for: small).status == .healthy)
        let lifetime = report {
            $0.recentEvents = 3
            $0.recentDeadLettered = 0
            $0.eventsTotal = 1000
            $0.outcomes = ["dead_lettered": 100, "applied": 900]
        }
        let verdict = ProcessorHealth.verdict(for: lifetime)
        #expect(verdict.status == .degraded)
        #expect(verdict.reasons == ["10 % of events dead-lettered of all events (100 of 1000), above 5 %"])
    }

    @Test("action success rate: below 95 % degraded, below 50 % unhealthy",
          arguments: [(100, 0, HealthStatus.healthy), (95, 5, .healthy), (94, 6, .degraded), (50, 50, .degraded),
                      (49, 51, .unhealthy), (5, 5, .healthy)])
    func actionRate(succeeded: Int, failed: Int, expected: HealthStatus) {
        let verdict = ProcessorHealth.verdict(for: report {
            $0.actions = SuccessCounts(succeeded: Int64(succeeded), failed: Int64(failed))
        })
        #expect(verdict.status == expected)
        #expect(!verdict.notes.contains("no actions yet"))
    }

    @Test("webhook delivery below half of the attempts is degraded")
    func webhookRate() {
        let poor = report { $0.webhooks = SuccessCounts(succeeded: 10, failed: 30) }
        #expect(ProcessorHealth.verdict(for: poor).status == .degraded)
        let fine = report { $0.webhooks = SuccessCounts(succeeded: 30, failed: 10) }
        #expect(ProcessorHealth.verdict(for: fine).status == .healthy)
    }

    @Test("stale workers degrade; unhealthy reasons come before degraded ones")
    func staleAndOrdering() {
        let verdict = ProcessorHealth.verdict(for: report {
            $0.liveWorkers = 1
            $0.staleWorkers = 1
            $0.eventsTotal = 50
            $0.lastEventAt = ago(seconds: 3600)
        })
        #expect(verdict.status == .unhealthy)
        #expect(verdict.reasons.count == 2)
        #expect(verdict.reasons[0].hasPrefix("no events for 1 h 0 min"))
        #expect(verdict.reasons[1].contains("1 worker claims to be up but sent nothing for over 1 min"))
    }

    @Test("thresholds are configurable")
    func customThresholds() {
        var limits = HealthThresholds()
        limits.idleDegradedSeconds = 10
        limits.idleUnhealthySeconds = 20
        let quiet = HealthReport(generatedAt: now, thresholds: limits)
        var report = quiet
        report.liveWorkers = 1
        report.eventsTotal = 5
        report.lastEventAt = ago(seconds: 15)
        #expect(ProcessorHealth.verdict(for: report).status == .degraded)
    }

    @Test("exit codes follow the monitoring convention and statuses order by severity")
    func exitCodes() {
        #expect(HealthStatus.allCases.map(\.exitCode) == [0, 1, 2])
        #expect(HealthStatus.healthy < .degraded && HealthStatus.degraded < .unhealthy)
    }

    @Test("the JSON document carries the verdict and the checks")
    func json() throws {
        let document = report {
            $0.eventsTotal = 42
            $0.eventsPerRecentMinute = [1, 2, 3, 4, 5, 6]
            $0.lastEventAt = ago(seconds: 2)
            $0.eventTypes = ["job.completed": 40, "job.failed": 2]
            $0.jobsByStatus = [("completed", 40), ("failed", 2)]
        }.json()
        #expect(document["verdict"]?.stringValue == "healthy")
        #expect(document["events"]?["last_minute"]?.intValue == 6)
        #expect(document["events"]?["per_minute_avg_5m"]?.doubleValue == 4)
        #expect(document["events"]?["per_minute_avg_15m"]?.doubleValue == 1.4)
        #expect(document["events"]?["last_event_age_seconds"]?.doubleValue == 2)
        #expect(document["events"]?["types"]?["job.failed"]?.intValue == 2)
        #expect(document["jobs"]?.objectValue?.keys == ["completed", "failed"])
        #expect(document["actions"]?.isNull == true)
        #expect(document["notes"]?.arrayValue?.contains("no actions yet") == true)
    }

    @Test("durations read naturally", arguments: [(0.4, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"),
                                                  (3660, "1 h 1 min"), (90_000, "1 d 1 h")])
    func durations(seconds: Double, text: String) {
        #expect(ProcessorHealth.describe(seconds: seconds) == text)
    }
}
