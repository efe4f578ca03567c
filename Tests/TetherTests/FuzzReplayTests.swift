import Foundation
import Testing
import TetherFuzz

/// The fuzz targets (scripts/fuzz runs them under libFuzzer) replayed on
/// their seed corpus, which also keeps every input a fuzzer ever crashed
/// them with, and on a few thousand seeded mutations of it: a crash here
/// fails the suite.
@Suite("fuzz targets: corpus replay")
struct FuzzReplayTests {
    static var corpus: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz").path
    }

    /// A small deterministic generator (SplitMix64), so a failure is repeatable.
    struct Mix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func mutate(_ seed: [UInt8], _ rng: inout Mix) -> [UInt8] {
        var b = seed
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            switch Int.random(in: 0..<5, using: &rng) {
            case 0 where !b.isEmpty: b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            case 1 where !b.isEmpty: b.removeSubrange(Int.random(in: 0..<b.count, using: &rng)...)
            case 2: b.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...b.count, using: &rng))
            case 3 where !b.isEmpty: b[Int.random(in: 0..<b.count, using: &rng)] = [0, 0xFF, 0x7F, 0x80, 0x22, 0x5C][Int.random(in: 0..<6, using: &rng)]
            default: b += b.prefix(Int.random(in: 0...min(64, b.count), using: &rng))
            }
        }
        return b
    }

    @Test("every seed and 2000 mutations of each, through both targets, without a crash", arguments: FuzzTargets.all.map(\.0))
    func replay(target: String) throws {
        let run = try #require(FuzzTargets.all.first { $0.0 == target }?.1)
        let dir = "\(Self.corpus)/\(target)"
        let seeds = try FileManager.default.contentsOfDirectory(atPath: dir).sorted().map { [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\($0)"))) }
        #expect(seeds.count >= 3, "the \(target) corpus in \(dir) is missing")
        var rng = Mix(state: 0x7E7E_7E7E)
        for seed in seeds {
            run(seed)
            for _ in 0..<2000 { run(Self.mutate(seed, &rng)) }
        }
    }
}
