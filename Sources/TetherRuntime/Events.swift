#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An event about a task, as containerd publishes them: a topic, the
/// namespace, when, and the fields of containerd's event message for it.
public struct TaskEvent: Sendable, Codable, Equatable {
    public var timestamp: Date
    public var namespace: String
    public var topic: String
    public var event: Fields

    /// The union of containerd's task event messages (TaskCreate, TaskExit, ...);
    /// each topic sets the fields its message has.
    public struct Fields: Sendable, Codable, Equatable {
        public var containerID: String
        /// TaskExit and TaskDelete: the process, i.e. the exec ID, or the container ID for the init.
        public var id: String?
        public var execID: String?
        public var pid: UInt32?
        public var exitStatus: UInt32?
        public var exitedAt: Date?
        public var bundle: String?
        public var checkpoint: String?
        /// Why the manager, not the shim, produced an exit (a shim died).
        public var reason: String?
        /// /tasks/seccomp: the syscall the task's seccomp agent saw first now.
        public var syscall: String?

        public init(containerID: String, id: String? = nil, execID: String? = nil, pid: UInt32? = nil, exitStatus: UInt32? = nil,
                    exitedAt: Date? = nil, bundle: String? = nil, checkpoint: String? = nil, reason: String? = nil, syscall: String? = nil) {
            self.syscall = syscall
            self.containerID = containerID
            self.id = id
            self.execID = execID
            self.pid = pid
            self.exitStatus = exitStatus
            self.exitedAt = exitedAt
            self.bundle = bundle
            self.checkpoint = checkpoint
            self.reason = reason
        }
    }

    public init(timestamp: Date = Date(), namespace: String, topic: String, event: Fields) {
        self.timestamp = timestamp
        self.namespace = namespace
        self.topic = topic
        self.event = event
    }

    /// containerd's task topics.
    public enum Topic {
        public static let create = "/tasks/create"
        public static let start = "/tasks/start"
        public static let exit = "/tasks/exit"
        public static let delete = "/tasks/delete"
        public static let oom = "/tasks/oom"
        public static let execAdded = "/tasks/exec-added"
        public static let execStarted = "/tasks/exec-started"
        public static let paused = "/tasks/paused"
        public static let resumed = "/tasks/resumed"
        public static let checkpointed = "/tasks/checkpointed"
        /// Tether's own: a task's seccomp agent refused (or, learning, allowed) a syscall for the first time.
        public static let seccomp = "/tasks/seccomp"
    }
}

/// cpu, memory and pids of a task's cgroup (containerd's Stats).
public struct TaskStats: Sendable, Codable, Equatable {
    public var cpuUsageNanos: UInt64
    public var cpuUserNanos: UInt64
    public var cpuKernelNanos: UInt64
    public var memoryUsage: UInt64
    public var memoryMaxUsage: UInt64
    public var memoryLimit: UInt64
    public var pids: UInt64
    public var pidsLimit: UInt64

    public init(cpuUsageNanos: UInt64 = 0, cpuUserNanos: UInt64 = 0, cpuKernelNanos: UInt64 = 0, memoryUsage: UInt64 = 0,
                memoryMaxUsage: UInt64 = 0, memoryLimit: UInt64 = 0, pids: UInt64 = 0, pidsLimit: UInt64 = 0) {
        self.cpuUsageNanos = cpuUsageNanos
        self.cpuUserNanos = cpuUserNanos
        self.cpuKernelNanos = cpuKernelNanos
        self.memoryUsage = memoryUsage
        self.memoryMaxUsage = memoryMaxUsage
        self.memoryLimit = memoryLimit
        self.pids = pids
        self.pidsLimit = pidsLimit
    }
}
