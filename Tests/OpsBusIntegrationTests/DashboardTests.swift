import Foundation
import OpsBusHTTP
import OpsBusCore
import OpsBusLocalServers
import OpsBusProcessor
import Testing

/// The processor's dashboard, rendered by a real browser: headless Chromium from Debian (scripts/setup installs it).
/// Without Chromium the test fails and says why; `OPSBUS_BROWSER_TESTS=skip` skips it on machines without one.
@Suite("Live dashboard", .serialized)
struct DashboardTests {
    static var browserTestsSkipped: Bool { ProcessInfo.processInfo.environment["OPSBUS_BROWSER_TESTS"] == "skip" }

    static func chromium() throws -> String {
        for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw TestFailure("""
            Chromium is not installed (looked for /usr/bin/chromium): run scripts/setup (apt-get install chromium), \
            or set OPSBUS_BROWSER_TESTS=skip to skip the browser tests on this machine
            """)
    }

    static func browserArguments(_ extra: [String]) -> [String] {
        ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--user-data-dir=" + FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-chromium-\(UUID().uuidString)").path]
            + extra
    }

    @Test("the page, rendered by Chromium after its JavaScript ran, shows the job the test just published",
          .disabled(if: browserTestsSkipped, "OPSBUS_BROWSER_TESTS=skip"))
    func dashboardShowsPublishedJob() async throws {
        let browser = try Self.chromium()
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        // The analysis is off so that the recommendation stored below stays (PatternAnalysisTests runs it for real).
        let processor = try ObservabilityTests.startProcessor(servers, port: port, extra: ["--pattern-analysis-interval", "0"])
        #expect(try await waitUntil(timeout: 30) { ObservabilityTests.get(port, "/health/ready")?.status == 200 },
                "never ready: \(processor.stderr)")

        // A pattern analysis result where the processor stores it: the dashboard shows what `opsbus health` shows.
        let recommendation = PatternRecommendation(
            kind: .longerTimeout, severity: .warning, scope: "comfyui-dash", errorType: "timeout", count: 6, samples: 16,
            rate: 0.375, suggestedTimeoutSeconds: 28.5, observedSeconds: 19, observedBasis: "p95",
            summary: "longer timeout for comfyui-dash: 6 of 16 jobs timed out")
        let analysis = PatternAnalysisResult(generatedAt: .now(), window: "2026-01-01T00/2026-01-01T01",
                                             recommendations: [recommendation])
        _ = try servers.redisConnection().command(["SET", RedisKeys().recommendations, analysis.json().serialized()])
        var body = ""
        #expect(try await waitUntil(timeout: 30) {
            body = ObservabilityTests.get(port, "/api/summary")?.body ?? ""
            return body.contains("longer_timeout.comfyui-dash")
        }, "the summary never listed the recommendation: \(body.prefix(2000))")
        let summary = try JSONValue.parse(body)
        let listed = summary["recommendations"]?["recommendations"]?.arrayValue ?? []
        #expect(listed.compactMap { $0["subject"]?.stringValue } == ["longer_timeout.comfyui-dash"], "\(summary)")
        #expect(listed.first?["severity"]?.stringValue == "warning")

        let jobID = "dash-\(UUID().uuidString.prefix(8).lowercased())"
        try await ObservabilityTests.publish(servers, ["job.received", "--job", jobID])
        try await ObservabilityTests.publish(servers, ["job.started", "--job", jobID, "--field", "worker_assigned=gpu-dash"])
        #expect(try await waitUntil(timeout: 30) {
            ObservabilityTests.get(port, "/api/summary")?.body.contains(jobID) == true
        }, "the summary never listed the job")

        // The HTML itself does not contain the id: only the page's JavaScript, fed by the processor, can put it there.
        let page = ObservabilityTests.get(port, "/")
        #expect(page?.status == 200)
        #expect(page?.headers["content-type"]?.hasPrefix("text/html") == true)
        #expect(page?.body.contains(jobID) == false)
        #expect(page?.body.contains("<script src") == false, "no external scripts")

        // Virtual time runs only while no request is open; the event stream stays open, so the page is asked to poll
        // (`?transport=poll`, the fallback path). /events/stream itself is tested below.
        var dom = ""
        var stderr = ""
        for _ in 0..<3 where !dom.contains(jobID) {
            let result = try await run(browser, Self.browserArguments([
                "--dump-dom", "--virtual-time-budget=5000", "http://127.0.0.1:\(port)/?transport=poll",
            ]), timeout: 120)
            dom = result.stdout
            stderr = result.stderr
        }
        #expect(dom.contains("data-job-id=\"\(jobID)\""), "rendered DOM lacks the job: \(dom.prefix(3000)) \(stderr.suffix(2000))")
        #expect(dom.contains("gpu-dash"), "the worker column shows the assigned worker")
        #expect(dom.contains("polling every 2 s"))
        #expect(dom.contains("data-subject=\"longer_timeout.comfyui-dash\""), "the Recommendations panel lacks the recommendation")
        #expect(dom.contains("longer timeout for comfyui-dash: 6 of 16 jobs timed out"))

        if let shot = ProcessInfo.processInfo.environment["OPSBUS_DASHBOARD_SCREENSHOT"] {
            // For the docs: OPSBUS_DASHBOARD_SCREENSHOT=docs/dashboard.png swift test --filter DashboardTests
            _ = try await run(browser, Self.browserArguments([
                "--screenshot=\(shot)", "--window-size=1280,900", "--hide-scrollbars", "--virtual-time-budget=5000",
                "http://127.0.0.1:\(port)/?transport=poll",
            ]), timeout: 120)
        }
        processor.signal(SIGTERM)
        _ = try await processor.wait(timeout: 30)
    }

    @Test("/events/stream is a server-sent event stream carrying summary snapshots")
    func eventStream() async throws {
        let servers = try TestServers()
        let port = Int(try LoopbackPort.allocate())
        let processor = try ObservabilityTests.startProcessor(servers, port: port)
        #expect(try await waitUntil(timeout: 30) { ObservabilityTests.get(port, "/health/ready")?.status == 200 })
        try await ObservabilityTests.publish(servers, ["job.received", "--job", "sse-job"])
        #expect(try await waitUntil(timeout: 30) { ObservabilityTests.get(port, "/api/summary")?.body.contains("sse-job") == true })
        // The stream never ends by itself: read for up to 3 s.
        let response = try HTTPGet.fetch(port: port, path: "/events/stream", timeout: 3, maxBytes: 64 * 1024)
        #expect(response.headers["content-type"] == "text/event-stream")
        #expect(response.body.contains("event: summary\ndata: {"), "\(response.body.prefix(500))")
        #expect(response.body.contains("sse-job"))
        processor.signal(SIGTERM)
        _ = try await processor.wait(timeout: 30)
    }
}
