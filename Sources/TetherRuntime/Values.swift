#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The value types of containerd's runtime package (v1.0), in Swift.

/// Where a process's stdio goes: paths the shim opens (FIFOs or files).
/// An empty path means /dev/null.
public struct IO: Sendable, Codable, Equatable {
    public var stdin: String
    public var stdout: String
    public var stderr: String
    public var terminal: Bool

    public init(stdin: String = "", stdout: String = "", stderr: String = "", terminal: Bool = false) {
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.terminal = terminal
    }
}

/// A mount made at the task's rootfs before the container is created
/// (containerd.types.Mount). `target` is relative to the rootfs; empty is the rootfs itself.
public struct Mount: Sendable, Codable, Equatable {
    public var type: String
    public var source: String
    public var target: String
    public var options: [String]

    public init(type: String, source: String, target: String = "", options: [String] = []) {
        self.type = type
        self.source = source
        self.target = target
        self.options = options
    }
}

/// What a new task is made of.
public struct CreateOpts: Sendable {
    /// The OCI runtime spec (config.json) as JSON.
    public var spec: Data
    /// Mounts that make up the rootfs, mounted in order before the container is created.
    public var rootfs: [Mount]
    public var io: IO
    /// A checkpoint directory to restore from, or empty.
    public var checkpoint: String
    /// Runtime-specific options as JSON, or nil.
    public var options: Data?

    public init(spec: Data, rootfs: [Mount] = [], io: IO = IO(), checkpoint: String = "", options: Data? = nil) {
        self.spec = spec
        self.rootfs = rootfs
        self.io = io
        self.checkpoint = checkpoint
        self.options = options
    }
}

/// A process to exec into a running task.
public struct ExecOpts: Sendable {
    /// The OCI process spec (args, env, cwd, user, terminal) as JSON.
    public var spec: Data
    public var io: IO

    public init(spec: Data, io: IO = IO()) {
        self.spec = spec
        self.io = io
    }
}

/// How a process ended. `status` is the exit code, or 128 + the signal number
/// for a death by signal (so SIGKILL is 137 and SIGTERM 143).
public struct Exit: Sendable, Codable, Equatable {
    public var pid: UInt32
    public var status: UInt32
    public var timestamp: Date

    public init(pid: UInt32, status: UInt32, timestamp: Date) {
        self.pid = pid
        self.status = status
        self.timestamp = timestamp
    }
}

/// A task's or process's lifecycle state. containerd's raw values are kept
/// (created = 1 ... paused = 5); JSON carries the names.
public enum Status: String, Sendable, Codable, CaseIterable {
    case created, running, stopped, deleted, paused

    /// containerd's runtime.Status number.
    public var number: Int {
        switch self {
        case .created: 1
        case .running: 2
        case .stopped: 3
        case .deleted: 4
        case .paused: 5
        }
    }
}

/// What State returns for a task or process.
public struct State: Sendable, Codable, Equatable {
    public var status: Status
    public var pid: UInt32
    public var stdin: String
    public var stdout: String
    public var stderr: String
    public var terminal: Bool
    /// Set once the process has exited (status stopped or deleted).
    public var exit: Exit?

    public init(status: Status, pid: UInt32, stdin: String = "", stdout: String = "", stderr: String = "",
                terminal: Bool = false, exit: Exit? = nil) {
        self.status = status
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.terminal = terminal
        self.exit = exit
    }
}

/// A terminal's size in character cells.
public struct ConsoleSize: Sendable, Codable, Equatable {
    public var width: UInt32
    public var height: UInt32

    public init(width: UInt32, height: UInt32) {
        self.width = width
        self.height = height
    }
}

/// What a task is: its id, the runtime that runs it, its spec and namespace.
public struct TaskInfo: Sendable, Codable, Equatable {
    public var id: String
    public var runtime: String
    public var spec: Data
    public var namespace: String

    public init(id: String, runtime: String, spec: Data, namespace: String) {
        self.id = id
        self.runtime = runtime
        self.spec = spec
        self.namespace = namespace
    }
}
