#if canImport(Glibc)
import Glibc
#endif
import CTether
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherSys

/// One process of the task as the shim sees it: the init (exec id "") or an
/// exec'd process. It owns its stdio (and so its pty) from the moment it is
/// launched until it is deleted, and holds its pid, its exit once reaped and
/// the callers waiting for that exit. Used only on the shim's event loop.
///
/// Its states and every move between them are here, in one place:
///
///     created ──beginStart──▶ starting ──started──▶ running ◀──resumed── paused (init only)
///        ▲                       │                     │ ──frozen──▶
///        └──────startFailed──────┘                     │
///     any but deleted ──exited──▶ stopped ──delete──▶ deleted ◀──delete── created
final class ShimProcess: @unchecked Sendable {
    enum Phase: String, Sendable {
        case created, starting, running, paused, stopped, deleted
    }

    struct ExitInfo: Sendable, Equatable {
        var pid: Int32
        var code: UInt32
        var at: WallTime
        var timestamp: Google_Protobuf_Timestamp { .init(seconds: at.seconds, nanos: at.nanos) }
    }

    let execID: String
    let io: IOPaths
    private let loop: EventLoop
    private(set) var phase = Phase.created
    private(set) var pid: Int32 = 0
    private(set) var exit: ExitInfo?
    private var exitWaiters: [CheckedContinuation<ExitInfo, Never>] = []
    private var outputDone = false
    private var outputWaiters: [() -> Void] = []
    private(set) var stdio: ProcessStdio?
    /// A size asked for before the pty existed (an exec not started yet).
    private(set) var pendingSize: (width: UInt32, height: UInt32)?

    init(execID: String, io: IOPaths, loop: EventLoop) {
        self.execID = execID
        self.io = io
        self.loop = loop
    }

    var isInit: Bool { execID.isEmpty }
    /// "the task's init" or "exec \"e1\"".
    var name: String { isInit ? "the task's init" : "exec \"\(execID)\"" }
    var isAlive: Bool { exit == nil && (phase == .running || phase == .paused || phase == .starting) }

    // MARK: - transitions

    private func refuse(_ what: String) -> RPCError {
        if exit != nil { return RPCError(.notFound, "process already finished: cannot \(what) \(name), it has exited") }
        return RPCError(.failedPrecondition, "cannot \(what) \(name): it is \(phase.rawValue)")
    }

    /// created → starting.
    func beginStart() throws(RPCError) {
        guard phase == .created else { throw refuse("start") }
        phase = .starting
    }

    /// The runtime made it: its pid and stdio (nil keeps what it has). The
    /// phase does not move: a created init waits for Start.
    func attach(pid: Int32, stdio: ProcessStdio?) {
        self.pid = pid
        if let stdio { self.stdio = stdio }
    }

    /// The runtime started it: starting → running, unless it has exited meanwhile.
    func started(pid: Int32, stdio: ProcessStdio?) {
        attach(pid: pid, stdio: stdio)
        if phase == .starting || phase == .created { phase = exit == nil ? .running : .stopped }
    }

    /// A start that failed: back to created, unless a process did run (then
    /// its exit, recorded or on its way, makes it stopped).
    func startFailed() {
        if phase == .starting { phase = exit == nil ? .created : .stopped }
    }

    /// Checks that pause (or resume) can begin: running (or paused), the init.
    func checkFreeze(_ frozen: Bool) throws(RPCError) {
        guard isInit else { throw RPCError(.failedPrecondition, "only the task's init is paused and resumed: \(name) follows it") }
        guard phase == (frozen ? .running : .paused) else { throw refuse(frozen ? "pause" : "resume") }
    }

    /// The freezer acted: running ⇄ paused, unless it has exited meanwhile.
    func frozen(_ on: Bool) {
        guard exit == nil else { return }
        if on && phase == .running { phase = .paused }
        if !on && phase == .paused { phase = .running }
    }

    /// Records the exit and wakes the waiters. The caller has written the exit record first.
    func exited(_ info: ExitInfo) {
        guard exit == nil else { return }
        exit = info
        if phase != .deleted { phase = .stopped }
        let waiters = exitWaiters
        exitWaiters = []
        for w in waiters { w.resume(returning: info) }
    }

    /// created or stopped → deleted.
    func markDeleted() throws(RPCError) {
        guard phase == .created || phase == .stopped else { throw refuse("delete") }
        phase = .deleted
    }

    // MARK: - waiting

    func waitForExit() async -> ExitInfo {
        if let exit { return exit }
        return await withCheckedContinuation { exitWaiters.append($0) }
    }

    func outputFinished() {
        outputDone = true
        let waiters = outputWaiters
        outputWaiters = []
        for w in waiters { w() }
    }

    /// Waits until the relay has moved the last byte of output, or `timeout`
    /// passes. No wait at all when every output stream is stuck on a FIFO
    /// nobody reads: that output has nowhere to go.
    func waitForOutput(timeoutNanos: UInt64, relay: StdioRelay) async -> Bool {
        guard let streams = stdio?.outputStreams, !outputDone else { return true }
        if !streams.isEmpty && streams.allSatisfy(relay.isBlocked) { return false }
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            var done = false
            let timer = loop.after(timeoutNanos) {
                if !done { done = true; c.resume(returning: false) }
            }
            outputWaiters.append { [loop] in
                if !done { done = true; loop.cancel(timer); c.resume(returning: true) }
            }
        }
    }

    // MARK: - stdio

    /// Signals the process, unless it has been reaped already.
    func signal(_ sig: Int32, reaper: Reaper) throws {
        guard pid > 0, try reaper.signal(pid, sig) else {
            throw RPCError(.notFound, "process already finished: \(name) has exited")
        }
    }

    func closeStdin(relay: StdioRelay) throws(RPCError) {
        guard let stream = stdio?.stdinStream else {
            throw RPCError(.failedPrecondition, "\(name) has no stdin to close (it was created without one)")
        }
        relay.closeWhenDrained(stream)
    }

    /// Sets the pty's size. The master is this process's own (its stdio's),
    /// closed only by `releaseStdio` on the same thread: the ioctl can never
    /// reach an fd number the kernel has given to something else.
    func resize(width: UInt32, height: UInt32) throws(RPCError) {
        guard io.terminal else {
            throw RPCError(.failedPrecondition, "\(name) has no terminal: ResizePty needs a process started with terminal: true")
        }
        if let console = stdio?.console {
            try Self.setSize(console, width: width, height: height, name: name)
            return
        }
        guard phase == .created || phase == .starting else {
            throw RPCError(.failedPrecondition, "\(name) has no pty any more (it has exited)")
        }
        pendingSize = (width, height)  // applied when its pty arrives at start
    }

    /// Applies a size asked for before the pty existed.
    func applyPendingSize() {
        if let console = stdio?.console, let size = pendingSize {
            try? Self.setSize(console, width: size.width, height: size.height, name: name)
        }
        pendingSize = nil
    }

    private static func setSize(_ console: FD, width: UInt32, height: UInt32, name: String) throws(RPCError) {
        let rc = tether_set_winsize(console.raw, UInt16(clamping: height), UInt16(clamping: width))
        if rc < 0 { throw RPCError(.internal, "ioctl(TIOCSWINSZ) on \(name)'s pty: \(SysError("ioctl", errno: -rc).message)") }
    }

    /// Closes its stdio (pty included) and forgets it.
    func releaseStdio(relay: StdioRelay) {
        stdio?.remove(from: relay)
        stdio = nil
    }

    func stateResponse(taskID: String, bundle: String) -> Containerd_Task_V2_StateResponse {
        var out = Containerd_Task_V2_StateResponse()
        out.id = isInit ? taskID : execID
        out.execID = execID
        out.bundle = bundle
        out.pid = UInt32(bitPattern: pid)
        out.stdin = io.stdin
        out.stdout = io.stdout
        out.stderr = io.stderr
        out.terminal = io.terminal
        switch phase {
        case .created, .starting: out.status = .created
        case .running: out.status = .running
        case .paused: out.status = .paused
        case .stopped, .deleted: out.status = .stopped
        }
        if let e = exit {
            out.status = .stopped
            out.exitStatus = e.code
            out.exitedAt = e.timestamp
        }
        return out
    }
}
