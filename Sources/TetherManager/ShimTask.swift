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

/// A task as the manager sees it: its record on disk, a client for its shim,
/// and the callers waiting for its exit. Every call goes to the shim; exits
/// come in from the exit pipe (`apply`) or, if the shim dies, from what it
/// left on disk (`shimExited`).
public final class ShimTask: RuntimeTask, Sendable {
    public let info: TaskInfo
    public var id: String { info.id }

    private struct State {
        var record: TaskRecord
        var client: ShimClient?
        var exitWaiters: [CheckedContinuation<Exit, Never>] = []
        var execWaiters: [String: [CheckedContinuation<Exit, Never>]] = [:]
        var shimGone = false
        var shimWaiters: [@Sendable () -> Void] = []
        /// A create (or the reload of a half-created task) is in flight in this manager.
        var creating = false
        /// A delete is in flight in this manager.
        var deleting = false
        var deleted = false
        /// The clean-up after a dead shim, once started (it runs once).
        var cleanup: Task<Void, Never>?
        /// Processes ("" for the init) whose Start call is under way: their
        /// exit events wait until their start event is out, so a subscriber
        /// always sees start before exit.
        var starting: Set<String> = []
        var deferredExits: [String: TaskEvent] = [:]
    }

    private unowned let runtime: ShimRuntime
    private let state: Mutex<State>

    init(runtime: ShimRuntime, record: TaskRecord, spec: Data) {
        self.runtime = runtime
        info = TaskInfo(id: record.id, runtime: runtime.id, spec: spec, namespace: record.namespace)
        var s = State(record: record)
        s.creating = record.phase == .creating
        state = Mutex(s)
    }

    /// The create succeeded: the task is visible and its shim's death is news.
    func finishCreate() { state.withLock { $0.creating = false } }

    var record: TaskRecord { state.withLock { $0.record } }

    /// Why the manager recorded the exit itself (the shim died), if it did.
    public var exitReason: String? { record.exitReason }
    public var bundle: String { record.bundle }
    public var shimPid: Int32 { record.shimPid }
    var logger: Logger { runtime.logger }

    /// Half-created tasks are not shown to anyone.
    var isVisible: Bool { state.withLock { !$0.creating && $0.record.phase != .creating && !$0.deleted } }

    /// Changes the record and writes it to disk before returning. The write
    /// happens under the lock, so the file always holds the newest record
    /// (saves never overtake each other). /run is a tmpfs: this is quick.
    func update(_ body: (inout TaskRecord) -> Void) throws {
        try state.withLock { s in
            body(&s.record)
            try s.record.save()
        }
    }

    func attach(_ client: ShimClient) { state.withLock { $0.client = client } }

    // MARK: - RuntimeProcess

    public func state() async throws -> TetherRuntime.State {
        let r = record
        if let exit = r.exit { return stateOf(r, .stopped, exit: exit) }
        do {
            var req = Containerd_Task_V2_StateRequest()
            req.id = id
            let s = try await rpc("State", req, as: Containerd_Task_V2_StateResponse.self, timeout: Self.quickCall)
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
        let r = record
        let status: Status = switch r.phase {
        case .creating, .created: .created
        case .running: .running
        case .paused: .paused
        case .stopped, .deleting: .stopped
        }
        return stateOf(r, r.exit == nil ? status : .stopped, exit: r.exit)
    }

    /// How long a call that only asks or signals may take before it fails
    /// with deadline_exceeded. A shim that misses it is slow, not dead.
    static let quickCall: TimeAmount = .seconds(2)
    /// Delete runs `runtime delete` and waits up to 2 s for output to drain.
    static let deleteCall: TimeAmount = .seconds(10)

    var shimIsGone: Bool { state.withLock { $0.shimGone } }

    private func stateOf(_ r: TaskRecord, _ status: Status, exit: Exit?) -> TetherRuntime.State {
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
        let _: Google_Protobuf_Empty = try await rpc("Kill", req, timeout: .seconds(10))
    }

    public func wait() async throws -> Exit {
        await withCheckedContinuation { (c: CheckedContinuation<Exit, Never>) in
            let done = state.withLock { s -> Exit? in
                if let e = s.record.exit { return e }
                s.exitWaiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    public func resizePty(_ size: ConsoleSize) async throws {
        var req = Containerd_Task_V2_ResizePtyRequest()
        req.id = id
        req.width = size.width
        req.height = size.height
        let _: Google_Protobuf_Empty = try await rpc("ResizePty", req)
    }

    public func closeIO() async throws {
        var req = Containerd_Task_V2_CloseIORequest()
        req.id = id
        req.stdin = true
        let _: Google_Protobuf_Empty = try await rpc("CloseIO", req)
    }

    // MARK: - RuntimeTask

    public func start() async throws {
        var req = Containerd_Task_V2_StartRequest()
        req.id = id
        // Monitors (the OOM watch) hear of the task before its process runs a
        // single instruction: its cgroup exists since create. Only for a task
        // not yet started: a start the shim refuses must not stop the watch
        // the first start set.
        let firstStart = record.phase == .created
        if firstStart {
            do { try runtime.monitor.monitor(self) } catch { logger.warning("monitor failed: \(error)") }
        }
        let resp: Containerd_Task_V2_StartResponse
        do {
            resp = try await startingProcess("", topic: TaskEvent.Topic.start) {
                try await rpc("Start", req, as: Containerd_Task_V2_StartResponse.self, timeout: .seconds(60))
            }
        } catch {
            if firstStart { try? runtime.monitor.stop(self) }
            throw error
        }
        try update { r in
            if r.exit == nil { r.phase = .running }
            r.pid = resp.pid
        }
    }

    /// Runs a Start call for process `execID` ("" for the init) and publishes
    /// its start event, then any exit event that came in meanwhile.
    func startingProcess(_ execID: String, topic: String,
                         _ call: () async throws -> Containerd_Task_V2_StartResponse) async throws -> Containerd_Task_V2_StartResponse {
        state.withLock { _ = $0.starting.insert(execID) }
        var resp: Containerd_Task_V2_StartResponse?
        defer {
            let deferred = state.withLock { s in
                s.starting.remove(execID)
                return s.deferredExits.removeValue(forKey: execID)
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

    /// Publishes an exit event now, or after the process's start event if its Start is under way.
    private func publishExit(_ event: TaskEvent, execID: String) {
        let now = state.withLock { s -> Bool in
            if s.starting.contains(execID) {
                s.deferredExits[execID] = event
                return false
            }
            return true
        }
        if now { runtime.events.publish(event) }
    }

    private func exitEvent(execID: String, _ exit: Exit, reason: String? = nil) -> TaskEvent {
        TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.exit,
                  event: .init(containerID: id, id: execID.isEmpty ? id : execID, execID: execID.isEmpty ? nil : execID,
                               pid: exit.pid, exitStatus: exit.status, exitedAt: exit.timestamp, reason: reason))
    }

    public func pause() async throws {
        var req = Containerd_Task_V2_PauseRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Pause", req)
        try await runtime.onDisk { try self.update { r in if r.exit == nil { r.phase = .paused } } }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.paused, event: .init(containerID: id)))
    }

    public func resume() async throws {
        var req = Containerd_Task_V2_ResumeRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Resume", req)
        try await runtime.onDisk { try self.update { r in if r.exit == nil { r.phase = .running } } }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.resumed, event: .init(containerID: id)))
    }

    public func pids() async throws -> [UInt32] { try await processes().map(\.pid) }

    /// Every process in the container, with its exec ID when it is an exec'd one.
    public func processes() async throws -> [(pid: UInt32, execID: String?)] {
        var req = Containerd_Task_V2_PidsRequest()
        req.id = id
        return try await rpc("Pids", req, as: Containerd_Task_V2_PidsResponse.self).processes.map { p in
            guard p.hasInfo, let d = try? Tether_Shim_V1_ProcessDetails(serializedBytes: p.info.value) else { return (p.pid, nil) }
            return (p.pid, d.execID)
        }
    }

    /// cpu, memory and pids of the task's cgroup.
    public func stats() async throws -> TaskStats {
        var req = Containerd_Task_V2_StatsRequest()
        req.id = id
        let raw = try await rpc("Stats", req, as: Containerd_Task_V2_StatsResponse.self).stats.value
        return try RuncStats.decode(raw)
    }

    public func exec(id execID: String, _ opts: ExecOpts) async throws -> any RuntimeProcess {
        try Identifier.validate(execID, kind: "exec ID")
        if record.exit != nil { throw RuntimeError.processAlreadyExited(id) }
        try state.withLock { s in
            guard s.record.execs[execID] == nil else {
                throw RuntimeError(.containerExists, "exec ID \"\(execID)\" is already in use in task \"\(id)\"")
            }
            s.record.execs[execID] = ExecRecord(io: opts.io)
            try s.record.save()
        }
        do {
            try runtime.makeFifos(opts.io, bundle: record.bundle)
            var req = Containerd_Task_V2_ExecProcessRequest()
            req.id = id
            req.execID = execID
            req.terminal = opts.io.terminal
            req.stdin = opts.io.stdin
            req.stdout = opts.io.stdout
            req.stderr = opts.io.stderr
            req.spec.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
            req.spec.value = opts.spec
            let _: Google_Protobuf_Empty = try await rpc("Exec", req)
        } catch {
            forgetExec(execID)
            throw error
        }
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.execAdded,
                                         event: .init(containerID: id, execID: execID)))
        return ShimExec(task: self, id: execID)
    }

    /// Drops an exec from the record and removes the FIFOs the manager made for it.
    private func forgetExec(_ execID: String) {
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
        let _: Google_Protobuf_Empty = try await rpc("Checkpoint", req, timeout: .seconds(300))
        runtime.events.publish(TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.checkpointed,
                                         event: .init(containerID: id, checkpoint: path)))
    }

    public func deleteProcess(id execID: String) async throws -> Exit {
        guard record.execs[execID] != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        var req = Containerd_Task_V2_DeleteRequest()
        req.id = id
        req.execID = execID
        let r = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self)
        let exit = record.execs[execID]?.exit ?? Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
        forgetExec(execID)
        let waiters = state.withLock { $0.execWaiters.removeValue(forKey: execID) ?? [] }
        for w in waiters { w.resume(returning: exit) }
        return exit
    }

    public func update(resources: Data) async throws {
        var req = Containerd_Task_V2_UpdateTaskRequest()
        req.id = id
        req.resources.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
        req.resources.value = resources
        let _: Google_Protobuf_Empty = try await rpc("Update", req)
    }

    public func process(id execID: String) async throws -> any RuntimeProcess {
        guard record.execs[execID] != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        return ShimExec(task: self, id: execID)
    }

    /// Waits for an exec's exit (from its record, or the exit pipe).
    func waitExec(_ execID: String) async throws -> Exit {
        guard execRecord(execID) != nil else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(execID)\" in task \"\(id)\"") }
        return await withCheckedContinuation { (c: CheckedContinuation<Exit, Never>) in
            let done = state.withLock { s -> Exit? in
                if let exit = s.record.execs[execID]?.exit { return exit }
                s.execWaiters[execID, default: []].append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    /// Wakes every exec waiter (the task is gone): with the exec's exit, else `fallback`.
    private func releaseExecWaiters(fallback: Exit) {
        let (waiters, execs) = state.withLock { s in
            defer { s.execWaiters = [:] }
            return (s.execWaiters, s.record.execs)
        }
        for (execID, list) in waiters {
            for w in list { w.resume(returning: execs[execID]?.exit ?? fallback) }
        }
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

    // MARK: - exits

    /// Takes an exit record from the shim: stores it, wakes the waiters, acks it.
    /// A record seen before (same or older seq) is only acked again.
    func apply(_ r: Tether_Shim_V1_ExitRecord) {
        var execWoken: ([CheckedContinuation<Exit, Never>], Exit)?
        let (fresh, stored, waiters, exit, client) = state.withLock {
            s -> (Bool, Bool, [CheckedContinuation<Exit, Never>], Exit?, ShimClient?) in
            guard r.seq > s.record.ackedSeq else { return (false, true, [], s.record.exit, s.client) }
            s.record.ackedSeq = r.seq
            let exit = Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
            if r.execID.isEmpty && s.record.exit == nil {
                s.record.exit = exit
                if s.record.phase != .deleting { s.record.phase = .stopped }
            } else if !r.execID.isEmpty && s.record.execs[r.execID] != nil && s.record.execs[r.execID]?.exit == nil {
                s.record.execs[r.execID]?.exit = exit
                execWoken = (s.execWaiters.removeValue(forKey: r.execID) ?? [], exit)
            }
            var stored = true
            do { try s.record.save() } catch {
                stored = false
                logger.error("cannot store exit record \(r.seq) of \(r.namespace)/\(r.id): \(error); the shim keeps it")
            }
            let w = s.record.exit == nil || !r.execID.isEmpty ? [] : s.exitWaiters
            if !w.isEmpty { s.exitWaiters = [] }
            return (true, stored, w, s.record.exit, s.client)
        }
        if let (waiters, exit) = execWoken { for w in waiters { w.resume(returning: exit) } }
        if fresh {
            logger.info("process exited", metadata: ["namespace": "\(r.namespace)", "id": "\(r.id)", "exec": "\(r.execID)",
                                                      "pid": "\(r.pid)", "status": "\(r.exitStatus)", "seq": "\(r.seq)"])
            publishExit(exitEvent(execID: r.execID, Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)), execID: r.execID)
            if let exit { for w in waiters { w.resume(returning: exit) } }
        }
        guard stored, let client else { return }  // unacked, the shim keeps the record for the next reload
        var ack = Tether_Shim_V1_AckRequest()
        ack.seq = r.seq
        Task {
            do {
                let _: Google_Protobuf_Empty = try await client.call("tether.shim.v1.Exits", "Ack", ack)
            } catch {
                logger.debug("ack \(r.seq) to \(r.namespace)/\(r.id) failed: \(error)")
            }
        }
    }

    /// The watcher saw the shim exit (`code` when it was our child).
    func shimExited(code: Int32?) {
        let (waiters, expected) = state.withLock { s in
            s.shimGone = true
            let w = s.shimWaiters
            s.shimWaiters = []
            return (w, s.deleted || s.creating || s.deleting)
        }
        for w in waiters { w() }
        state.withLock { $0.client }?.close()
        if expected { return }  // the create or delete under way deals with it
        logger.warning("shim died", metadata: ["namespace": "\(info.namespace)", "id": "\(id)", "code": "\(code.map(String.init) ?? "?")"])
        cleanUpAfterDeadShim()
    }

    /// A shim died under a live task: take any exit it recorded on disk,
    /// else record 137 with a reason; kill what is left of the container;
    /// unmount. Runs once, however many ask; they all get the same task.
    @discardableResult
    func cleanUpAfterDeadShim() -> Task<Void, Never> {
        state.withLock { s in
            if let t = s.cleanup { return t }
            let t = Task { await deadShimCleanup() }
            s.cleanup = t
            return t
        }
    }

    private func deadShimCleanup() async {
        let r = record
        for pending in ExitFiles.read("\(r.bundle)/exits") where pending.instance == r.instance {
            apply(pending)
        }
        if record.exit == nil {
            let exit = Exit(pid: r.pid, status: 137, timestamp: Date())
            let reason = "the task's shim died (killed or crashed); its container was killed"
            let waiters = state.withLock { s in
                s.record.exit = exit
                s.record.exitReason = reason
                if s.record.phase != .deleting { s.record.phase = .stopped }
                do { try s.record.save() } catch { logger.error("cannot store the exit of \(r.namespace)/\(r.id): \(error)") }
                let w = s.exitWaiters
                s.exitWaiters = []
                return w
            }
            publishExit(exitEvent(execID: "", exit, reason: reason), execID: "")
            for w in waiters { w.resume(returning: exit) }
        }
        releaseExecWaiters(fallback: Exit(pid: 0, status: 137, timestamp: Date()))
        await runtime.teardown.run(r, spec: info.spec, removeFiles: false)
    }

    // MARK: - delete

    func delete() async throws -> Exit {
        let prior = try state.withLock { s -> TaskRecord.Phase in
            if s.creating { throw RuntimeError(.failedPrecondition, "task \"\(id)\" is still being created; try again") }
            if s.deleting || s.deleted { throw RuntimeError(.failedPrecondition, "task \"\(id)\" is already being deleted") }
            // A `deleting` phase on disk is a delete an earlier manager did not finish: finish it.
            let p = s.record.phase
            var r = s.record
            r.phase = .deleting
            try r.save()  // before the side effect: a manager that dies now finds a delete under way
            s.record = r
            s.deleting = true
            return p
        }
        await TestHook.reach("delete.before-delete-call")
        var shimDead = shimIsGone
        var fromShim: Exit?
        if !shimDead {
            var req = Containerd_Task_V2_DeleteRequest()
            req.id = id
            do {
                let resp = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self, timeout: Self.deleteCall)
                fromShim = Exit(pid: resp.pid, status: resp.exitStatus, timestamp: resp.exitedAt.date)
            } catch let e as RuntimeError where e.code == .containerDoesNotExist {
                logger.info("the shim had no container to delete", metadata: ["id": "\(id)", "error": "\(e.message)"])
            } catch {
                if let e = error as? RuntimeError, e.code == .unavailable, await shimGone(within: .seconds(1)) {
                    // The connection closed because the shim died: clean up without it.
                    logger.warning("the shim died during delete", metadata: ["id": "\(id)", "error": "\(e.message)"])
                    shimDead = true
                } else {
                    // A slow shim (or any other failure) leaves the task as it was:
                    // it is never taken for dead while its process lives.
                    state.withLock { s in
                        s.deleting = false
                        s.record.phase = prior
                        try? s.record.save()
                    }
                    throw error
                }
            }
        }
        if shimDead { await cleanUpAfterDeadShim().value }
        let final = record.exit ?? fromShim ?? Exit(pid: record.pid, status: 137, timestamp: Date())
        await stopShim(now: shimDead)
        let problems = await runtime.teardown.run(record, spec: info.spec, removeFiles: true)
        if !problems.isEmpty {
            state.withLock { $0.deleting = false }
            throw RuntimeError(.internal, "task \"\(id)\" is deleted but not all of it could be removed: \(problems.joined(separator: "; "))")
        }
        let waiters = state.withLock { s in
            s.deleted = true
            s.deleting = false
            if s.record.exit == nil { s.record.exit = final }
            let w = s.exitWaiters
            s.exitWaiters = []
            return w
        }
        for w in waiters { w.resume(returning: final) }
        releaseExecWaiters(fallback: final)
        return final
    }

    /// Asks the shim to exit and waits for it (a few seconds, then SIGKILL).
    func stopShim(now: Bool) async {
        let (client, gone, pid) = state.withLock { ($0.client, $0.shimGone, $0.record.shimPid) }
        guard !gone, pid > 0 else { return }
        if let client {
            var req = Containerd_Task_V2_ShutdownRequest()
            req.id = id
            req.now = now
            _ = try? await client.task("Shutdown", req, as: Google_Protobuf_Empty.self, timeout: .seconds(5))
        }
        // Without a connection there is nobody to ask: kill it at once.
        let exited = client == nil ? false : await shimGone(within: .seconds(5))
        if !exited {
            logger.warning("shim did not exit after Shutdown; killing it", metadata: ["id": "\(id)", "pid": "\(pid)"])
            runtime.watcher.signal(pid, SIGKILL)
            _ = await shimGone(within: .seconds(5))
        }
    }

    private func shimGone(within timeout: TimeAmount) async -> Bool {
        await waitForEvent(timeoutNanos: UInt64(timeout.nanoseconds)) { done in
            let gone = state.withLock { s -> Bool in
                if s.shimGone { return true }
                s.shimWaiters.append(done)
                return false
            }
            if gone { done() }
        }
    }

    // MARK: - calls to the shim

    func rpc<Resp: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                          as: Resp.Type = Resp.self, timeout: TimeAmount = .seconds(30)) async throws -> Resp {
        guard let client = state.withLock({ $0.client }) else {
            throw RuntimeError(.unavailable, "task \"\(id)\" has no shim connection")
        }
        do {
            return try await client.task(method, request, as: Resp.self, timeout: timeout)
        } catch {
            throw Self.mapError(error, namespace: info.namespace, id: id, method: method)
        }
    }

    /// The shim's gRPC codes as the runtime API's errors.
    static func mapError(_ error: any Error, namespace: String, id: String, method: String = "") -> any Error {
        guard let e = error as? RPCError else {
            if let r = error as? RuntimeError { return r }
            if let s = error as? SysError { return RuntimeError(.internal, s.description) }
            return error
        }
        switch e.code {
        case .notFound:
            if e.message.contains("already finished") { return RuntimeError.processAlreadyExited(id) }
            return RuntimeError(.containerDoesNotExist, e.message)
        case .alreadyExists: return RuntimeError(.containerExists, e.message)
        case .invalidArgument: return RuntimeError(.invalidArgument, e.message)
        case .failedPrecondition: return RuntimeError(.failedPrecondition, e.message)
        case .unimplemented: return RuntimeError(.notImplemented, e.message)
        case .unavailable:
            return RuntimeError(.unavailable, "the shim of task \"\(namespace)/\(id)\" is not answering\(method.isEmpty ? "" : " (\(method))"): \(e.message)")
        case .deadlineExceeded:
            return RuntimeError(.deadlineExceeded, "the shim of task \"\(namespace)/\(id)\" did not answer\(method.isEmpty ? "" : " \(method)") in time: it is alive but stopped or overloaded (\(e.message)); nothing was changed, try again")
        default: return RuntimeError(.internal, e.message)
        }
    }
}

extension Google_Protobuf_Timestamp {
    var date: Date { Date(timeIntervalSince1970: Double(seconds) + Double(nanos) / 1e9) }
}

/// Reads the exit records a shim left in its exits/ directory.
enum ExitFiles {
    static func read(_ dir: String) -> [Tether_Shim_V1_ExitRecord] {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return ((try? Files.listDirectory(dir)) ?? []).filter { $0.hasSuffix(".json") }.compactMap { name in
            guard let bytes = try? Files.read("\(dir)/\(name)") else { return nil }
            return try? Tether_Shim_V1_ExitRecord(jsonUTF8Bytes: bytes, options: options)
        }.sorted { $0.seq < $1.seq }
    }
}

/// A process exec'd into a task, as the manager sees it. Every call goes to
/// the task's shim with the exec id; the exit comes in on the exit pipe.
public final class ShimExec: RuntimeProcess, Sendable {
    public let id: String
    let task: ShimTask
    public var taskID: String { task.id }

    init(task: ShimTask, id: String) {
        self.task = task
        self.id = id
    }

    public func state() async throws -> TetherRuntime.State {
        guard let r = task.execRecord(id) else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(id)\" in task \"\(task.id)\"") }
        if let exit = r.exit {
            return State(status: .stopped, pid: exit.pid, stdin: r.io.stdin, stdout: r.io.stdout, stderr: r.io.stderr,
                         terminal: r.io.terminal, exit: exit)
        }
        var req = Containerd_Task_V2_StateRequest()
        req.id = task.id
        req.execID = id
        let s = try await task.rpc("State", req, as: Containerd_Task_V2_StateResponse.self)
        let status: Status = switch s.status {
        case .created: .created
        case .running: .running
        case .paused, .pausing: .paused
        default: .stopped
        }
        let exit = status == .stopped && s.hasExitedAt ? Exit(pid: s.pid, status: s.exitStatus, timestamp: s.exitedAt.date) : nil
        return State(status: status, pid: s.pid, stdin: r.io.stdin, stdout: r.io.stdout, stderr: r.io.stderr,
                     terminal: r.io.terminal, exit: exit)
    }

    public func start() async throws {
        var req = Containerd_Task_V2_StartRequest()
        req.id = task.id
        req.execID = id
        let r = try await task.startingProcess(id, topic: TaskEvent.Topic.execStarted) {
            try await task.rpc("Start", req, as: Containerd_Task_V2_StartResponse.self, timeout: .seconds(60))
        }
        try task.update { rec in
            rec.execs[id]?.pid = r.pid
            rec.execs[id]?.started = true
        }
    }

    /// Signals this process only (`all` is for the task's init).
    public func kill(signal: UInt32, all: Bool) async throws {
        guard signal >= 1 && signal <= UInt32(Signals.max) else {
            throw RuntimeError(.invalidArgument, "signal \(signal) is out of range: use 1 to \(Signals.max)")
        }
        if task.execRecord(id)?.exit != nil { throw RuntimeError.processAlreadyExited(id) }
        var req = Containerd_Task_V2_KillRequest()
        req.id = task.id
        req.execID = id
        req.signal = signal
        let _: Google_Protobuf_Empty = try await task.rpc("Kill", req)
    }

    public func resizePty(_ size: ConsoleSize) async throws {
        var req = Containerd_Task_V2_ResizePtyRequest()
        req.id = task.id
        req.execID = id
        req.width = size.width
        req.height = size.height
        let _: Google_Protobuf_Empty = try await task.rpc("ResizePty", req)
    }

    public func closeIO() async throws {
        var req = Containerd_Task_V2_CloseIORequest()
        req.id = task.id
        req.execID = id
        req.stdin = true
        let _: Google_Protobuf_Empty = try await task.rpc("CloseIO", req)
    }

    public func wait() async throws -> Exit { try await task.waitExec(id) }
}

/// The JSON of `runc events --stats`.
enum RuncStats {
    struct Events: Decodable {
        struct Data: Decodable {
            struct CPU: Decodable {
                struct Usage: Decodable { let total: UInt64?; let user: UInt64?; let kernel: UInt64? }
                let usage: Usage?
            }
            struct Memory: Decodable {
                struct Usage: Decodable { let usage: UInt64?; let max: UInt64?; let limit: UInt64? }
                let usage: Usage?
            }
            struct Pids: Decodable { let current: UInt64?; let limit: UInt64? }
            let cpu: CPU?
            let memory: Memory?
            let pids: Pids?
        }
        let data: Data?
    }

    static func decode(_ raw: Data) throws -> TaskStats {
        guard let e = try? JSONDecoder().decode(Events.self, from: raw), let d = e.data else {
            throw RuntimeError(.internal, "the runtime's stats are not runc's events JSON: \(String(decoding: raw.prefix(200), as: UTF8.self))")
        }
        return TaskStats(cpuUsageNanos: d.cpu?.usage?.total ?? 0, cpuUserNanos: d.cpu?.usage?.user ?? 0,
                         cpuKernelNanos: d.cpu?.usage?.kernel ?? 0, memoryUsage: d.memory?.usage?.usage ?? 0,
                         memoryMaxUsage: d.memory?.usage?.max ?? 0, memoryLimit: d.memory?.usage?.limit ?? 0,
                         pids: d.pids?.current ?? 0, pidsLimit: d.pids?.limit ?? 0)
    }
}
