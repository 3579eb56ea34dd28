import Foundation
import OpsBusProcessor
import Testing

/// Webhook endpoints from the environment: targets only from configuration, clear errors, secrets never shown.
@Suite("Webhook configuration")
struct WebhookConfigurationTests {
    @Test("no NOTIFICATION_SERVICE_URL means no endpoints")
    func noURL() throws {
        #expect(try WebhookEndpoint.fromEnvironment([:]).isEmpty)
        #expect(try WebhookEndpoint.fromEnvironment(["NOTIFICATION_SERVICE_URL": ""]).isEmpty)
    }

    @Test("NOTIFICATION_SERVICE_URL and NOTIFICATION_SECRET give the signed default endpoint")
    func urlAndSecret() throws {
        let endpoints = try WebhookEndpoint.fromEnvironment([
            "NOTIFICATION_SERVICE_URL": "https://hooks.example.com:8443/opsbus/T0KEN?key=abc",
            "NOTIFICATION_SECRET": "top-secret-value",
        ])
        try #require(endpoints.count == 1)
        let endpoint = endpoints[0]
        #expect(endpoint.name == "default")
        #expect(endpoint.url == "https://hooks.example.com:8443/opsbus/T0KEN?key=abc")
        #expect(endpoint.secret == "top-secret-value")
        #expect(endpoint.timeout == 5)
        #expect(endpoint.maxAttempts == 8)
        for shown in [endpoint.description, endpoint.debugDescription, String(reflecting: endpoint), "\(Mirror(reflecting: endpoint).children.map { "\($0.value)" })"] {
            #expect(!shown.contains("top-secret-value"), "\(shown)")
            #expect(!shown.contains("T0KEN") && !shown.contains("abc"), "\(shown)")
        }
        #expect(endpoint.description.contains("https://hooks.example.com:8443/…"))
        #expect(endpoint.description.contains("signed"))
    }

    @Test("NOTIFICATION_SECRET_FILE is read, without one trailing line ending (LF or CRLF)",
          arguments: ["from-a-file\n", "from-a-file\r\n", "from-a-file"])
    func secretFile(content: String) throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-secret-\(UUID().uuidString)")
        try content.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let endpoints = try WebhookEndpoint.fromEnvironment([
            "NOTIFICATION_SERVICE_URL": "http://127.0.0.1:9/hook", "NOTIFICATION_SECRET_FILE": file.path,
        ])
        #expect(endpoints.first?.secret == "from-a-file")
    }

    @Test("bad settings fail with the variable's name and never the secret", arguments: [
        (["NOTIFICATION_SERVICE_URL": "ftp://example.com/x"], "NOTIFICATION_SERVICE_URL", "http or https"),
        (["NOTIFICATION_SERVICE_URL": "example.com/hook"], "NOTIFICATION_SERVICE_URL", "absolute"),
        (["NOTIFICATION_SERVICE_URL": "http:///path"], "NOTIFICATION_SERVICE_URL", "no host"),
        (["NOTIFICATION_SERVICE_URL": "https://user:hunter2@example.com/x"], "NOTIFICATION_SERVICE_URL", "credentials"),
        (["NOTIFICATION_SERVICE_URL": "http://example.com/a b"], "NOTIFICATION_SERVICE_URL", "whitespace"),
        (["NOTIFICATION_SERVICE_URL": "http://example.com/", "NOTIFICATION_SECRET": "hunter2",
          "NOTIFICATION_SECRET_FILE": "/nonexistent"], "NOTIFICATION_SECRET_FILE", "only one"),
        (["NOTIFICATION_SECRET": "hunter2"], "NOTIFICATION_SECRET", "NOTIFICATION_SERVICE_URL is not"),
        (["NOTIFICATION_SERVICE_URL": "http://example.com/", "NOTIFICATION_SECRET_FILE": "/nonexistent/opsbus-secret"],
         "NOTIFICATION_SECRET_FILE", "/nonexistent/opsbus-secret"),
    ] as [([String: String], String, String)])
    func invalid(environment: [String: String], variable: String, mentions: String) {
        do {
            _ = try WebhookEndpoint.fromEnvironment(environment)
            Issue.record("accepted \(environment)")
        } catch {
            #expect(error.description.contains(variable), "\(error)")
            #expect(error.description.contains(mentions), "\(error)")
            #expect(!error.description.contains("hunter2"), "\(error)")
        }
    }

    @Test("endpoint fields are validated")
    func fieldValidation() throws {
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "a{b}", url: "http://x/") }
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "", url: "http://x/") }
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "n", url: "http://x/", timeout: 0) }
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "n", url: "http://x/", timeout: .nan) }
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "n", url: "http://x/", maxAttempts: 0) }
        #expect(throws: WebhookConfigurationError.self) { try WebhookEndpoint(name: "n", url: "http://x/", secret: "") }
        let endpoint = try WebhookEndpoint(name: "n", url: "http://x/")
        #expect(throws: WebhookConfigurationError.duplicateEndpointName("n")) {
            try WebhookDeliverer(redis: .init(), endpoints: [endpoint, endpoint])
        }
    }
}
