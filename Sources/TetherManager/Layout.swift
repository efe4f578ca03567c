#if canImport(Glibc)
import Glibc
#endif
import TetherRuntime
import TetherSys

/// Where the manager keeps things. `state` is volatile (/run: tasks die with
/// the machine, so does their state); `root` is persistent (/var/lib).
///
///     <state>/tetherd.sock                  HTTP API (0600)
///     <state>/tetherd.pid
///     <state>/exits.fifo                    the exit pipe: every shim writes, tetherd reads
///     <state>/runc/<ns>/                    the OCI runtime's --root, one per namespace
///     <state>/tasks/                        a private bind mount of itself (rootfs mounts never propagate)
///     <state>/tasks/<ns>/<id>/              bundle and task state dir (0700), see TaskRecord
///     <root>/rootfs/busybox/                the embedded default rootfs (scripts/make-rootfs)
///     <root>/tasks/<ns>/<id>/{upper,work}   writable overlay layer over the default rootfs
public struct Layout: Sendable {
    public let root: String
    public let state: String

    public init(root: String, state: String) {
        self.root = root
        self.state = state
    }

    public var exitFifo: String { "\(state)/exits.fifo" }

    /// The cgroup tasks go under: /tether for the default state directory,
    /// /tether-HASH for any other, so that two managers never share a task's
    /// cgroup (runc's kill --all and delete --force act on the whole cgroup).
    public var cgroupParent: String {
        if state == "/run/tether" { return "/tether" }
        var h: UInt32 = 2_166_136_261  // FNV-1a
        for b in state.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return "/tether-" + String(h, radix: 16)
    }
    /// The cgroup of task namespace/id: the only one under `cgroupParent` a
    /// task's spec may name, and the only one Teardown ever removes.
    public func cgroup(_ namespace: String, _ id: String) -> String { "\(cgroupParent)/\(namespace)/\(id)" }
    public var pidFile: String { "\(state)/tetherd.pid" }
    public var tasksDir: String { "\(state)/tasks" }
    public var defaultRootfs: String { "\(root)/rootfs/busybox" }

    /// The directories a manager needs, each with its mode, and the tasks
    /// directory as a private mount of its own. Every directory is 0700:
    /// no other user reaches a bundle, a socket, a FIFO, a log or a task's
    /// writable layer (where a container may leave a setuid file). Modes an
    /// older version left are fixed here, task by task.
    public func prepare() throws {
        for dir in [state, tasksDir, "\(state)/runc", root, "\(root)/tasks"] {
            try Files.ensureDirectory(dir, mode: 0o700)
        }
        for base in [tasksDir, "\(root)/tasks", "\(state)/runc"] {
            for ns in (try? Files.listDirectory(base)) ?? [] where Identifier.isValid(ns) {
                try Files.ensureDirectory("\(base)/\(ns)", mode: 0o700)
                guard base != "\(state)/runc" else { continue }
                for id in (try? Files.listDirectory("\(base)/\(ns)")) ?? [] where Identifier.isValid(id) {
                    try Files.ensureDirectory("\(base)/\(ns)/\(id)", mode: 0o700)
                }
            }
        }
        // Mounts made for tasks (their rootfs) then never propagate to other
        // mount namespaces, as Docker does with its own directories.
        if !Mounts.isMountPoint(tasksDir) {
            try Mounts.mount(source: tasksDir, target: tasksDir, type: nil, flags: UInt(MS_BIND), data: nil)
        }
        try Mounts.makePrivate(tasksDir, recursive: false)
    }

    public func runtimeRoot(_ namespace: String) -> String { "\(state)/runc/\(namespace)" }
    public func bundle(_ namespace: String, _ id: String) -> String { "\(state)/tasks/\(namespace)/\(id)" }
    public func scratch(_ namespace: String, _ id: String) -> String { "\(root)/tasks/\(namespace)/\(id)" }
    public func record(_ namespace: String, _ id: String) -> String { "\(bundle(namespace, id))/task.json" }
}
