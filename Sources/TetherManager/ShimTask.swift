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
        var shimGone = false
        var shimWaiters: [CheckedContinuation<Void, Never>] = []
        var deleted = false
    }

    private unowned let runtime: ShimRuntime
    private let state: Mutex<State>

    init(runtime: ShimRuntime, record: TaskRecord, spec: Data) {
        self.runtime = runtime
        info = TaskInfo(id: record.id, runtime: runtime.id, spec: spec, namespace: record.namespace)
        state = Mutex(State(record: record))
    }

    var record: TaskRecord { state.withLock { $0.record } }

    /// Why the manager recorded the exit itself (the shim died), if it did.
    public var exitReason: String? { record.exitReason }
    var logger: Logger { runtime.logger }

    /// Half-created tasks are not shown to anyone.
    var isVisible: Bool { state.withLock { $0.record.phase != .creating && !$0.deleted } }

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
            let s = try await rpc("State", req, as: Containerd_Task_V2_StateResponse.self)
            let status: Status = switch s.status {
            case .created: .created
            case .running: .running
            case .paused, .pausing: .paused
            default: .stopped
            }
            let exit = status == .stopped && s.hasExitedAt
                ? Exit(pid: s.pid, status: s.exitStatus, timestamp: s.exitedAt.date) : nil
            return stateOf(r, status, exit: exit)
        } catch let e as RuntimeError where e.code == .unavailable {
            // The shim is gone and no exit is known yet: the dead-shim path is recording one.
            return stateOf(record, .stopped, exit: record.exit)
        }
    }

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
        let _: Google_Protobuf_Empty = try await rpc("Kill", req)
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
        let resp = try await rpc("Start", req, as: Containerd_Task_V2_StartResponse.self, timeout: .seconds(60))
        try update { r in
            if r.exit == nil { r.phase = .running }
            r.pid = resp.pid
        }
        do { try runtime.config.monitor.monitor(self) } catch { logger.warning("monitor failed: \(error)") }
    }

    public func pause() async throws {
        var req = Containerd_Task_V2_PauseRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Pause", req)
    }

    public func resume() async throws {
        var req = Containerd_Task_V2_ResumeRequest()
        req.id = id
        let _: Google_Protobuf_Empty = try await rpc("Resume", req)
    }

    public func pids() async throws -> [UInt32] {
        var req = Containerd_Task_V2_PidsRequest()
        req.id = id
        return try await rpc("Pids", req, as: Containerd_Task_V2_PidsResponse.self).processes.map(\.pid)
    }

    public func exec(id execID: String, _ opts: ExecOpts) async throws -> any RuntimeProcess {
        try Identifier.validate(execID, kind: "exec ID")
        var req = Containerd_Task_V2_ExecProcessRequest()
        req.id = id
        req.execID = execID
        req.terminal = opts.io.terminal
        req.stdin = opts.io.stdin
        req.stdout = opts.io.stdout
        req.stderr = opts.io.stderr
        req.spec = .init()
        req.spec.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
        req.spec.value = opts.spec
        let _: Google_Protobuf_Empty = try await rpc("Exec", req)
        throw RuntimeError(.notImplemented, "exec'd processes are not implemented yet")
    }

    public func checkpoint(path: String, options: Data?) async throws {
        var req = Containerd_Task_V2_CheckpointTaskRequest()
        req.id = id
        req.path = path
        let _: Google_Protobuf_Empty = try await rpc("Checkpoint", req)
    }

    public func deleteProcess(id execID: String) async throws -> Exit {
        var req = Containerd_Task_V2_DeleteRequest()
        req.id = id
        req.execID = execID
        let r = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self)
        return Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
    }

    public func update(resources: Data) async throws {
        var req = Containerd_Task_V2_UpdateTaskRequest()
        req.id = id
        req.resources.typeURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
        req.resources.value = resources
        let _: Google_Protobuf_Empty = try await rpc("Update", req)
    }

    public func process(id execID: String) async throws -> any RuntimeProcess {
        throw RuntimeError(.notImplemented, "exec'd processes are not implemented yet")
    }

    // MARK: - exits

    /// Takes an exit record from the shim: stores it, wakes the waiters, acks it.
    /// A record seen before (same or older seq) is only acked again.
    func apply(_ r: Tether_Shim_V1_ExitRecord) {
        let (fresh, stored, waiters, exit, client) = state.withLock {
            s -> (Bool, Bool, [CheckedContinuation<Exit, Never>], Exit?, ShimClient?) in
            guard r.seq > s.record.ackedSeq else { return (false, true, [], s.record.exit, s.client) }
            s.record.ackedSeq = r.seq
            if r.execID.isEmpty && s.record.exit == nil {
                s.record.exit = Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
                if s.record.phase != .deleting { s.record.phase = .stopped }
            }
            var stored = true
            do { try s.record.save() } catch {
                stored = false
                logger.error("cannot store exit record \(r.seq) of \(r.namespace)/\(r.id): \(error); the shim keeps it")
            }
            let w = s.record.exit == nil ? [] : s.exitWaiters
            if !w.isEmpty { s.exitWaiters = [] }
            return (true, stored, w, s.record.exit, s.client)
        }
        if fresh {
            logger.info("process exited", metadata: ["namespace": "\(r.namespace)", "id": "\(r.id)", "exec": "\(r.execID)",
                                                      "pid": "\(r.pid)", "status": "\(r.exitStatus)", "seq": "\(r.seq)"])
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
            return (w, s.deleted || s.record.phase == .deleting || s.record.phase == .creating)
        }
        for w in waiters { w.resume() }
        state.withLock { $0.client }?.close()
        if expected { return }
        logger.warning("shim died", metadata: ["namespace": "\(info.namespace)", "id": "\(id)", "code": "\(code.map(String.init) ?? "?")"])
        Task { await handleDeadShim() }
    }

    /// A shim died under a live task: take any exit it recorded on disk,
    /// else record 137; kill what is left of the container; unmount.
    func handleDeadShim() async {
        let r = record
        for pending in ExitFiles.read("\(r.bundle)/exits") where pending.instance == r.instance {
            apply(pending)
        }
        if record.exit == nil {
            let exit = Exit(pid: r.pid, status: 137, timestamp: Date())
            let waiters = state.withLock { s in
                s.record.exit = exit
                s.record.exitReason = "the task's shim died (killed or crashed); its container was killed"
                s.record.phase = .stopped
                do { try s.record.save() } catch { logger.error("cannot store the exit of \(r.namespace)/\(r.id): \(error)") }
                let w = s.exitWaiters
                s.exitWaiters = []
                return w
            }
            for w in waiters { w.resume(returning: exit) }
        }
        _ = await runtime.runRuntime(r.runtime, ["--root", runtime.layout.runtimeRoot(r.namespace), "delete", "--force", r.id])
        for m in Files.mounts(under: r.bundle) { _ = tether_umount(m, Int32(MNT_DETACH)) }
    }

    // MARK: - delete

    func delete() async throws -> Exit {
        let prior = try state.withLock { s -> TaskRecord.Phase in
            switch s.record.phase {
            case .creating: throw RuntimeError(.failedPrecondition, "task \"\(id)\" is still being created; try again")
            case .deleting: throw RuntimeError(.failedPrecondition, "task \"\(id)\" is already being deleted")
            default: break
            }
            let p = s.record.phase
            var r = s.record
            r.phase = .deleting
            try r.save()  // before the side effect: a manager that dies now finds a delete under way
            s.record = r
            return p
        }
        let shimGone = state.withLock { $0.shimGone }
        var exit = record.exit
        if !shimGone {
            var req = Containerd_Task_V2_DeleteRequest()
            req.id = id
            do {
                let resp = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self, timeout: .seconds(60))
                if exit == nil { exit = Exit(pid: resp.pid, status: resp.exitStatus, timestamp: resp.exitedAt.date) }
            } catch let e as RuntimeError where e.code != .unavailable {
                try? update { $0.phase = prior }
                throw e
            }
        } else {
            await awaitDeadShimCleanup()
            exit = record.exit
        }
        let final = exit ?? Exit(pid: record.pid, status: 137, timestamp: Date())
        await stopShim(now: false)
        try runtime.removeBundle(record.bundle)
        let waiters = state.withLock { s in
            s.deleted = true
            if s.record.exit == nil { s.record.exit = final }
            let w = s.exitWaiters
            s.exitWaiters = []
            return w
        }
        for w in waiters { w.resume(returning: final) }
        return final
    }

    /// Waits until a dead shim's exit has been recorded.
    private func awaitDeadShimCleanup() async {
        if record.exit == nil { _ = try? await wait() }
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
        if await !shimGone(within: .seconds(5)) {
            logger.warning("shim did not exit after Shutdown; killing it", metadata: ["id": "\(id)", "pid": "\(pid)"])
            Glibc.kill(pid, SIGKILL)
            _ = await shimGone(within: .seconds(5))
        }
    }

    private func shimGone(within timeout: TimeAmount) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { [self] in
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let gone = state.withLock { s -> Bool in
                        if s.shimGone { return true }
                        s.shimWaiters.append(c)
                        return false
                    }
                    if gone { c.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(nanoseconds: UInt64(timeout.nanoseconds))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || state.withLock { $0.shimGone }
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
        case .unavailable, .deadlineExceeded:
            return RuntimeError(.unavailable, "the shim of task \"\(namespace)/\(id)\" is not answering\(method.isEmpty ? "" : " (\(method))"): \(e.message)")
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
