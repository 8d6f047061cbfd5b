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
    ],
    targets: [
        // libpq from Debian's libpq-dev. The shim only includes the header.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .target(
            name: "SpoutCore",
            dependencies: ["CLibPQ"]
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
            dependencies: ["SpoutCore", "spout"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
