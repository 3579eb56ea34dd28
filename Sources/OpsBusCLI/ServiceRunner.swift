import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs a long-lived service (`opsbus processor`, `opsbus bridge`) under swift-service-lifecycle: SIGTERM or SIGINT
/// starts a graceful shutdown, which cancels `operation`; the services treat cancellation as "drain and stop" (the
/// processor finishes the event in hand and leaves its shared group, the bridge writes its journal to Redis). When the
/// drain takes longer than `shutdownTimeout` the process exits with status 75 (`ExitStatus.shutdownTimeout`), since
/// a blocked C call cannot be cancelled and an orchestrator's SIGKILL would otherwise decide.
enum ServiceRunner {
    /// - Throws: `CLIError` with `operation`'s error (exit status 1).
    static func run(
        _ name: String, shutdownTimeout: Double, logger: Logger, operation: @escaping @Sendable () async throws -> Void
    ) async throws {
        let service = LifecycleService(name: name, shutdownTimeout: shutdownTimeout, logger: logger, operation: operation)
        var configuration = ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup,
                             failureTerminationBehavior: .cancelGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.logging.keys.serviceKey = "service"
        let group = ServiceGroup(configuration: configuration)
        do {
            try await group.run()
        } catch {
            throw CLIError("\(error)")
        }
        if let signal = service.stopReason {
            logger.notice("\(name) stopped cleanly", metadata: ["reason": "\(signal)"])
        }
    }

    /// Validates `--shutdown-timeout`.
    static func checkTimeout(_ seconds: Double) throws {
        guard seconds.isFinite, seconds > 0, seconds <= 3600 else {
            throw ValidationError("--shutdown-timeout: expected seconds in (0, 3600], not \(seconds)")
        }
    }
}

/// One service in the group; arms the exit watchdog when the graceful shutdown begins.
private final class LifecycleService: Service, Sendable {
    let name: String
    let shutdownTimeout: Double
    let logger: Logger
    let operation: @Sendable () async throws -> Void
    private let shutdownRequested = Mutex(false)
    private let finished = Mutex(false)

    init(name: String, shutdownTimeout: Double, logger: Logger, operation: @escaping @Sendable () async throws -> Void) {
        self.name = name
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
        self.operation = operation
    }

    /// Set once a graceful shutdown was requested (a signal).
    var stopReason: String? { shutdownRequested.withLock { $0 } ? "graceful shutdown (SIGTERM/SIGINT)" : nil }

    func run() async throws {
        defer { finished.withLock { $0 = true } }
        try await withGracefulShutdownHandler {
            try await cancelWhenGracefulShutdown(operation)
        } onGracefulShutdown: { [self] in
            guard shutdownRequested.withLock({ was in defer { was = true }; return !was }) else { return }
            logger.notice("\(name) shutting down: draining", metadata: ["timeout_seconds": "\(shutdownTimeout)"])
            armWatchdog()
        }
    }

    /// A plain thread, not a task: it must fire even when every cooperative thread is blocked.
    private func armWatchdog() {
        let thread = Thread { [self] in
            Thread.sleep(forTimeInterval: shutdownTimeout)
            guard !finished.withLock({ $0 }) else { return }
            logger.error("\(name) did not finish its graceful shutdown in time; exiting",
                         metadata: ["timeout_seconds": "\(shutdownTimeout)", "exit_status": "\(ExitStatus.shutdownTimeout)"])
            fflush(nil)
            _exit(ExitStatus.shutdownTimeout)
        }
        thread.name = "opsbus-shutdown-watchdog"
        thread.start()
    }
}
