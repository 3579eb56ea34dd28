import Foundation
import OpsBusLocalServers
import OpsBusMQTT
import OpsBusProcessor
import OpsBusRedis
import Testing

/// The services and the CLI over `mqtts://` with a private CA and mutual TLS, configured by `MQTT_CA_FILE`,
/// `MQTT_CERT_FILE` and `MQTT_KEY_FILE` (README, "Operating opsbus"). The test makes its own CA, a server certificate
/// for 127.0.0.1 and a client certificate with openssl; the broker requires a client certificate on its TLS listener.
@Suite("CLI and services over TLS: private CA, client certificate")
struct CLITLSTests {
    /// PEM files of one throwaway PKI.
    struct PKI {
        let directory: URL
        var ca: String { directory.appendingPathComponent("ca.crt").path }
        var serverCertificate: String { directory.appendingPathComponent("server.crt").path }
        var serverKey: String { directory.appendingPathComponent("server.key").path }
        var clientCertificate: String { directory.appendingPathComponent("client.crt").path }
        var clientKey: String { directory.appendingPathComponent("client.key").path }

        init() async throws {
            directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("opsbus-pki-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let dir = directory.path
            try "subjectAltName=IP:127.0.0.1\n".write(toFile: dir + "/san.ext", atomically: true, encoding: .utf8)
            try await Self.openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir + "/ca.key", "-out", ca,
                              "-days", "1", "-subj", "/CN=opsbus test CA"])
            for (name, subject, extensions) in [("server", "/CN=127.0.0.1", true), ("client", "/CN=processor", false)] {
                try await Self.openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(dir)/\(name).key",
                                  "-out", "\(dir)/\(name).csr", "-subj", subject])
                try await Self.openssl(["x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", ca, "-CAkey", dir + "/ca.key",
                                  "-CAcreateserial", "-out", "\(dir)/\(name).crt", "-days", "1"]
                                 + (extensions ? ["-extfile", dir + "/san.ext"] : []))
            }
        }

        /// Through the suite's `run` (output in files, not pipes: see `ChildProcess`).
        static func openssl(_ arguments: [String]) async throws {
            let result = try await run("/usr/bin/openssl", arguments)
            try #require(result.status == 0, "openssl \(arguments.joined(separator: " ")): \(result.stderr)")
        }

        func remove() { try? FileManager.default.removeItem(at: directory) }
    }

    let pki: PKI
    let broker: ServerProcess
    let redis: ServerProcess
    let tlsPort: UInt16

    init() async throws {
        pki = try await PKI()
        tlsPort = try LoopbackPort.allocate()
        var configuration = MosquittoConfiguration()
        configuration.extraLines = [
            "listener \(tlsPort) 127.0.0.1", "cafile \(pki.ca)", "certfile \(pki.serverCertificate)",
            "keyfile \(pki.serverKey)", "require_certificate true",
        ]
        broker = try LocalMosquitto.start(configuration: configuration)
        redis = try LocalRedis.start()
    }

    var tlsURL: String { "mqtts://127.0.0.1:\(tlsPort)" }

    var tlsEnvironment: [String: String] {
        ServiceConfigurationTests.environment([
            "MQTT_CA_FILE": pki.ca, "MQTT_CERT_FILE": pki.clientCertificate, "MQTT_KEY_FILE": pki.clientKey,
        ])
    }

    @Test("a processor connects over mqtts with MQTT_CA_FILE and a client certificate, and applies an event")
    func processorOverTLS() async throws {
        defer { pki.remove() }
        #expect(try await waitUntil(timeout: 30) { LoopbackPort.isAcceptingConnections(tlsPort) })
        let processor = try ChildProcess(
            try opsbusExecutable(), ["processor", "--mqtt-url", tlsURL, "--redis-url", redis.url, "--log-level", "info"],
            environment: tlsEnvironment)
        defer { processor.signal(SIGKILL) }
        #expect(try await waitUntil(timeout: 60) { processor.stderr.contains("processor running") }, "\(processor.stderr)")
        // Published over TLS too, by the CLI.
        let published = try await run(
            try opsbusExecutable(), ["publish", "job.received", "--job", "tls-job-1", "--mqtt-url", tlsURL],
            environment: tlsEnvironment)
        #expect(published.status == 0, "\(published.stderr)")
        let connection = try RedisConnection(endpoint: try RedisEndpoint(url: redis.url))
        #expect(try await waitUntil {
            try connection.command(["HGET", RedisKeys().job("tls-job-1"), "status"]).string == "received"
        }, "the processor never applied the event: \(processor.stderr)")
        processor.signal(SIGTERM)
        #expect(try await processor.wait(timeout: 60) == 0, "\(processor.stderr)")
    }

    @Test("without the CA the broker's certificate is refused; without a client certificate the broker refuses us")
    func verificationBothWays() async throws {
        defer { pki.remove() }
        #expect(try await waitUntil(timeout: 30) { LoopbackPort.isAcceptingConnections(tlsPort) })
        let arguments = ["publish", "job.received", "--job", "tls-job-2", "--mqtt-url", tlsURL]
        var noCA = tlsEnvironment
        noCA["MQTT_CA_FILE"] = ""
        let untrusted = try await run(try opsbusExecutable(), arguments, environment: noCA)
        #expect(untrusted.status != 0, "the system store does not know our CA: \(untrusted.stderr)")
        #expect(untrusted.stderr.contains("TLS") || untrusted.stderr.contains("certificate"), "\(untrusted.stderr)")

        var noClientCertificate = tlsEnvironment
        noClientCertificate["MQTT_CERT_FILE"] = ""
        noClientCertificate["MQTT_KEY_FILE"] = ""
        let anonymous = try await run(try opsbusExecutable(), arguments, environment: noClientCertificate)
        #expect(anonymous.status != 0, "require_certificate: \(anonymous.stderr)")
    }

    @Test("TLS files with an mqtt:// URL, a certificate without its key, or an unreadable file exit 78 naming the variable")
    func invalidTLSSettings() async throws {
        defer { pki.remove() }
        let plain = ["publish", "job.received", "--job", "tls-job-3", "--mqtt-url", broker.url]
        let downgrade = try await run(try opsbusExecutable(), plain, environment: tlsEnvironment)
        #expect(downgrade.status == 78 && downgrade.stderr.contains("MQTT_CA_FILE")
                && downgrade.stderr.contains("mqtts://"), "\(downgrade.stderr)")

        let overTLS = ["publish", "job.received", "--job", "tls-job-3", "--mqtt-url", tlsURL]
        var withoutKey = tlsEnvironment
        withoutKey["MQTT_KEY_FILE"] = ""
        let unpaired = try await run(try opsbusExecutable(), overTLS, environment: withoutKey)
        #expect(unpaired.status == 78 && unpaired.stderr.contains("MQTT_CERT_FILE and MQTT_KEY_FILE"), "\(unpaired.stderr)")

        var missing = tlsEnvironment
        missing["MQTT_CA_FILE"] = pki.directory.appendingPathComponent("nope.crt").path
        let unreadable = try await run(try opsbusExecutable(), overTLS, environment: missing)
        #expect(unreadable.status == 78 && unreadable.stderr.contains("MQTT_CA_FILE"), "\(unreadable.stderr)")

        let check = try await run(try opsbusExecutable(), ["config", "check", "--mqtt-url", tlsURL], environment: tlsEnvironment)
        #expect(check.status == 0 && check.stdout.contains("MQTT_CA_FILE") && check.stdout.contains(pki.ca), "\(check.stdout)")
        let checkDowngrade = try await run(try opsbusExecutable(), ["config", "check", "--mqtt-url", broker.url],
                                           environment: tlsEnvironment)
        #expect(checkDowngrade.status == 1 && (checkDowngrade.stdout + checkDowngrade.stderr).contains("mqtts://"),
                "config check reports the downgrade: \(checkDowngrade.stdout)")
    }
}
