// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Spout",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "spout", targets: ["spout"]),
        .library(name: "SpoutCore", targets: ["SpoutCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // libpq from Debian's libpq-dev. The shim only includes the header.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(name: "CRdKafka", pkgConfig: "rdkafka", providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CNats", pkgConfig: "libnats", providers: [.apt(["libnats-dev"])]),
        .target(
            name: "SpoutCore",
            dependencies: [
                "CLibPQ", "CRdKafka", "CHiredis", "CNats",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Test support: hosts librdkafka's mock Kafka cluster in its own process.
        .executableTarget(
            name: "spout-kafka-mock",
            dependencies: ["CRdKafka"]
        ),
        .executableTarget(
            name: "spout",
            dependencies: [
                "SpoutCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "SpoutCoreTests",
            dependencies: ["SpoutCore"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "SpoutIntegrationTests",
            dependencies: ["SpoutCore", "spout", "spout-kafka-mock"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
