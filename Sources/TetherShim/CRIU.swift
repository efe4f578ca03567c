#if canImport(Glibc)
import Glibc
#endif
import TTRPC
import TetherSys

/// Why a checkpoint or restore failed, in one line: if `criu check` fails,
/// CRIU is unusable on this machine at all, and its own words say why; else
/// the last error CRIU logged for this task.
enum CRIU {
    static func diagnose(_ error: any Error, workDir: String, reaper: Reaper) async -> String {
        let runtimeMessage = ((error as? RPCError)?.message ?? "\(error)").split(separator: "\n").joined(separator: "; ")
        guard let criu = Spawn.lookPath("criu") else {
            return "CRIU is not installed (apt-get install criu) (\(runtimeMessage))"
        }
        let log = "\(workDir)/check.log"
        if let out = try? FD.open(log, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600) {
            var o = Spawn.Options()
            o.fds = [-1, out.raw, out.raw]
            if let code = try? await reaper.run(criu, [criu, "check"], o, deadline: 30_000_000_000), code != 0 {
                // Its first real error says why; its last, what it could not do.
                let errors = ((try? Files.readString(log)) ?? "").split(separator: "\n")
                    .filter { $0.contains("Error") && !$0.contains("exited, status") }
                    .map { line in line.firstRange(of: "): ").map { String(line[$0.upperBound...]) } ?? String(line) }
                let why = errors.count > 1 ? "\(errors.first!) … \(errors.last!)" : errors.first ?? "it failed"
                return "CRIU is unusable on this machine: criu check says \"\(why)\" (\(runtimeMessage))"
            }
        }
        for name in ["dump.log", "restore.log"] {
            guard let text = try? Files.readString("\(workDir)/\(name)") else { continue }
            if let line = text.split(separator: "\n").last(where: { $0.contains("Error") }) {
                return "CRIU failed: \(line.trimmingPrefix(while: { $0 == " " })) (\(runtimeMessage))"
            }
        }
        return runtimeMessage
    }
}

/// A lock for tasks on one event loop: waiters go in turn.
final class LoopLock: @unchecked Sendable {
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func lock() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func unlock() {
        if waiters.isEmpty { held = false } else { waiters.removeFirst().resume() }
    }
}
