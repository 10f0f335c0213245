// swift-tools-version: 6.0
import PackageDescription

/// Hot loops use SIMD types; without a target CPU Swift lowers `addProduct` to scalar `fmaf` calls.
/// x86-64-v3 (AVX2, FMA, F16C) is the 2013+ baseline every machine this runs on has.
#if arch(x86_64)
let simdFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-march=x86-64-v3"])]
#else
let simdFlags: [SwiftSetting] = []
#endif

let package = Package(
    name: "moe",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "moe", targets: ["moe"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Tokenizers", targets: ["Tokenizers"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        // A header only: the processor's spin-wait hint for the kernel threads (no library to link).
        .systemLibrary(name: "CSpin"),
        .target(
            name: "Kernels",
            dependencies: ["COpenBLAS", "CSpin"],
            swiftSettings: simdFlags
        ),
        .target(
            name: "Models",
            dependencies: ["Kernels"],
            swiftSettings: simdFlags
        ),
        .systemLibrary(
            name: "CCbc",
            pkgConfig: "cbc",
            providers: [.apt(["coinor-libcbc-dev"])]
        ),
        .target(name: "Comm", dependencies: ["CMPI"]),
        .target(
            name: "Tokenizers",
            dependencies: [
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "OrderedCollections", package: "swift-collections"),
            ]
        ),
        .target(
            name: "Wire",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: []
        ),
        .target(
            name: "Placement",
            dependencies: ["CCbc", "COpenBLAS", "Wire", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .target(
            name: "Cluster",
            dependencies: ["Models", "Kernels", "Comm", "Placement", "Wire"],
            swiftSettings: simdFlags
        ),
        .executableTarget(
            name: "moe",
            dependencies: [
                "Models",
                "Kernels",
                "Cluster",
                "Comm",
                "Placement",
                "Wire",
                "Tokenizers",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "OrderedCollections", package: "swift-collections"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            resources: [.copy("Resources/mixtral-tokenizer")],
            swiftSettings: simdFlags
        ),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"], swiftSettings: simdFlags),
        .testTarget(
            name: "ModelsTests",
            dependencies: ["Models", "Kernels"],
            swiftSettings: simdFlags
        ),
        .testTarget(name: "PlacementTests", dependencies: ["Placement", "Wire"]),
        .testTarget(name: "CommTests", dependencies: ["Comm"]),
        .testTarget(
            name: "TokenizersTests",
            dependencies: ["Tokenizers", .product(name: "OrderedCollections", package: "swift-collections")]
        ),
        .testTarget(
            name: "moeTests",
            dependencies: ["moe", "Models", "Placement", "Cluster", .product(name: "Yams", package: "Yams")],
            swiftSettings: simdFlags
        ),
    ],
    swiftLanguageModes: [.v6]
)
