#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherProto
import TetherRuntime
import TetherSys

/// The task and the handlers of containerd.task.v2.Task.
///
///     task:  empty ──Create──▶ live ──Delete──▶ deleted
///     init:  created ──Start──▶ running ──(exit)──▶ stopped ──Delete──▶ deleted
///     exec:  (Exec) created ──Start──▶ running ──(exit)──▶ stopped ──Delete(exec)──▶ gone
///
/// Every exit is recorded in the ExitJournal (on disk) before the process's
/// state changes and before any waiter hears of it.
final class TaskService: Sendable {
    static let version = "tether-shim \(TetherVersion.string)"
    /// How long Delete lets the relay drain a stopped process's output.
    static let outputDrainTimeout: UInt64 = 2_000_000_000

    enum Phase: String, Sendable {
        case empty, creating, live, deleting, deleted
    }

    private struct State {
        var phase = Phase.empty
        var bundle = ""
        var mounts: [String] = []
        var processes: [String: ShimProcess] = [:]
        /// The task's delete, once begun: a second Delete (a restarted
        /// manager's) waits for it, and one after it gets the same exit.
        var deletion: Task<ShimProcess.ExitInfo, any Error>?
        /// A task created from a checkpoint: restored (by runc restore) at Start.
        var restore: PendingRestore?
    }

    struct PendingRestore: Sendable {
        let imagePath: String
        let files: ProcessStdio.Opened
        let log: LogWriter?
    }

    let options: ShimOptions
    let reaper: Reaper
    let runtime: OCIRuntime
    let relay: StdioRelay
    let journal: ExitJournal
    private let state = Mutex(State())

    init(options: ShimOptions, reaper: Reaper, runtime: OCIRuntime, relay: StdioRelay, journal: ExitJournal) {
        self.options = options
        self.reaper = reaper
        self.runtime = runtime
        self.relay = relay
        self.journal = journal
    }

    /// Can the shim exit without leaving a container behind?
    var isIdle: Bool { state.withLock { $0.phase == .empty || $0.phase == .deleted } }

    private var initProcess: ShimProcess? { state.withLock { $0.processes[""] } }

    // MARK: - Create

    func create(_ r: Containerd_Task_V2_CreateTaskRequest) async throws -> Containerd_Task_V2_CreateTaskResponse {
        try checkID(r.id)
        let bundle = r.bundle.isEmpty ? options.bundle : r.bundle
        let io = IOPaths(stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal)
        let process = ShimProcess(execID: "", io: io)
        try state.withLock { (s) throws(RPCError) in
            guard s.phase == .empty else { throw RPCError(.alreadyExists, "task \"\(options.id)\" was already created in this shim") }
            s.phase = .creating
            s.bundle = bundle
        }

        var mounted: [String] = []
        var stdio: ProcessStdio?
        var console: ConsoleSocket?
        reaper.expectingChildren()
        defer { reaper.doneExpecting() }
        do {
            let log = try createOptions(r.options).map { o throws(SysError) in
                try LogWriter(path: o.logPath, maxSize: o.logMaxSize)
            }
            mounted = try RootfsMounts.mountAll(r.rootfs, rootfs: "\(bundle)/rootfs")
            let files = try ProcessStdio.openPaths(io, log: log)
            if !r.checkpoint.isEmpty {
                // Restored at Start, as containerd does: nothing runs until then.
                guard Files.isDirectory(r.checkpoint) else {
                    throw RPCError(.invalidArgument, "checkpoint \(r.checkpoint) is not a directory")
                }
                state.withLock { s in
                    s.phase = .live
                    s.mounts = mounted
                    s.processes[""] = process
                    s.restore = PendingRestore(imagePath: r.checkpoint, files: files, log: log)
                }
                ShimLog.info("created task \(options.id) from checkpoint \(r.checkpoint); restored at start")
                return Containerd_Task_V2_CreateTaskResponse()
            }
            if io.terminal { console = try ConsoleSocket() }
            else { stdio = try ProcessStdio.pipes(files, relay: relay) { process.outputFinished() } }
            unlink(options.initPidFile)
            try await runtime.create(id: options.id, bundle: bundle, pidFile: options.initPidFile,
                                     stdio: stdio?.spawnFDs ?? [-1, -1, -1], consoleSocket: console?.path)
            stdio?.closeContainerEnds()
            if let console {
                stdio = try ProcessStdio.terminal(files, master: try console.receiveMaster(), relay: relay) { process.outputFinished() }
                console.remove()
            }
            let pid = try readPid(options.initPidFile)
            process.started(pid: pid, stdio: stdio)
            process.set(phase: .created)
            state.withLock { s in
                s.phase = .live
                s.mounts = mounted
                s.processes[""] = process
            }
            reaper.watch(pid, last: true) { [self] code, at in processExited(process, pid: pid, code: code, at: at) }
            ShimLog.info("created container \(options.id), init pid \(pid)\(io.terminal ? " with a terminal" : "")")
            var out = Containerd_Task_V2_CreateTaskResponse()
            out.pid = UInt32(pid)
            return out
        } catch {
            ShimLog.error("create \(options.id) failed: \(error)")
            console?.remove()
            if let stdio {
                stdio.closeContainerEnds()
                stdio.remove(from: relay)
            }
            try? await runtime.delete(id: options.id, force: true)  // whatever the runtime left half made
            if !mounted.isEmpty { RootfsMounts.unmountAll(under: "\(bundle)/rootfs") }
            state.withLock { $0 = State() }
            if let e = error as? SysError { throw RPCError(.failedPrecondition, e.description) }
            throw error
        }
    }

    private func createOptions(_ any: Google_Protobuf_Any) throws -> Tether_Shim_V1_CreateOptions? {
        guard !any.typeURL.isEmpty else { return nil }
        guard any.typeURL.hasSuffix("/tether.shim.v1.CreateOptions") else {
            throw RPCError(.invalidArgument, "options of type \(any.typeURL) are not understood by \(Self.version)")
        }
        let o = try Tether_Shim_V1_CreateOptions(serializedBytes: any.value)
        return o.logPath.isEmpty ? nil : o
    }

    // MARK: - Exec

    func exec(_ r: Containerd_Task_V2_ExecProcessRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        do { try Identifier.validate(r.execID, kind: "exec ID") } catch { throw RPCError(.invalidArgument, error.message) }
        struct ProcessSpec: Decodable { let args: [String]? }
        guard let spec = try? JSONDecoder().decode(ProcessSpec.self, from: r.spec.value), !(spec.args ?? []).isEmpty else {
            throw RPCError(.invalidArgument, "exec \"\(r.execID)\": the process spec is not OCI process JSON with args")
        }
        guard let initProcess else { throw RPCError(.notFound, "task \"\(options.id)\" is not created") }
        guard initProcess.phase == .running else {
            if initProcess.phase == .paused { throw RPCError(.failedPrecondition, "task \"\(options.id)\" is paused: resume it to exec") }
            if initProcess.exit != nil { throw RPCError(.notFound, "process already finished: task \"\(options.id)\" has exited; exec needs a running task") }
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(initProcess.phase.rawValue): exec needs a running task (start it first)")
        }
        let process = ShimProcess(execID: r.execID, io: IOPaths(stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal))
        try state.withLock { (s) throws(RPCError) in
            guard s.phase == .live else { throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(s.phase.rawValue)") }
            guard s.processes[r.execID] == nil else {
                throw RPCError(.alreadyExists, "exec ID \"\(r.execID)\" is already in use in task \"\(options.id)\"")
            }
            s.processes[r.execID] = process
        }
        do {
            try Files.makeDirectories("\(options.bundle)/execs")
            try Files.writeAtomically(execSpecPath(r.execID), Array(r.spec.value))
        } catch {
            state.withLock { _ = $0.processes.removeValue(forKey: r.execID) }
            throw RPCError(.internal, "exec \"\(r.execID)\": \(error)")
        }
        ShimLog.info("added exec \(r.execID)")
        return Google_Protobuf_Empty()
    }

    private func execSpecPath(_ execID: String) -> String { "\(options.bundle)/execs/\(execID).json" }
    private func execPidPath(_ execID: String) -> String { "\(options.bundle)/execs/\(execID).pid" }

    // MARK: - Start

    func start(_ r: Containerd_Task_V2_StartRequest) async throws -> Containerd_Task_V2_StartResponse {
        try checkID(r.id)
        let process = try process(r.execID)
        try process.transition(from: [.created], to: .starting, what: "start")
        do {
            if r.execID.isEmpty, let restore = state.withLock({ $0.restore }) {
                try await restoreInit(process, restore)
            } else if r.execID.isEmpty {
                try await runtime.start(id: options.id)
                process.started(pid: process.pid, stdio: nil)
            } else {
                try await startExec(process)
            }
        } catch {
            process.moveIfAlive(from: .starting, to: .created)
            throw error
        }
        ShimLog.info("started \(process.name) of \(options.id), pid \(process.pid)")
        var out = Containerd_Task_V2_StartResponse()
        out.pid = UInt32(process.pid)
        return out
    }

    /// `runc restore` of a task created from a checkpoint.
    private func restoreInit(_ process: ShimProcess, _ restore: PendingRestore) async throws {
        var stdio: ProcessStdio?
        var console: ConsoleSocket?
        reaper.expectingChildren()
        defer { reaper.doneExpecting() }
        do {
            if process.io.terminal { console = try ConsoleSocket() }
            else { stdio = try ProcessStdio.pipes(restore.files, relay: relay) { process.outputFinished() } }
            unlink(options.initPidFile)
            try Files.makeDirectories("\(options.bundle)/criu")
            try await runtime.restore(id: options.id, bundle: options.bundle, imagePath: restore.imagePath,
                                      workPath: "\(options.bundle)/criu", pidFile: options.initPidFile,
                                      stdio: stdio?.spawnFDs ?? [-1, -1, -1], consoleSocket: console?.path)
            stdio?.closeContainerEnds()
            if let console {
                stdio = try ProcessStdio.terminal(restore.files, master: try console.receiveMaster(), relay: relay) { process.outputFinished() }
                console.remove()
            }
            let pid = try readPid(options.initPidFile)
            state.withLock { $0.restore = nil }
            process.started(pid: pid, stdio: stdio)
            reaper.watch(pid, last: true) { [self] code, at in processExited(process, pid: pid, code: code, at: at) }
        } catch {
            console?.remove()
            if let stdio {
                stdio.closeContainerEnds()
                stdio.remove(from: relay)
            }
            throw RPCError(.failedPrecondition, "cannot restore task \"\(options.id)\" from \(restore.imagePath): \(await criuError(error))")
        }
    }

    private func startExec(_ process: ShimProcess) async throws {
        let execID = process.execID
        var stdio: ProcessStdio?
        var console: ConsoleSocket?
        reaper.expectingChildren()
        defer { reaper.doneExpecting() }
        do {
            let files = try ProcessStdio.openPaths(process.io, log: nil)
            if process.io.terminal {
                console = try ConsoleSocket()
                if let size = process.pendingSize {
                    // runc exec starts the process at once: a size set after it
                    // returns would come too late, so the runtime gets it in the spec.
                    try withConsoleSize(execSpecPath(execID), width: size.width, height: size.height)
                }
            } else {
                stdio = try ProcessStdio.pipes(files, relay: relay) { process.outputFinished() }
            }
            unlink(execPidPath(execID))
            try await runtime.exec(id: options.id, processFile: execSpecPath(execID), pidFile: execPidPath(execID),
                                   stdio: stdio?.spawnFDs ?? [-1, -1, -1], consoleSocket: console?.path)
            stdio?.closeContainerEnds()
            if let console {
                stdio = try ProcessStdio.terminal(files, master: try console.receiveMaster(), relay: relay) { process.outputFinished() }
                console.remove()
            }
            let pid = try readPid(execPidPath(execID))
            process.started(pid: pid, stdio: stdio)
            process.applyPendingSize()
            reaper.watch(pid) { [self] code, at in processExited(process, pid: pid, code: code, at: at) }
        } catch {
            console?.remove()
            if let stdio {
                stdio.closeContainerEnds()
                stdio.remove(from: relay)
            }
            if let e = error as? SysError { throw RPCError(.failedPrecondition, "exec \"\(execID)\": \(e)") }
            throw error
        }
    }

    /// Adds `"consoleSize"` as the last member of the process spec's JSON
    /// object (where runc's decoder lets it win over an earlier one).
    private func withConsoleSize(_ path: String, width: UInt32, height: UInt32) throws {
        var bytes = try Files.read(path)
        while let last = bytes.last, last == 0x0A || last == 0x20 || last == 0x09 || last == 0x0D { bytes.removeLast() }
        guard bytes.last == UInt8(ascii: "}") else { throw RPCError(.invalidArgument, "the process spec at \(path) is not a JSON object") }
        bytes.removeLast()
        bytes += Array(",\"consoleSize\":{\"height\":\(height),\"width\":\(width)}}".utf8)
        try Files.writeAtomically(path, bytes)
    }

    /// Called by the reaper: record durably, then tell the process's waiters.
    private func processExited(_ process: ShimProcess, pid: Int32, code: Int32, at: WallTime) {
        journal.record(pid: pid, execID: process.execID, code: code, at: at)
        process.exited(ShimProcess.ExitInfo(pid: pid, code: UInt32(bitPattern: code), at: at))
        guard process.execID.isEmpty else { return }
        // The init is gone. In a pid namespace the kernel has killed the rest;
        // without one, execs may live on: end them as containerd does.
        let running = state.withLock { $0.processes.values.filter { !$0.execID.isEmpty && $0.phase == .running } }
        if !running.isEmpty {
            Task { try? await runtime.kill(id: options.id, signal: UInt32(SIGKILL), all: true) }
        }
    }

    // MARK: - State, Kill, Wait, CloseIO, ResizePty

    func state(_ r: Containerd_Task_V2_StateRequest) async throws -> Containerd_Task_V2_StateResponse {
        try checkID(r.id)
        let (process, bundle) = try processAndBundle(r.execID)
        return process.stateResponse(taskID: options.id, bundle: bundle)
    }

    func kill(_ r: Containerd_Task_V2_KillRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        guard r.signal >= 1 && r.signal <= 64 else {
            throw RPCError(.invalidArgument, "signal \(r.signal) is out of range: use 1 to 64")
        }
        let process = try process(r.execID)
        if process.exit != nil { throw RPCError(.notFound, "process already finished: \(process.name) has exited") }
        if r.all && r.execID.isEmpty {
            try await runtime.kill(id: options.id, signal: r.signal, all: true)
        } else if process.phase == .created && r.execID.isEmpty {
            try await runtime.kill(id: options.id, signal: r.signal, all: false)
        } else if process.phase == .created {
            throw RPCError(.failedPrecondition, "\(process.name) has not been started")
        } else {
            try process.signal(Int32(r.signal), reaper: reaper)
        }
        // A frozen process takes its signals only when thawed: SIGKILL means
        // "die now", so thaw it (as docker does); other signals wait for resume.
        if r.signal == UInt32(SIGKILL), let initProcess, initProcess.phase == .paused {
            try? await runtime.resume(id: options.id)
            initProcess.moveIfAlive(from: .paused, to: .running)
        }
        ShimLog.info("sent signal \(r.signal)\(r.all ? " to all processes" : "") to \(process.name) of \(options.id)")
        return Google_Protobuf_Empty()
    }

    func wait(_ r: Containerd_Task_V2_WaitRequest) async throws -> Containerd_Task_V2_WaitResponse {
        try checkID(r.id)
        let process = try process(r.execID)
        let e = await process.waitForExit()
        var out = Containerd_Task_V2_WaitResponse()
        out.exitStatus = e.code
        out.exitedAt = e.timestamp
        return out
    }

    func closeIO(_ r: Containerd_Task_V2_CloseIORequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        let process = try process(r.execID)
        if r.stdin { try process.closeStdin(relay: relay) }
        return Google_Protobuf_Empty()
    }

    func resizePty(_ r: Containerd_Task_V2_ResizePtyRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        try process(r.execID).resize(width: r.width, height: r.height)
        return Google_Protobuf_Empty()
    }

    // MARK: - Pause, Resume, Pids, Update, Checkpoint, Stats

    func pause(_ r: Containerd_Task_V2_PauseRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        try await freeze(true)
        return Google_Protobuf_Empty()
    }

    func resume(_ r: Containerd_Task_V2_ResumeRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        try await freeze(false)
        return Google_Protobuf_Empty()
    }

    /// Pause (running → paused) or resume (paused → running) through the runtime's freezer.
    private func freeze(_ frozen: Bool) async throws {
        let process = try process("")
        let (from, to): (ShimProcess.Phase, ShimProcess.Phase) = frozen ? (.running, .paused) : (.paused, .running)
        try process.transition(from: [from], to: from, what: frozen ? "pause" : "resume")
        if frozen { try await runtime.pause(id: options.id) } else { try await runtime.resume(id: options.id) }
        process.moveIfAlive(from: from, to: to)
        ShimLog.info("\(frozen ? "paused" : "resumed") \(options.id)")
    }

    /// Every process in the container, each exec'd one with its exec ID.
    func pids(_ r: Containerd_Task_V2_PidsRequest) async throws -> Containerd_Task_V2_PidsResponse {
        try checkID(r.id)
        let process = try process("")
        guard process.phase == .running || process.phase == .paused else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): it has no processes to list")
        }
        let pids = try await runtime.ps(id: options.id, scratch: options.bundle)
        let execs = state.withLock { s in
            Dictionary(s.processes.values.filter { !$0.execID.isEmpty && $0.pid > 0 }.map { ($0.pid, $0.execID) }, uniquingKeysWith: { a, _ in a })
        }
        var out = Containerd_Task_V2_PidsResponse()
        out.processes = pids.map { pid in
            var p = Containerd_V1_Types_ProcessInfo()
            p.pid = UInt32(pid)
            if let execID = execs[pid] {
                var d = Tether_Shim_V1_ProcessDetails()
                d.execID = execID
                p.info.typeURL = "types.tether.dev/tether.shim.v1.ProcessDetails"
                p.info.value = (try? d.serializedData()) ?? Data()
            }
            return p
        }
        return out
    }

    /// New resources: the OCI LinuxResources JSON in the Any, through `runc update`.
    func update(_ r: Containerd_Task_V2_UpdateTaskRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        let process = try process("")
        guard process.phase == .running || process.phase == .paused || process.phase == .created else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): only a live task can be updated")
        }
        guard (try? JSONDecoder().decode([String: JSONAny].self, from: r.resources.value)) != nil else {
            throw RPCError(.invalidArgument, "the resources are not a JSON object (OCI LinuxResources)")
        }
        let path = "\(options.bundle)/resources.json"
        try Files.writeAtomically(path, Array(r.resources.value))
        try await runtime.update(id: options.id, resourcesFile: path)
        ShimLog.info("updated the resources of \(options.id)")
        return Google_Protobuf_Empty()
    }

    func checkpoint(_ r: Containerd_Task_V2_CheckpointTaskRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        let process = try process("")
        guard process.phase == .running || process.phase == .paused else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): only a running task can be checkpointed")
        }
        guard r.path.hasPrefix("/") else { throw RPCError(.invalidArgument, "checkpoint path \(r.path) is not absolute") }
        var exit = false
        if !r.options.typeURL.isEmpty {
            exit = (try Tether_Shim_V1_CheckpointOptions(serializedBytes: r.options.value)).exit
        }
        try Files.makeDirectories(r.path, mode: 0o700)
        try Files.makeDirectories("\(options.bundle)/criu")
        do {
            try await runtime.checkpoint(id: options.id, imagePath: r.path, workPath: "\(options.bundle)/criu", leaveRunning: !exit)
        } catch {
            throw RPCError(.failedPrecondition, "cannot checkpoint task \"\(options.id)\": \(await criuError(error)); the task is left as it was")
        }
        ShimLog.info("checkpointed \(options.id) to \(r.path)\(exit ? " and stopped it" : "")")
        return Google_Protobuf_Empty()
    }

    /// One line on why CRIU failed: if `criu check` fails, CRIU is unusable
    /// on this machine at all, and its own words say why; else the last
    /// error CRIU logged for this task.
    private func criuError(_ error: any Error) async -> String {
        let runtimeMessage = ((error as? RPCError)?.message ?? "\(error)").split(separator: "\n").joined(separator: "; ")
        if let criu = Spawn.lookPath("criu") {
            let log = "\(options.bundle)/criu/check.log"
            if let out = try? FD.open(log, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600) {
                var o = Spawn.Options()
                o.fds = [-1, out.raw, out.raw]
                if let code = try? await reaper.run(criu, [criu, "check"], o), code != 0 {
                    // Its first real error says why; its last, what it could not do.
                    let errors = ((try? Files.readString(log)) ?? "").split(separator: "\n")
                        .filter { $0.contains("Error") && !$0.contains("exited, status") }
                        .map { line in line.firstRange(of: "): ").map { String(line[$0.upperBound...]) } ?? String(line) }
                    let why = errors.count > 1 ? "\(errors.first!) … \(errors.last!)" : errors.first ?? "it failed"
                    return "CRIU is unusable on this machine: criu check says \"\(why)\" (\(runtimeMessage))"
                }
            }
        } else {
            return "CRIU is not installed (apt-get install criu) (\(runtimeMessage))"
        }
        for name in ["dump.log", "restore.log"] {
            guard let text = try? Files.readString("\(options.bundle)/criu/\(name)") else { continue }
            if let line = text.split(separator: "\n").last(where: { $0.contains("Error") }) {
                return "CRIU failed: \(line.trimmingPrefix(while: { $0 == " " })) (\(runtimeMessage))"
            }
        }
        return runtimeMessage
    }

    func stats(_ r: Containerd_Task_V2_StatsRequest) async throws -> Containerd_Task_V2_StatsResponse {
        try checkID(r.id)
        let process = try process("")
        guard process.phase == .running || process.phase == .paused || process.phase == .created else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): it has no cgroup to read")
        }
        var out = Containerd_Task_V2_StatsResponse()
        out.stats.typeURL = "types.tether.dev/runc.events.Stats"
        out.stats.value = Data(try await runtime.stats(id: options.id, scratch: options.bundle))
        return out
    }

    // MARK: - Delete

    func delete(_ r: Containerd_Task_V2_DeleteRequest) async throws -> Containerd_Task_V2_DeleteResponse {
        try checkID(r.id)
        let exit = r.execID.isEmpty ? try await deleteTask() : try await deleteExec(r.execID)
        var out = Containerd_Task_V2_DeleteResponse()
        out.pid = UInt32(exit.pid)
        out.exitStatus = exit.code
        out.exitedAt = exit.timestamp
        return out
    }

    private func deleteExec(_ execID: String) async throws -> ShimProcess.ExitInfo {
        let process = try process(execID)
        try process.transition(from: [.created, .stopped], to: .deleted, what: "delete")
        let exit = process.exit ?? ShimProcess.ExitInfo(pid: 0, code: 0, at: WallTime.now())
        if process.exit != nil { _ = await process.waitForOutput(timeoutNanos: Self.outputDrainTimeout, relay: relay) }
        process.releaseStdio(relay: relay)
        state.withLock { _ = $0.processes.removeValue(forKey: execID) }
        unlink(execSpecPath(execID))
        unlink(execPidPath(execID))
        ShimLog.info("deleted exec \(execID) (exit status \(exit.code))")
        return exit
    }

    private func deleteTask() async throws -> ShimProcess.ExitInfo {
        let deletion = try state.withLock { (s) throws(RPCError) -> Task<ShimProcess.ExitInfo, any Error> in
            if let d = s.deletion { return d }
            guard s.phase == .live, let process = s.processes[""] else {
                throw RPCError(.notFound, "task \"\(options.id)\" is \(s.phase == .empty ? "not created" : s.phase.rawValue)")
            }
            if process.phase == .running || process.phase == .starting {
                throw RPCError(.failedPrecondition, "task \"\(options.id)\" is running: kill it first")
            }
            s.phase = .deleting
            let d = Task { try await performDelete(process) }
            s.deletion = d
            return d
        }
        return try await deletion.value
    }

    private func performDelete(_ process: ShimProcess) async throws -> ShimProcess.ExitInfo {
        if state.withLock({ $0.restore != nil }) {
            // Created from a checkpoint and never restored: there is no container.
            process.exited(ShimProcess.ExitInfo(pid: 0, code: 0, at: WallTime.now()))
        }
        do {
            try await runtime.delete(id: options.id, force: true)
        } catch {
            state.withLock { s in
                s.phase = .live
                s.deletion = nil
            }
            throw error
        }
        // A created task's init dies with `delete --force`; its exit is recorded like any other.
        let exit = await process.waitForExit()
        let all = state.withLock { Array($0.processes.values) }
        for p in all where p.exit != nil {
            if !(await p.waitForOutput(timeoutNanos: Self.outputDrainTimeout, relay: relay)) {
                ShimLog.warn("output of \(p.name) not drained (nobody reads it, or a process outside the container holds it open); closing it")
            }
        }
        for p in all { p.releaseStdio(relay: relay); p.set(phase: .deleted) }
        let (mounts, bundle) = state.withLock { s in
            s.phase = .deleted
            defer { s.mounts = [] }
            return (s.mounts, s.bundle)
        }
        if !mounts.isEmpty { RootfsMounts.unmountAll(under: "\(bundle)/rootfs") }
        unlink(options.initPidFile)
        try? Files.removeTree("\(options.bundle)/execs")
        ShimLog.info("deleted container \(options.id) (exit status \(exit.code))")
        return exit
    }

    func connect(_ r: Containerd_Task_V2_ConnectRequest) async throws -> Containerd_Task_V2_ConnectResponse {
        var out = Containerd_Task_V2_ConnectResponse()
        out.shimPid = UInt32(getpid())
        out.taskPid = UInt32(initProcess?.pid ?? 0)
        out.version = Self.version
        return out
    }

    // MARK: - helpers

    func checkID(_ id: String) throws(RPCError) {
        guard id == options.id else { throw RPCError(.notFound, "this shim serves task \"\(options.id)\", not \"\(id)\"") }
    }

    private func process(_ execID: String) throws(RPCError) -> ShimProcess {
        try processAndBundle(execID).0
    }

    private func processAndBundle(_ execID: String) throws(RPCError) -> (ShimProcess, String) {
        try state.withLock { (s) throws(RPCError) in
            switch s.phase {
            case .empty, .creating: throw RPCError(.notFound, "task \"\(options.id)\" is not created")
            case .deleted: throw RPCError(.notFound, "task \"\(options.id)\" has been deleted")
            case .live, .deleting: break
            }
            guard let p = s.processes[execID] else {
                throw RPCError(.notFound, "no exec \"\(execID)\" in task \"\(options.id)\"")
            }
            return (p, s.bundle)
        }
    }

    private func readPid(_ path: String) throws -> Int32 {
        let text = try Files.readString(path).filter { !$0.isWhitespace }
        guard let pid = Int32(text), pid > 0 else { throw RPCError(.internal, "pid file \(path) holds \"\(text)\", not a pid") }
        return pid
    }
}

/// Any JSON value, to check that a document parses.
struct JSONAny: Decodable {
    init(from d: any Swift.Decoder) throws {
        if let c = try? d.container(keyedBy: AnyKey.self) {
            for k in c.allKeys { _ = try c.decode(JSONAny.self, forKey: k) }
        } else if var c = try? d.unkeyedContainer() {
            while !c.isAtEnd { _ = try c.decode(JSONAny.self) }
        } else {
            let c = try d.singleValueContainer()
            if c.decodeNil() { return }
            if (try? c.decode(Bool.self)) != nil { return }
            if (try? c.decode(Double.self)) != nil { return }
            _ = try c.decode(String.self)
        }
    }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
