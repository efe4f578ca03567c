import Foundation
import TetherOCI
import TetherRuntime

/// OCI runtime specs (config.json) with the defaults `runc spec` and
/// `ctr run` use: new pid, ipc, uts, mount and network namespaces; /proc,
/// /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and a read-only cgroup mount;
/// containerd's default capability set; no new privileges; the kernel paths
/// containers must not see masked or read-only; every device denied.
public enum SpecBuilder {
    public struct Process: Sendable {
        public var args: [String]
        public var env: [String] = []
        public var cwd = "/"
        public var terminal = false
        public var uid: UInt32 = 0
        public var gid: UInt32 = 0

        public init(args: [String], env: [String] = [], cwd: String = "/", terminal: Bool = false) {
            self.args = args
            self.env = env
            self.cwd = cwd
            self.terminal = terminal
        }
    }

    public static let defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    public static let defaultCapabilities = OCI.Capabilities.containerdDefault

    /// A spec for `process` in namespace/id with the rootfs at `rootfs`
    /// (relative to the bundle, as runc resolves it).
    /// `cgroupParent` is the cgroup the task's own goes under (Layout.cgroupParent).
    /// `resources` must have passed `validate()`.
    /// `capabilities` replace the default set; `privileged` drops the masked
    /// and read-only paths and allows every device (Confinement says what
    /// else it means); `readOnly` makes the root filesystem read-only.
    public static func spec(namespace: String, id: String, process p: Process, rootfs: String = "rootfs",
                            cgroupParent: String = "/tether", resources: ResourceLimits = ResourceLimits(),
                            capabilities: [String] = defaultCapabilities, privileged: Bool = false, readOnly: Bool = false) -> OCI.Spec {
        var env = [defaultPath]
        if p.terminal { env.append("TERM=xterm") }
        env = merge(env, p.env)
        var process = OCI.Process(terminal: p.terminal, user: OCI.User(uid: p.uid, gid: p.gid), args: p.args, env: env, cwd: p.cwd,
                                  capabilities: OCI.Capabilities(capabilities),
                                  rlimits: [OCI.Rlimit(type: "RLIMIT_NOFILE", hard: 1024, soft: 1024)],
                                  noNewPrivileges: true)
        process.terminal = p.terminal
        var limits = resources.linuxResources
        limits.devices = [OCI.LinuxResources.DeviceRule(allow: privileged, access: "rwm")]
        let sysfs = privileged ? ["nosuid", "noexec", "nodev"] : ["nosuid", "noexec", "nodev", "ro"]
        let cgroupfs = privileged ? ["nosuid", "noexec", "nodev", "relatime"] : ["nosuid", "noexec", "nodev", "relatime", "ro"]
        var spec = OCI.Spec(
            process: process,
            root: OCI.Root(path: rootfs, readonly: readOnly),
            hostname: String(id.prefix(63)),
            mounts: [
                mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
                mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
                mount("/sys", "sysfs", "sysfs", sysfs),
                mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroupfs),
            ],
            linux: OCI.Linux(
                namespaces: ["pid", "ipc", "uts", "mount", "network"].map { OCI.Namespace(type: $0) },
                cgroupsPath: "\(cgroupParent)/\(namespace)/\(id)",
                resources: limits,
                maskedPaths: [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                    "/sys/firmware", "/sys/devices/virtual/powercap",
                ],
                readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]))
        if privileged {
            spec.linux?.maskedPaths = nil
            spec.linux?.readonlyPaths = nil
        }
        return spec
    }

    public static func specJSON(namespace: String, id: String, process: Process, rootfs: String = "rootfs",
                                cgroupParent: String = "/tether", resources: ResourceLimits = ResourceLimits()) -> Data {
        Data(SpecCheck.encode(spec(namespace: namespace, id: id, process: process, rootfs: rootfs,
                                   cgroupParent: cgroupParent, resources: resources)))
    }

    private static func mount(_ destination: String, _ type: String, _ source: String, _ options: [String]) -> OCI.Mount {
        OCI.Mount(destination: destination, type: type, source: source, options: options)
    }

    /// `base` with each K=V of `extra` replacing the entry for K, or added.
    static func merge(_ base: [String], _ extra: [String]) -> [String] {
        var env = base
        for e in extra {
            let key = e.split(separator: "=", maxSplits: 1).first.map(String.init) ?? e
            env.removeAll { $0 == key || $0.hasPrefix(key + "=") }
            env.append(e)
        }
        return env
    }

    /// The process spec of an exec: the task's own process (user, env,
    /// capabilities, rlimits, no new privileges, and whatever else the
    /// task's spec gives it) with new args, and the env, cwd and terminal
    /// given (as `ctr task exec` does).
    public static func execProcess(taskSpec: Data, args: [String], env: [String], cwd: String?, terminal: Bool) throws(RuntimeError) -> Data {
        guard !args.isEmpty else {
            throw RuntimeError(.invalidArgument, "no command given: name one after --, as in: tether exec TASK -- sh -c 'echo hi'")
        }
        var process = (try? JSONDecoder().decode(JSONValue.self, from: taskSpec))?["process"]
            ?? .object(["user": .object(["uid": .int(0), "gid": .int(0)]), "cwd": .string("/")])
        process["args"] = .array(args.map(JSONValue.string))
        process["terminal"] = .bool(terminal)
        if let cwd { process["cwd"] = .string(cwd) }
        var base: [String] = [defaultPath]
        if case .array(let a)? = process["env"] { base = a.compactMap(\.stringValue) }
        process["env"] = .array(merge(base, env).map(JSONValue.string))
        process["consoleSize"] = nil
        return Data(SpecCheck.encode(process))
    }
}
