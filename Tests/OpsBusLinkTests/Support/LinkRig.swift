import Foundation
import OpsBusLocalServers
import OpsBusRedis
import Synchronization

/// Everything one scenario runs on: an edge namespace with its veth, and in the root namespace a mosquitto (on
/// 127.0.0.1 and on the veth's root address, same port), a redis-server and an `opsbus bridge` (over loopback).
/// The pump runs in the edge namespace, so every fault on the link sits between it and the broker.
///
/// `tearDown()` (called from the test's `defer`, and again from `deinit`) stops everything and deletes the
/// namespace, whether or not the test got that far.
final class LinkRig: Sendable {
    let name: String
    let namespace: Namespace
    let broker: ServerProcess
    let redis: ServerProcess
    let journal: URL
    let spools: URL
    private let bridgeState = Mutex<(current: ChildProcess?, previousLogs: [String])>((nil, []))
    private let extras = Mutex<[@Sendable () -> Void]>([])
    private let tornDown = Mutex(false)

    init(_ name: String) throws(LinkTestError) {
        self.name = name
        namespace = try Namespace()
        do {
            var configuration = MosquittoConfiguration()
            configuration.additionalListenAddresses = [namespace.rootAddress]
            broker = try LocalMosquitto.start(configuration: configuration)
            redis = try LocalRedis.start()
            journal = try makeScratchDirectory("\(name)-journal")
            spools = try makeScratchDirectory("\(name)-spools")
        } catch let error as LinkTestError {
            namespace.remove()
            throw error
        } catch {
            namespace.remove()
            throw .setup("\(name): could not start the servers: \(error)")
        }
    }

    /// Where the pump connects when nothing sits in between: the broker's listener on the veth's root address.
    var brokerHost: String { namespace.rootAddress }

    func redisConnection() throws(LinkTestError) -> RedisConnection {
        do {
            return try RedisConnection(url: redis.url)
        } catch {
            throw .setup("cannot connect to \(redis.url): \(error)")
        }
    }

    /// Starts `opsbus bridge` (same journal and client id every time, so a restart resumes its durable session)
    /// and waits for its subscription.
    func startBridge() async throws {
        let child = try ChildProcess("opsbus bridge (\(name))", try opsbusExecutable(), [
            "bridge", "--mqtt-url", broker.url, "--redis-url", redis.url, "--journal", journal.path,
            "--instance", "link", "--log-level", "info",
        ])
        bridgeState.withLock { $0.current = child }
        let subscribed = try await waitUntil(timeout: 30) { child.stderr.contains("bridge subscribed") || !child.isRunning }
        guard subscribed, child.isRunning else {
            throw LinkTestError.setup("\(name): opsbus bridge did not subscribe; stderr:\n\(child.stderrTail())")
        }
    }

    /// SIGKILL the bridge: no drain, no clean disconnect.
    func killBridge() {
        bridgeState.withLock { state in
            guard let child = state.current else { return }
            child.killHard()
            state.previousLogs.append(child.stderr)
            state.current = nil
        }
    }

    /// SIGSTOP / SIGCONT the bridge: frozen, it neither reads nor acknowledges, so the broker queues for it.
    func pauseBridge() { bridgeState.withLock { $0.current?.signal(SIGSTOP) } }
    func resumeBridge() { bridgeState.withLock { $0.current?.signal(SIGCONT) } }

    /// How many of `events` are in the job stream now (to show a fault left a backlog to recover).
    func written(_ events: [AcceptedEvent]) throws(LinkTestError) -> Int {
        let ids = Set(try StreamVerifier.read(try redisConnection()).map(\.eventID))
        return events.filter { ids.contains($0.eventID) }.count
    }

    /// The bridge's counters (`bridge_*` in `opsbus:stats`: entries, duplicates, out of order, …), for the log.
    func bridgeCounters() throws(LinkTestError) -> String {
        do {
            let fields = try redisConnection().command(["HGETALL", "opsbus:stats"]).hashDictionary()
            return fields.filter { $0.key.hasPrefix("bridge_") }.sorted { $0.key < $1.key }
                .map { "\($0.key.dropFirst(7))=\($0.value)" }.joined(separator: " ")
        } catch {
            throw .setup("HGETALL opsbus:stats failed: \(error)")
        }
    }

    /// The retained messages under `acks/#` on the broker (topic → payload), read with the stock mosquitto_sub.
    /// `timeout` ends the read: mosquitto_sub's own `-W` relies on SIGALRM, which children of the test process
    /// inherit blocked (ChildLauncher unblocks only the termination signals), so it would never fire.
    func retainedAcks() throws(LinkTestError) -> [String: String] {
        let output: String
        do {
            output = try Command.run(Command.locate("timeout") ?? "/usr/bin/timeout", [
                "-s", "INT", "2", Command.locate("stdbuf") ?? "/usr/bin/stdbuf", "-oL",
                Command.locate("mosquitto_sub") ?? "/usr/bin/mosquitto_sub",
                "-h", "127.0.0.1", "-p", String(broker.port), "-t", "acks/#", "--retained-only", "-v",
            ])
        } catch .commandFailed(_, 124, let text) {
            output = text  // the timeout: the normal end of reading what is retained
        }
        var acks: [String: String] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("acks/") {
            let parts = line.split(separator: " ", maxSplits: 1)
            acks[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return acks
    }

    /// Something to stop at tear-down (a proxy, a pump).
    func onTearDown(_ action: @escaping @Sendable () -> Void) { extras.withLock { $0.append(action) } }

    /// A spool directory of its own for one pump identity (reused across its restarts).
    func spool(_ worker: String) -> URL { spools.appendingPathComponent(worker) }

    /// The tails of the bridge's and broker's logs, for failure messages.
    func diagnostics() -> String {
        let bridge = bridgeState.withLock { $0.current?.stderrTail(30) ?? "(no bridge running)" }
        return "bridge stderr tail:\n\(bridge)\nbroker log tail:\n\(broker.logTail(lines: 30))"
    }

    func tearDown() {
        guard tornDown.withLock({ done in defer { done = true }; return !done }) else { return }
        for action in extras.withLock({ $0 }) { action() }
        killBridge()
        broker.kill()
        redis.kill()
        namespace.remove()
        for directory in [journal, spools, broker.directory, redis.directory] {
            try? FileManager.default.removeItem(at: directory)
        }
    }

    deinit { tearDown() }
}

/// A line on stderr for the CI log: what each scenario saw and how long it took (reported, never asserted).
func linkLog(_ text: String) {
    FileHandle.standardError.write(Data("[link] \(text)\n".utf8))
}
