#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TetherRuntime

/// What a task may do beyond the defaults, as `--cap-add`, `--cap-drop`,
/// `--privileged`, `--read-only` and `--user` say it (Docker's and
/// Podman's flags). Only for specs Tether generates.
public struct Confinement: Codable, Sendable, Equatable {
    public var capAdd: [String]?
    public var capDrop: [String]?
    /// Every capability, no seccomp filter, no masked or read-only kernel
    /// paths, the host's devices in /dev and all of them allowed in the
    /// cgroup, /sys and the cgroup mount writable: the container is as
    /// strong as root on the host.
    public var privileged: Bool?
    /// The root filesystem read-only.
    public var readOnly: Bool?
    /// "UID" or "UID:GID", numeric.
    public var user: String?
    /// "audit" or "learn": the syscalls outside the profile go to the
    /// shim's seccomp agent, which refuses (audit) or allows (learn) each
    /// and records it.
    public var seccompAgent: String?

    public init(capAdd: [String]? = nil, capDrop: [String]? = nil, privileged: Bool? = nil, readOnly: Bool? = nil, user: String? = nil) {
        self.capAdd = capAdd
        self.capDrop = capDrop
        self.privileged = privileged
        self.readOnly = readOnly
        self.user = user
    }

    public var isDefault: Bool { self == Confinement() || self == Confinement(capAdd: [], capDrop: [], privileged: false, readOnly: false) }

    /// Every capability Linux has (capability.h, up to CAP_CHECKPOINT_RESTORE).
    public static let allCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    /// `sys_admin`, `SYS_ADMIN` and `CAP_SYS_ADMIN` all name CAP_SYS_ADMIN; "ALL" is every one.
    public static func normalize(_ name: String, flag: String) throws(RuntimeError) -> [String] {
        let upper = name.uppercased()
        if upper == "ALL" { return allCapabilities }
        let full = upper.hasPrefix("CAP_") ? upper : "CAP_" + upper
        guard allCapabilities.contains(full) else {
            throw RuntimeError(.invalidArgument, "\(flag) \(name): no such capability (names such as SYS_ADMIN, NET_ADMIN or CAP_SYS_PTRACE, or ALL)")
        }
        return [full]
    }

    /// The task's capabilities: containerd's defaults (all of them when
    /// privileged), minus --cap-drop, plus --cap-add (an add wins over a drop of ALL).
    /// `available` is the manager's own bounding set (no process can give
    /// more): privileged and ALL mean all of it; naming one outside it is an error.
    public func capabilities(available: Set<String>? = nil) throws(RuntimeError) -> [String] {
        let all = Self.allCapabilities.filter { available?.contains($0) ?? true }
        var caps = Set(privileged == true ? all : OCI.Capabilities.containerdDefault)
        for d in capDrop ?? [] { caps.subtract(try Self.normalize(d, flag: "--cap-drop")) }
        for a in capAdd ?? [] {
            let named = try Self.normalize(a, flag: "--cap-add")
            if named.count == 1, let available, !available.contains(named[0]) {
                throw RuntimeError(.invalidArgument, "--cap-add \(a): tetherd itself does not have \(named[0]) (its bounding set), so no container it starts can")
            }
            caps.formUnion(named.filter { available?.contains($0) ?? true })
        }
        return Self.allCapabilities.filter(caps.contains)
    }

    /// The capabilities in a CapBnd line of /proc/PID/status (hex mask, bit n = capability n).
    public static func fromMask(_ hex: String) -> Set<String> {
        guard let mask = UInt64(hex.filter { !$0.isWhitespace }, radix: 16) else { return [] }
        return Set(allCapabilities.enumerated().filter { mask & (1 << UInt64($0.offset)) != 0 }.map(\.element))
    }

    /// --user as numbers; nil when not given.
    public func ids() throws(RuntimeError) -> (uid: UInt32, gid: UInt32)? {
        guard let user, !user.isEmpty else { return nil }
        let parts = user.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let uid = UInt32(parts[0]), parts.count == 1 || UInt32(parts[1]) != nil else {
            throw RuntimeError(.invalidArgument, "--user \(user): give a numeric UID or UID:GID (0 to 4294967295); the embedded rootfs has no user names to look up")
        }
        return (uid, parts.count == 2 ? UInt32(parts[1])! : 0)
    }
}
