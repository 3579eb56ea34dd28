import Foundation
import Testing

import OpsBusMQTT

/// The `MQTT_PASSWORD_FILE` rule and the secret-file reader the CLI and `connectFromEnvironment` share.
@Suite("MQTT password file and secret files")
struct MQTTPasswordFileTests {
    /// A fresh file holding `content`; the caller removes it.
    func temporaryFile(_ content: String) throws -> String {
        let path = NSTemporaryDirectory() + "opsbus-secret-\(UUID().uuidString)"
        try content.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("the file's secret becomes the password, without one trailing newline")
    func readsPasswordTrimmingOneNewline() throws {
        let file = try temporaryFile("s3cret pw\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let endpoint = try MQTTEndpoint(url: "mqtt://processor@broker:1883").applyingPasswordFile(path: file)
        #expect(endpoint.username == "processor")
        #expect(endpoint.password == "s3cret pw")
        #expect(endpoint.host == "broker" && endpoint.port == 1883)

        let crlf = try temporaryFile("pw\r\n")
        let twoNewlines = try temporaryFile("pw\n\n")
        defer { for path in [crlf, twoNewlines] { try? FileManager.default.removeItem(atPath: path) } }
        #expect(try SecretFile.read(path: crlf, variable: "X_FILE") == "pw")
        #expect(try SecretFile.read(path: twoNewlines, variable: "X_FILE") == "pw\n", "only one newline is trimmed")
    }

    @Test("no file: the endpoint is unchanged, URL password and all")
    func nilPathKeepsEndpoint() throws {
        let endpoint = try MQTTEndpoint(url: "mqtt://u:urlpw@h")
        #expect(try endpoint.applyingPasswordFile(path: nil) == endpoint)
    }

    @Test("a password in the URL and a file: refused, naming both variables, showing no secret")
    func urlPasswordAndFileRefused() throws {
        let file = try temporaryFile("filePw1\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let endpoint = try MQTTEndpoint(url: "mqtt://u:urlPw2@h")
        let problem = #expect(throws: MQTTVariableProblem.self) {
            try endpoint.applyingPasswordFile(path: file, urlVariable: "--mqtt-url")
        }
        #expect(problem?.variable == "--mqtt-url and MQTT_PASSWORD_FILE")
        #expect(problem?.reason == "both give a password; put it in only one of them")
        #expect(problem.map { !"\($0)".contains("filePw1") && !"\($0)".contains("urlPw2") } == true)
    }

    @Test("a file without a user name in the URL: refused, naming MQTT_PASSWORD_FILE and the URL's variable")
    func fileWithoutUserRefused() throws {
        let file = try temporaryFile("pw\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let problem = #expect(throws: MQTTVariableProblem.self) {
            try MQTTEndpoint(url: "mqtt://h:1883").applyingPasswordFile(path: file)
        }
        #expect(problem?.variable == "MQTT_PASSWORD_FILE")
        #expect(problem?.reason.contains("user name in MQTT_URL") == true, "\(String(describing: problem))")
    }

    @Test("empty, missing, directory and empty-path files are refused, naming the variable and the path")
    func unusableFilesRefused() throws {
        let empty = try temporaryFile("")
        let onlyNewline = try temporaryFile("\n")
        defer { for path in [empty, onlyNewline] { try? FileManager.default.removeItem(atPath: path) } }
        for (path, expected) in [
            (empty, "the file is empty"), (onlyNewline, "the file is empty"),
            ("/nonexistent/opsbus-secret", "No such file"), (NSTemporaryDirectory(), "not a regular file"),
        ] {
            let problem = #expect(throws: MQTTVariableProblem.self) {
                try SecretFile.read(path: path, variable: "REDIS_PASSWORD_FILE")
            }
            #expect(problem?.variable == "REDIS_PASSWORD_FILE")
            #expect(problem?.reason.contains(path) == true && problem?.reason.contains(expected) == true,
                    "\(path): \(String(describing: problem))")
        }
        let emptyPath = #expect(throws: MQTTVariableProblem.self) { try SecretFile.read(path: "", variable: "V_FILE") }
        #expect(emptyPath?.variable == "V_FILE" && emptyPath?.reason.contains("empty path") == true)

        // Through the endpoint rule too: the reader's problem names MQTT_PASSWORD_FILE.
        let viaEndpoint = #expect(throws: MQTTVariableProblem.self) {
            try MQTTEndpoint(url: "mqtt://u@h").applyingPasswordFile(path: empty)
        }
        #expect(viaEndpoint?.variable == "MQTT_PASSWORD_FILE" && viaEndpoint?.reason.contains("empty") == true)
    }
}
