import Foundation
import Synchronization
import Testing
import OpsBusLocalServers
@testable import OpsBusRedis

/// A fresh redis-server (AOF on) on a free port; each test gets its own so tests can run in parallel and kill it.
func startRedis(_ extraLines: [String] = []) throws -> ServerProcess {
    var configuration = RedisConfiguration()
    configuration.extraLines = extraLines
    return try withSignalsUnblocked { try LocalRedis.start(configuration: configuration) }
}

/// Kept for the call sites: `LocalRedis` launches through `ChildLauncher`, which unblocks the termination signals
/// for the child (and, unlike an empty mask here, leaves SIGCHLD blocked so no child's exit is lost).
func withSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
    try body()
}

func connect(
    _ server: ServerProcess, commandTimeout: Double? = 5, reconnectsAutomatically: Bool = true
) throws -> RedisConnection {
    try RedisConnection(
        url: server.url, connectTimeout: 2, commandTimeout: commandTimeout,
        reconnectsAutomatically: reconnectsAutomatically)
}

/// Runs `body`, which must throw a `RedisError`, and returns it (recording an issue otherwise).
func expectRedisError<T>(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> T
) -> RedisError? {
    do {
        let value = try body()
        Issue.record("expected a RedisError, got \(value)", sourceLocation: sourceLocation)
        return nil
    } catch let error as RedisError {
        return error
    } catch {
        Issue.record("expected a RedisError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Runs `body` on its own OS thread. Tests that need a helper to act *while* the test thread is blocked inside a
/// synchronous Redis call must not rely on a Task: the cooperative pool (2 threads here) may be fully blocked.
final class BackgroundThread: Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let failure = Mutex<String?>(nil)

    init(_ body: @escaping @Sendable () throws -> Void) {
        Thread.detachNewThread { [self] in
            do { try body() } catch { failure.withLock { $0 = "\(error)" } }
            finished.signal()
        }
    }

    /// Waits for the thread and returns its error, if any.
    func join() -> String? {
        finished.wait()
        return failure.withLock { $0 }
    }
}
