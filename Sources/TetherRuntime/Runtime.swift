#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The interfaces of containerd's runtime package (v1.0). Go's context carried
// the namespace; here it is a parameter. Everything that waits is async.

/// A process in a task: the task's init, or one exec'd into it.
/// (containerd: runtime.Process.)
public protocol RuntimeProcess: Sendable {
    /// The exec id, or the task id for the init process.
    var id: String { get }
    func state() async throws -> State
    /// Starts the process (a task's init, or an exec'd process once exec has made it).
    func start() async throws
    /// Sends `signal`; with `all`, to every process in the container.
    func kill(signal: UInt32, all: Bool) async throws
    func resizePty(_ size: ConsoleSize) async throws
    /// Closes the process's stdin.
    func closeIO() async throws
    /// Waits until the process has exited.
    func wait() async throws -> Exit
}

/// A container and the processes exec'd into it. (containerd: runtime.Task.)
public protocol RuntimeTask: RuntimeProcess {
    var info: TaskInfo { get }
    func pause() async throws
    func resume() async throws
    /// The pids of every process in the container.
    func pids() async throws -> [UInt32]
    /// Makes a new process in the running container under `id` (start it with `start()`).
    func exec(id: String, _ opts: ExecOpts) async throws -> any RuntimeProcess
    func checkpoint(path: String, options: Data?) async throws
    /// Removes an exec'd process that has exited and returns its exit.
    func deleteProcess(id: String) async throws -> Exit
    /// Applies new resources (OCI LinuxResources as JSON).
    func update(resources: Data) async throws
    /// The exec'd process with this id.
    func process(id: String) async throws -> any RuntimeProcess
}

/// Creates and tracks tasks. (containerd: runtime.Runtime.)
public protocol Runtime: Sendable {
    /// The runtime's name, e.g. "io.tether.runc.v1".
    var id: String { get }
    func create(namespace: String, id: String, _ opts: CreateOpts) async throws -> any RuntimeTask
    func get(namespace: String, id: String) async throws -> any RuntimeTask
    /// Every task in `namespace`.
    func tasks(namespace: String) async throws -> [any RuntimeTask]
    /// Removes a task whose processes have exited and returns its init's exit.
    func delete(_ task: any RuntimeTask) async throws -> Exit
}

/// The namespace tasks land in when nobody names one.
public let defaultNamespace = "default"

extension Runtime {
    public func create(id: String, _ opts: CreateOpts) async throws -> any RuntimeTask {
        try await create(namespace: defaultNamespace, id: id, opts)
    }

    public func get(id: String) async throws -> any RuntimeTask {
        try await get(namespace: defaultNamespace, id: id)
    }

    public func tasks() async throws -> [any RuntimeTask] {
        try await tasks(namespace: defaultNamespace)
    }
}

/// Told when a task starts running and when it is deleted, e.g. to watch its
/// cgroup for OOM kills. (containerd: runtime.TaskMonitor.)
public protocol TaskMonitor: Sendable {
    func monitor(_ task: any RuntimeTask) throws
    func stop(_ task: any RuntimeTask) throws
}

/// Fans out to several monitors; the first error is returned after all have run.
public struct MultiTaskMonitor: TaskMonitor {
    public let monitors: [any TaskMonitor]

    public init(_ monitors: [any TaskMonitor]) { self.monitors = monitors }

    public func monitor(_ task: any RuntimeTask) throws { try each { try $0.monitor(task) } }
    public func stop(_ task: any RuntimeTask) throws { try each { try $0.stop(task) } }

    private func each(_ body: (any TaskMonitor) throws -> Void) throws {
        var first: (any Error)?
        for m in monitors {
            do { try body(m) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }
}

/// A monitor that does nothing.
public struct NoopTaskMonitor: TaskMonitor {
    public init() {}
    public func monitor(_ task: any RuntimeTask) throws {}
    public func stop(_ task: any RuntimeTask) throws {}
}
