import CTether
import Foundation
import Logging
import NIOCore
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherRuntime
import TetherSys

/// The lifecycle half of ShimTask: exits as they come in, a shim that dies,
/// and delete. Every move of the task's state goes through `move` (TaskState).
extension ShimTask {
    /// The create succeeded: the task is visible and its shim's death is news.
    func finishCreate(pid: UInt32) throws {
        try move(.created) { $0.pid = pid }
    }

    // MARK: - exits

    /// Takes an exit record from the shim: stores it, wakes the waiters, acks it.
    /// A record seen before (same or older seq) is only acked again.
    func apply(_ r: Tether_Shim_V1_ExitRecord) {
        var execWoken: ([CheckedContinuation<Exit, any Error>], Exit)?
        let (fresh, stored, waiters, exit, client) = state.withLock {
            s -> (Bool, Bool, [CheckedContinuation<Exit, any Error>], Exit?, ShimClient?) in
            guard r.seq > s.record.ackedSeq else { return (false, true, [], s.record.exit, s.link.client) }
            let exit = Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)
            var next = s.record
            var life = s.life
            next.ackedSeq = r.seq
            if r.execID.isEmpty && next.exit == nil {
                next.exit = exit
                life = (try? life.moved(.exited, task: id)) ?? life
            } else if !r.execID.isEmpty && next.execs[r.execID] != nil && next.execs[r.execID]?.exit == nil {
                next.execs[r.execID]?.exit = exit
            }
            next.phase = life.phase
            do { try next.save() } catch {
                logger.error("cannot store exit record \(r.seq) of \(r.namespace)/\(r.id): \(error); the shim keeps it")
                return (true, false, [], s.record.exit, s.link.client)
            }
            s.record = next
            s.life = life
            if !r.execID.isEmpty, let e = next.execs[r.execID]?.exit {
                execWoken = (s.waiters.execs.removeValue(forKey: r.execID) ?? [], e)
            }
            let w = next.exit == nil || !r.execID.isEmpty ? [] : s.waiters.task
            if !w.isEmpty { s.waiters.task = [] }
            return (true, true, w, next.exit, s.link.client)
        }
        if let (waiters, exit) = execWoken { for w in waiters { w.resume(returning: exit) } }
        if fresh && stored {
            logger.info("process exited", metadata: ["namespace": "\(r.namespace)", "id": "\(r.id)", "exec": "\(r.execID)",
                                                      "pid": "\(r.pid)", "status": "\(r.exitStatus)", "seq": "\(r.seq)"])
            publishExit(exitEvent(execID: r.execID, Exit(pid: r.pid, status: r.exitStatus, timestamp: r.exitedAt.date)), execID: r.execID)
            if let exit { for w in waiters { w.resume(returning: exit) } }
            if !r.execID.isEmpty { Task { await pruneExitedExecs() } }
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

    /// Exited execs kept per task (their records, FIFOs and IDs), for
    /// `tether exec` to collect and anyone to inspect; beyond this, the
    /// oldest are deleted as DELETE .../execs/ID would (their exits were
    /// delivered and published already). A health check run with `exec -d`
    /// every few seconds then costs a bounded record, not a growing one.
    static let exitedExecsKept = 16

    func pruneExitedExecs() async {
        let victims = state.withLock { s -> [String] in
            let exited = s.record.execs.compactMap { id, e in e.exit.map { (id, $0.timestamp) } }
            guard exited.count > Self.exitedExecsKept else { return [] }
            return exited.sorted { $0.1 < $1.1 }.prefix(exited.count - Self.exitedExecsKept).map(\.0)
        }
        for execID in victims {
            do {
                _ = try await deleteProcess(id: execID)
                logger.debug("removed an old exited exec", metadata: ["id": "\(id)", "exec": "\(execID)"])
            } catch let e as RuntimeError where e.code == .containerDoesNotExist {
                // Deleted meanwhile by its own client.
            } catch {
                logger.warning("could not remove exited exec \(execID) of \(id): \(error)")
            }
        }
    }

    /// Publishes an exit event now, or after the process's start event if its Start is under way.
    func publishExit(_ event: TaskEvent, execID: String) {
        let now = state.withLock { s -> Bool in
            if s.order.starting.contains(execID) {
                s.order.deferredExits[execID] = event
                return false
            }
            return true
        }
        if now { runtime.events.publish(event) }
    }

    func exitEvent(execID: String, _ exit: Exit, reason: String? = nil) -> TaskEvent {
        TaskEvent(namespace: info.namespace, topic: TaskEvent.Topic.exit,
                  event: .init(containerID: id, id: execID.isEmpty ? id : execID, execID: execID.isEmpty ? nil : execID,
                               pid: exit.pid, exitStatus: exit.status, exitedAt: exit.timestamp, reason: reason))
    }

    /// Wakes every exec waiter (the task is gone): with the exec's exit, else `fallback`.
    func releaseExecWaiters(fallback: Exit) {
        let (waiters, execs) = state.withLock { s in
            defer { s.waiters.execs = [:] }
            return (s.waiters.execs, s.record.execs)
        }
        for (execID, list) in waiters {
            for w in list { w.resume(returning: execs[execID]?.exit ?? fallback) }
        }
    }

    // MARK: - a shim that dies

    /// The watcher saw the shim exit (`code` when it was our child).
    func shimExited(code: Int32?) {
        let (waiters, expected, client) = state.withLock { s in
            s.link.gone = true
            let w = s.link.waiters
            s.link.waiters = []
            return (w, s.life.isInTransition, s.link.client)
        }
        for w in waiters { w() }
        client?.close()
        if expected { return }  // the create or delete under way deals with it
        logger.warning("shim died", metadata: ["namespace": "\(info.namespace)", "id": "\(id)", "code": "\(code.map(String.init) ?? "?")"])
        cleanUpAfterDeadShim()
    }

    /// A shim died under a live task: take any exit it recorded on disk,
    /// else record 137 with a reason (its own, when it left one in
    /// shim.fatal); take the container down. Runs once, however many ask.
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
            var reason = "the task's shim died (killed or crashed); its container was killed"
            if let fatal = try? Files.readString("\(r.bundle)/shim.fatal") {
                reason = "the task's shim stopped: \(fatal.trimmingCharacters(in: .whitespacesAndNewlines)); its container was killed"
            }
            let waiters = state.withLock { s in
                s.record.exit = exit
                s.record.exitReason = reason
                s.life = (try? s.life.moved(.exited, task: id)) ?? s.life
                s.record.phase = s.life.phase
                do { try s.record.save() } catch { logger.error("cannot store the exit of \(r.namespace)/\(r.id): \(error)") }
                let w = s.waiters.task
                s.waiters.task = []
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
        // Recorded as deleting before the side effect: a manager that dies
        // now finds a delete under way (and finishes it).
        try await runtime.onDisk { try self.move(.deleteBegan) }
        await TestHook.reach("delete.before-delete-call")
        var shimDead = shimIsGone
        var fromShim: Exit?
        if !shimDead {
            var req = Containerd_Task_V2_DeleteRequest()
            req.id = id
            do {
                let resp = try await rpc("Delete", req, as: Containerd_Task_V2_DeleteResponse.self, timeout: timeouts.delete)
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
                    try? await runtime.onDisk { try self.move(.deleteFailed) }
                    throw error
                }
            }
        }
        if shimDead { await cleanUpAfterDeadShim().value }
        let final = record.exit ?? fromShim ?? Exit(pid: record.pid, status: 137, timestamp: Date())
        await stopShim(now: shimDead)
        let problems = await runtime.teardown.run(record, spec: info.spec, removeFiles: true, runtimeDeleted: fromShim != nil)
        if !problems.isEmpty {
            try? await runtime.onDisk { try self.move(.deleteFailed) }
            throw RuntimeError(.internal, "task \"\(id)\" is deleted but not all of it could be removed: \(problems.joined(separator: "; "))")
        }
        let waiters = state.withLock { s in
            s.life = .deleted
            if s.record.exit == nil { s.record.exit = final }
            let w = s.waiters.task
            s.waiters.task = []
            return w
        }
        for w in waiters { w.resume(returning: final) }
        releaseExecWaiters(fallback: final)
        return final
    }

    /// Asks the shim to exit and waits for it (a few seconds, then SIGKILL).
    func stopShim(now: Bool) async {
        let (client, gone, pid) = state.withLock { ($0.link.client, $0.link.gone, $0.record.shimPid) }
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

    func shimGone(within timeout: TimeAmount) async -> Bool {
        await waitForEvent(timeoutNanos: UInt64(timeout.nanoseconds)) { done in
            let gone = state.withLock { s -> Bool in
                if s.link.gone { return true }
                s.link.waiters.append(done)
                return false
            }
            if gone { done() }
        }
    }
}
