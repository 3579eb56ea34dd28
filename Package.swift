// swift-tools-version:6.0
import PackageDescription

// Layers, bottom to top (see README "Architecture"):
//   OpsBusCore            pure event contract and rules, no I/O
//   CMosquitto/CHiredis   system libraries (Debian libmosquitto-dev, libhiredis-dev)
//   OpsBusMQTT/OpsBusRedis  thin wrappers that own the C pointers
//   OpsBusSpool/OpsBusJournal  local append-only logs (publisher spool; bridge and processor journal)
//   OpsBusPublisher/OpsBusProcessor/OpsBusBridge  services
//   OpsBusCLI/opsbus      the command-line tool
// OpsBusLocalServers starts real mosquitto/redis-server processes for the demo and the tests.
let package = Package(
    name: "opsbus",
    platforms: [.macOS(.v15)],
    products: [
        .library(
            name: "OpsBus",
            targets: [
                "OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusSpool", "OpsBusJournal", "OpsBusPublisher",
                "OpsBusProcessor", "OpsBusBridge", "OpsBusHTTP",
            ]),
        /// The pure core alone (envelope, topics, policies): what the micro benchmarks measure, without the rest.
        .library(name: "OpsBusCore", targets: ["OpsBusCore"]),
        .executable(name: "opsbus", targets: ["opsbus"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // /metrics: swift-metrics API with the Prometheus text backend (small: with swift-atomics ~20 s of a clean
        // debug build on 2 cores). HTTP is served by OpsBusHTTP on POSIX sockets, not SwiftNIO.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // SIGTERM/SIGINT → graceful shutdown of `opsbus processor`/`bridge` (with swift-async-algorithms and
        // swift-collections).
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]
        ),
        // No pkgConfig: hiredis.pc carries -D_FILE_OFFSET_BITS=64, which SwiftPM rejects.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(name: "OpsBusCore"),
        .target(
            name: "OpsBusMQTT",
            dependencies: ["CMosquitto", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "OpsBusRedis",
            dependencies: ["CHiredis", .product(name: "Logging", package: "swift-log")]
        ),
        // The publisher's disk spool (append-only segmented log).
        .target(
            name: "OpsBusSpool",
            dependencies: ["OpsBusCore", .product(name: "Logging", package: "swift-log")]
        ),
        // The hand-off between an MQTT message handler and Redis (bridge, batching processor): append-only
        // segmented journal, the thread that drains it in batches.
        .target(
            name: "OpsBusJournal",
            dependencies: ["OpsBusCore", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "OpsBusPublisher",
            dependencies: ["OpsBusCore", "OpsBusMQTT", "OpsBusSpool", .product(name: "Logging", package: "swift-log")]
        ),
        // A small HTTP/1.1 server (GET only, one thread per connection, limits and timeouts) and the metrics
        // registry the services expose on /metrics.
        .target(
            name: "OpsBusHTTP",
            dependencies: [
                "OpsBusMQTT", .product(name: "Logging", package: "swift-log"), .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "OpsBusProcessor",
            dependencies: [
                "OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusJournal", "OpsBusHTTP", .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "OpsBusBridge",
            dependencies: [
                "OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusJournal", "OpsBusHTTP", .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "OpsBusLocalServers",
            dependencies: [.product(name: "Logging", package: "swift-log")]
        ),
        // The commands live in a library so tests can run them; the executable only calls `OpsBusCommand.main()`.
        .target(
            name: "OpsBusCLI",
            dependencies: [
                "OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusSpool", "OpsBusJournal", "OpsBusPublisher",
                "OpsBusProcessor", "OpsBusBridge", "OpsBusLocalServers", "OpsBusHTTP", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "opsbus",
            dependencies: ["OpsBusCLI", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(name: "OpsBusCoreTests", dependencies: ["OpsBusCore"]),
        .testTarget(name: "OpsBusMQTTTests", dependencies: ["OpsBusMQTT", "CMosquitto", "OpsBusLocalServers"]),
        .testTarget(name: "OpsBusRedisTests", dependencies: ["OpsBusRedis", "OpsBusLocalServers"]),
        .testTarget(name: "OpsBusSpoolTests", dependencies: ["OpsBusSpool", "OpsBusCore"]),
        .testTarget(
            name: "OpsBusIntegrationTests",
            dependencies: [
                "OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusPublisher", "OpsBusProcessor", "OpsBusBridge",
                "OpsBusJournal", "OpsBusLocalServers", "OpsBusCLI", "OpsBusHTTP",
            ]
        ),
        .testTarget(name: "OpsBusLinkTests", dependencies: ["OpsBusCore", "OpsBusMQTT", "OpsBusRedis", "OpsBusLocalServers", "OpsBusCLI"]),
    ],
    swiftLanguageModes: [.v6]
)
