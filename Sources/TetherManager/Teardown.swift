import Foundation
import TetherRuntime
import TetherSys

/// The one way a task's container and files are taken apart, whatever
/// happened before: a failed create, a delete, a dead shim, a task an
/// earlier manager left half made, an unreadable record. Each step is safe
/// to repeat and runs even when an earlier one failed:
///
/// 1. `runtime delete --force ID` (kills what is left, removes its state),
///    unless the shim's own delete succeeded and the runtime has no state
///    left for the ID (a runc call saved on every ordinary delete);
/// 2. whatever the runtime could not remove (a full disk, a runtime killed
///    mid-create): the processes in the task's cgroup are killed and the
///    cgroup removed, and the runtime's state directory for the ID removed,
///    so the ID can be used again;
/// 3. every mount under the bundle, taken down without reaching anyone
///    else's mounts (Mounts.unmountTree);
/// 4. with `removeFiles`, the bundle and the task's scratch directory.
struct Teardown: Sendable {
    let runtime: ShimRuntime

    /// How long `runtime delete --force` may take before it is killed.
    static let runtimeDeadline: Duration = .seconds(30)

    /// Returns what could not be done, one line each (logged as well).
    @discardableResult
    /// `runtimeDeleted`: the shim's own `runtime delete` succeeded; the
    /// runtime is called again only if it still has state for the ID.
    func run(_ r: TaskRecord, spec: Data, removeFiles: Bool, runtimeDeleted: Bool = false) async -> [String] {
        var problems: [String] = []
        let layout = runtime.layout
        let runtimeRoot = layout.runtimeRoot(r.namespace)
        if !runtimeDeleted || Files.exists("\(runtimeRoot)/\(r.id)") {
            let code = await runtime.runRuntime(r.runtime, ["--root", runtimeRoot, "delete", "--force", r.id], deadline: Self.runtimeDeadline)
            if code != 0 && Files.exists("\(runtimeRoot)/\(r.id)") {
                problems.append("\(Files.basename(r.runtime)) delete --force \(r.id) \(code.map { "exited with status \($0)" } ?? "did not finish")")
            }
        }
        // Only the task's own cgroup, exactly: a bundle may name any cgroup
        // at all (another task's, a system slice), and that is never ours to kill.
        let own = layout.cgroup(r.namespace, r.id)
        if Cgroups.path(inSpec: Array(spec)) == own {
            for e in await runtime.onDisk({ runtime.cgroups.remove(own) }) { problems.append("cgroup: \(e)") }
        }
        // The rest is disk work (a writable layer can be large): on the manager's own threads.
        problems += await runtime.onDisk { () -> [String] in
            var problems: [String] = []
            if Files.exists("\(runtimeRoot)/\(r.id)") {
                do { try Files.removeTree("\(runtimeRoot)/\(r.id)") } catch { problems.append("runtime state: \(error)") }
            }
            for e in Mounts.unmountTree(under: r.bundle) { problems.append("unmount: \(e)") }
            if removeFiles {
                do { try Files.removeTree(r.bundle) } catch { problems.append("bundle: \(error)") }
                if let s = r.scratch {
                    do { try Files.removeTree(s) } catch { problems.append("scratch: \(error)") }
                }
            }
            return problems
        }
        for p in problems {
            runtime.logger.error("teardown of \(r.namespace)/\(r.id): \(p)")
        }
        return problems
    }
}
