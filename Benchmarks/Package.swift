// swift-tools-version:6.1
import PackageDescription

// opsbus benchmarks: a package of its own so that the benchmark dependencies (ordo-one/benchmark, HdrHistogram)
// stay out of the main build and its CI test run. `scripts/bench` builds and runs everything here (BENCHMARKS.md).
//   opsbus-bench   release-mode driver: payload generation, the in-process publisher scenario, HdrHistogram summaries
//   Micro          ordo-one/benchmark micro benchmarks of the hot pure code (time and allocations per operation)
let package = Package(
    name: "opsbus-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "opsbus", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .executableTarget(
            name: "opsbus-bench",
            dependencies: [
                .product(name: "OpsBus", package: "opsbus"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Sources/opsbus-bench"
        ),
        .executableTarget(
            name: "Micro",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                // The core alone: the ordo-one plugin builds Micro with its own settings, so everything it depends
                // on is compiled a second time; the pure core is all it measures.
                .product(name: "OpsBusCore", package: "opsbus"),
            ],
            path: "Benchmarks/Micro",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
