import Foundation
import TetherSys

/// Pause points for fault-injection tests: with TETHER_TEST_HOOKS=DIR in the
/// manager's environment, reaching point P while DIR/P.pause exists creates
/// DIR/P.reached and waits until the pause file is gone. A test then kills
/// the manager at exactly that point. Without the variable this is one
/// dictionary lookup per call.
enum TestHook {
    static let dir = ProcessInfo.processInfo.environment["TETHER_TEST_HOOKS"]

    static func reach(_ point: String) async {
        guard let dir, Files.exists("\(dir)/\(point).pause") else { return }
        try? Files.writeAtomically("\(dir)/\(point).reached", [])
        while Files.exists("\(dir)/\(point).pause") {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
    }
}
