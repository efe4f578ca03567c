import CTether
import Foundation
import Logging
import NIOCore
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherProto
import TetherRuntime
import TetherSys

/// A task as the manager sees it: where it is in its life (`TaskState`), its
/// record on disk, the link to its shim, and the callers waiting for its
/// exits. Every call goes to the shim; exits come in from the exit pipe
/// (`apply`) or, if the shim dies, from what it left on disk. The lifecycle
/// half (exits, a dead shim, delete) is in ShimTask+Lifecycle.swift.
public final class ShimTask: RuntimeTask, Sendable {
    public let info: TaskInfo
    public var id: String { info.id }

    struct State {
        var life: TaskState
        var record: TaskRecord
        var link = ShimLink()
        var waiters = ExitWaiters()
        var order = StartOrder()
        /// The clean-up after a dead shim, once started (it runs once).
        var cleanup: Task<Void, Never>?
    }

    /// The connection to the shim and whether its process is gone (its pidfd said so).
    struct ShimLink {
        var client: ShimClient?
        var gone = false
        var waiters: [@Sendable () -> Void] = []
    }

    /// Callers of wait, for the init and for each exec.
    struct ExitWaiters {
        var task: [CheckedContinuation<Exit, any Error>] = []
        var execs: [String: [CheckedContinuation<Exit, any Error>]] = [:]
        /// Set when tetherd stops: pending and later waits fail with it.
        var refusal: RuntimeError?
    }

    /// Processes ("" for the init) whose Start call is under way: their exit
    /// events wait until their start event is out, so a subscriber always
    /// sees start before exit.
    struct StartOrder {
        var starting: Set<String> = []
        var deferredExits: [String: TaskEvent] = [:]
    }

    unowned let runtime: ShimRuntime
    let state: Mutex<State>
    let timeouts: Timeouts

    init(runtime: ShimRuntime, record: TaskRecord, spec: Data) {
        self.runtime = runtime
        info = TaskInfo(id: record.id, runtime: runtime.id, spec: spec, namespace: record.namespace)
        state = Mutex(State(life: TaskState(record), record: record))
        timeouts = Timeouts(runtimeSeconds: runtime.config.runtimeTimeout)
    }

    /// How long each call to the shim may take before it fails with
    /// deadline_exceeded. Each is above the shim's own deadline for the
    /// runtime call inside it; a shim that misses one is slow, not dead.
    struct Timeouts: Sendable {
        let quick: TimeAmount = .seconds(2)     // State, ResizePty, CloseIO, Pids, Stats…
        let kill: TimeAmount = .seconds(12)     // runtime kill: at most 8 s in the shim
        let delete: TimeAmount = .seconds(15)   // runtime delete (8 s) and the output's drain (2 s)
        let start: TimeAmount
        let create: TimeAmount
        let checkpoint: TimeAmount

        init(runtimeSeconds t: Int64) {
            start = .seconds(t + 10)
            create = .seconds(2 * t + 10)  // runtime create, and its delete --force after a failure
            checkpoint = .seconds(5 * t + 10)
        }
    }

    var record: TaskRecord { state.withLock { $0.record } }
    var life: TaskState { state.withLock { $0.life } }

    /// Why the manager recorded the exit itself (the shim died), if it did.
    public var exitReason: String? { record.exitReason }
    public var bundle: String { record.bundle }
    public var shimPid: Int32 { record.shimPid }
    var logger: Logger { runtime.logger }

    /// Half-created and deleted tasks are not shown to anyone.
    var isVisible: Bool { state.withLock { $0.life.isVisible } }
    var shimIsGone: Bool { state.withLock { $0.link.gone } }

    /// Changes the record and writes it to disk before returning. The write
    /// happens under the lock, so the file always holds the newest record
    /// (saves never overtake each other). Call it on the manager's disk pool.
    func update(_ body: (inout TaskRecord) -> Void) throws {
        try state.withLock { s in
            body(&s.record)
            s.record.phase = s.life.phase
            try s.record.save()
        }
    }

    /// Moves the task's state and writes the record; with `body`, changes
    /// the record in the same write. Throws (changing nothing) if the move
    /// cannot happen or the record cannot be written.
    func move(_ m: TaskState.Move, _ body: (inout TaskRecord) -> Void = { _ in }) throws {
        try state.withLock { s in
            let next = try s.life.moved(m, task: id)
            var r = s.record
            body(&r)
            r.phase = next.phase
            try r.save()  // before anyone sees the new state
            s.record = r
            s.life = next
        }
    }

    func attach(_ client: ShimClient) { state.withLock { $0.link.client = client } }

    // MARK: - RuntimeProcess

    public func state() async throws -> TetherRuntime.State {
        let r = record
        if let exit = r.exit { return stateOf(r, .stopped, exit: exit) }
        do {
            var req = Containerd_Task_V2_StateRequest()
            req.id = id
            let s = try await rpc("State", req, as: Containerd_Task_V2_StateResponse.self, timeout: timeouts.quick)
            let status: Status = switch s.status {
            case .created: .created
            case .running: .running
            case .paused, .pausing: .paused
            default: .stopped
            }
            let exit = status == .stopped && s.hasExitedAt
                ? Exit(pid: s.pid, status: s.exitStatus, timestamp: s.exitedAt.date) : nil
            return stateOf(r, status, exit: exit)
        } catch let e as RuntimeError where e.code == .unavailable && shimIsGone {
            // The shim is gone and no exit is known yet: the dead-shim path is recording one.
            return stateOf(record, .stopped, exit: record.exit)
        }
    }

    /// The task as the manager's own record has it, without asking the shim:
    /// what a listing shows, so that it answers at once whatever the shims do.
    public func recordedState() -> TetherRuntime.State {
        let (life, r) = state.withLock { ($0.life, $0.record) }
        return stateOf(r, r.exit == nil ? life.status : .stopped, exit: r.exit)
    }

    func stateOf(_ r: TaskRecord, _ status: Status, exit: Exit?) -> TetherRuntime.State {
        TetherRuntime.State(status: status, pid: r.pid, stdin: r.io.stdin, stdout: r.io.stdout, stderr: r.io.stderr,
                            terminal: r.io.terminal, exit: exit)
    }

    public func kill(signal: UInt32, all: Bool) async throws {
        guard signal >= 1 && signal <= UInt32(Signals.max) else {
            throw RuntimeError(.invalidArgument, "signal \(signal) is out of range: use 1 to \(Signals.max)")
        }
        if record.exit != nil { throw RuntimeError.processAlreadyExited(id) }
        var req = Containerd_Task_V2_KillRequest()
        req.id = id
        req.signal = signal
        req.all = all
        let _: Google_Protobuf_Empty = try await rpc("Kill", req, timeout: timeouts.kill)
    }

    public func wait() async throws -> Exit {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Exit, any Error>) in
            let done = state.withLock { s -> Result<Exit, RuntimeError>? in
                if let e = s.record.exit { return .success(e) }
                if let r = s.waiters.refusal { return .failure(r) }
                s.waiters.task.append(c)
                return nil
            }
            if let done { c.resume(with: done) }
        }
    }

    public func resizePty(_ size: ConsoleSize) async throws {
        var req = Containerd_Task_V2_ResizePtyRequest()
        req.id = id
        req.width = size.width
        req.height = size.height
        let _: Google_Protobuf_Empty = try await rpc("ResizePty", req, timeout: timeouts.quick)
    }

    public func closeIO() async throws {
        var req = Containerd_Task_V2_CloseIORequest()
        req.id = id
        req.stdin = true
        let _: Google_Protobuf_Empty = try await rpc("CloseIO", req, timeout: timeouts.quick)
    }

    // MARK: - RuntimeTask

    public func start() async throws {
        var req = Containerd_Task_V2_StartRequest()
        req.id = id
        // Monitors (the OOM watch) hear of the task before its process runs a
        // single instruction: its cgroup exists since create. Only for a task
        // not yet started: a start the shim refuses must not stop the watch
        // the first start set.
        let firstStart = life == .created
        if firstStart {
            do { try runtime.monitor.monitor(self) } catch { logger.warning("monitor failed: \(error)") }
        }
        let resp: Containerd_Task_V2_StartResponse
        do {
            resp = try await startingProcess("", topic: TaskEvent.Topic.start) {
                try await rpc("Start", req, as: Containerd_Task_V2_StartResponse.self, timeout: timeouts.start)
            }
        } catch {
            if firstStart { try? runtime.monitor.stop(self) }
            throw error
        }
        try await runtime.onDisk { try self.move(.started) { $0.pid = resp.pid } }
    }

    /// Runs a Start call for process `execID` ("" for the init) and publishes
    /// its start event, then any exit event that came in meanwhile.
    func startingProcess(_ execID: String, topic: String,
                         _ call: () async throws -> Containerd_Task_V2_StartResponse) async throws -> Containerd_Task_V2_StartResponse {
        state.withLock { _ = $0.order.starting.insert(execID) }
        var resp: Containerd_Task_V2_StartResponse?
        defer {
            let deferred = state.withLock { s in
                s.order.starting.remove(execID)
                return s.order.deferredExits.removeValue(forKey: execID)
            }
            if let resp {
                runtime.events.publish(TaskEvent(namespace: info.namespace, topic: topic,
                                                 event: .init(containerID: id, execID: execID.isEmpty ? nil : execID, pid: resp.pid)))
            }
            if let deferred { runtime.events.publish(deferred) }
        }
        resp = try await call()
        return resp!
    }

    public func pause() async throws {
        var req = Containerd_Task_V2_PauseRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Pause", req, timeout: timeouts.kill)
        try await runtime.onDisk { try self.move(.paused) }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.paused, event: .init(containerID: id)))
    }

    public func resume() async throws {
        var req = Containerd_Task_V2_ResumeRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Resume", req, timeout: timeouts.kill)
        try await runtime.onDisk { try self.move(.resumed) }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.resumed, event: .init(containerID: id)))
    }

    public func pids() async throws -> [UInt32] { try await processes().map(\.pid) }

    /// Every process in the container, with its exec ID when it is an exec'd one.
    public func processes() async throws -> [(pid: UInt32, execID: String?)] {
        var req = Containerd_Task_V2_PidsRequest()
        req.id = id
        return try await rpc("Pids", req, as: Containerd_Task_V2_PidsResponse.self, timeout: timeouts.kill).processes.map { p in
            guard p.hasInfo, let d = try? Tether_Shim_V1_ProcessDetails(serializedBytes: p.info.value) else { return (p.pid, nil) }
            return (p.pid, d.execID)
        }
    }

    /// cpu, memory and pids of the task's cgroup.
    public func stats() async throws -> TaskStats {
        var req = Containerd_Task_V2_StatsRequest()
        req.id = id
        let raw = try await rpc("Stats", req, as: Containerd_Task_V2_StatsResponse.self, timeout: timeouts.kill).stats.value
        return try RuncStats.decode(raw)
    }

    public func exec(id execID: String, _ opts: ExecOpts) async throws -> any RuntimeProcess {
        try Identifier.validate(execID, kind: "exec ID")
        if record.exit != nil { throw RuntimeError.processAlreadyExited(id) }
        let bundle = self.bundle
        try await runtime.onDisk { [self] in
            try state.withLock { s in
                guard s.record.execs[execID] == nil else {
                    throw RuntimeError(.containerExists, "exec ID \"\(execID)\" is already in use in task \"\(id)\"")
                }
                s.record.execs[execID] = ExecRecord(io: opts.io)
                try s.record.save()
            }
            try runtime.makeFifos(opts.io, bundle: bundle)
        }
        do {
            var req = Containerd_Task_V2_ExecProcessRequest()
            req.id = id
            req.execID = execID
            req.terminal = opts.io.terminal
            req.stdin = opts.io.stdin
            req.stdout = opts.io.stdout
            req.stderr = opts.io.stderr
            req.spec.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
            req.spec.value = opts.spec
            let _: Google_Protobuf_Empty = try await rpc("Exec", req, timeout: timeouts.kill)
        } catch {
            await runtime.onDisk { self.forgetExec(execID) }
            throw error
        }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.execAdded,
                                         event: .init(containerID: id, execID: execID)))
        return ShimExec(task: self, id: execID)
    }

    /// Drops an exec from the record and removes the FIFOs the manager made
    /// for it. Disk work: call it on the manager's disk pool.
    func forgetExec(_ execID: String) {
        let io = state.withLock { s -> IO? in
            let io = s.record.execs.removeValue(forKey: execID)?.io
            try? s.record.save()
            return io
        }
        if let io { runtime.removeFifos(io, bundle: record.bundle) }
    }

    /// `options` is JSON, `{"exit": true}` to stop the task once checkpointed.
    public func checkpoint(path: String, options: Data?) async throws {
        var req = Containerd_Task_V2_CheckpointTaskRequest()
        req.id = id
        req.path = path
        if let options {
            struct Options: Decodable { let exit: Bool? }
            guard let o = try? JSONDecoder().decode(Options.self, from: options) else {
                throw RuntimeError(.invalidArgument, "checkpoint options are not {\"exit\": true|false}")
            }
            var c = Tether_Shim_V1_CheckpointOptions()
            c.exit = o.exit ?? false
            req.options.typeURL = "types.tether.dev/tether.shim.v1.CheckpointOptions"
            req.options.value = try c.serializedData()
        }
        let _: Google_Protobuf_Empty = try await rpc("Checkpoint", req, timeout: timeouts.checkpoint)
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.checkpointed,
                                         event: .init(containerID: id, checkpoint: path)))
    }

    public func deleteProcess(id execID: String) async throws -> Exit {
        guard record.execs[execID] != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        var req = Containerd_Task_V2_DeleteRequest()
        req.id = id
        req.execID = execID
        let r = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self, timeout: timeouts.delete)
        let exit = record.execs[execID]?.exit ?? Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
        await runtime.onDisk { self.forgetExec(execID) }
        let waiters = state.withLock { $0.waiters.execs.removeValue(forKey: execID) ?? [] }
        for w in waiters { w.resume(returning: exit) }
        return exit
    }

    public func update(resources: Data) async throws {
        var req = Containerd_Task_V2_UpdateTaskRequest()
        req.id = id
        req.resources.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
        req.resources.value = resources
        let _: Google_Protobuf_Empty = try await rpc("Update", req, timeout: timeouts.kill)
    }

    public func process(id execID: String) async throws -> any RuntimeProcess {
        guard record.execs[execID] != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        return ShimExec(task: self, id: execID)
    }

    /// Waits for an exec's exit (from its record, or the exit pipe).
    func waitExec(_ execID: String) async throws -> Exit {
        guard execRecord(execID) != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Exit, any Error>) in
            let done = state.withLock { s -> Result<Exit, RuntimeError>? in
                if let exit = s.record.execs[execID]?.exit { return .success(exit) }
                if let r = s.waiters.refusal { return .failure(r) }
                s.waiters.execs[execID, default: []].append(c)
                return nil
            }
            if let done { c.resume(with: done) }
        }
    }

    /// Ends every pending wait with `error`, and every later one (tetherd is
    /// stopping: a wait must not hold it up; the exit stays with the shim).
    func refuseWaits(_ error: RuntimeError) {
        let w = state.withLock { s in
            s.waiters.refusal = error
            defer { s.waiters.task = []; s.waiters.execs = [:] }
            return s.waiters
        }
        for c in w.task { c.resume(throwing: error) }
        for list in w.execs.values { for c in list { c.resume(throwing: error) } }
    }

    func execRecord(_ execID: String) -> ExecRecord? { state.withLock { $0.record.execs[execID] } }

    /// After a reload: drops exec records the shim never heard of (the last
    /// manager died between writing the record and the Exec call).
    func reconcileExecs(timeout: TimeAmount) async throws {
        let open = state.withLock { $0.record.execs.filter { $0.value.exit == nil }.map(\.key) }
        for execID in open {
            var req = Containerd_Task_V2_StateRequest()
            req.id = id
            req.execID = execID
            do {
                let _: Containerd_Task_V2_StateResponse = try await rpc("State", req, timeout: timeout)
            } catch let e as RuntimeError where e.code == .containerDoesNotExist {
                logger.info("dropping an exec the shim never started", metadata: ["id": "\(id)", "exec": "\(execID)"])
                forgetExec(execID)
            }
        }
    }
}
