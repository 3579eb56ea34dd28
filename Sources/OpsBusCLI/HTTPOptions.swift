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

    /// The address to listen on, or nil when the endpoints are off. Invalid values fail naming the variable.
    func resolve() throws -> (host: String, port: Int)? {
        let environment = ProcessInfo.processInfo.environment
        let port: Int
        if let httpPort {
            port = httpPort
        } else if let raw = environment["OPSBUS_HTTP_PORT"], !raw.isEmpty {
            guard let value = Int(raw) else {
                throw ValidationError("OPSBUS_HTTP_PORT=\(raw): expected a port number from 0 to 65535")
            }
            port = value
        } else {
            return nil
        }
        guard (0...65_535).contains(port) else {
            throw ValidationError("--http-port / OPSBUS_HTTP_PORT: expected a port number from 0 to 65535, not \(port)")
        }
        let host = httpHost ?? environment["OPSBUS_HTTP_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1 else {
            throw ValidationError("--http-host / OPSBUS_HTTP_HOST: '\(host)' is not an IPv4 address")
        }
        return (host, port)
    }
}
