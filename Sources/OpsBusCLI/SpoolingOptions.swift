import ArgumentParser
import Foundation
import OpsBusPublisher
import OpsBusSpool

/// The edge spool's options, shared by the commands that publish (`publish`, `pump`, `simulate`).
struct SpoolingOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Spool directory (default $OPSBUS_SPOOL_DIR, else ~/.local/state/opsbus/spool/<worker or machine id>).",
        valueName: "dir"))
    var spool: String?

    @Flag(help: "Do not spool: the event is done when the broker acknowledged it (nothing survives this process).")
    var noSpool = false

    @Option(help: ArgumentHelp(
        "Who confirms a spooled event: bridge (end to end, once it is in Redis; default) or broker (PUBACK; when no bridge is deployed). Default $OPSBUS_ACK.",
        valueName: "bridge|broker"))
    var ack: String?

    @Option(help: ArgumentHelp("Seconds without an acknowledgement before spooled events are sent again (default 10).", valueName: "seconds"))
    var ackTimeout: Double?

    @Option(help: ArgumentHelp(
        "always (fdatasync before publish returns; default), interval:<ms> (kill -9 safe, power loss may lose the last interval) or never.",
        valueName: "mode"))
    var durability: String?

    /// The spool settings: flags over environment over config file over defaults; nil with `--no-spool`.
    func options(owner: String, spoolByDefault: Bool = true) throws -> SpoolOptions? {
        if noSpool { return nil }
        let settings = try RuntimeSettings.current
        for name in ["OPSBUS_SPOOL", "OPSBUS_SPOOL_DIR", "OPSBUS_SPOOL_MAX_BYTES", "OPSBUS_SPOOL_DURABILITY", "OPSBUS_ACK",
                     "OPSBUS_ACK_TIMEOUT"] {
            _ = try settings.value(name)
        }
        var environment = settings.environment
        if spool != nil || spoolByDefault { environment["OPSBUS_SPOOL"] = environment["OPSBUS_SPOOL"] ?? "on" }
        if let spool { environment["OPSBUS_SPOOL_DIR"] = spool }
        if let ack { environment["OPSBUS_ACK"] = ack }
        if let ackTimeout { environment["OPSBUS_ACK_TIMEOUT"] = String(ackTimeout) }
        if let durability { environment["OPSBUS_SPOOL_DURABILITY"] = durability }
        if environment["OPSBUS_SPOOL_DIR"] == nil {
            environment["OPSBUS_SPOOL_DIR"] = EventPublisher.defaultSpoolDirectory(environment: environment, owner: owner)
        }
        do {
            return try EventPublisher.spoolOptions(from: environment, context: PublisherContext())
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
