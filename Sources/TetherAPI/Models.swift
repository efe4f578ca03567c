#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import TetherOCI
import TetherRuntime

// The JSON of tetherd's HTTP API (docs/api.md). Shared by the server and the CLI.

/// POST /v1/namespaces/{ns}/tasks
public struct CreateTaskRequest: Codable, Sendable {
    public var id: String
    /// The command, when the server builds the OCI spec (ignored with `spec` or `bundle`).
    public var args: [String]?
    public var env: [String]?
    public var cwd: String?
    /// A directory holding the container's root filesystem, used as is (bind mount).
    public var rootfs: String?
    /// An OCI bundle directory (config.json, and its root.path).
    public var bundle: String?
    /// A whole OCI spec; its root.path must be absolute. Numbers pass
    /// through digit for digit (JSONValue keeps integers as integers).
    public var spec: JSONValue?
    /// Paths the shim opens for stdio (FIFOs or files), or
    public var io: IOView?
    /// FIFOs the manager makes and keeps for the task's life, to attach to.
    public var fifos: FifoRequest?
    /// Also write stdout and stderr to a log file (CRI format).
    public var log: LogRequest?
    /// Limits for the task's cgroup (with a generated spec).
    public var resources: ResourcesRequest?
    /// Restore the task from this checkpoint directory (at start).
    public var checkpoint: String?
    /// The seccomp filter of a generated spec: absent or "default" for
    /// Tether's default, "unconfined" for none, or a profile (Docker's
    /// format or the OCI form). Not for bundles or specs, whose own is used.
    public var seccomp: JSONValue?
    /// Capabilities, privileged, read-only rootfs, user: for generated specs.
    public var security: Confinement?

    public init(id: String, args: [String]? = nil, env: [String]? = nil, cwd: String? = nil, rootfs: String? = nil,
                bundle: String? = nil, spec: JSONValue? = nil, io: IOView? = nil, fifos: FifoRequest? = nil, log: LogRequest? = nil) {
        self.id = id
        self.args = args
        self.env = env
        self.cwd = cwd
        self.rootfs = rootfs
        self.bundle = bundle
        self.spec = spec
        self.io = io
        self.fifos = fifos
        self.log = log
    }
}

/// Limits for a task's cgroup: memory in bytes, CPUs as a fraction, pids
/// (TetherOCI.ResourceLimits, which range-checks them).
public typealias ResourcesRequest = ResourceLimits

/// POST .../checkpoint
public struct CheckpointRequest: Codable, Sendable {
    public var path: String
    /// Stop the task once checkpointed.
    public var exit: Bool?

    public init(path: String, exit: Bool? = nil) {
        self.path = path
        self.exit = exit
    }
}

/// GET .../pids
public struct ProcessEntry: Codable, Sendable, Equatable {
    public var pid: UInt32
    public var execID: String?

    public init(pid: UInt32, execID: String?) {
        self.pid = pid
        self.execID = execID
    }
}

/// Asks the manager for stdio FIFOs in the task's bundle: stdout and stderr
/// always, stdin when asked; with a terminal, stdout carries both.
public struct FifoRequest: Codable, Sendable {
    public var stdin: Bool?
    public var terminal: Bool?

    public init(stdin: Bool = false, terminal: Bool = false) {
        self.stdin = stdin
        self.terminal = terminal
    }
}

public struct LogRequest: Codable, Sendable {
    /// An absolute path; its directory must exist.
    public var path: String
    /// Rotate to PATH.1 past this many bytes; absent or 0 never rotates.
    public var maxSize: UInt64?

    public init(path: String, maxSize: UInt64? = nil) {
        self.path = path
        self.maxSize = maxSize
    }
}

/// POST /v1/namespaces/{ns}/tasks/{id}/execs
public struct ExecRequest: Codable, Sendable {
    /// The exec's ID (containerd's identifier rules); the server picks one when absent.
    public var execID: String?
    public var args: [String]
    public var env: [String]?
    public var cwd: String?
    public var io: IOView?
    public var fifos: FifoRequest?

    public init(execID: String? = nil, args: [String], env: [String]? = nil, cwd: String? = nil, io: IOView? = nil, fifos: FifoRequest? = nil) {
        self.execID = execID
        self.args = args
        self.env = env
        self.cwd = cwd
        self.io = io
        self.fifos = fifos
    }
}

/// An exec'd process.
public struct ProcessView: Codable, Sendable {
    public var taskID: String
    public var execID: String
    public var pid: UInt32
    public var status: Status
    public var exit: ExitView?
    public var io: IOView

    public init(taskID: String, execID: String, pid: UInt32, status: Status, exit: ExitView?, io: IOView) {
        self.taskID = taskID
        self.execID = execID
        self.pid = pid
        self.status = status
        self.exit = exit
        self.io = io
    }
}

/// POST .../resize
public struct ResizeRequest: Codable, Sendable {
    public var width: UInt32
    public var height: UInt32

    public init(width: UInt32, height: UInt32) {
        self.width = width
        self.height = height
    }
}

/// A task, as GET, POST (create) and start return it.
public struct TaskView: Codable, Sendable {
    public var namespace: String
    public var id: String
    public var pid: UInt32
    public var status: Status
    public var exit: ExitView?
    /// Set when the manager, not the shim, recorded the exit (a shim died).
    public var exitReason: String?
    public var io: IOView
    public var runtime: String
    /// The task's bundle and state directory (its shim's socket is shim.sock there).
    public var bundle: String?
    public var shimPid: Int32?
    /// What confines the task, from its spec.
    public var security: SecurityView?

    public init(namespace: String, id: String, pid: UInt32, status: Status, exit: ExitView?, exitReason: String?, io: IOView, runtime: String,
                bundle: String? = nil, shimPid: Int32? = nil, security: SecurityView? = nil) {
        self.security = security
        self.namespace = namespace
        self.id = id
        self.pid = pid
        self.status = status
        self.exit = exit
        self.exitReason = exitReason
        self.io = io
        self.runtime = runtime
        self.bundle = bundle
        self.shimPid = shimPid
    }
}

/// A process's exit, as the API carries it: `{"pid", "status", "timestamp"}`.
/// The API's own shape (not the runtime API's `Exit`), so renaming a Swift
/// property never changes the JSON.
public struct ExitView: Codable, Sendable, Equatable {
    public var pid: UInt32
    /// The exit code, or 128 + the signal for a death by signal.
    public var status: UInt32
    public var timestamp: Date

    public init(pid: UInt32, status: UInt32, timestamp: Date) {
        self.pid = pid
        self.status = status
        self.timestamp = timestamp
    }

    public init(_ e: Exit) { self.init(pid: e.pid, status: e.status, timestamp: e.timestamp) }
    public var exit: Exit { Exit(pid: pid, status: status, timestamp: timestamp) }
}

/// Stdio paths, as the API carries them: `{"stdin", "stdout", "stderr", "terminal"}`.
public struct IOView: Codable, Sendable, Equatable {
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

    public init(_ io: IO) { self.init(stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: io.terminal) }
    public var io: IO { IO(stdin: stdin, stdout: stdout, stderr: stderr, terminal: terminal) }

    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        stdin = try c.decodeIfPresent(String.self, forKey: .stdin) ?? ""
        stdout = try c.decodeIfPresent(String.self, forKey: .stdout) ?? ""
        stderr = try c.decodeIfPresent(String.self, forKey: .stderr) ?? ""
        terminal = try c.decodeIfPresent(Bool.self, forKey: .terminal) ?? false
    }
}

/// POST /v1/namespaces/{ns}/tasks/{id}/kill. The signal is a name ("TERM",
/// "SIGKILL") or a number, as a JSON string or number; TERM when absent.
public struct KillRequest: Codable, Sendable {
    public var signal: SignalValue?
    public var all: Bool?

    public init(signal: SignalValue? = nil, all: Bool? = nil) {
        self.signal = signal
        self.all = all
    }
}

public enum SignalValue: Codable, Sendable, Equatable {
    case number(Int64)
    case name(String)

    public init(from d: Decoder) throws {
        let c = try d.singleValueContainer()
        if let n = try? c.decode(Int64.self) { self = .number(n) } else { self = .name(try c.decode(String.self)) }
    }

    public func encode(to e: Encoder) throws {
        var c = e.singleValueContainer()
        switch self {
        case .number(let n): try c.encode(n)
        case .name(let s): try c.encode(s)
        }
    }

    public var text: String {
        switch self {
        case .number(let n): String(n)
        case .name(let s): s
        }
    }
}

/// GET /v1/version
public struct VersionView: Codable, Sendable {
    public var version: String
    public var runtime: String
    public var root: String
    public var state: String

    public init(version: String, runtime: String, root: String, state: String) {
        self.version = version
        self.runtime = runtime
        self.root = root
        self.state = state
    }
}

/// Every error: `{"error": {"code": "container_does_not_exist", "message": "..."}}`.
public struct ErrorBody: Codable, Sendable {
    public struct Detail: Codable, Sendable {
        public var code: String
        public var message: String
    }

    public var error: Detail

    public init(code: String, message: String) { error = Detail(code: code, message: message) }
}

/// The API's JSON coders: RFC 3339 times with nanoseconds.
public enum APIJSON {
    public static let encoder = makeEncoder([.sortedKeys, .withoutEscapingSlashes])
    /// The same, indented: for people (`tether state`).
    public static let prettyEncoder = makeEncoder([.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])

    private static func makeEncoder(_ formatting: JSONEncoder.OutputFormatting) -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = formatting
        e.dateEncodingStrategy = .rfc3339
        return e
    }

    public static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .rfc3339
        return d
    }()
}

/// A task's confinement as its spec says it: `tether state` shows it.
public struct SecurityView: Codable, Sendable, Equatable {
    public var capabilities: [String]
    /// Absent: no syscall filter at all.
    public var seccomp: SeccompView?
    public var noNewPrivileges: Bool
    public var readOnlyRootfs: Bool
    public var user: String
    public var maskedPaths: Int

    public struct SeccompView: Codable, Sendable, Equatable {
        public var defaultAction: String
        public var rules: Int
        public var syscalls: Int
        public var listenerPath: String?
    }

    public init?(spec: Data) {
        guard let s = try? JSONDecoder().decode(OCI.Spec.self, from: spec) else { return nil }
        capabilities = s.process?.capabilities?.bounding ?? []
        seccomp = s.linux?.seccomp.map {
            SeccompView(defaultAction: $0.defaultAction, rules: $0.syscalls?.count ?? 0,
                        syscalls: ($0.syscalls ?? []).reduce(0) { $0 + $1.names.count }, listenerPath: $0.listenerPath)
        }
        noNewPrivileges = s.process?.noNewPrivileges ?? false
        readOnlyRootfs = s.root?.readonly ?? false
        user = "\(s.process?.user.uid ?? 0):\(s.process?.user.gid ?? 0)"
        maskedPaths = s.linux?.maskedPaths?.count ?? 0
    }
}

/// GET .../tasks/ID/seccomp: what the task's seccomp agent saw (the shim's
/// BUNDLE/seccomp.json): each syscall outside the profile, how often, the
/// first pid that made it and that pid's exec ID ("" for the init's).
public struct SeccompReport: Codable, Sendable, Equatable {
    public var mode: String
    public var syscalls: [Entry]

    public struct Entry: Codable, Sendable, Equatable {
        public var name: String
        public var count: UInt64
        public var firstPid: Int32
        public var execID: String
    }
}
