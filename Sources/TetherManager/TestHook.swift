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

/// Faults a test asks the manager to act out, from TETHER_TEST_FAULTS (a
/// comma-separated list), read once. Without the variable, nothing changes.
enum TestFault {
    static let list: Set<String> = Set((ProcessInfo.processInfo.environment["TETHER_TEST_FAULTS"] ?? "").split(separator: ",").map(String.init))
    /// pidfd_open fails (as with no fds left): the manager must still reap and kill what it started.
    static let pidfdOpen = list.contains("pidfd_open")
}
