#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import TTRPC
import TetherOCI
import TetherProto
import TetherRuntime
import TetherSys

/// The task a shim serves: its container, its processes, its mounts. Every
/// method runs on the shim's event loop. Processes come to run through the
/// one `Launcher`; every exit is recorded in the ExitJournal (on disk)
/// before the process's state changes and before any waiter hears of it.
///
///     empty ──create──▶ creating ──▶ live ──delete──▶ deleting ──▶ deleted
///                          └──(failed)──▶ empty
final class Container: @unchecked Sendable {
    static let version = "tether-shim \(TetherVersion.string)"
    /// How long Delete lets the relay drain a stopped process's output.
    static let outputDrainTimeout: UInt64 = 2_000_000_000

    enum Phase: String, Sendable { case empty, creating, live, deleting, deleted }

    /// A task created from a checkpoint: restored (by runtime restore) at Start.
    struct PendingRestore: Sendable {
        let imagePath: String
    }

    let options: ShimOptions
    let reaper: Reaper
    /// The runtime the task runs on; a containerd task's options may name
    /// another binary or root (set at create).
    private(set) var runtime: OCIRuntime
    let relay: StdioRelay
    let journal: ExitJournal
    let loop: EventLoop
    private var launcher: Launcher
    /// Task events for containerd (nil under tetherd, which publishes its own).
    var events: ShimEvents?
    private let oom: OOMWatch
    private(set) var phase = Phase.empty
    private(set) var bundle = ""
    private var mounted = false
    var processes: [String: ShimProcess] = [:]
    private var restore: PendingRestore?
    /// The task's CRI log, when asked for: its init's output is written to it.
    private var log: LogWriter?
    /// The seccomp agent of a task created with seccomp-audit or seccomp-learn.
    private(set) var seccompAgent: SeccompAgent?
    /// The task's delete, once begun: a second Delete (a restarted
    /// manager's) waits for it, and one after it gets the same exit.
    private var deletion: Task<ShimProcess.ExitInfo, any Error>?
    /// Exec launches go one at a time: a launch that fails after the runtime
    /// started the process must find it among the shim's children (Launcher).
    private let execLaunches = LoopLock()

    init(options: ShimOptions, reaper: Reaper, runtime: OCIRuntime, relay: StdioRelay, journal: ExitJournal, loop: EventLoop) {
        self.options = options
        self.reaper = reaper
        self.runtime = runtime
        self.relay = relay
        self.journal = journal
        self.loop = loop
        launcher = Launcher(options: options, reaper: reaper, runtime: runtime, relay: relay)
        oom = OOMWatch(loop: loop)
    }

    /// Can the shim exit without leaving a container behind?
    var isIdle: Bool { phase == .empty || phase == .deleted }
    var initProcess: ShimProcess? { processes[""] }

    // MARK: - lookups

    func checkID(_ id: String) throws(RPCError) {
        guard id == options.id else { throw RPCError(.notFound, "this shim serves task \"\(options.id)\", not \"\(id)\"") }
    }

    func process(_ execID: String) throws(RPCError) -> ShimProcess {
        switch phase {
        case .empty, .creating: throw RPCError(.notFound, "task \"\(options.id)\" is not created")
        case .deleted: throw RPCError(.notFound, "task \"\(options.id)\" has been deleted")
        case .live, .deleting: break
        }
        guard let p = processes[execID] else { throw RPCError(.notFound, "no exec \"\(execID)\" in task \"\(options.id)\"") }
        return p
    }

    /// The exec'd processes, by pid.
    func execPids() -> [Int32: String] {
        Dictionary(processes.values.filter { !$0.isInit && $0.pid > 0 }.map { ($0.pid, $0.execID) }, uniquingKeysWith: { a, _ in a })
    }

    // MARK: - create

    func create(_ r: Containerd_Task_V2_CreateTaskRequest) async throws(RPCError) -> Int32 {
        guard phase == .empty else { throw RPCError(.alreadyExists, "task \"\(options.id)\" was already created in this shim") }
        phase = .creating
        bundle = r.bundle.isEmpty ? options.bundle : r.bundle
        let process = ShimProcess(execID: "", io: IOPaths(stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal), loop: loop)
        do {
            let opts = try TaskOptions(r.options, shim: Self.version)
            if var choice = opts.runtime {
                if choice.root.isEmpty { choice.root = runtime.root } else { choice.root += "/\(options.namespace)" }
                try useRuntime(choice)
            }
            log = try opts.log.map { o throws(SysError) in try LogWriter(path: o.logPath, maxSize: o.logMaxSize) }
            if !r.rootfs.isEmpty {
                mounted = true
                _ = try RootfsMounts.mountAll(r.rootfs, rootfs: "\(bundle)/rootfs")
            }
            let files = try ProcessStdio.openPaths(process.io, log: log)
            seccompAgent = try SeccompAgent.start(bundle: bundle, loop: loop) { [weak self] pid in self?.execID(of: pid) ?? "" }
            if !r.checkpoint.isEmpty {
                // Restored at Start, as containerd does: nothing runs until then.
                guard Files.isDirectory(r.checkpoint) else {
                    throw RPCError(.invalidArgument, "checkpoint \(r.checkpoint) is not a directory")
                }
                _ = files  // the paths open: restore opens them again at Start
                restore = PendingRestore(imagePath: r.checkpoint)
                processes[""] = process
                phase = .live
                ShimLog.info("created task \(options.id) from checkpoint \(r.checkpoint); restored at start")
                return 0
            }
            let pid = try await launcher.launch(process, .create(bundle: bundle), files: files, pidFile: options.initPidFile) { [self] pid, code, at in
                processExited(process, pid: pid, code: code, at: at)
            }
            processes[""] = process
            phase = .live
            seccompAgent?.started(pid: pid, execID: "")
            ShimLog.info("created container \(options.id), init pid \(pid)\(process.io.terminal ? " with a terminal" : "")")
            if let events {
                var e = Containerd_Events_TaskCreate()
                e.containerID = options.id
                e.bundle = bundle
                e.rootfs = r.rootfs
                e.io.stdin = r.stdin
                e.io.stdout = r.stdout
                e.io.stderr = r.stderr
                e.io.terminal = r.terminal
                e.checkpoint = r.checkpoint
                e.pid = UInt32(bitPattern: pid)
                events.publish("/tasks/create", e)
                watchOOM()
            }
            return pid
        } catch {
            ShimLog.error("create \(options.id) failed: \(error)")
            if mounted { RootfsMounts.unmountAll(under: "\(bundle)/rootfs") }
            mounted = false
            log = nil
            seccompAgent?.stop()
            seccompAgent = nil
            phase = .empty
            if let e = error as? RPCError { throw e }
            throw RPCError(.failedPrecondition, "\(error)")
        }
    }

    /// Switches to the runtime a containerd task's options name, and keeps
    /// the choice in the bundle for `containerd-shim-tether-v1 delete`.
    private func useRuntime(_ choice: RuntimeChoice) throws {
        guard let binary = Spawn.lookPath(choice.binary) else {
            throw RPCError(.failedPrecondition, "the task's options name the OCI runtime \(choice.binary), which is not installed")
        }
        runtime = OCIRuntime(binary: binary, root: choice.root, logPath: runtime.logPath, reaper: reaper, timeout: runtime.timeout)
        launcher = Launcher(options: options, reaper: reaper, runtime: runtime, relay: relay)
        try Files.makeDirectories(choice.root)
        try RuntimeChoice(binary: binary, root: choice.root).save(bundle: options.bundle)
    }

    /// Publishes /tasks/oom for each OOM kill in the container's cgroup (containerd's tasks).
    private func watchOOM() {
        guard let events,
              let spec = try? JSONDecoder().decode(JSONValue.self, from: Data(try Files.readRegular("\(bundle)/config.json"))),
              let path = spec["linux"]?["cgroupsPath"]?.stringValue else { return }
        let id = options.id
        oom.start(cgroup: path) {
            var e = Containerd_Events_TaskOOM()
            e.containerID = id
            events.publish("/tasks/oom", e)
        }
    }

    // MARK: - exec and start

    func addExec(_ execID: String, io: IOPaths, spec: [UInt8]) throws(RPCError) {
        do { try Identifier.validate(execID, kind: "exec ID") } catch { throw RPCError(.invalidArgument, error.message) }
        let process: OCI.Process
        do { process = try JSONDecoder().decode(OCI.Process.self, from: Data(spec)) } catch {
            throw RPCError(.invalidArgument, "exec \"\(execID)\": the process spec is not OCI process JSON (\(describeDecodingError(error, parsed: true)))")
        }
        guard !(process.args ?? []).isEmpty else {
            throw RPCError(.invalidArgument, "exec \"\(execID)\": the process spec has no args")
        }
        guard let initProcess else { throw RPCError(.notFound, "task \"\(options.id)\" is not created") }
        guard initProcess.phase == .running else {
            if initProcess.phase == .paused { throw RPCError(.failedPrecondition, "task \"\(options.id)\" is paused: resume it to exec") }
            if initProcess.exit != nil { throw RPCError(.notFound, "process already finished: task \"\(options.id)\" has exited; exec needs a running task") }
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(initProcess.phase.rawValue): exec needs a running task (start it first)")
        }
        guard phase == .live else { throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(phase.rawValue)") }
        guard processes[execID] == nil else {
            throw RPCError(.alreadyExists, "exec ID \"\(execID)\" is already in use in task \"\(options.id)\"")
        }
        do {
            try Files.makeDirectories("\(options.bundle)/execs")
            try Files.writeAtomically(execSpecPath(execID), spec)
        } catch {
            throw RPCError(.internal, "exec \"\(execID)\": \(error)")
        }
        processes[execID] = ShimProcess(execID: execID, io: io, loop: loop)
        ShimLog.info("added exec \(execID)")
        if let events {
            var e = Containerd_Events_TaskExecAdded()
            e.containerID = options.id
            e.execID = execID
            events.publish("/tasks/exec-added", e)
        }
    }

    private func execSpecPath(_ execID: String) -> String { "\(options.bundle)/execs/\(execID).json" }
    private func execPidPath(_ execID: String) -> String { "\(options.bundle)/execs/\(execID).pid" }

    /// Starts the init (or restores it) or an exec; returns its pid.
    func start(_ execID: String) async throws(RPCError) -> Int32 {
        let process = try process(execID)
        try process.beginStart()
        // An exit that comes in while the start is under way follows its start event.
        events?.starting(execID)
        defer { events?.startDone(execID) }
        do {
            if process.isInit, let restore {
                try await restoreInit(process, restore)
            } else if process.isInit {
                try await runtime.start(id: options.id)
                process.started(pid: process.pid, stdio: nil)
                // A test fault: the reaper breaks once the task runs (its next signal).
                if Faults.has("reaper") { reaper.injectReadFailure = true }
            } else {
                try await startExec(process)
            }
        } catch {
            process.startFailed()
            if let e = error as? RPCError { throw e }
            throw RPCError(.unknown, "\(error)")
        }
        ShimLog.info("started \(process.name) of \(options.id), pid \(process.pid)")
        if let events {
            if process.isInit {
                var e = Containerd_Events_TaskStart()
                e.containerID = options.id
                e.pid = UInt32(bitPattern: process.pid)
                events.publish("/tasks/start", e)
            } else {
                var e = Containerd_Events_TaskExecStarted()
                e.containerID = options.id
                e.execID = execID
                e.pid = UInt32(bitPattern: process.pid)
                events.publish("/tasks/exec-started", e)
            }
        }
        return process.pid
    }

    /// The runtime's restore of a task created from a checkpoint. Its stdio
    /// is opened anew for each attempt: a failed one took its fds with it.
    private func restoreInit(_ process: ShimProcess, _ restore: PendingRestore) async throws {
        let work = "\(options.bundle)/criu"
        do {
            try Files.makeDirectories(work)
            let files = try ProcessStdio.openPaths(process.io, log: log)
            let pid = try await launcher.launch(process, .restore(bundle: options.bundle, imagePath: restore.imagePath, workPath: work),
                                                files: files, pidFile: options.initPidFile) { [self] pid, code, at in
                processExited(process, pid: pid, code: code, at: at)
            }
            self.restore = nil
            process.started(pid: pid, stdio: nil)
        } catch {
            throw RPCError(.failedPrecondition, "cannot restore task \"\(options.id)\" from \(restore.imagePath): \(await CRIU.diagnose(error, workDir: work, reaper: reaper))")
        }
    }

    private func startExec(_ process: ShimProcess) async throws {
        let execID = process.execID
        await execLaunches.lock()
        defer { execLaunches.unlock() }
        let files: ProcessStdio.Opened
        do {
            files = try ProcessStdio.openPaths(process.io, log: nil)
            if process.io.terminal, let size = process.pendingSize {
                // runc exec starts the process at once: a size set after it
                // returns would come too late, so the runtime gets it in the spec.
                var spec = try JSONDecoder().decode(JSONValue.self, from: Data(try Files.read(execSpecPath(execID))))
                spec["consoleSize"] = .object(["height": .uint(UInt64(size.height)), "width": .uint(UInt64(size.width))])
                try Files.writeAtomically(execSpecPath(execID), SpecCheck.encode(spec))
            }
        } catch {
            throw RPCError(.failedPrecondition, "exec \"\(execID)\": \(error)")
        }
        let pid = try await launcher.launch(process, .exec(processFile: execSpecPath(execID), initPid: initProcess?.pid ?? 0),
                                            files: files, pidFile: execPidPath(execID)) { [self] pid, code, at in
            processExited(process, pid: pid, code: code, at: at)
        }
        process.started(pid: pid, stdio: nil)
        seccompAgent?.started(pid: pid, execID: execID)
        process.applyPendingSize()
    }

    /// Called by the reaper: records the exit durably at once; tells the
    /// process's waiters, the manager and containerd once its output is in
    /// its destinations (log, FIFO), or `outputDrainTimeout` has passed, so
    /// whoever waits for the exit then finds all of the output.
    private func processExited(_ process: ShimProcess, pid: Int32, code: Int32, at: WallTime) {
        let record = journal.record(pid: pid, execID: process.execID, code: code, at: at, held: true)
        // The init is gone. In a pid namespace the kernel has killed the rest;
        // without one, execs may live on: end them as containerd does.
        if process.isInit, processes.values.contains(where: { !$0.isInit && $0.phase == .running }) {
            loop.task { [self] in try? await runtime.kill(id: options.id, signal: UInt32(SIGKILL), all: true) }
        }
        loop.task { [self] in
            if !(await process.waitForOutput(timeoutNanos: Self.outputDrainTimeout, relay: relay)) {
                ShimLog.info("exit of \(process.name) reported before its output was drained (nobody reads it, or a process outside the container holds it open)")
            }
            process.exited(ShimProcess.ExitInfo(pid: pid, code: UInt32(bitPattern: code), at: at))
            journal.release(record.seq)
            events?.exit(record)
        }
    }

    // MARK: - delete

    func deleteExec(_ execID: String) async throws(RPCError) -> ShimProcess.ExitInfo {
        let process = try process(execID)
        try process.markDeleted()
        let exit = process.exit ?? ShimProcess.ExitInfo(pid: 0, code: 0, at: WallTime.now())
        if process.exit != nil { _ = await process.waitForOutput(timeoutNanos: Self.outputDrainTimeout, relay: relay) }
        process.releaseStdio(relay: relay)
        processes.removeValue(forKey: execID)
        unlink(execSpecPath(execID))
        unlink(execPidPath(execID))
        ShimLog.info("deleted exec \(execID) (exit status \(exit.code))")
        return exit
    }

    func deleteTask() async throws -> ShimProcess.ExitInfo {
        if let deletion { return try await deletion.value }
        guard phase == .live, let process = processes[""] else {
            throw RPCError(.notFound, "task \"\(options.id)\" is \(phase == .empty ? "not created" : phase.rawValue)")
        }
        if process.phase == .running || process.phase == .starting || process.phase == .paused {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): kill it first")
        }
        phase = .deleting
        let d = loop.task { [self] () async throws -> ShimProcess.ExitInfo in try await performDelete(process) }
        deletion = d
        return try await d.value
    }

    private func performDelete(_ process: ShimProcess) async throws -> ShimProcess.ExitInfo {
        if restore != nil {
            // Created from a checkpoint and never restored: there is no container.
            process.exited(ShimProcess.ExitInfo(pid: 0, code: 0, at: WallTime.now()))
        }
        do {
            try await runtime.delete(id: options.id, force: true)
        } catch {
            phase = .live
            deletion = nil
            throw error
        }
        // A created task's init dies with `delete --force`; its exit is recorded like any other.
        let exit = await process.waitForExit()
        let all = Array(processes.values)
        for p in all where p.exit != nil {
            if !(await p.waitForOutput(timeoutNanos: Self.outputDrainTimeout, relay: relay)) {
                ShimLog.warn("output of \(p.name) not drained (nobody reads it, or a process outside the container holds it open); closing it")
            }
        }
        for p in all {
            p.releaseStdio(relay: relay)
            try? p.markDeleted()
        }
        phase = .deleted
        seccompAgent?.stop()
        if mounted { RootfsMounts.unmountAll(under: "\(bundle)/rootfs") }
        mounted = false
        unlink(options.initPidFile)
        try? Files.removeTree("\(options.bundle)/execs")
        ShimLog.info("deleted container \(options.id) (exit status \(exit.code))")
        oom.stop()
        if let events {
            var e = Containerd_Events_TaskDelete()
            e.containerID = options.id
            e.id = options.id
            e.pid = UInt32(bitPattern: exit.pid)
            e.exitStatus = exit.code
            e.exitedAt = exit.timestamp
            events.publish("/tasks/delete", e)
        }
        return exit
    }
}

extension Task where Success: Sendable, Failure == any Error {
    /// A throwing task on `loop` (EventLoop.task is for ones that cannot fail).
    fileprivate init(on loop: EventLoop, _ body: @escaping @Sendable () async throws -> Success) {
        self.init(executorPreference: loop, operation: body)
    }
}

extension EventLoop {
    /// Starts a throwing async task whose code runs on this loop.
    func task<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> Task<T, any Error> {
        Task(on: self, body)
    }
}
