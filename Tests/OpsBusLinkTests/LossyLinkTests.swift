import Foundation
import Testing

/// `opsbus pump` (the edge publisher with a disk spool and end-to-end acks) over a bad link, with the broker, Redis
/// and the bridge in the root namespace. Every scenario ends with the same checks: the pump drained (exit 0), every
/// event it reported as accepted is in `events:jobs` exactly once, and per session the entries are in strictly
/// increasing, gap-free seq order.
///
/// Scenarios have their own namespace, servers and ports, so they run in parallel; the 30 s flap and the 60 s black
/// hole set the suite's floor.
@Suite("Lossy link: every accepted event reaches Redis exactly once and in order",
       .enabled(if: !LinkPreflight.skipRequested, "OPSBUS_LINK_TESTS=skip: lossy-link tests skipped"))
struct LossyLinkTests {
    /// Waits for the last pump to exit, then checks its exit status, its drain line and the stream against what all
    /// `pumps` accepted (a restarted pump's run adds to its predecessor's).
    func finish(_ scenario: String, _ rig: LinkRig, pumps: [EdgePump], started: ContinuousClock.Instant,
                expectedAccepted: Int? = nil, timeout: Double = 420) async throws {
        guard let last = pumps.last else { return }
        let status = try await last.finish(timeout: timeout)
        let context = {
            "pump stderr tail:\n\(last.child.stderrTail())\n\(rig.diagnostics())"
        }
        #expect(status == 0, "\(scenario): pump exited with \(status) (0 = drained), drain line \(String(describing: last.drainResult)); \(context())")
        #expect(last.drainResult?.drained == true, "\(scenario): drain line \(String(describing: last.drainResult))")
        let accepted = pumps.flatMap(\.accepted)
        if let expectedAccepted {
            #expect(accepted.count == expectedAccepted, "\(scenario): the pump accepted \(accepted.count) of \(expectedAccepted) events")
        }
        #expect(!accepted.isEmpty, "\(scenario): the pump accepted nothing; \(context())")
        // Anything late (a duplicate the bridge should have dropped) has a moment to show up.
        try await Task.sleep(for: .seconds(1))
        let records = try StreamVerifier.read(try rig.redisConnection())
        let report = StreamVerifier.check(records, accepted: accepted)
        #expect(report.problems.isEmpty, "\(scenario): \(report.problems.joined(separator: "; ")); \(report); \(context())")
        linkLog("\(scenario): exit \(status), \(report), \(ContinuousClock.now - started); bridge: \(try rig.bridgeCounters())")
        let stale = try staleAcks(rig, current: last)
        linkLog("\(scenario): retained acks of earlier sessions left on the broker: \(stale.count) \(stale)")
    }

    /// Retained acks (topic and payload) of sessions other than `current`'s (the last run's): an earlier session's
    /// should be gone, or every process start leaves one retained message on the broker for good.
    func staleAcks(_ rig: LinkRig, current: EdgePump) throws -> [String] {
        let session = current.accepted.last?.sessionID ?? "?"
        return try rig.retainedAcks().filter { !$0.key.hasSuffix("/" + session) }.map { "\($0.key) \($0.value)" }.sorted()
    }

    func pump(_ rig: LinkRig, worker: String, port: UInt16? = nil, jobs: Int, firstJob: Int = 0, rate: Double)
        throws -> EdgePump
    {
        var options = EdgePump.Options(workerID: worker, spool: rig.spool(worker))
        options.jobs = jobs
        options.firstJob = firstJob
        options.rate = rate
        options.drainTimeout = 150
        let pump = try EdgePump(in: rig.namespace, host: rig.brokerHost, port: port ?? rig.broker.port, options)
        rig.onTearDown { pump.child.killHard() }
        return pump
    }

    @Test("20 % packet loss both ways, 1,002 events as fast as the pump goes")
    func loss20() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("loss20")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let loss = try NftablesLoss.apply(rig.namespace, percent: 20)
        let pump = try pump(rig, worker: "edge-loss20", jobs: 334, rate: 0)
        try await finish("loss20", rig, pumps: [pump], started: started, expectedAccepted: 1002)
        #expect(try loss.droppedPackets() > 0, "the loss rules dropped packets while the pump ran")
    }

    @Test("50 ms added each way plus 10 % loss, 300 events")
    func delayAndLoss() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("delay50-loss10")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let proxy = try DelayProxy(listenAddress: rig.namespace.rootAddress, upstreamPort: rig.broker.port, delay: .milliseconds(50))
        rig.onTearDown { proxy.stop() }
        let loss = try NftablesLoss.apply(rig.namespace, percent: 10)
        let pump = try pump(rig, worker: "edge-delay", port: proxy.port, jobs: 100, rate: 0)
        try await finish("delay50-loss10", rig, pumps: [pump], started: started, expectedAccepted: 300)
        #expect(proxy.acceptedConnections >= 1, "the pump went through the delay proxy")
        #expect(try loss.droppedPackets() > 0, "the loss rules dropped packets while the pump ran")
    }

    @Test("the edge link down for 30 s mid-stream, then up again")
    func linkFlap30() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("flap30")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let pump = try pump(rig, worker: "edge-flap", jobs: 200, rate: 15)
        try await pump.waitForAccepted(90, timeout: 60)
        let flap = LinkFlap(namespace: rig.namespace)
        try flap.down()
        let before = pump.accepted.count
        try await Task.sleep(for: .seconds(30))
        let during = pump.accepted.count - before
        try flap.up()
        linkLog("flap30: \(during) events accepted while the link was down")
        try await finish("flap30", rig, pumps: [pump], started: started, expectedAccepted: 600)
    }

    @Test("a 60 s black hole (every packet dropped, link up) mid-stream")
    func blackHole60() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("blackhole60")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let pump = try pump(rig, worker: "edge-hole", jobs: 300, rate: 12)
        try await pump.waitForAccepted(90, timeout: 60)
        let hole = try NftablesLoss.blackHole(rig.namespace)
        let before = pump.accepted.count
        try await Task.sleep(for: .seconds(60))
        let dropped = try hole.droppedPackets()
        let during = pump.accepted.count - before
        try hole.remove()
        linkLog("blackhole60: \(dropped) packets dropped, \(during) events accepted during the black hole")
        #expect(dropped > 0, "the black hole dropped the pump's packets")
        try await finish("blackhole60", rig, pumps: [pump], started: started, expectedAccepted: 900)
    }

    @Test("the pump killed with SIGKILL mid-stream and restarted on the same spool")
    func publisherKill() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("pump-kill9")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let total = 300
        // Full speed: the kill lands with events in flight and, now and then, in the middle of a spool write.
        let first = try pump(rig, worker: "edge-kill", jobs: total, rate: 0)
        try await first.waitForAccepted(300, timeout: 60)
        first.child.killHard()
        let resumeAt = first.lastAcceptedJobIndex + 1
        let backlog = first.accepted.count - (try rig.written(first.accepted))
        let second = try pump(rig, worker: "edge-kill", jobs: total - resumeAt, firstJob: resumeAt, rate: 0)
        linkLog("pump-kill9: first run accepted \(first.accepted.count) events (up to job \(resumeAt - 1)), \(backlog) not yet in Redis at SIGKILL")
        try await finish("pump-kill9", rig, pumps: [first, second], started: started)
        let jobs = Set((first.accepted + second.accepted).map(\.jobID))
        #expect(jobs.count == total, "both runs together accepted events of every job (got \(jobs.count) of \(total))")
    }

    /// The restarted pump must send its predecessor's backlog under the old session: the black hole guarantees
    /// there is one (accepted, spooled, never delivered) when the kill comes.
    @Test("the pump killed with SIGKILL while its link is a black hole, restarted once the link is back")
    func publisherKillWithBacklog() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("pump-kill9-backlog")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let total = 200
        // Jobs to spare for the crashed run: however late the kill lands on a loaded box, it is still publishing.
        let first = try pump(rig, worker: "edge-kill-backlog", jobs: 2 * total, rate: 40)
        try await first.waitForAccepted(150, timeout: 60)
        let hole = try NftablesLoss.blackHole(rig.namespace)
        try await first.waitForAccepted(max(230, first.accepted.count + 40), timeout: 60)
        first.child.killHard()
        try hole.remove()
        let backlog = first.accepted.count - (try rig.written(first.accepted))
        #expect(backlog > 0, "the first run left accepted events that never reached Redis (the case under test)")
        let resumeAt = first.lastAcceptedJobIndex + 1
        let second = try pump(rig, worker: "edge-kill-backlog", jobs: max(20, total - resumeAt), firstJob: resumeAt, rate: 40)
        linkLog("pump-kill9-backlog: first run accepted \(first.accepted.count) events, \(backlog) not in Redis at SIGKILL")
        try await finish("pump-kill9-backlog", rig, pumps: [first, second], started: started)
    }

    /// The bridge forgets a session (its position key expired: a worker offline for longer than the TTL) while the
    /// publisher's spool still holds events of it: the restarted pump marks the session's oldest spooled event with
    /// `resume_after`, and the bridge resumes there instead of holding every event back for ever.
    @Test("the bridge forgets the session while the pump is down with a backlog; the restarted pump resumes it")
    func sessionPositionExpired() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("session-expired")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let first = try pump(rig, worker: "edge-expired", jobs: 400, rate: 40)
        try await first.waitForAccepted(90, timeout: 60)
        let hole = try NftablesLoss.blackHole(rig.namespace)
        try await first.waitForAccepted(first.accepted.count + 60, timeout: 60)
        first.child.killHard()
        try hole.remove()
        let redis = try rig.redisConnection()
        let positions = (try redis.command(["KEYS", "opsbus:session:*:acked"]).array ?? []).compactMap(\.string)
        #expect(!positions.isEmpty, "the first run's session had a position")
        for key in positions { _ = try redis.command(["DEL", key]) }
        let backlog = first.accepted.count - (try rig.written(first.accepted))
        #expect(backlog > 0, "accepted events not in Redis when the position was lost (the case under test)")
        let resumeAt = first.lastAcceptedJobIndex + 1
        let second = try pump(rig, worker: "edge-expired", jobs: 20, firstJob: resumeAt, rate: 40)
        linkLog("session-expired: \(backlog) of \(first.accepted.count) accepted events not in Redis when the position was deleted")
        try await finish("session-expired", rig, pumps: [first, second], started: started)
    }

    /// A run that dies while it waits for the last acknowledgements leaves only an earlier session behind; a run
    /// with nothing new to publish (`--jobs 0`) must still send it.
    @Test("the pump killed while draining behind a black hole; a run with --jobs 0 sends the rest")
    func publisherKillWhileDraining() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("pump-kill9-draining")
        defer { rig.tearDown() }
        try await rig.startBridge()
        // 360 events at 30/s: the hole goes in after the first 30, so even a stall of several seconds on a loaded
        // box (the pump catches up in a burst) leaves events accepted behind the hole.
        let first = try pump(rig, worker: "edge-kill-draining", jobs: 120, rate: 30)
        try await first.waitForAccepted(30, timeout: 60)
        let hole = try NftablesLoss.blackHole(rig.namespace)
        let acceptedBeforeHole = first.accepted.count
        try #require(acceptedBeforeHole < 360, "the pump accepted everything before the hole went in (a stall of 11 s)")
        try await first.waitForAccepted(360, timeout: 60)
        try await Task.sleep(for: .seconds(1))
        first.child.killHard()
        try hole.remove()
        let backlog = first.accepted.count - (try rig.written(first.accepted))
        #expect(backlog > 0, "the killed run left accepted events that never reached Redis (the case under test)")
        let second = try pump(rig, worker: "edge-kill-draining", jobs: 0, firstJob: 120, rate: 0)
        linkLog("pump-kill9-draining: \(backlog) of \(first.accepted.count) accepted events not in Redis at SIGKILL")
        try await finish("pump-kill9-draining", rig, pumps: [first, second], started: started, expectedAccepted: 360)
    }

    /// Two crashed runs, each leaving unacknowledged events under its own session (the bridge is frozen, so the
    /// broker holds them but nothing is acknowledged): the third run re-sends both predecessors' sessions besides its
    /// own, the broker then delivers many events twice or three times, and the bridge must write each once, in order.
    @Test("the pump killed twice while the bridge is frozen; the third run re-sends both earlier sessions")
    func publisherKilledTwiceWithBacklogs() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("pump-kill9-twice")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let worker = "edge-kill-twice"
        // The crashed runs get more jobs than they can publish before the kill, however late it comes on a loaded
        // box (a run with nothing left to publish would only drain, and accept nothing); the third finishes.
        let first = try pump(rig, worker: worker, jobs: 400, rate: 40)
        try await first.waitForAccepted(120, timeout: 60)
        rig.pauseBridge()
        try await first.waitForAccepted(max(200, first.accepted.count + 40), timeout: 60)
        first.child.killHard()
        let secondStart = first.lastAcceptedJobIndex + 1
        let second = try pump(rig, worker: worker, jobs: 400, firstJob: secondStart, rate: 40)
        try await second.waitForAccepted(90, timeout: 60)
        second.child.killHard()
        let runs = [first, second]
        let backlog = runs.map(\.accepted.count).reduce(0, +) - (try rig.written(runs.flatMap(\.accepted)))
        #expect(backlog > 0, "the crashed runs left accepted events that were not in Redis (the case under test)")
        let thirdStart = second.lastAcceptedJobIndex + 1
        let third = try pump(rig, worker: worker, jobs: 20, firstJob: thirdStart, rate: 40)
        try await third.waitForAccepted(30, timeout: 60)
        rig.resumeBridge()
        linkLog("pump-kill9-twice: runs accepted \(first.accepted.count) + \(second.accepted.count) events, \(backlog) not in Redis before the third run")
        try await finish("pump-kill9-twice", rig, pumps: runs + [third], started: started)
        #expect(Set((runs + [third]).flatMap(\.accepted).map(\.sessionID)).count == 3, "three runs, three sessions")
    }

    /// Each pump run acknowledges under a new session, and the bridge retains one ack per session; a session that
    /// is over (its run drained and exited, or crashed and a later run drained its rest) must not keep its
    /// retained ack, or the broker accumulates one retained message per process start, forever.
    @Test("retained acks of earlier sessions do not pile up on the broker (a clean run, then a crashed one, then a third)")
    func earlierSessionAcksCleared() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("stale-acks")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let worker = "edge-stale-acks"
        let clean = try pump(rig, worker: worker, jobs: 20, rate: 0)
        #expect(try await clean.finish(timeout: 120) == 0, "the first run drains")
        // Jobs to spare: however late the kill lands on a loaded box, this run is still publishing.
        let crashed = try pump(rig, worker: worker, jobs: 400, firstJob: 20, rate: 40)
        try await crashed.waitForAccepted(60, timeout: 60)
        let hole = try NftablesLoss.blackHole(rig.namespace)
        try await crashed.waitForAccepted(max(120, crashed.accepted.count + 40), timeout: 60)
        crashed.child.killHard()
        try hole.remove()
        let resumeAt = crashed.lastAcceptedJobIndex + 1
        let last = try pump(rig, worker: worker, jobs: max(10, 120 - resumeAt), firstJob: resumeAt, rate: 40)
        try await finish("stale-acks", rig, pumps: [clean, crashed, last], started: started)
        var stale: [String] = []
        _ = try await waitUntil(timeout: 10) {
            stale = try staleAcks(rig, current: last)
            return stale.isEmpty
        }
        let names = [(clean, "the cleanly drained first run"), (crashed, "the crashed second run")]
            .compactMap { run, name in run.accepted.first.map { ($0.sessionID, name) } }
        let described = stale.map { entry in
            (names.first { entry.contains($0.0) }?.1 ?? "an unknown session") + ": " + entry
        }
        #expect(stale.isEmpty, "retained acks of sessions that are over are still on the broker: \(described)")
    }

    /// An edge device often boots before its uplink works: the spool must take events from the start and send
    /// them once the broker is reachable.
    @Test("the pump started while its link is a black hole spools from the start and delivers once the link is back")
    func startsOffline() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("start-offline")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let hole = try NftablesLoss.blackHole(rig.namespace)
        let pump = try pump(rig, worker: "edge-offline", jobs: 100, rate: 40)
        let acceptedOffline = try await waitUntil(timeout: 30) { pump.accepted.count >= 60 }
        #expect(acceptedOffline, """
            start-offline: the pump accepted \(pump.accepted.count) events in 30 s while the broker was unreachable \
            (a spooling publisher must not wait for the network); stderr tail:
            \(pump.child.stderrTail())
            """)
        try hole.remove()
        try await finish("start-offline", rig, pumps: [pump], started: started, expectedAccepted: 300)
    }

    /// Everything at once on a lossy link: the bridge, the pump (twice) and the broker die mid-stream.
    @Test("15 % loss while the bridge, the pump (twice) and the broker are killed with SIGKILL in turn")
    func chaos() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("chaos")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let loss = try NftablesLoss.apply(rig.namespace, percent: 15)
        let worker = "edge-chaos"
        // Each crashed run gets more jobs than it publishes before its kill, however late the kill comes on a loaded
        // box, so the second run is still mid-stream when the broker dies.
        let total = 800
        let first = try pump(rig, worker: worker, jobs: total, rate: 50)
        try await first.waitForAccepted(200, timeout: 60)
        rig.killBridge()
        try await Task.sleep(for: .seconds(1))
        try await rig.startBridge()
        try await first.waitForAccepted(400, timeout: 60)
        first.child.killHard()
        let secondStart = first.lastAcceptedJobIndex + 1
        let second = try pump(rig, worker: worker, jobs: total, firstJob: secondStart, rate: 50)
        try await second.waitForAccepted(200, timeout: 60)
        rig.broker.kill()
        try await Task.sleep(for: .seconds(2))
        try rig.broker.start()
        try await second.waitForAccepted(400, timeout: 60)
        second.child.killHard()
        let thirdStart = second.lastAcceptedJobIndex + 1
        let third = try pump(rig, worker: worker, jobs: 100, firstJob: thirdStart, rate: 0)
        try await finish("chaos", rig, pumps: [first, second, third], started: started)
        #expect(try loss.droppedPackets() > 0, "the loss rules dropped packets while the pumps ran")
    }

    /// The bridge is frozen for a second first, so the broker holds a queue for it when it dies; what the broker
    /// had not saved yet (autosave every second) is gone, and only the pump's re-send can bring it back.
    @Test("the broker killed with SIGKILL mid-stream (holding a queue for the bridge) and restarted on its persistence")
    func brokerKill() async throws {
        try await brokerKillScenario("broker-kill9", worker: "edge-broker", wipeDatabase: false)
    }

    /// A broker that comes back with nothing (its database lost, or a replacement): every queued message, every
    /// session and every retained ack is gone. The spool is then the only copy of what was not in Redis yet.
    @Test("the broker killed with SIGKILL mid-stream and restarted without its persistence file")
    func brokerKillWithoutPersistence() async throws {
        try await brokerKillScenario("broker-wipe", worker: "edge-broker-wipe", wipeDatabase: true)
    }

    func brokerKillScenario(_ scenario: String, worker: String, wipeDatabase: Bool) async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig(scenario)
        defer { rig.tearDown() }
        try await rig.startBridge()
        let pump = try pump(rig, worker: worker, jobs: 300, rate: 40)
        try await pump.waitForAccepted(300, timeout: 60)
        rig.pauseBridge()
        // Accepted after the pause: at the broker, or in the frozen bridge's socket buffer, not in Redis.
        try await pump.waitForAccepted(min(900, max(340, pump.accepted.count + 40)), timeout: 60)
        rig.broker.kill()
        let backlog = pump.accepted.count - (try rig.written(pump.accepted))
        rig.resumeBridge()
        if wipeDatabase {
            #expect(backlog > 0, "accepted events were only at the broker (or in flight) when it died (the case under test)")
            let database = rig.broker.directory.appendingPathComponent("mosquitto.db")
            if FileManager.default.fileExists(atPath: database.path) { try FileManager.default.removeItem(at: database) }
        }
        try await Task.sleep(for: .seconds(3))
        try rig.broker.start()
        linkLog("\(scenario): \(backlog) accepted events not in Redis when the broker died")
        try await finish(scenario, rig, pumps: [pump], started: started, expectedAccepted: 900)
    }

    @Test("the bridge killed with SIGKILL mid-stream and restarted on its journal")
    func bridgeKill() async throws {
        let started = ContinuousClock.now
        let rig = try LinkRig("bridge-kill9")
        defer { rig.tearDown() }
        try await rig.startBridge()
        let pump = try pump(rig, worker: "edge-bridge", jobs: 300, rate: 40)
        try await pump.waitForAccepted(300, timeout: 60)
        rig.killBridge()
        let backlog = pump.accepted.count - (try rig.written(pump.accepted))
        try await Task.sleep(for: .seconds(2))
        try await rig.startBridge()
        linkLog("bridge-kill9: \(backlog) accepted events not in Redis when the bridge died")
        try await finish("bridge-kill9", rig, pumps: [pump], started: started, expectedAccepted: 900)
    }
}
