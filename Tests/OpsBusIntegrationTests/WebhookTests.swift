import Foundation
import OpsBusCore
import OpsBusLocalServers
import OpsBusProcessor
import OpsBusRedis
import Testing

/// Webhook delivery against real Redis and a real HTTP receiver (`Tests/Fixtures/webhook_receiver.py`).
/// Timeouts and backoffs are small; waits are generous and never assert speed.
@Suite("Webhook delivery")
struct WebhookTests {
    @Test("a signed notification arrives with its headers, body and a valid signature, and leaves the outbox")
    func signedDelivery() async throws {
        let redis = try WebhookTestRedis()
        let secret = "s3cret-✓-\(UUID().uuidString)"
        let receiver = try await WebhookReceiver(secret: secret)
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url + "?token=abc", secret: secret, timeout: 5)
        let outbox = WebhookOutbox(prefix: "t:")
        let connection = try redis.connection()
        let body = WebhookOutbox.testBody("n-1")
        #expect(try outbox.enqueue(connection, endpoint: "default", notificationID: "n-1", body: body))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        await deliverer.stop()

        let requests = receiver.requests
        try #require(requests.count == 1)
        let request = requests[0]
        #expect(request.path == "/hooks/opsbus?token=abc")
        #expect(request.headers["content-type"] == "application/json")
        #expect(request.headers["user-agent"] == "opsbus")
        #expect(request.headers["x-opsbus-notification-id"] == "n-1")
        #expect(request.headers["x-opsbus-attempt"] == "1")
        #expect(request.body == String(decoding: body, as: UTF8.self))
        let header = try #require(request.headers["x-opsbus-signature"])
        #expect(header.hasPrefix("t="))
        try WebhookSignature.verify(secret: secret, header: header, body: Array(request.body.utf8))
        #expect(throws: WebhookSignatureError.mismatch) {
            try WebhookSignature.verify(secret: "wrong", header: header, body: Array(request.body.utf8))
        }
        #expect(request.signatureValid == true, "Python's hmac agrees with our HMAC-SHA256")

        #expect(try outbox.depths(connection, endpoint: "default") == .init(queued: 0, processing: 0, delayed: 0, deadLettered: 0))
        #expect(try hashInteger(connection, "t:opsbus:stats", "webhooks_delivered") == 1)
        #expect(try hashInteger(connection, "t:opsbus:stats", "webhooks_failed_attempts") == 0)
        #expect(deliverer.counters == WebhookCounters(delivered: 1, retried: 0, deadLettered: 0))
    }

    @Test("a receiver that fails the first 3 requests gets the notification exactly once, after 3 counted retries")
    func flakyReceiver() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver(failFirst: 3)
        let endpoint = try WebhookEndpoint(name: "flaky", url: receiver.url, timeout: 5, maxAttempts: 8)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "flaky", notificationID: "n-flaky", body: WebhookOutbox.testBody("n-flaky"))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        // Give a wrongly repeated delivery a chance to show up before looking.
        try await Task.sleep(for: .milliseconds(500))
        await deliverer.stop()

        let requests = receiver.requests
        #expect(requests.map(\.outcome) == ["fail", "fail", "fail", "ok"])
        #expect(requests.map { $0.headers["x-opsbus-attempt"] } == ["1", "2", "3", "4"])
        #expect(Set(requests.map { $0.headers["x-opsbus-notification-id"] }) == ["n-flaky"])
        #expect(requests.allSatisfy { $0.headers["x-opsbus-signature"] == nil }, "no secret, no signature")
        #expect(deliverer.counters == WebhookCounters(delivered: 1, retried: 3, deadLettered: 0))
        #expect(try hashInteger(connection, "opsbus:stats", "webhooks_delivered") == 1)
        #expect(try hashInteger(connection, "opsbus:stats", "webhooks_failed_attempts") == 3)
        #expect(try outbox.depths(connection, endpoint: "flaky").pending == 0)
    }

    @Test("a notification for a receiver that is down waits in the outbox and arrives once the receiver is up")
    func receiverDownThenUp() async throws {
        let redis = try WebhookTestRedis()
        // Held (refusing connections) while the receiver is down: a server another test starts meanwhile on a free
        // port must not get it, or the deliverer talks to that server (this failed CI once).
        let reservation = try LoopbackPort.reserve()
        let port = reservation.port
        let endpoint = try WebhookEndpoint(name: "later", url: "http://127.0.0.1:\(port)/hooks/opsbus", timeout: 2, maxAttempts: 100)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "later", notificationID: "n-later", body: WebhookOutbox.testBody("n-later"))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.retried >= 3 })
        let whileDown = try outbox.depths(connection, endpoint: "later")
        #expect(whileDown.pending == 1 && whileDown.deadLettered == 0)
        #expect(deliverer.counters.delivered == 0)

        let receiver = try await WebhookReceiver(port: port)
        reservation.release()
        #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        await deliverer.stop()
        #expect(receiver.requests.map(\.outcome) == ["ok"])
        #expect(receiver.requests.first?.headers["x-opsbus-notification-id"] == "n-later")
        #expect(try outbox.depths(connection, endpoint: "later").pending == 0)
    }

    @Test("a notification enqueued twice is delivered once; ids are per endpoint")
    func duplicatesAreDeliveredOnce() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver()
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        let body = WebhookOutbox.testBody("n-dup")
        #expect(try outbox.enqueue(connection, endpoint: "default", notificationID: "n-dup", body: body))
        #expect(try outbox.enqueue(connection, endpoint: "default", notificationID: "n-dup", body: body) == false)
        #expect(try outbox.enqueue(connection, endpoint: "other", notificationID: "n-dup", body: body), "another endpoint's outbox")
        #expect(try outbox.depths(connection, endpoint: "default").queued == 1)

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        #expect(try outbox.enqueue(connection, endpoint: "default", notificationID: "n-dup", body: body) == false,
                "still remembered after delivery")
        try await Task.sleep(for: .milliseconds(500))
        await deliverer.stop()
        #expect(receiver.requests.count == 1)
        #expect(deliverer.counters.delivered == 1)
    }

    @Test("after maxAttempts failures the notification is dead-lettered with the last error and body")
    func deadLetterAfterMaxAttempts() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver(failFirst: 1000)
        let endpoint = try WebhookEndpoint(name: "broken", url: receiver.url, timeout: 5, maxAttempts: 3)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        let body = WebhookOutbox.testBody("n-dead")
        try outbox.enqueue(connection, endpoint: "broken", notificationID: "n-dead", body: body)

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.deadLettered == 1 })
        try await Task.sleep(for: .milliseconds(300))
        await deliverer.stop()

        #expect(receiver.requests.count == 3)
        let letters = try outbox.deadLetters(connection, endpoint: "broken")
        try #require(letters.count == 1)
        #expect(letters[0].notificationID == "n-dead")
        #expect(letters[0].endpoint == "broken")
        #expect(letters[0].attempts == 3)
        #expect(letters[0].lastError.contains("HTTP 500"))
        #expect(letters[0].lastError.contains("receiver failure for test"))
        #expect(letters[0].body == body)
        #expect(deliverer.counters == WebhookCounters(delivered: 0, retried: 2, deadLettered: 1))
        #expect(try outbox.depths(connection, endpoint: "broken") == .init(queued: 0, processing: 0, delayed: 0, deadLettered: 1))
        #expect(try hashInteger(connection, "opsbus:stats", "webhooks_failed_attempts") == 3)
        #expect(try hashInteger(connection, "opsbus:stats", "webhooks_dead_lettered") == 1)
    }

    @Test("a receiver that does not answer within the timeout is a failed attempt")
    func timeoutIsAFailedAttempt() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver(hangFirst: 1000, hangSeconds: 60)
        let endpoint = try WebhookEndpoint(name: "slow", url: receiver.url, timeout: 0.5, maxAttempts: 2)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "slow", notificationID: "n-slow", body: WebhookOutbox.testBody("n-slow"))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.deadLettered == 1 })
        await deliverer.stop()
        #expect(receiver.requests.map(\.outcome) == ["hang", "hang"])
        let letters = try outbox.deadLetters(connection, endpoint: "slow")
        #expect(letters.first?.lastError.contains("timed out") == true, "\(letters)")
        #expect(deliverer.counters == WebhookCounters(delivered: 0, retried: 1, deadLettered: 1))
    }

    @Test("a deliverer cancelled mid-request leaves the entry in processing; the next deliverer sends it")
    func cancelledMidRequest() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver(hangFirst: 1, hangSeconds: 120)
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url, timeout: 60)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "default", notificationID: "n-crash", body: WebhookOutbox.testBody("n-crash"))

        let first = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { receiver.requests.count == 1 })
        #expect(try outbox.depths(connection, endpoint: "default").processing == 1)
        await first.stop()
        #expect(try outbox.depths(connection, endpoint: "default").processing == 1, "not lost, not finished")
        #expect(first.counters == WebhookCounters())

        let second = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { second.counters.delivered == 1 })
        await second.stop()
        let requests = receiver.requests
        #expect(requests.map(\.outcome) == ["hang", "ok"])
        #expect(requests.map { $0.headers["x-opsbus-notification-id"] } == ["n-crash", "n-crash"])
        #expect(try outbox.depths(connection, endpoint: "default").pending == 0)
    }

    @Test("after a crash (entry in processing, lease still held), the entry is sent once the lease expires")
    func crashedDelivererIsTakenOver() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver()
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "default", notificationID: "n-killed", body: WebhookOutbox.testBody("n-killed"))
        // What a deliverer killed with SIGKILL mid-request leaves behind: its claimed entry and its unexpired lease.
        try connection.command(["RPOPLPUSH", outbox.queueKey("default"), outbox.processingKey("default")])
        try connection.command(["SET", outbox.ownerKey("default"), "dead-host:4242:lease", "PX", "1500"])

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        let owner = try connection.command(["GET", outbox.ownerKey("default")]).string
        await deliverer.stop()
        #expect(owner != "dead-host:4242:lease")
        #expect(receiver.requests.map { $0.headers["x-opsbus-notification-id"] } == ["n-killed"])
        #expect(try outbox.depths(connection, endpoint: "default").pending == 0)
        #expect(try connection.command(["EXISTS", outbox.ownerKey("default")]).int == 0, "the lease is released on stop")
    }

    @Test("a hanging endpoint does not hold up another endpoint")
    func endpointsAreIsolated() async throws {
        let redis = try WebhookTestRedis()
        let hanging = try await WebhookReceiver(hangFirst: 1000, hangSeconds: 120)
        let healthy = try await WebhookReceiver()
        let stuck = try WebhookEndpoint(name: "stuck", url: hanging.url, timeout: 60)
        let fine = try WebhookEndpoint(name: "fine", url: healthy.url)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "stuck", notificationID: "s-1", body: WebhookOutbox.testBody("s-1"))
        try outbox.enqueue(connection, endpoint: "stuck", notificationID: "s-2", body: WebhookOutbox.testBody("s-2"))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [stuck, fine], outbox: outbox)
        #expect(try await waitUntil { hanging.requests.count == 1 })
        for index in 1...3 {
            try outbox.enqueue(connection, endpoint: "fine", notificationID: "f-\(index)", body: WebhookOutbox.testBody("f-\(index)"))
        }
        #expect(try await waitUntil { deliverer.deliverer.counters(for: "fine").delivered == 3 })
        // The stuck endpoint is still on its first request: nothing it does waited for it.
        #expect(hanging.requests.count == 1)
        #expect(try outbox.depths(connection, endpoint: "stuck") == .init(queued: 1, processing: 1, delayed: 0, deadLettered: 0))
        #expect(deliverer.deliverer.counters(for: "stuck") == WebhookCounters())
        await deliverer.stop()
        #expect(healthy.requests.map { $0.headers["x-opsbus-notification-id"] } == ["f-1", "f-2", "f-3"])
    }

    @Test("two deliverers on the same outbox: one sends, each notification arrives once")
    func twoDeliverersShareTheWork() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver()
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        let first = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        let second = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        for index in 1...10 {
            try outbox.enqueue(connection, endpoint: "default", notificationID: "n-\(index)", body: WebhookOutbox.testBody("n-\(index)"))
        }
        #expect(try await waitUntil { first.counters.delivered + second.counters.delivered == 10 })
        try await Task.sleep(for: .milliseconds(300))
        await first.stop()
        await second.stop()
        let ids = receiver.requests.compactMap { $0.headers["x-opsbus-notification-id"] }
        #expect(ids == (1...10).map { "n-\($0)" }, "once each, in enqueue order")
        #expect(first.counters.delivered == 0 || second.counters.delivered == 0, "only the lease holder sends")
    }

    @Test("a redirect is not followed: it is a failed attempt, and the redirect target gets nothing")
    func redirectsAreNotFollowed() async throws {
        let redis = try WebhookTestRedis()
        let target = try await WebhookReceiver()
        let redirecting = try await WebhookReceiver(status: 307, location: target.url)
        let endpoint = try WebhookEndpoint(name: "redirecting", url: redirecting.url, maxAttempts: 1)
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "redirecting", notificationID: "n-307", body: WebhookOutbox.testBody("n-307"))

        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        #expect(try await waitUntil { deliverer.counters.deadLettered == 1 })
        await deliverer.stop()
        #expect(redirecting.requests.count == 1)
        #expect(target.requests.isEmpty)
        #expect(try outbox.deadLetters(connection, endpoint: "redirecting").first?.lastError.contains("HTTP 307") == true)
    }

    @Test("a Redis restart pauses delivery; the deliverer reconnects and nothing is lost")
    func redisRestart() async throws {
        let redis = try WebhookTestRedis()
        let receiver = try await WebhookReceiver()
        let endpoint = try WebhookEndpoint(name: "default", url: receiver.url)
        let outbox = WebhookOutbox()
        let deliverer = try RunningDeliverer(redis: redis.endpoint, endpoints: [endpoint], outbox: outbox)
        do {
            let connection = try redis.connection()
            try outbox.enqueue(connection, endpoint: "default", notificationID: "before", body: WebhookOutbox.testBody("before"))
            #expect(try await waitUntil { deliverer.counters.delivered == 1 })
        }
        try redis.server.restart()  // SIGTERM: Redis writes its AOF, so the first delivery stays acknowledged
        let connection = try redis.connection()
        try outbox.enqueue(connection, endpoint: "default", notificationID: "after", body: WebhookOutbox.testBody("after"))
        #expect(try await waitUntil { deliverer.counters.delivered == 2 })
        await deliverer.stop()
        #expect(receiver.requests.map { $0.headers["x-opsbus-notification-id"] } == ["before", "after"])
    }

    @Test("enqueue refuses bad input with a clear error")
    func enqueueValidates() throws {
        let redis = try WebhookTestRedis()
        let outbox = WebhookOutbox()
        let connection = try redis.connection()
        let body = WebhookOutbox.testBody("x")
        #expect(throws: RedisError.self) { try outbox.enqueue(connection, endpoint: "bad{name}", notificationID: "n", body: body) }
        #expect(throws: RedisError.self) { try outbox.enqueue(connection, endpoint: "default", notificationID: "", body: body) }
        #expect(throws: RedisError.self) { try outbox.enqueue(connection, endpoint: "default", notificationID: "a b", body: body) }
        do {
            try outbox.enqueue(connection, endpoint: "default", notificationID: "n", body: Array("not json".utf8))
            Issue.record("a body that is not JSON was accepted")
        } catch {
            guard case let .invalidArgument(reason) = error else { Issue.record("unexpected \(error)"); return }
            #expect(reason.contains("not JSON"))
        }
        #expect(throws: RedisError.self) {
            try outbox.enqueue(
                connection, endpoint: "default", notificationID: "n",
                body: Array("\"".utf8) + [UInt8](repeating: 0x61, count: WebhookOutbox.maximumBodySize) + Array("\"".utf8))
        }
        #expect(try outbox.depths(connection, endpoint: "default").queued == 0)
    }
}
