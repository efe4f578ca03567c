// swift-tools-version:6.1
//
// libFuzzer targets for the decoders that take input from other processes
// (TetherFuzz in the main package). Built by scripts/fuzz with
// -sanitize=fuzzer,address and -parse-as-library: libFuzzer brings main().
import PackageDescription

let package = Package(
    name: "TetherFuzzTesting",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "tether", path: "..")],
    targets: [
        .executableTarget(name: "FuzzTTRPC", dependencies: [.product(name: "TetherFuzz", package: "tether")]),
        .executableTarget(name: "FuzzAPI", dependencies: [.product(name: "TetherFuzz", package: "tether")]),
    ]
)
