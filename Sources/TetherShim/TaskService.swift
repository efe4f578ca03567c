#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherProto
import TetherSys

/// The task's state machine and the handlers of containerd.task.v2.Task.
///
///     empty ──Create──▶ created ──Start──▶ running ──(init exits)──▶ stopped ──Delete──▶ deleted
///                          └──────────(init exits / Delete --force)──────┘
///
/// The init's exit is recorded in the ExitJournal (on disk) before the state
/// changes and before any waiter hears of it.
final class TaskService: Sendable {
    static let version = "tether-shim 0.1.0"

    enum Phase: String, Sendable {
        case empty, creating, created, running, stopped, deleting, deleted
    }

    struct ExitInfo: Sendable {
        var pid: Int32
        var code: UInt32
        var at: WallTime
        var timestamp: Google_Protobuf_Timestamp { .init(seconds: at.seconds, nanos: at.nanos) }
    }

    private struct State {
        var phase = Phase.empty
        var pid: Int32 = 0
        var bundle = ""
        var stdin = "", stdout = "", stderr = ""
        var exit: ExitInfo?
        var exitWaiters: [CheckedContinuation<ExitInfo, Never>] = []
        var outputDone = false
        var outputWaiters: [CheckedContinuation<Void, Never>] = []
        var stdio: ProcessStdio?
        var mounts: [String] = []
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

    // MARK: - Create, Start

    func create(_ r: Containerd_Task_V2_CreateTaskRequest) async throws -> Containerd_Task_V2_CreateTaskResponse {
        try checkID(r.id)
        if r.terminal { throw RPCError(.unimplemented, "terminal tasks are not implemented yet by \(Self.version)") }
        if !r.checkpoint.isEmpty { throw RPCError(.unimplemented, "restoring from a checkpoint is not implemented yet by \(Self.version)") }
        let bundle = r.bundle.isEmpty ? options.bundle : r.bundle
        try state.withLock { (s) throws(RPCError) in
            guard s.phase == .empty else { throw RPCError(.alreadyExists, "task \"\(options.id)\" was already created in this shim") }
            s.phase = .creating
            s.bundle = bundle
            (s.stdin, s.stdout, s.stderr) = (r.stdin, r.stdout, r.stderr)
        }

        var mounted: [String] = []
        var stdio: ProcessStdio?
        reaper.expectingChildren()
        defer { reaper.doneExpecting() }
        do {
            mounted = try Mounts.mountAll(r.rootfs, rootfs: "\(bundle)/rootfs")
            stdio = try ProcessStdio.open(stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, relay: relay) { [self] in
                outputFinished()
            }
            unlink(options.initPidFile)
            try await runtime.create(id: options.id, bundle: bundle, pidFile: options.initPidFile, stdio: stdio!.spawnFDs)
            stdio!.closeContainerEnds()
            let pid = try readPid(options.initPidFile)
            state.withLock { s in
                s.pid = pid
                s.phase = .created
                s.mounts = mounted
                s.stdio = stdio
            }
            reaper.watch(pid) { [self] code, at in initExited(pid: pid, code: code, at: at) }
            ShimLog.info("created container \(options.id), init pid \(pid)")
            var out = Containerd_Task_V2_CreateTaskResponse()
            out.pid = UInt32(pid)
            return out
        } catch {
            ShimLog.error("create \(options.id) failed: \(error)")
            if let stdio {
                stdio.closeContainerEnds()
                stdio.remove(from: relay)
            }
            try? await runtime.delete(id: options.id, force: true)  // whatever runc left half made
            Mounts.unmountAll(mounted)
            state.withLock { $0 = State() }
            if let e = error as? SysError { throw RPCError(.failedPrecondition, e.description) }
            throw error
        }
    }

    func start(_ r: Containerd_Task_V2_StartRequest) async throws -> Containerd_Task_V2_StartResponse {
        try checkID(r.id)
        try checkInit(r.execID)
        let pid = try state.withLock { (s) throws(RPCError) -> Int32 in
            guard s.phase == .created else { throw RPCError(.failedPrecondition, "cannot start task \"\(options.id)\": it is \(s.phase.rawValue), not created") }
            return s.pid
        }
        try await runtime.start(id: options.id)
        state.withLock { s in if s.phase == .created { s.phase = .running } }
        ShimLog.info("started container \(options.id)")
        var out = Containerd_Task_V2_StartResponse()
        out.pid = UInt32(pid)
        return out
    }

    // MARK: - State, Kill, Wait

    func state(_ r: Containerd_Task_V2_StateRequest) async throws -> Containerd_Task_V2_StateResponse {
        try checkID(r.id)
        try checkInit(r.execID)
        return try state.withLock { (s) throws(RPCError) in
            var out = Containerd_Task_V2_StateResponse()
            out.id = options.id
            out.execID = r.execID
            out.bundle = s.bundle
            out.pid = UInt32(s.pid)
            out.stdin = s.stdin
            out.stdout = s.stdout
            out.stderr = s.stderr
            switch s.phase {
            case .empty, .deleted: throw RPCError(.notFound, "task \"\(options.id)\" does not exist in this shim (\(s.phase.rawValue))")
            case .creating, .created: out.status = .created
            case .running: out.status = .running
            case .stopped, .deleting: out.status = .stopped
            }
            if let e = s.exit {
                out.status = .stopped
                out.exitStatus = e.code
                out.exitedAt = e.timestamp
            }
            return out
        }
    }

    func kill(_ r: Containerd_Task_V2_KillRequest) async throws -> Google_Protobuf_Empty {
        try checkID(r.id)
        try checkInit(r.execID)
        guard r.signal >= 1 && r.signal <= 64 else {
            throw RPCError(.invalidArgument, "signal \(r.signal) is out of range: use 1 to 64")
        }
        let (phase, pid) = state.withLock { ($0.phase, $0.pid) }
        switch phase {
        case .empty, .creating, .deleted:
            throw RPCError(.notFound, "task \"\(options.id)\" is not created")
        case .stopped, .deleting:
            throw RPCError(.notFound, "process already finished")
        case .created, .running:
            if r.all {
                try await runtime.kill(id: options.id, signal: r.signal, all: true)
            } else if try !reaper.signal(pid, Int32(r.signal)) {
                throw RPCError(.notFound, "process already finished")
            }
        }
        ShimLog.info("sent signal \(r.signal)\(r.all ? " to all processes" : "") to \(options.id)")
        return Google_Protobuf_Empty()
    }

    func wait(_ r: Containerd_Task_V2_WaitRequest) async throws -> Containerd_Task_V2_WaitResponse {
        try checkID(r.id)
        try checkInit(r.execID)
        try state.withLock { (s) throws(RPCError) in
            if s.phase == .empty || s.phase == .deleted && s.exit == nil {
                throw RPCError(.notFound, "task \"\(options.id)\" is not created")
            }
        }
        let e = await waitForExit()
        var out = Containerd_Task_V2_WaitResponse()
        out.exitStatus = e.code
        out.exitedAt = e.timestamp
        return out
    }

    private func waitForExit() async -> ExitInfo {
        await withCheckedContinuation { (c: CheckedContinuation<ExitInfo, Never>) in
            let done = state.withLock { s -> ExitInfo? in
                if let e = s.exit { return e }
                s.exitWaiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    /// Called by the reaper when the init has been reaped.
    private func initExited(pid: Int32, code: Int32, at: WallTime) {
        let info = ExitInfo(pid: pid, code: UInt32(bitPattern: code), at: at)
        journal.record(pid: pid, execID: "", code: code, at: at)  // durable before anyone hears of it
        let waiters = state.withLock { s in
            s.exit = info
            if s.phase == .created || s.phase == .running || s.phase == .creating { s.phase = .stopped }
            let w = s.exitWaiters
            s.exitWaiters = []
            return w
        }
        for w in waiters { w.resume(returning: info) }
    }

    private func outputFinished() {
        let waiters = state.withLock { s in
            s.outputDone = true
            let w = s.outputWaiters
            s.outputWaiters = []
            return w
        }
        for w in waiters { w.resume() }
    }

    // MARK: - Delete, Connect, Shutdown

    /// How long Delete lets the relay drain a stopped task's output.
    static let outputDrainTimeout: UInt64 = 2_000_000_000

    func delete(_ r: Containerd_Task_V2_DeleteRequest) async throws -> Containerd_Task_V2_DeleteResponse {
        try checkID(r.id)
        try checkInit(r.execID)
        let prior = try state.withLock { (s) throws(RPCError) -> Phase in
            switch s.phase {
            case .created, .stopped:
                let p = s.phase
                s.phase = .deleting
                return p
            case .running:
                throw RPCError(.failedPrecondition, "task \"\(options.id)\" is running: kill it first")
            case .empty, .deleted:
                throw RPCError(.notFound, "task \"\(options.id)\" does not exist in this shim (\(s.phase.rawValue))")
            case .creating, .deleting:
                throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(s.phase.rawValue); try again")
            }
        }
        do {
            try await runtime.delete(id: options.id, force: true)
        } catch {
            state.withLock { $0.phase = prior }
            throw error
        }
        // A created task's init dies with `delete --force`; its exit is recorded like any other.
        let exit = await waitForExit()
        await waitForOutput(timeoutNanos: Self.outputDrainTimeout)
        let (stdio, mounts) = state.withLock { s in
            s.phase = .deleted
            defer { s.stdio = nil; s.mounts = [] }
            return (s.stdio, s.mounts)
        }
        stdio?.remove(from: relay)
        Mounts.unmountAll(mounts)
        unlink(options.initPidFile)
        ShimLog.info("deleted container \(options.id) (exit status \(exit.code))")
        var out = Containerd_Task_V2_DeleteResponse()
        out.pid = UInt32(exit.pid)
        out.exitStatus = exit.code
        out.exitedAt = exit.timestamp
        return out
    }

    private func waitForOutput(timeoutNanos: UInt64) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let done = state.withLock { s -> Bool in
                        if s.outputDone || s.stdio == nil { return true }
                        s.outputWaiters.append(c)
                        return false
                    }
                    if done { c.resume() }
                }
            }
            group.addTask { try? await Task.sleep(nanoseconds: timeoutNanos) }
            await group.next()
            group.cancelAll()
        }
        if !state.withLock({ $0.outputDone || $0.stdio == nil }) {
            ShimLog.warn("output of \(options.id) still open after \(timeoutNanos / 1_000_000) ms (a process outside the container holds it?); closing it")
        }
    }

    func connect(_ r: Containerd_Task_V2_ConnectRequest) async throws -> Containerd_Task_V2_ConnectResponse {
        var out = Containerd_Task_V2_ConnectResponse()
        out.shimPid = UInt32(getpid())
        out.taskPid = UInt32(state.withLock { $0.pid })
        out.version = Self.version
        return out
    }

    // MARK: - helpers

    func checkID(_ id: String) throws(RPCError) {
        guard id == options.id else { throw RPCError(.notFound, "this shim serves task \"\(options.id)\", not \"\(id)\"") }
    }

    private func checkInit(_ execID: String) throws(RPCError) {
        guard execID.isEmpty else { throw RPCError(.unimplemented, "exec'd processes are not implemented yet by \(Self.version)") }
    }

    private func readPid(_ path: String) throws -> Int32 {
        let text = try Files.readString(path).filter { !$0.isWhitespace }
        guard let pid = Int32(text), pid > 0 else { throw RPCError(.internal, "pid file \(path) holds \"\(text)\", not a pid") }
        return pid
    }
}

extension ProcessStdio {
    /// Stops relaying this process's streams and closes them.
    func remove(from relay: StdioRelay) {
        for id in streams { relay.remove(id) }
    }
}
