#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherProto
import TetherSys

/// One process of the task as the shim sees it: the init (exec id "") or an
/// exec'd process. Holds its pid, its exit once reaped, the callers waiting
/// for that exit, and its stdio.
final class ShimProcess: Sendable {
    enum Phase: String, Sendable {
        case created, starting, running, paused, stopped, deleted
    }

    struct ExitInfo: Sendable, Equatable {
        var pid: Int32
        var code: UInt32
        var at: WallTime
        var timestamp: Google_Protobuf_Timestamp { .init(seconds: at.seconds, nanos: at.nanos) }
    }

    private struct State {
        var phase = Phase.created
        var pid: Int32 = 0
        var exit: ExitInfo?
        var exitWaiters: [CheckedContinuation<ExitInfo, Never>] = []
        var outputDone = false
        var outputWaiters: [@Sendable () -> Void] = []
        var stdio: ProcessStdio?
        /// A size asked for before the pty existed (an exec not started yet).
        var pendingSize: (width: UInt32, height: UInt32)?
    }

    let execID: String
    let io: IOPaths
    private let state = Mutex(State())

    init(execID: String, io: IOPaths) {
        self.execID = execID
        self.io = io
    }

    /// "the init of t1" or "exec e1".
    var name: String { execID.isEmpty ? "the task's init" : "exec \"\(execID)\"" }

    var phase: Phase { state.withLock { $0.phase } }
    var pid: Int32 { state.withLock { $0.pid } }
    var exit: ExitInfo? { state.withLock { $0.exit } }

    /// Moves from one phase to another, or throws with what the phase is.
    func transition(from: Set<Phase>, to: Phase, what: String) throws(RPCError) {
        try state.withLock { (s) throws(RPCError) in
            guard from.contains(s.phase) else {
                if s.exit != nil { throw RPCError(.notFound, "process already finished: cannot \(what) \(name), it has exited") }
                throw RPCError(.failedPrecondition, "cannot \(what) \(name): it is \(s.phase.rawValue)")
            }
            s.phase = to
        }
    }

    func set(phase: Phase) { state.withLock { $0.phase = phase } }

    /// from → to, unless the process has exited meanwhile.
    func moveIfAlive(from: Phase, to: Phase) {
        state.withLock { s in if s.phase == from && s.exit == nil { s.phase = to } }
    }

    /// The runtime started it: record pid and stdio (the phase moves to
    /// running unless it has already exited). A nil stdio keeps the one it has.
    func started(pid: Int32, stdio: ProcessStdio?) {
        state.withLock { s in
            s.pid = pid
            if let stdio { s.stdio = stdio }
            if s.phase == .starting || s.phase == .created { s.phase = .running }
        }
    }


    /// Records the exit and wakes the waiters. The caller has written the exit record first.
    func exited(_ info: ExitInfo) {
        let waiters = state.withLock { s in
            s.exit = info
            if s.phase != .deleted { s.phase = .stopped }
            let w = s.exitWaiters
            s.exitWaiters = []
            return w
        }
        for w in waiters { w.resume(returning: info) }
    }

    func waitForExit() async -> ExitInfo {
        await withCheckedContinuation { (c: CheckedContinuation<ExitInfo, Never>) in
            let done = state.withLock { s -> ExitInfo? in
                if let e = s.exit { return e }
                s.exitWaiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    func outputFinished() {
        let waiters = state.withLock { s in
            s.outputDone = true
            let w = s.outputWaiters
            s.outputWaiters = []
            return w
        }
        for w in waiters { w() }
    }

    /// Waits until the relay has moved the last byte of output, or `timeout`
    /// passes. No wait at all when every output stream is stuck on a FIFO
    /// nobody reads: that output has nowhere to go.
    func waitForOutput(timeoutNanos: UInt64, relay: StdioRelay) async -> Bool {
        if let streams = state.withLock({ $0.outputDone ? nil : $0.stdio?.outputStreams }),
           !streams.isEmpty, streams.allSatisfy(relay.isBlocked) {
            return false
        }
        return await waitForEvent(timeoutNanos: timeoutNanos) { done in
            let already = state.withLock { s -> Bool in
                if s.outputDone || s.stdio == nil { return true }
                s.outputWaiters.append(done)
                return false
            }
            if already { done() }
        }
    }

    /// Signals the process, unless it has been reaped already.
    func signal(_ sig: Int32, reaper: Reaper) throws {
        let pid = state.withLock { $0.pid }
        guard pid > 0, try reaper.signal(pid, sig) else {
            throw RPCError(.notFound, "process already finished: \(name) has exited")
        }
    }

    func closeStdin(relay: StdioRelay) throws(RPCError) {
        guard let stream = state.withLock({ $0.stdio?.stdinStream }) else {
            throw RPCError(.failedPrecondition, "\(name) has no stdin to close (it was created without one)")
        }
        relay.closeWhenDrained(stream)
    }

    func resize(width: UInt32, height: UInt32) throws(RPCError) {
        guard io.terminal else {
            throw RPCError(.failedPrecondition, "\(name) has no terminal: ResizePty needs a process started with terminal: true")
        }
        let console = try state.withLock { (s) throws(RPCError) -> FD? in
            if let c = s.stdio?.console { return c }
            guard s.phase == .created || s.phase == .starting else {
                throw RPCError(.failedPrecondition, "\(name) has no pty any more (it has exited)")
            }
            s.pendingSize = (width, height)  // applied when its pty arrives at start
            return nil
        }
        if let console { try Self.setSize(console, width: width, height: height, name: name) }
    }

    /// The size asked for before start, if any.
    var pendingSize: (width: UInt32, height: UInt32)? { state.withLock { $0.pendingSize } }

    /// Applies a size asked for before the pty existed.
    func applyPendingSize() {
        let (console, size) = state.withLock { s in
            defer { s.pendingSize = nil }
            return (s.stdio?.console, s.pendingSize)
        }
        if let console, let size { try? Self.setSize(console, width: size.width, height: size.height, name: name) }
    }

    private static func setSize(_ console: FD, width: UInt32, height: UInt32, name: String) throws(RPCError) {
        let rc = tether_set_winsize(console.raw, UInt16(clamping: height), UInt16(clamping: width))
        if rc < 0 { throw RPCError(.internal, "ioctl(TIOCSWINSZ) on \(name)'s pty: \(SysError("ioctl", errno: -rc).message)") }
    }

    /// Closes its stdio and forgets it.
    func releaseStdio(relay: StdioRelay) {
        let stdio = state.withLock { s in
            defer { s.stdio = nil }
            return s.stdio
        }
        stdio?.remove(from: relay)
    }

    func stateResponse(taskID: String, bundle: String) -> Containerd_Task_V2_StateResponse {
        state.withLock { s in
            var out = Containerd_Task_V2_StateResponse()
            out.id = taskID
            out.execID = execID
            out.bundle = bundle
            out.pid = UInt32(s.pid)
            out.stdin = io.stdin
            out.stdout = io.stdout
            out.stderr = io.stderr
            out.terminal = io.terminal
            switch s.phase {
            case .created, .starting: out.status = .created
            case .running: out.status = .running
            case .paused: out.status = .paused
            case .stopped, .deleted: out.status = .stopped
            }
            if let e = s.exit {
                out.status = .stopped
                out.exitStatus = e.code
                out.exitedAt = e.timestamp
            }
            return out
        }
    }
}

import CTether
