import Foundation
import Testing

/// The lossy-link scenarios are only worth something if their faults really cut the link; this checks each fault
/// with the stock `mosquitto_pub` (a QoS 1 publish from the edge namespace exits 0 only after its PUBACK).
@Suite("Lossy-link harness: namespaces, nftables, link flaps and the delay proxy",
       .enabled(if: !LinkPreflight.skipRequested, "OPSBUS_LINK_TESTS=skip: lossy-link tests skipped"))
struct LinkHarnessTests {
    /// One QoS 1 publish from the edge namespace, given `seconds` to finish.
    func publishes(_ rig: LinkRig, port: UInt16, seconds: Int = 3) -> Bool {
        let tool = Command.locate("mosquitto_pub") ?? "/usr/bin/mosquitto_pub"
        let timeout = Command.locate("timeout") ?? "/usr/bin/timeout"
        return (try? rig.namespace.run(timeout, [
            String(seconds), tool, "-h", rig.brokerHost, "-p", String(port), "-q", "1", "-t", "harness/probe", "-m", "x",
        ])) != nil
    }

    @Test("a black hole, a downed link and the delay proxy each do what the scenarios rely on")
    func faultsAreReal() async throws {
        let rig = try LinkRig("harness")
        defer { rig.tearDown() }
        #expect(publishes(rig, port: rig.broker.port), "the edge reaches the broker over a clean link")

        let hole = try NftablesLoss.blackHole(rig.namespace)
        #expect(!publishes(rig, port: rig.broker.port), "nothing gets through a black hole")
        #expect(try hole.droppedPackets() > 0, "the black hole counted the packets it dropped")
        try hole.remove()
        #expect(try await waitUntil(timeout: 15) { publishes(rig, port: rig.broker.port) }, "the link works again")

        let flap = LinkFlap(namespace: rig.namespace)
        try flap.down()
        #expect(!publishes(rig, port: rig.broker.port), "nothing gets through a downed link")
        try flap.up()
        #expect(try await waitUntil(timeout: 15) { publishes(rig, port: rig.broker.port) }, "the link works after the flap")

        let proxy = try DelayProxy(listenAddress: rig.namespace.rootAddress, upstreamPort: rig.broker.port, delay: .milliseconds(50))
        defer { proxy.stop() }
        let start = ContinuousClock.now
        #expect(publishes(rig, port: proxy.port), "MQTT works through the delay proxy")
        #expect(proxy.acceptedConnections == 1)
        linkLog("harness: one connect+publish+disconnect through the 50 ms proxy took \(ContinuousClock.now - start)")
    }
}
