#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The parts of the OCI runtime spec (config.json, runtime-spec 1.0.2) that
// Tether writes or checks. Decoding a whole spec into these ignores what they
// do not name; a spec Tether did not generate is edited as a JSONValue, so
// nothing of it is lost.

/// The OCI runtime spec's types, by their spec names.
public enum OCI {}

extension OCI {
    public struct Spec: Codable, Sendable, Equatable {
        public var ociVersion: String
        public var process: Process?
        public var root: Root?
        public var hostname: String?
        public var mounts: [Mount]?
        public var linux: Linux?
        public var annotations: [String: String]?

        public init(ociVersion: String = "1.0.2", process: Process? = nil, root: Root? = nil, hostname: String? = nil,
                    mounts: [Mount]? = nil, linux: Linux? = nil, annotations: [String: String]? = nil) {
            self.ociVersion = ociVersion
            self.process = process
            self.root = root
            self.hostname = hostname
            self.mounts = mounts
            self.linux = linux
            self.annotations = annotations
        }
    }

    public struct Process: Codable, Sendable, Equatable {
        public var terminal: Bool?
        public var consoleSize: ConsoleBox?
        public var user: User
        public var args: [String]?
        public var env: [String]?
        public var cwd: String
        public var capabilities: Capabilities?
        public var rlimits: [Rlimit]?
        public var noNewPrivileges: Bool?
        public var apparmorProfile: String?
        public var oomScoreAdj: Int?
        public var selinuxLabel: String?

        public init(terminal: Bool? = nil, user: User = User(), args: [String]? = nil, env: [String]? = nil, cwd: String = "/",
                    capabilities: Capabilities? = nil, rlimits: [Rlimit]? = nil, noNewPrivileges: Bool? = nil) {
            self.terminal = terminal
            self.user = user
            self.args = args
            self.env = env
            self.cwd = cwd
            self.capabilities = capabilities
            self.rlimits = rlimits
            self.noNewPrivileges = noNewPrivileges
        }
    }

    public struct ConsoleBox: Codable, Sendable, Equatable {
        public var height: UInt
        public var width: UInt
        public init(height: UInt, width: UInt) { self.height = height; self.width = width }
    }

    public struct User: Codable, Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var umask: UInt32?
        public var additionalGids: [UInt32]?
        public init(uid: UInt32 = 0, gid: UInt32 = 0) { self.uid = uid; self.gid = gid }
    }

    public struct Capabilities: Codable, Sendable, Equatable {
        /// containerd's default set, which Tether gives every task it makes a spec for.
        public static let containerdDefault = [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
        ]

        public var bounding: [String]?
        public var effective: [String]?
        public var inheritable: [String]?
        public var permitted: [String]?
        public var ambient: [String]?

        /// The same set as bounding, effective and permitted (what `runc spec` and containerd do).
        public init(_ caps: [String]) {
            bounding = caps
            effective = caps
            permitted = caps
        }
    }

    public struct Rlimit: Codable, Sendable, Equatable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64
        public init(type: String, hard: UInt64, soft: UInt64) { self.type = type; self.hard = hard; self.soft = soft }
    }

    public struct Root: Codable, Sendable, Equatable {
        public var path: String
        public var readonly: Bool?
        public init(path: String, readonly: Bool? = nil) { self.path = path; self.readonly = readonly }
    }

    public struct Mount: Codable, Sendable, Equatable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]?
        public init(destination: String, type: String?, source: String?, options: [String]?) {
            self.destination = destination
            self.type = type
            self.source = source
            self.options = options
        }
    }

    public struct Linux: Codable, Sendable, Equatable {
        public var namespaces: [Namespace]?
        public var cgroupsPath: String?
        public var resources: LinuxResources?
        public var maskedPaths: [String]?
        public var readonlyPaths: [String]?
        public var rootfsPropagation: String?
        public var sysctl: [String: String]?
        public var seccomp: Seccomp?
        public var devices: [Device]?

        public init(namespaces: [Namespace]? = nil, cgroupsPath: String? = nil, resources: LinuxResources? = nil,
                    maskedPaths: [String]? = nil, readonlyPaths: [String]? = nil) {
            self.namespaces = namespaces
            self.cgroupsPath = cgroupsPath
            self.resources = resources
            self.maskedPaths = maskedPaths
            self.readonlyPaths = readonlyPaths
        }
    }

    /// A device node runc makes in the container's /dev.
    public struct Device: Codable, Sendable, Equatable {
        public var path: String
        public var type: String
        public var major: Int64
        public var minor: Int64
        public var fileMode: UInt32?
        public var uid: UInt32?
        public var gid: UInt32?

        public init(path: String, type: String, major: Int64, minor: Int64, fileMode: UInt32?, uid: UInt32?, gid: UInt32?) {
            self.path = path
            self.type = type
            self.major = major
            self.minor = minor
            self.fileMode = fileMode
            self.uid = uid
            self.gid = gid
        }
    }

    public struct Namespace: Codable, Sendable, Equatable {
        public var type: String
        public var path: String?
        public init(type: String, path: String? = nil) { self.type = type; self.path = path }
    }

    /// OCI LinuxResources: the task's cgroup limits, as create's spec and
    /// update carry them. Integer fields are the types runc decodes them into,
    /// so a number runc would refuse (1e300, a negative period) fails here first.
    public struct LinuxResources: Codable, Sendable, Equatable {
        public var devices: [DeviceRule]?
        public var memory: Memory?
        public var cpu: CPU?
        public var pids: Pids?

        public init(devices: [DeviceRule]? = nil, memory: Memory? = nil, cpu: CPU? = nil, pids: Pids? = nil) {
            self.devices = devices
            self.memory = memory
            self.cpu = cpu
            self.pids = pids
        }

        public struct DeviceRule: Codable, Sendable, Equatable {
            public var allow: Bool
            public var type: String?
            public var major: Int64?
            public var minor: Int64?
            public var access: String?
            public init(allow: Bool, access: String?) { self.allow = allow; self.access = access }
        }

        public struct Memory: Codable, Sendable, Equatable {
            public var limit: Int64?
            public var reservation: Int64?
            public var swap: Int64?
            public var kernel: Int64?
            public var swappiness: UInt64?
            public var disableOOMKiller: Bool?
            public init(limit: Int64?) { self.limit = limit }
        }

        public struct CPU: Codable, Sendable, Equatable {
            public var shares: UInt64?
            public var quota: Int64?
            public var period: UInt64?
            public var realtimeRuntime: Int64?
            public var realtimePeriod: UInt64?
            public var cpus: String?
            public var mems: String?
            public init(quota: Int64?, period: UInt64?) { self.quota = quota; self.period = period }
        }

        public struct Pids: Codable, Sendable, Equatable {
            public var limit: Int64
            public init(limit: Int64) { self.limit = limit }
        }
    }
}
