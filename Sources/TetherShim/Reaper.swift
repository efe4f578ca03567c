#if canImport(Glibc)
import Glibc
#endif
import CTether
import TTRPC
import TetherSys

/// The shim's one reaper, on its event loop: SIGCHLD, SIGTERM and SIGINT
/// arrive on a signalfd; after each SIGCHLD every child that has exited is
/// reaped with waitpid, so every child is reaped here: the runtime's helper
/// calls, the container's init (re-parented to us, the child subreaper),
/// exec'd processes and any orphan that lands on us.
///
/// Everything runs on the loop's thread, so a child is always registered
/// before the reaper can look at it (`spawn` registers before it returns to
/// the loop), and `signal` never signals a pid that has been reaped. Pids we
/// learn later (the init's, from runc's pid file) may already be dead when
/// registered: exits of unknown pids are kept while a start is in flight
/// (`expectingChildren`) for that.
final class Reaper: @unchecked Sendable {
    typealias ExitHandler = (_ code: Int32, _ at: WallTime) -> Void

    private let loop: EventLoop
    private var handlers: [pid_t: ExitHandler] = [:]
    private var unclaimed: [pid_t: (code: Int32, at: WallTime)] = [:]
    private var starts = 0
    /// Pids whose exits are reported after the others of the same batch.
    private var last: Set<pid_t> = []
    private var source: EventLoop.Source?
    private var signalFD: FD?
    /// Gets SIGTERM and SIGINT; SIGCHLD is ours.
    var onSignal: (Int32) -> Void = { _ in }
    /// A test fault: the next read of the signalfd fails as if the kernel had
    /// failed it (TETHER_SHIM_FAULT=reaper), to prove a broken reaper takes
    /// the shim down where the manager sees it.
    var injectReadFailure = false
    /// Called when the reaper can no longer work: the shim must go.
    var onFatal: (SysError) -> Void = { _ in }

    init(loop: EventLoop) { self.loop = loop }

    /// Blocks the signals we read in the calling thread: call on the main
    /// thread before any other thread exists, so every thread inherits the mask.
    static func blockSignals() {
        for s in [SIGCHLD, SIGTERM, SIGINT] { _ = tether_block_signal(s) }
    }

    func start() throws(SysError) {
        var sigs: [Int32] = [SIGCHLD, SIGTERM, SIGINT]
        let fd = FD(try check(tether_signalfd(&sigs, Int32(sigs.count)), "signalfd"), label: "signalfd")
        try fd.setNonBlocking()
        signalFD = fd
        source = try loop.add(fd.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in readSignals(fd) }
        reapAll()  // anything that exited before the signalfd existed
    }

    private func readSignals(_ fd: FD) {
        while true {
            let sig = injectReadFailure ? -EIO : tether_signalfd_read(fd.raw)
            if sig == 0 { return }  // nothing more to read
            if sig < 0 {
                if let source { loop.remove(source) }
                onFatal(SysError("read", errno: -sig, "the reaper's signalfd"))
                return
            }
            if sig == SIGCHLD { reapAll() } else { onSignal(sig) }
        }
    }

    /// Reaps every child that has exited. Handlers run after the whole batch
    /// is reaped, those registered as `last` (the container's init) after
    /// the others: an exec that died before its init is always reported
    /// before it.
    private func reapAll() {
        while true {
            var batch: [(code: Int32, handler: ExitHandler, last: Bool)] = []
            let at = WallTime.now()
            while true {
                let pid = tether_peek_exited()
                if pid <= 0 { break }  // 0: none left exited; -ECHILD: no children at all
                var status: Int32 = 0
                guard tether_reap_pid(pid, &status) == pid else { break }  // cannot happen: we are the only waiter
                let code = tether_exit_code(status)
                if let h = handlers.removeValue(forKey: pid) {
                    batch.append((code, h, last.remove(pid) != nil))
                } else {
                    if starts > 0 { unclaimed[pid] = (code, at) }
                    ShimLog.debug("reaped pid \(pid) (exit \(code)), not one of ours: an orphan")
                }
            }
            if batch.isEmpty { return }
            for e in batch where !e.last { e.handler(e.code, at) }
            for e in batch where e.last { e.handler(e.code, at) }
        }
    }

    /// Sends `sig` to a registered child that has not been reaped yet.
    /// Returns false, sending nothing, when it has already been reaped.
    func signal(_ pid: pid_t, _ sig: Int32) throws(SysError) -> Bool {
        guard handlers[pid] != nil else { return false }
        if Glibc.kill(pid, sig) != 0 { throw SysError.last("kill", "pid \(pid)") }
        return true
    }

    /// Starts a child and registers `onExit` for it before it can be reaped.
    func spawn(_ path: String, _ args: [String], _ options: Spawn.Options, onExit: @escaping ExitHandler) throws(SysError) -> pid_t {
        let pid = try Spawn.spawn(path, args, options)
        handlers[pid] = onExit
        return pid
    }

    /// Thrown by `run` when its deadline passed: the child was killed.
    struct DeadlinePassed: Error {}

    /// Starts a child and waits for its exit code. With `deadline`, a child
    /// still running then is SIGKILLed and `DeadlinePassed` is thrown.
    func run(_ path: String, _ args: [String], _ options: Spawn.Options, deadline: UInt64? = nil) async throws -> Int32 {
        var timer: EventLoop.Timer?
        var killed = false
        let code = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int32, any Error>) in
            do {
                let pid = try spawn(path, args, options) { code, _ in c.resume(returning: code) }
                if let deadline {
                    timer = loop.after(deadline) { [self] in
                        if (try? signal(pid, SIGKILL)) == true { killed = true }
                    }
                }
            } catch {
                c.resume(throwing: error)
            }
        }
        if let timer { loop.cancel(timer) }
        if killed { throw DeadlinePassed() }
        return code
    }

    /// SIGKILLs every child still registered (runtime calls in flight, the
    /// container's processes): for Shutdown(now), which must leave nothing
    /// half done behind the manager's back.
    func killAll() {
        for pid in handlers.keys { Glibc.kill(pid, SIGKILL) }
    }

    /// A window in which a process we did not spawn directly (the
    /// container's init, an exec) will be reported to us. End it with `doneExpecting`.
    func expectingChildren() { starts += 1 }

    /// Ends the window; forgets unclaimed exits once no start is in flight.
    func doneExpecting() {
        starts -= 1
        if starts == 0 { unclaimed.removeAll() }
    }

    /// Registers a pid we learned after the fact. If it already exited during
    /// the start window, `onExit` runs at once with what the reaper saw.
    /// `last`: report this exit after the others reaped with it.
    func watch(_ pid: pid_t, last isLast: Bool = false, onExit: @escaping ExitHandler) {
        if let early = unclaimed.removeValue(forKey: pid) {
            onExit(early.code, early.at)
            return
        }
        handlers[pid] = onExit
        if isLast { last.insert(pid) }
    }

    /// Children of this process that nobody registered and that have not
    /// exited: what a runtime left running without telling us its pid.
    func unregisteredChildren() -> [pid_t] {
        var out: [pid_t] = []
        for tid in (try? Files.listDirectory("/proc/self/task")) ?? [] {
            guard let text = try? Files.readString("/proc/self/task/\(tid)/children") else { continue }
            out += text.split(separator: " ").compactMap { Int32($0) }.filter { handlers[$0] == nil }
        }
        return out
    }
}
