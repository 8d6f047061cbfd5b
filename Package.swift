// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "Spout",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "spout", targets: ["spout"]),
        .library(name: "SpoutCore", targets: ["SpoutCore"]),
        .library(name: "SpoutKafka", targets: ["SpoutKafka"]),
        .library(name: "SpoutRedis", targets: ["SpoutRedis"]),
        .library(name: "SpoutNATS", targets: ["SpoutNATS"]),
        .library(name: "SpoutAMQP", targets: ["SpoutAMQP"]),
        .library(name: "SpoutSinks", targets: ["SpoutSinks"]),
        .library(name: "SpoutSTOMP", targets: ["SpoutSTOMP"]), // issue 14: STOMP
        .library(name: "SpoutHTTP", targets: ["SpoutHTTP"]), // issue 14: HTTP
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: [.defaults, "YAML"]),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // libpq from Debian's libpq-dev. The shim only includes the header.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // epoll, timerfd and eventfd for the delivery engine's wakeup (headers only).
        .systemLibrary(name: "CLinux"),
        .systemLibrary(name: "CRdKafka", pkgConfig: "rdkafka", providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CNats", pkgConfig: "libnats", providers: [.apt(["libnats-dev"])]),
        .systemLibrary(name: "CRabbitMQ", pkgConfig: "librabbitmq", providers: [.apt(["librabbitmq-dev"])]),
        // issue 15: TLS — libssl for the sockets the sinks own (TCPSocket: Redis, STOMP, HTTP).
        .systemLibrary(name: "COpenSSL", pkgConfig: "libssl", providers: [.apt(["libssl-dev"])]),
        // Decode, replicate, map, the replication session and the delivery engine: libpq (and libssl for sink TLS).
        .target(
            name: "SpoutCore",
            dependencies: [
                "CLibPQ", "CLinux", "COpenSSL",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // One target per broker, each linking only its own C library.
        .target(name: "SpoutKafka", dependencies: ["SpoutCore", "CRdKafka", .product(name: "Metrics", package: "swift-metrics")]),
        .target(name: "SpoutRedis", dependencies: ["SpoutCore", "CHiredis", .product(name: "Metrics", package: "swift-metrics")]),
        .target(name: "SpoutNATS", dependencies: ["SpoutCore", "CNats", .product(name: "Metrics", package: "swift-metrics")]),
        .target(name: "SpoutAMQP", dependencies: ["SpoutCore", "CRabbitMQ", .product(name: "Metrics", package: "swift-metrics")]),
        // issue 14: STOMP — STOMP 1.2 over a plain TCP socket (Glibc): no client library.
        .target(name: "SpoutSTOMP", dependencies: ["SpoutCore", .product(name: "Metrics", package: "swift-metrics")]),
        // issue 14: HTTP — webhooks over plain HTTP/1.1 sockets (Glibc); libcrypto for HMAC-SHA256 signatures.
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "SpoutHTTP", dependencies: ["SpoutCore", "CLinux", "CCrypto", .product(name: "Metrics", package: "swift-metrics")]),
        // Every sink by its URL scheme (stdout://, kafka://, redis://, nats://, amqp://, stomp://).
        .target(name: "SpoutSinks", dependencies: ["SpoutCore", "SpoutKafka", "SpoutRedis", "SpoutNATS", "SpoutAMQP", "SpoutSTOMP", "SpoutHTTP"]),
        // /metrics, /healthz and /readyz: swift-prometheus behind a Hummingbird server on its own threads.
        .target(
            name: "SpoutObservability",
            dependencies: [
                "SpoutCore",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
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
                "SpoutCore", "SpoutSinks", "SpoutObservability",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
            ]
        ),
        .testTarget(
            name: "SpoutCoreTests",
            dependencies: [
                "SpoutCore",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "SpoutSinkTests",
            dependencies: [
                "SpoutCore", "SpoutKafka", "SpoutRedis", "SpoutNATS", "SpoutAMQP", "SpoutSTOMP", "SpoutHTTP", "CRdKafka", "CNats",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "SpoutIntegrationTests",
            dependencies: [
                "SpoutCore", "SpoutSinks", "SpoutKafka", "SpoutRedis", "SpoutNATS", "SpoutAMQP", "SpoutSTOMP", "SpoutHTTP", "spout", "spout-kafka-mock",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
