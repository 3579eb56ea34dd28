import ArgumentParser
import Foundation
import OpsBusHTTP

/// `--http-port`/`--http-host` of the long-running services: where /metrics, /health/* (and the processor's
/// dashboard) are served. Off unless a port is given; loopback unless a host is given, since the endpoints have no
/// authentication.
struct HTTPOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Serve /metrics, /health/live, /health/ready, /health (and the processor's dashboard at /) on this port (default $OPSBUS_HTTP_PORT; off when unset; conventional: 9464 processor, 9465 bridge).",
        valueName: "port"))
    var httpPort: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Address the HTTP endpoints listen on (default $OPSBUS_HTTP_HOST or 127.0.0.1; 0.0.0.0 for all interfaces).",
        valueName: "ipv4"))
    var httpHost: String?

    /// The address to listen on, or nil when the endpoints are off. Invalid values exit with status 78, naming the
    /// variable and its source.
    func resolve() throws -> (host: String, port: Int)? {
        let settings = try RuntimeSettings.current
        guard let port = try settings.value("OPSBUS_HTTP_PORT", flag: httpPort.map(String.init), flagName: "--http-port")
            .flatMap(Int.init)
        else { return nil }
        let host = try settings.value("OPSBUS_HTTP_HOST", flag: httpHost, flagName: "--http-host") ?? "127.0.0.1"
        return (host, port)
    }
}
