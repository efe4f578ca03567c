import Foundation
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

    /// Limits for the task's cgroup (OCI LinuxResources), each optional.
    public struct Resources: Sendable, Equatable {
        public var memoryLimit: Int64?
        /// CPUs as a fraction: 0.5 is half of one CPU (quota over a 100 ms period).
        public var cpus: Double?
        public var pidsLimit: Int64?

        public init(memoryLimit: Int64? = nil, cpus: Double? = nil, pidsLimit: Int64? = nil) {
            self.memoryLimit = memoryLimit
            self.cpus = cpus
            self.pidsLimit = pidsLimit
        }

        /// As OCI LinuxResources.
        public var json: [String: Any] {
            var r: [String: Any] = [:]
            if let m = memoryLimit { r["memory"] = ["limit": m] }
            if let c = cpus { r["cpu"] = ["quota": Int64((c * 100_000).rounded()), "period": 100_000] }
            if let p = pidsLimit { r["pids"] = ["limit": p] }
            return r
        }
    }

    public static let defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    public static let defaultCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]

    /// A spec for `process` in namespace/id with the rootfs at `rootfs`
    /// (relative to the bundle, as runc resolves it).
    /// `cgroupParent` is the cgroup the task's own goes under (Layout.cgroupParent).
    public static func spec(namespace: String, id: String, process p: Process, rootfs: String = "rootfs",
                            cgroupParent: String = "/tether", resources: Resources = Resources()) -> [String: Any] {
        var env = [defaultPath]
        if p.terminal { env.append("TERM=xterm") }
        for e in p.env {
            let key = e.split(separator: "=", maxSplits: 1).first.map(String.init) ?? e
            env.removeAll { $0.hasPrefix(key + "=") }
            env.append(e)
        }
        let caps = defaultCapabilities
        return [
            "ociVersion": "1.0.2",
            "process": [
                "terminal": p.terminal,
                "user": ["uid": p.uid, "gid": p.gid],
                "args": p.args,
                "env": env,
                "cwd": p.cwd,
                "capabilities": ["bounding": caps, "effective": caps, "permitted": caps],
                "rlimits": [["type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024]],
                "noNewPrivileges": true,
            ] as [String: Any],
            "root": ["path": rootfs, "readonly": false],
            "hostname": String(id.prefix(63)),
            "mounts": [
                mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
                mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
                mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
                mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
                mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
            ],
            "linux": [
                "cgroupsPath": "\(cgroupParent)/\(namespace)/\(id)",
                "resources": resources.json.merging(["devices": [["allow": false, "access": "rwm"]]]) { a, _ in a },
                "namespaces": ["pid", "ipc", "uts", "mount", "network"].map { ["type": $0] },
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                    "/sys/firmware", "/sys/devices/virtual/powercap",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
            ] as [String: Any],
        ]
    }

    public static func specJSON(namespace: String, id: String, process: Process, rootfs: String = "rootfs",
                                cgroupParent: String = "/tether", resources: Resources = Resources()) -> Data {
        // JSONSerialization cannot fail on the plain values above.
        try! JSONSerialization.data(withJSONObject: spec(namespace: namespace, id: id, process: process, rootfs: rootfs,
                                                         cgroupParent: cgroupParent, resources: resources),
                                    options: [.prettyPrinted, .sortedKeys])
    }

    private static func mount(_ destination: String, _ type: String, _ source: String, _ options: [String]) -> [String: Any] {
        ["destination": destination, "type": type, "source": source, "options": options]
    }

    /// The process spec of an exec: the task's own process (user, env,
    /// capabilities, rlimits, no new privileges) with new args, and the env,
    /// cwd and terminal given (as `ctr task exec` does).
    public static func execProcess(taskSpec: Data, args: [String], env: [String], cwd: String?, terminal: Bool) throws(RuntimeError) -> Data {
        guard !args.isEmpty else {
            throw RuntimeError(.invalidArgument, "no command given: name one after --, as in: tether exec TASK -- sh -c 'echo hi'")
        }
        let spec = (try? JSONSerialization.jsonObject(with: taskSpec)) as? [String: Any] ?? [:]
        var process = spec["process"] as? [String: Any] ?? ["user": ["uid": 0, "gid": 0], "cwd": "/", "env": [defaultPath]]
        process["args"] = args
        process["terminal"] = terminal
        if let cwd { process["cwd"] = cwd }
        var merged = process["env"] as? [String] ?? [defaultPath]
        for e in env {
            let key = e.split(separator: "=", maxSplits: 1).first.map(String.init) ?? e
            merged.removeAll { $0.hasPrefix(key + "=") }
            merged.append(e)
        }
        process["env"] = merged
        guard let data = try? JSONSerialization.data(withJSONObject: process, options: [.sortedKeys]) else {
            throw RuntimeError(.internal, "cannot encode the exec's process spec")
        }
        return data
    }

    /// Checks that `data` is an OCI spec we can hand to a runtime: a JSON
    /// object with a process and a root. Returns the parsed object.
    public static func validate(_ data: Data, source: String) throws(RuntimeError) -> [String: Any] {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            let why = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            throw RuntimeError(.invalidArgument, "\(source) is not valid JSON (\(why)): fix it, or generate one with 'runc spec'")
        }
        guard let spec = object as? [String: Any] else {
            throw RuntimeError(.invalidArgument, "\(source) is not a JSON object: an OCI spec is one, see 'runc spec'")
        }
        guard let process = spec["process"] as? [String: Any], let args = process["args"] as? [String], !args.isEmpty else {
            throw RuntimeError(.invalidArgument, "\(source) has no process.args: name the command to run")
        }
        guard let root = spec["root"] as? [String: Any], root["path"] is String else {
            throw RuntimeError(.invalidArgument, "\(source) has no root.path: name the container's root filesystem")
        }
        return spec
    }
}
