import Foundation
import Synchronization

/// Whether this machine can run the lossy-link tests: they need `ip netns`, veth pairs and nftables (root or
/// CAP_NET_ADMIN). Checked once per test process.
///
/// CI must never silently skip them, so a machine without namespaces FAILS every link test with an explicit message;
/// only `OPSBUS_LINK_TESTS=skip` (for a developer's laptop) turns them into visible skips.
enum LinkPreflight {
    static let skipRequested = ProcessInfo.processInfo.environment["OPSBUS_LINK_TESTS"] == "skip"

    /// nil when everything works, else the reason.
    private static let problem: String? = probe()

    static var ip: String { Command.locate("ip") ?? "/usr/sbin/ip" }
    static var nft: String { Command.locate("nft") ?? "/usr/sbin/nft" }

    /// Throws the loud explanation when the tests cannot run here.
    static func require() throws(LinkTestError) {
        guard let problem else { return }
        throw .environmentUnavailable("""
            lossy-link tests need network namespaces, veth pairs and nftables: \(problem). \
            Run them as root (or with CAP_NET_ADMIN) after scripts/setup (installs iproute2 and nftables), \
            or set OPSBUS_LINK_TESTS=skip to skip them on a dev machine (CI never does).
            """)
    }

    private static func probe() -> String? {
        guard Command.locate("ip") != nil else { return "`ip` (iproute2) is not installed" }
        guard Command.locate("nft") != nil else { return "`nft` (nftables) is not installed" }
        Namespace.sweepStale()
        let name = "obt-\(getpid())-probe"
        do {
            try Command.run(ip, ["netns", "add", name])
        } catch {
            return "`ip netns add` failed: \(error)"
        }
        defer { _ = try? Command.run(ip, ["netns", "del", name]) }
        do {
            try Command.run(ip, ["netns", "exec", name, nft, "add", "table", "inet", "obt"])
        } catch {
            return "nftables does not work in a namespace: \(error)"
        }
        return nil
    }
}

/// One edge network namespace joined to the root namespace by a veth pair on its own /30 subnet:
/// root end `<rootAddress>` (where the broker listens), edge end `<edgeAddress>` (where the pump runs).
///
/// Names embed our pid (`obt-<pid>-<n>`), so the stale sweep can tell a crashed run's leftovers from a suite that
/// runs concurrently; subnets come from 10.213.0.0/16 and are picked under a file lock, skipping addresses in use.
final class Namespace: Sendable {
    let name: String
    /// The veth end in the root namespace.
    let rootInterface: String
    /// The veth end in the edge namespace.
    let edgeInterface = "obt-edge"
    let rootAddress: String
    let edgeAddress: String
    private let removed = Mutex(false)

    private static let counter = Atomic<Int>(0)

    init() throws(LinkTestError) {
        try LinkPreflight.require()
        let number = Self.counter.add(1, ordering: .relaxed).newValue
        name = "obt-\(getpid())-\(number)"
        rootInterface = "ob\(getpid())-\(number)r"
        let ip = LinkPreflight.ip
        try Command.run(ip, ["netns", "add", name])
        do {
            try Command.run(ip, ["link", "add", rootInterface, "type", "veth", "peer", "name", edgeInterface, "netns", name])
            let subnet = try Self.assignSubnet(rootInterface: rootInterface, seed: Int(getpid()) &* 8 &+ number)
            rootAddress = "10.213.\(subnet / 64).\(subnet % 64 * 4 + 1)"
            edgeAddress = "10.213.\(subnet / 64).\(subnet % 64 * 4 + 2)"
            try Command.run(ip, ["link", "set", rootInterface, "up"])
            try Command.run(ip, ["-n", name, "addr", "add", edgeAddress + "/30", "dev", edgeInterface])
            try Command.run(ip, ["-n", name, "link", "set", edgeInterface, "up"])
            try Command.run(ip, ["-n", name, "link", "set", "lo", "up"])
        } catch {
            _ = try? Command.run(ip, ["link", "del", rootInterface])
            _ = try? Command.run(ip, ["netns", "del", name])
            throw error
        }
    }

    /// The argument prefix that runs a program inside the edge namespace.
    func exec(_ executable: String, _ arguments: [String]) -> (executable: String, arguments: [String]) {
        (LinkPreflight.ip, ["netns", "exec", name, executable] + arguments)
    }

    /// Runs a short command inside the edge namespace.
    @discardableResult
    func run(_ executable: String, _ arguments: [String], input: String? = nil) throws(LinkTestError) -> String {
        try Command.run(LinkPreflight.ip, ["netns", "exec", name, executable] + arguments, input: input)
    }

    /// Deletes the veth pair (synchronously; deleting only the namespace frees its end later, asynchronously)
    /// and the namespace with everything in it (nftables tables included). Safe to call twice.
    func remove() {
        guard removed.withLock({ done in defer { done = true }; return !done }) else { return }
        _ = try? Command.run(LinkPreflight.ip, ["link", "del", rootInterface])
        _ = try? Command.run(LinkPreflight.ip, ["netns", "del", name])
    }

    deinit { remove() }

    /// Picks a free /30 (index 0..<16384 in 10.213.0.0/16) and puts its .1 on `rootInterface`, holding a lock file
    /// so two suites starting at once cannot take the same one (Linux accepts one address on two interfaces).
    private static func assignSubnet(rootInterface: String, seed: Int) throws(LinkTestError) -> Int {
        let lockPath = FileManager.default.temporaryDirectory.appendingPathComponent("opsbus-link-subnets.lock").path
        let fd = open(lockPath, O_CREAT | O_RDWR, 0o666)
        guard fd >= 0 else { throw .setup("cannot open \(lockPath): errno \(errno)") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw .setup("cannot lock \(lockPath): errno \(errno)") }
        defer { flock(fd, LOCK_UN) }
        let listing = try Command.run(LinkPreflight.ip, ["-o", "-4", "addr", "show"])
        var used = Set<Int>()
        for word in listing.split(whereSeparator: \.isWhitespace) where word.hasPrefix("10.213.") {
            let octets = word.split(separator: "/")[0].split(separator: ".").compactMap { Int($0) }
            if octets.count == 4 { used.insert(octets[2] * 64 + octets[3] / 4) }
        }
        let start = ((seed % 16384) + 16384) % 16384
        for offset in 0..<16384 {
            let index = (start + offset) % 16384
            if used.contains(index) { continue }
            let address = "10.213.\(index / 64).\(index % 64 * 4 + 1)/30"
            try Command.run(LinkPreflight.ip, ["addr", "add", address, "dev", rootInterface])
            return index
        }
        throw .setup("no free /30 left in 10.213.0.0/16")
    }

    /// Removes namespaces and root-side veths that a crashed run of this suite left behind (their pid is gone).
    static func sweepStale() {
        let ip = LinkPreflight.ip
        func ownerIsGone(_ pidText: Substring) -> Bool {
            guard let pid = Int32(pidText), pid != getpid() else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        if let listing = try? Command.run(ip, ["-o", "link", "show"]) {
            for line in listing.split(separator: "\n") {
                // "12: ob1234-1r@if2: <...>"
                let fields = line.split(separator: " ")
                guard fields.count > 1 else { continue }
                let interface = fields[1].split(separator: "@")[0].split(separator: ":")[0]
                guard interface.hasPrefix("ob"), interface.hasSuffix("r"), let dash = interface.firstIndex(of: "-")
                else { continue }
                if ownerIsGone(interface[interface.index(interface.startIndex, offsetBy: 2)..<dash]) {
                    _ = try? Command.run(ip, ["link", "del", String(interface)])
                }
            }
        }
        if let listing = try? Command.run(ip, ["netns", "list"]) {
            for line in listing.split(separator: "\n") {
                let name = line.split(separator: " ")[0]
                let parts = name.split(separator: "-")
                guard parts.count == 3, parts[0] == "obt" else { continue }
                if ownerIsGone(parts[1]) { _ = try? Command.run(ip, ["netns", "del", String(name)]) }
            }
        }
    }
}
