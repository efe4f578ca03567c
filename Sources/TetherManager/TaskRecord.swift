import Foundation
import TetherRuntime
import TetherSys

/// The manager's record of one task, `<bundle>/task.json`. Written atomically
/// before the side effect it records (so a manager that dies at any point
/// finds out on reload what it was doing). Fields added later must decode
/// from older files: give them defaults in `init(from:)`.
public struct TaskRecord: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// Bundle written; the shim may or may not be running yet.
        case creating
        case created
        case running
        /// Frozen by pause (the record follows pause and resume).
        case paused
        case stopped
        /// Delete under way: the container may be gone already.
        case deleting
    }

    public var version = 1
    public var namespace: String
    public var id: String
    /// Tells this incarnation of the task from an earlier one with the same id.
    public var instance: String
    /// The OCI runtime binary the shim drives.
    public var runtime: String
    public var bundle: String
    public var io: IO
    public var rootfs: [Mount]
    /// A persistent directory owned by the task (its overlay layer), removed at delete.
    public var scratch: String?
    public var phase: Phase
    public var pid: UInt32 = 0
    public var shimPid: Int32 = 0
    /// The shim's start time (/proc/PID/stat): with shimPid, names the shim for good.
    public var shimStartTime: UInt64 = 0
    /// The init's exit, once the shim has reported it.
    public var exit: Exit?
    /// Why the exit was recorded by the manager rather than the shim, if it was.
    public var exitReason: String?
    /// The processes exec'd into the task, by exec id, until deleteProcess.
    public var execs: [String: ExecRecord] = [:]
    /// The newest exit record stored from this task's shim (records are acked up to here).
    public var ackedSeq: UInt64 = 0
    public var createdAt: Date

    public init(namespace: String, id: String, instance: String, runtime: String, bundle: String,
                io: IO, rootfs: [Mount], scratch: String?, phase: Phase, createdAt: Date) {
        self.namespace = namespace
        self.id = id
        self.instance = instance
        self.runtime = runtime
        self.bundle = bundle
        self.io = io
        self.rootfs = rootfs
        self.scratch = scratch
        self.phase = phase
        self.createdAt = createdAt
    }

    private enum CodingKeys: String, CodingKey {
        case version, namespace, id, instance, runtime, bundle, io, rootfs, scratch, phase, pid, shimPid, shimStartTime, exit, exitReason, execs, ackedSeq, createdAt
    }

    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        version = try c.decodeIfPresent(Int.self, forKey: .version) ?? 1
        namespace = try c.decode(String.self, forKey: .namespace)
        id = try c.decode(String.self, forKey: .id)
        instance = try c.decodeIfPresent(String.self, forKey: .instance) ?? ""
        runtime = try c.decodeIfPresent(String.self, forKey: .runtime) ?? "runc"
        bundle = try c.decode(String.self, forKey: .bundle)
        io = try c.decodeIfPresent(StoredIO.self, forKey: .io)?.value ?? IO()
        rootfs = try c.decodeIfPresent([StoredMount].self, forKey: .rootfs)?.map(\.value) ?? []
        scratch = try c.decodeIfPresent(String.self, forKey: .scratch)
        phase = try c.decode(Phase.self, forKey: .phase)
        pid = try c.decodeIfPresent(UInt32.self, forKey: .pid) ?? 0
        shimPid = try c.decodeIfPresent(Int32.self, forKey: .shimPid) ?? 0
        shimStartTime = try c.decodeIfPresent(UInt64.self, forKey: .shimStartTime) ?? 0
        exit = try c.decodeIfPresent(StoredExit.self, forKey: .exit)?.value
        exitReason = try c.decodeIfPresent(String.self, forKey: .exitReason)
        execs = try c.decodeIfPresent([String: ExecRecord].self, forKey: .execs) ?? [:]
        ackedSeq = try c.decodeIfPresent(UInt64.self, forKey: .ackedSeq) ?? 0
        createdAt = try c.decodeIfPresent(Date.self, forKey: .createdAt) ?? Date(timeIntervalSince1970: 0)
    }

    public func encode(to e: Encoder) throws {
        var c = e.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(namespace, forKey: .namespace)
        try c.encode(id, forKey: .id)
        try c.encode(instance, forKey: .instance)
        try c.encode(runtime, forKey: .runtime)
        try c.encode(bundle, forKey: .bundle)
        try c.encode(StoredIO(io), forKey: .io)
        try c.encode(rootfs.map(StoredMount.init), forKey: .rootfs)
        try c.encodeIfPresent(scratch, forKey: .scratch)
        try c.encode(phase, forKey: .phase)
        try c.encode(pid, forKey: .pid)
        try c.encode(shimPid, forKey: .shimPid)
        try c.encode(shimStartTime, forKey: .shimStartTime)
        try c.encodeIfPresent(exit.map(StoredExit.init), forKey: .exit)
        try c.encodeIfPresent(exitReason, forKey: .exitReason)
        try c.encode(execs, forKey: .execs)
        try c.encode(ackedSeq, forKey: .ackedSeq)
        try c.encode(createdAt, forKey: .createdAt)
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.dateEncodingStrategy = .rfc3339
        return e
    }()

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .rfc3339
        return d
    }()

    /// Writes `<bundle>/task.json` atomically.
    public func save() throws {
        try Files.writeAtomically("\(bundle)/task.json", Array(try Self.encoder.encode(self)) + [0x0A])
    }

    public static func load(_ path: String) throws -> TaskRecord {
        try decoder.decode(TaskRecord.self, from: Data(try Files.read(path)))
    }
}

/// An exec'd process in the manager's record.
public struct ExecRecord: Codable, Sendable, Equatable {
    public var io: IO
    public var pid: UInt32 = 0
    public var started = false
    public var exit: Exit?

    public init(io: IO) { self.io = io }

    private enum CodingKeys: String, CodingKey { case io, pid, started, exit }

    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        io = try c.decodeIfPresent(StoredIO.self, forKey: .io)?.value ?? IO()
        pid = try c.decodeIfPresent(UInt32.self, forKey: .pid) ?? 0
        started = try c.decodeIfPresent(Bool.self, forKey: .started) ?? false
        exit = try c.decodeIfPresent(StoredExit.self, forKey: .exit)?.value
    }

    public func encode(to e: Encoder) throws {
        var c = e.container(keyedBy: CodingKeys.self)
        try c.encode(StoredIO(io), forKey: .io)
        try c.encode(pid, forKey: .pid)
        try c.encode(started, forKey: .started)
        try c.encodeIfPresent(exit.map(StoredExit.init), forKey: .exit)
    }
}

// task.json's own shapes for the runtime API's value types: the file's format
// is written here, key by key, so renaming a public Swift property never
// changes what is on disk (nor what an older tetherd can read).

private struct StoredIO: Codable {
    var stdin = "", stdout = "", stderr = "", terminal = false
    init(_ io: IO) { (stdin, stdout, stderr, terminal) = (io.stdin, io.stdout, io.stderr, io.terminal) }
    var value: IO { IO(stdin: stdin, stdout: stdout, stderr: stderr, terminal: terminal) }
    init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        stdin = try c.decodeIfPresent(String.self, forKey: .stdin) ?? ""
        stdout = try c.decodeIfPresent(String.self, forKey: .stdout) ?? ""
        stderr = try c.decodeIfPresent(String.self, forKey: .stderr) ?? ""
        terminal = try c.decodeIfPresent(Bool.self, forKey: .terminal) ?? false
    }
}

private struct StoredMount: Codable {
    var type: String, source: String, target: String, options: [String]
    init(_ m: Mount) { (type, source, target, options) = (m.type, m.source, m.target, m.options) }
    var value: Mount { Mount(type: type, source: source, target: target, options: options) }
}

private struct StoredExit: Codable {
    var pid: UInt32, status: UInt32, timestamp: Date
    init(_ e: Exit) { (pid, status, timestamp) = (e.pid, e.status, e.timestamp) }
    var value: Exit { Exit(pid: pid, status: status, timestamp: timestamp) }
}
