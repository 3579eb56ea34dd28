import Foundation

/// A mosquitto password file made with the real `mosquitto_passwd` (salted hashes, the format the broker reads), so
/// tests and the demo can run a broker with authentication the way docker-compose does.
public enum MosquittoPasswordFile {
    /// Writes `users` (name → password) to a new password file at `url`.
    public static func write(users: [(name: String, password: String)], to url: URL) throws(LocalServerError) {
        let tool = try BinaryLocator.find(
            "mosquitto_passwd", installHint: "apt-get install mosquitto (or scripts/setup)")
        try? FileManager.default.removeItem(at: url)
        for (index, user) in users.enumerated() {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: tool)
            // -b takes the password as an argument: fine for test and demo passwords, visible in `ps` only briefly.
            process.arguments = (index == 0 ? ["-c"] : []) + ["-b", url.path, user.name, user.password]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            do {
                try ChildLauncher.run(process)
            } catch {
                throw .launchFailed(name: "mosquitto_passwd", reason: "\(error)")
            }
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                // The password is not part of the message.
                throw .launchFailed(
                    name: "mosquitto_passwd",
                    reason: "exit status \(process.terminationStatus) adding user '\(user.name)' to \(url.path)")
            }
        }
    }
}

extension MosquittoConfiguration {
    /// Anonymous access off, logins checked against `passwordFile`, topics against `aclFile` (e.g. the project's
    /// `deploy/mosquitto/acl`).
    public mutating func requireAuthentication(passwordFile: URL, aclFile: URL?) {
        extraLines.append("allow_anonymous false")  // overrides the default line: later settings win
        extraLines.append("password_file \(passwordFile.path)")
        if let aclFile { extraLines.append("acl_file \(aclFile.path)") }
    }
}

extension RedisConfiguration {
    /// Turns the `default` user off and loads ACL users from `aclFile` (Redis's `aclfile` format, e.g. the
    /// project's `deploy/redis/users.acl.template` with the password filled in). Clients must then log in with
    /// `redis://user:password@…`.
    public mutating func useACLFile(_ aclFile: URL) {
        extraLines.append("aclfile \(aclFile.path)")
    }
}
