import CTether
import Foundation
import Synchronization
import TetherRuntime
import TetherSys

/// What ShimRuntime does besides tasks' lifecycles: the stdio FIFOs it makes
/// for clients, and the runtime calls it makes itself (teardown).
extension ShimRuntime {
    // MARK: - stdio FIFOs the manager owns

    /// IO paths for FIFOs the manager makes in the task's bundle (and removes
    /// with it): clients attach to them, detach, and attach again. stdout and
    /// stderr always; stdin when asked; a terminal merges stderr into stdout.
    public func fifoIO(namespace: String, id: String, execID: String? = nil, stdin: Bool, terminal: Bool) -> IO {
        let base = "\(layout.bundle(namespace, id))/io/\(execID.map { "exec-\($0)" } ?? "init")"
        return IO(stdin: stdin ? "\(base).stdin" : "", stdout: "\(base).stdout",
                  stderr: terminal ? "" : "\(base).stderr", terminal: terminal)
    }

    /// Makes the FIFOs of `io` that lie in the bundle's io/ directory.
    func makeFifos(_ io: IO, bundle: String) throws {
        for path in [io.stdin, io.stdout, io.stderr] where path.hasPrefix("\(bundle)/io/") {
            try Files.makeDirectories("\(bundle)/io")
            try Files.makeFifo(path)
        }
    }

    func removeFifos(_ io: IO, bundle: String) {
        for path in [io.stdin, io.stdout, io.stderr] where path.hasPrefix("\(bundle)/io/") { unlink(path) }
    }

    // MARK: - helpers

    /// Runs the OCI runtime for cleanup and returns its exit code; nil when
    /// it could not be started or had to be killed at `deadline`. The child
    /// is watched from the moment it exists, so it is always reaped.
    func runRuntime(_ binary: String, _ args: [String], deadline: Duration) async -> Int32? {
        let pid: Int32
        do { pid = try Spawn.spawn(binary, [binary] + args) } catch {
            logger.error("cannot run \(binary): \(error)")
            return nil
        }
        let killed = Flag()
        let timer = Task { [watcher] in
            try? await Task.sleep(for: deadline)
            if !Task.isCancelled && watcher.signal(pid, SIGKILL) { killed.set() }
        }
        let code = await withCheckedContinuation { (c: CheckedContinuation<Int32?, Never>) in
            if !watcher.watch(pid, onExit: { code in c.resume(returning: code) }) {
                // No pidfd: it is killed (our unreaped child: the pid is still
                // its own) and reaped, rather than left without a deadline.
                kill(pid, SIGKILL)
                killed.set()
                let reap: @Sendable () -> Void = {
                    var status: Int32 = 0
                    _ = tether_wait_pid(pid, &status)
                    c.resume(returning: nil)
                }
                if (try? OSThread.start("runtime-wait", reap)) == nil { reap() }  // killed: this wait is short
            }
        }
        timer.cancel()
        if killed.isSet {
            logger.error("\(binary) \(args.joined(separator: " ")) did not finish within \(deadline) and was killed")
            return nil
        }
        return code
    }

    static func newInstance() -> String {
        var g = SystemRandomNumberGenerator()
        return String(g.next() as UInt64, radix: 16)
    }
}
