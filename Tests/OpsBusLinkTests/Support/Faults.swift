import Foundation

/// Packet loss on the edge side of the link: an nftables table in the edge namespace that drops a random share of
/// the packets to and from the root end (there is no `tc netem` on this kernel; `numgen random` is the substitute).
/// 100 % is a black hole: the link stays up, nothing gets through, so only timeouts notice.
struct NftablesLoss {
    let namespace: Namespace
    static let table = "obt_loss"

    /// Installs (or replaces) the rules: `percent` of packets dropped in each direction.
    static func apply(_ namespace: Namespace, percent: Int) throws(LinkTestError) -> NftablesLoss {
        precondition((1...100).contains(percent))
        let match = percent >= 100 ? "counter drop" : "numgen random mod 100 < \(percent) counter drop"
        let rules = """
            table inet \(table) {
              chain output { type filter hook output priority 0; policy accept; ip daddr \(namespace.rootAddress) \(match); }
              chain input { type filter hook input priority 0; policy accept; ip saddr \(namespace.rootAddress) \(match); }
            }
            """
        _ = try? namespace.run(LinkPreflight.nft, ["delete", "table", "inet", table])
        try namespace.run(LinkPreflight.nft, ["-f", "-"], input: rules)
        return NftablesLoss(namespace: namespace)
    }

    /// A drop-everything link.
    static func blackHole(_ namespace: Namespace) throws(LinkTestError) -> NftablesLoss {
        try apply(namespace, percent: 100)
    }

    /// Packets the rules dropped so far, both directions (proof that the fault really happened).
    func droppedPackets() throws(LinkTestError) -> Int {
        let listing = try namespace.run(LinkPreflight.nft, ["list", "table", "inet", Self.table])
        let words = listing.split(whereSeparator: \.isWhitespace)
        var total = 0
        for (index, word) in words.enumerated() where word == "packets" && index + 1 < words.count {
            total += Int(words[index + 1]) ?? 0
        }
        return total
    }

    func remove() throws(LinkTestError) {
        try namespace.run(LinkPreflight.nft, ["delete", "table", "inet", Self.table])
    }
}

/// The edge end of the veth administratively down, then up: the edge loses its route to the broker (sends fail
/// with "network unreachable" rather than timing out), and the address survives the flap.
struct LinkFlap {
    let namespace: Namespace

    func down() throws(LinkTestError) {
        try Command.run(LinkPreflight.ip, ["-n", namespace.name, "link", "set", namespace.edgeInterface, "down"])
    }

    func up() throws(LinkTestError) {
        try Command.run(LinkPreflight.ip, ["-n", namespace.name, "link", "set", namespace.edgeInterface, "up"])
    }
}
