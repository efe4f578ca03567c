import CTether
import Foundation
import Logging
import NIOCore
import NIOPosix
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherOCI
import TetherProto
import TetherRuntime
import TetherSys

/// What the manager needs to run tasks under shims.
public struct ManagerConfig: Sendable {
    public var layout: Layout
    /// The OCI runtime: a name looked up in PATH (runc), or a path.
    public var runtime: String
    /// The tether-shim binary.
    public var shimBinary: String
    /// Start shims with --debug.
    public var debugShims: Bool
    public var monitor: any TaskMonitor
    public var logger: Logger
    /// Where cgroup hierarchies are mounted (a test may emulate one elsewhere).
    public var cgroupRoot: String
    /// Seconds a runtime call that starts a process may take before the shim
    /// kills it (`tether-shim --runtime-timeout`); the manager's own timeouts
    /// on its shims are derived from it (ShimTask.Timeouts).
    public var runtimeTimeout: Int64
    /// How long a new shim may take to say it listens before it is killed.
    public var shimReadyTimeout: Int32
    /// Called when the manager can no longer work (its exit pipe failed),
    /// after a critical log line. tetherd exits, for its supervisor to
    /// restart it; the default only logs.
    public var onFatal: @Sendable (String) -> Void = { _ in }
    /// Events queued per API event subscriber before it is dropped as too slow.
    public var eventBuffer = EventBus.defaultLimit

    public init(layout: Layout, runtime: String = "runc", shimBinary: String, debugShims: Bool = false,
                monitor: any TaskMonitor = NoopTaskMonitor(), logger: Logger = Logger(label: "tetherd"),
                cgroupRoot: String = "/sys/fs/cgroup", runtimeTimeout: Int64 = 60, shimReadyTimeout: Int32 = 10) {
        self.runtimeTimeout = runtimeTimeout
        self.shimReadyTimeout = shimReadyTimeout
        self.layout = layout
        self.runtime = runtime
        self.shimBinary = shimBinary
        self.debugShims = debugShims
        self.monitor = monitor
        self.logger = logger
        self.cgroupRoot = cgroupRoot
    }
}

struct TaskKey: Hashable, Sendable {
    let namespace: String
    let id: String
}

/// containerd's Runtime, implemented with one tether-shim per task.
public final class ShimRuntime: Runtime, Sendable {
    public let id = "io.tether.shim.v1"
    public let config: ManagerConfig
    let group: any EventLoopGroup
    let launcher: ShimLauncher
    let watcher: ShimWatcher
    /// Task events (containerd's topics), for the API's event stream and the monitors.
    public let events: EventBus
    /// The monitors told of every task's start and delete: the OOM monitor
    /// and the one in the config.
    let monitor: any TaskMonitor
    private let tasksByKey = Mutex<[TaskKey: ShimTask]>([:])
    private let exitPipe = Mutex<ExitPipe?>(nil)
    /// The state and root directories' locks, held for the manager's life.
    private let locks = Mutex<[DaemonLock]>([])
    let cgroups: Cgroups
    /// Threads for the manager's own disk work (bundles, records, spec
    /// files), so a slow disk never holds up the threads serving requests.
    let disk: NIOThreadPool

    var logger: Logger { config.logger }
    public var layout: Layout { config.layout }

    private init(config: ManagerConfig) throws {
        self.config = config
        group = MultiThreadedEventLoopGroup.singleton
        launcher = ShimLauncher(shimBinary: config.shimBinary, layout: config.layout, debug: config.debugShims,
                                runtimeTimeout: config.runtimeTimeout, readyTimeoutMs: config.shimReadyTimeout * 1000)
        watcher = try ShimWatcher()
        cgroups = Cgroups(root: config.cgroupRoot)
        disk = NIOThreadPool(numberOfThreads: 4)
        disk.start()
        let logger = config.logger
        events = EventBus(limit: config.eventBuffer) { e in
            logger.debug("event", metadata: ["topic": "\(e.topic)", "namespace": "\(e.namespace)", "id": "\(e.event.containerID)"])
        }
        monitor = MultiTaskMonitor([try OOMMonitor(events: events, logger: logger), try SeccompMonitor(events: events, logger: logger), config.monitor])
    }

    /// Prepares the state and root directories, opens the exit pipe and
    /// picks up the tasks an earlier manager left running.
    public static func start(_ config: ManagerConfig) async throws -> ShimRuntime {
        // One manager per state and root directory, before anything is touched.
        let layout = config.layout
        var locks: [DaemonLock] = []
        for (dir, flag) in [(layout.state, "state"), (layout.root, "root")] {
            try Files.ensureDirectory(dir, mode: 0o700)
            if flag == "root", (try? Files.realPath(dir)) == (try? Files.realPath(layout.state)) { continue }
            locks.append(try DaemonLock(dir: dir, flag: flag))
        }
        try layout.prepare()
        let runtime = try ShimRuntime(config: config)
        runtime.locks.withLock { $0 = locks }
        let logger = config.logger
        let pipe = try ExitPipe(path: layout.exitFifo,
                                onRecord: { [weak runtime] r in runtime?.deliver(r) },
                                onError: { logger.error("\($0)") },
                                onFatal: { why in
                                    logger.critical("\(why): no exit can reach this manager any more; stopping it (the shims keep their exits on disk for the next one)")
                                    config.onFatal(why)
                                })
        runtime.exitPipe.withLock { $0 = pipe }
        await runtime.reload()
        return runtime
    }

    // MARK: - Runtime

    public func create(namespace: String, id: String, _ opts: CreateOpts) async throws -> any RuntimeTask {
        try Identifier.validate(namespace, kind: "namespace")
        try Identifier.validate(id, kind: "task ID")
        guard let runtimeBinary = Spawn.lookPath(config.runtime) else { throw RuntimeError.runtimeDoesNotExist(config.runtime) }
        let (spec, rootfs) = try await onDisk { [self] in try prepare(namespace: namespace, id: id, opts) }

        let key = TaskKey(namespace: namespace, id: id)
        let bundle = layout.bundle(namespace, id)
        let scratch = layout.scratch(namespace, id)
        // Overlay layers the task owns live in its scratch directory, made here and removed at delete.
        let layerDirs = rootfs.flatMap(\.options).compactMap { o -> String? in
            guard o.hasPrefix("upperdir=") || o.hasPrefix("workdir=") else { return nil }
            let dir = String(o[o.index(after: o.firstIndex(of: "=")!)...])
            return dir.hasPrefix(scratch + "/") ? dir : nil
        }
        let record = TaskRecord(namespace: namespace, id: id, instance: Self.newInstance(), runtime: runtimeBinary,
                                bundle: bundle, io: opts.io, rootfs: rootfs,
                                scratch: layerDirs.isEmpty ? nil : scratch, phase: .creating, createdAt: Date())
        let task = ShimTask(runtime: self, record: record, spec: spec)
        try tasksByKey.withLock { (t) throws(RuntimeError) in
            guard t[key] == nil else { throw RuntimeError.containerExists(namespace: namespace, id: id) }
            t[key] = task
        }
        do {
            if Files.exists(bundle) {
                logger.warning("removing a stale bundle with no task behind it", metadata: ["bundle": "\(bundle)"])
                var stale = record
                stale.scratch = nil
                if !(await teardown.run(stale, spec: spec, removeFiles: true)).isEmpty {
                    throw RuntimeError(.internal, "a stale bundle of an earlier task \(namespace)/\(id) is in the way at \(bundle) and cannot be removed (see tetherd's log)")
                }
            }
            try await onDisk { [self] in
                if record.scratch != nil {
                    try? Files.removeTree(scratch)  // a layer left by a task that no longer exists
                    // The task's own directory is 0700: nobody else reaches its
                    // writable layer (a setuid file written there is no one's way in).
                    try Files.ensureDirectory(Files.dirname(scratch), mode: 0o700)
                    try Files.ensureDirectory(scratch, mode: 0o700)
                    for dir in layerDirs { try Files.makeDirectories(dir, mode: 0o755) }
                }
                try Files.ensureDirectory(Files.dirname(bundle), mode: 0o700)
                try Files.ensureDirectory(bundle, mode: 0o700)
                try Files.makeDirectories("\(bundle)/rootfs", mode: 0o755)
                try makeFifos(opts.io, bundle: bundle)
                try Files.writeAtomically("\(bundle)/config.json", Array(spec), mode: 0o600)
                try Files.ensureDirectory(layout.runtimeRoot(namespace), mode: 0o700)
                try record.save()
            }

            await TestHook.reach("create.before-shim")
            let shim = try launcher.spawn(record)
            // Watched from the start, so it is always reaped and can always be killed.
            guard watcher.watch(shim.pid, onExit: { [weak task] code in task?.shimExited(code: code) }) else {
                kill(shim.pid, SIGKILL)  // our unreaped child: its pid cannot have been reused
                await onThreadReap(shim.pid)
                throw RuntimeError(.internal, "cannot watch tether-shim \(shim.pid) (pidfd_open failed); it was stopped")
            }
            // Recorded before the shim is waited for: a manager that dies
            // from here on finds the shim on reload and stops it.
            try await onDisk { try task.update { r in
                r.shimPid = shim.pid
                r.shimStartTime = shim.startTime
            } }
            try await launcher.waitReady(shim, record)
            let client = try await ShimClient.connect("\(bundle)/shim.sock", group: group)
            task.attach(client)
            await TestHook.reach("create.before-create-call")

            var req = Containerd_Task_V2_CreateTaskRequest()
            req.id = id
            req.bundle = bundle
            req.rootfs = rootfs.map(\.proto)
            req.terminal = opts.io.terminal
            req.stdin = opts.io.stdin
            req.stdout = opts.io.stdout
            req.stderr = opts.io.stderr
            req.checkpoint = opts.checkpoint
            if let options = opts.options { req.options = try Self.shimOptions(options) }
            let resp = try await task.rpc("Create", req, as: Containerd_Task_V2_CreateTaskResponse.self, timeout: task.timeouts.create)
            try await onDisk { try task.finishCreate(pid: resp.pid) }
            events.publish(TaskEvent(namespace: namespace, topic: TaskEvent.Topic.create,
                                     event: .init(containerID: id, pid: resp.pid, bundle: bundle, checkpoint: opts.checkpoint.isEmpty ? nil : opts.checkpoint)))
            logger.info("created task", metadata: ["namespace": "\(namespace)", "id": "\(id)", "pid": "\(resp.pid)", "shim": "\(shim.pid)"])
            return task
        } catch {
            logger.warning("create failed; cleaning up", metadata: ["namespace": "\(namespace)", "id": "\(id)", "error": "\(error)"])
            await task.stopShim(now: true)
            await teardown.run(task.record, spec: spec, removeFiles: true)
            tasksByKey.withLock { _ = $0.removeValue(forKey: key) }
            throw ShimTask.mapError(error, namespace: namespace, id: id)
        }
    }

    /// The one set of rules every task's spec meets, from wherever it came:
    /// it passes SpecCheck (JSON, types, a command, a root, resources in
    /// range); a cgroupsPath under Tether's cgroup parent is the task's own;
    /// process.terminal is the IO's; and its root is always `rootfs` in the
    /// bundle, where the shim mounts it. A spec that names a directory
    /// instead (a bundle, a spec sent through the API) has that directory
    /// checked by Layout.checkRootfs and turned into a bind mount, which the
    /// shim makes without following a symlink: a path component swapped for
    /// one after this check cannot give the container another directory.
    /// Returns the spec the runtime gets and the rootfs mounts.
    func prepare(namespace: String, id: String, _ opts: CreateOpts) throws -> (spec: Data, rootfs: [Mount]) {
        var checked = try SpecCheck.check(Array(opts.spec), source: "the task's OCI spec")
        var rootfs = opts.rootfs
        let root = checked.spec.root?.path ?? ""
        if rootfs.isEmpty {
            guard root.hasPrefix("/") else {
                throw RuntimeError(.invalidArgument, "the spec's root.path \(root) is not absolute: with no rootfs mounts, name the container's root directory by its absolute path")
            }
            let real = try layout.checkRootfs(root, what: "the spec's root.path \(root)", readonly: checked.spec.root?.readonly ?? false)
            rootfs = [Mount(type: "bind", source: real, options: ["rbind", "rw"])]
            checked.setRootPath("rootfs")
        } else if root != "rootfs" {
            throw RuntimeError(.invalidArgument, "the spec's root.path is \(root), but the task's rootfs mounts are made at rootfs in its bundle: set root.path to \"rootfs\"")
        }
        if let raw = checked.spec.linux?.cgroupsPath, let path = Cgroups.normalized(raw),
           Files.isWithin(path, layout.cgroupParent), path != layout.cgroup(namespace, id) {
            throw RuntimeError(.invalidArgument, "the spec's linux.cgroupsPath \(raw) lies under Tether's cgroup \(layout.cgroupParent) but is not this task's own (\(layout.cgroup(namespace, id))): name that, or a cgroup outside \(layout.cgroupParent)")
        }
        if !opts.checkpoint.isEmpty && !Files.isDirectory(opts.checkpoint) {
            throw RuntimeError(.invalidArgument, "checkpoint \(opts.checkpoint) is not a directory: give the path 'tether checkpoint' wrote to")
        }
        if let options = opts.options { _ = try Self.shimOptions(options) }
        checked.setTerminal(opts.io.terminal)
        return (Data(checked.bytes), rootfs)
    }

    /// Runs blocking disk work on the manager's own threads and awaits it.
    public func onDisk<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await disk.runIfActive(body)
    }

    /// The same for work that cannot fail.
    func onDisk<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        (try? await disk.runIfActive(body)) ?? body()
    }

    var teardown: Teardown { Teardown(runtime: self) }

    /// Reaps a child of ours that the watcher could not take, off the pool.
    func onThreadReap(_ pid: Int32) async {
        _ = try? await onThread("reap") { var status: Int32 = 0; return tether_wait_pid(pid, &status) }
    }

    public func get(namespace: String, id: String) async throws -> any RuntimeTask {
        try task(namespace, id)
    }

    func task(_ namespace: String, _ id: String) throws(RuntimeError) -> ShimTask {
        try Identifier.validate(namespace, kind: "namespace")
        try Identifier.validate(id, kind: "task ID")
        guard let t = tasksByKey.withLock({ $0[TaskKey(namespace: namespace, id: id)] }), t.isVisible else {
            throw RuntimeError.containerDoesNotExist(namespace: namespace, id: id)
        }
        return t
    }

    public func tasks(namespace: String) async throws -> [any RuntimeTask] {
        try Identifier.validate(namespace, kind: "namespace")
        return tasksByKey.withLock { t in
            t.values.filter { $0.info.namespace == namespace && $0.isVisible }.sorted { $0.id < $1.id }
        }
    }

    public func delete(_ task: any RuntimeTask) async throws -> Exit {
        guard let t = task as? ShimTask else {
            throw RuntimeError(.invalidArgument, "task \(task.id) was not created by this runtime")
        }
        let exit = try await t.delete()  // its teardown removed the bundle and the scratch layer
        tasksByKey.withLock { _ = $0.removeValue(forKey: TaskKey(namespace: t.info.namespace, id: t.id)) }
        do { try monitor.stop(t) } catch { logger.warning("monitor stop failed: \(error)") }
        events.publish(TaskEvent(namespace: t.info.namespace, topic: TaskEvent.Topic.delete,
                                 event: .init(containerID: t.id, id: t.id, pid: exit.pid, exitStatus: exit.status, exitedAt: exit.timestamp)))
        logger.info("deleted task", metadata: ["namespace": "\(t.info.namespace)", "id": "\(t.id)", "status": "\(exit.status)"])
        return exit
    }

    /// The namespace's tasks, for answers from the manager's own records
    /// (`ShimTask.recordedState()`), which never wait on a shim.
    public func recordedTasks(namespace: String) throws(RuntimeError) -> [ShimTask] {
        try Identifier.validate(namespace, kind: "namespace")
        return tasksByKey.withLock { t in
            t.values.filter { $0.info.namespace == namespace && $0.isVisible }.sorted { $0.id < $1.id }
        }
    }

    /// tetherd is stopping: every pending wait fails with a clear error, and
    /// so does every later one (the exits stay with the shims, for the next
    /// manager), so no client holds the stop up.
    public func refuseWaits() {
        let error = RuntimeError(.unavailable, "tetherd is stopping: wait again once it is back (the task keeps running and its exit is kept)")
        for t in tasksByKey.withLock({ Array($0.values) }) { t.refuseWaits(error) }
    }

    func task(forKey key: TaskKey) -> ShimTask? { tasksByKey.withLock { $0[key] } }

    /// Adds a reloaded task.
    func insert(_ task: ShimTask) {
        tasksByKey.withLock { $0[TaskKey(namespace: task.info.namespace, id: task.id)] = task }
    }

    func remove(_ task: ShimTask) {
        tasksByKey.withLock { t in
            let key = TaskKey(namespace: task.info.namespace, id: task.id)
            if t[key] === task { t.removeValue(forKey: key) }
        }
    }

    // MARK: - exits

    /// An exit record from the pipe (or from Exits.Pending): hand it to its task.
    func deliver(_ r: Tether_Shim_V1_ExitRecord) {
        guard let t = task(forKey: TaskKey(namespace: r.namespace, id: r.id)),
              t.record.instance == r.instance else {
            logger.debug("exit record for a task that is gone", metadata: ["namespace": "\(r.namespace)", "id": "\(r.id)", "seq": "\(r.seq)"])
            return
        }
        t.apply(r)
    }

    /// The largest log rotation size: 1 PiB.
    static let maxLogSize: UInt64 = 1 << 50

    /// CreateOpts.options (JSON: `{"logPath": "...", "logMaxSize": N}`) as the shim's Any.
    static func shimOptions(_ json: Data) throws -> Google_Protobuf_Any {
        var decoding = JSONDecodingOptions()
        decoding.ignoreUnknownFields = false
        let o: Tether_Shim_V1_CreateOptions
        do { o = try Tether_Shim_V1_CreateOptions(jsonUTF8Bytes: Array(json), options: decoding) } catch {
            throw RuntimeError(.invalidArgument, "the task's options are not {\"logPath\": ..., \"logMaxSize\": ...}: \(error)")
        }
        if !o.logPath.isEmpty {
            guard o.logPath.hasPrefix("/") else { throw RuntimeError(.invalidArgument, "log path \(o.logPath) is not absolute") }
            guard Files.isDirectory(Files.dirname(o.logPath)) else {
                throw RuntimeError(.invalidArgument, "the log's directory \(Files.dirname(o.logPath)) does not exist")
            }
            var st = stat()
            if lstat(o.logPath, &st) == 0 && (st.st_mode & S_IFMT) != S_IFREG {
                throw RuntimeError(.invalidArgument, "log path \(o.logPath) is \(Files.describe(st.st_mode)), not a regular file: name a file (symbolic links are not followed)")
            }
        }
        guard o.logMaxSize <= Self.maxLogSize else {
            throw RuntimeError(.invalidArgument, "log max size \(o.logMaxSize) is out of range: give at most \(Self.maxLogSize) bytes (1P), or 0 for no rotation")
        }
        var any = Google_Protobuf_Any()
        any.typeURL = "types.tether.dev/tether.shim.v1.CreateOptions"
        any.value = try o.serializedData()
        return any
    }
}

extension Mount {
    var proto: Containerd_Types_Mount {
        var m = Containerd_Types_Mount()
        m.type = type
        m.source = source
        m.target = target
        m.options = options
        return m
    }
}

/// A flag set once from any thread.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
