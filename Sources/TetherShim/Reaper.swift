#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization
import TetherSys

/// The shim's one reaper. A thread reads SIGCHLD from a signalfd and calls
/// waitpid(-1, WNOHANG) until nothing is left, so every child is reaped here:
/// the runtime's helper calls, the container's init (re-parented to us, the
/// child subreaper), exec'd processes and any orphan that lands on us.
///
/// Children are registered before anyone can reap them: `spawn` holds the
/// table's lock across posix_spawn and the registration, and the reaper looks
/// a pid up under that lock. Pids we learn later (the init's, from runc's
/// pid file) may already be dead when registered; exits of unknown pids are
/// kept while a process start is in flight (`expectingChildren`) for that.
public final class Reaper: Sendable {
    public typealias ExitHandler = @Sendable (_ code: Int32, _ at: WallTime) -> Void

    private struct Table {
        var handlers: [pid_t: ExitHandler] = [:]
        var unclaimed: [pid_t: (code: Int32, at: WallTime)] = [:]
        var starts = 0
        /// Pids whose exits are reported after the others of the same batch.
        var last: Set<pid_t> = []
    }

    private let table = Mutex(Table())
    private let onSignal: @Sendable (Int32) -> Void

    /// `onSignal` gets SIGTERM and SIGINT; SIGCHLD is ours.
    public init(onSignal: @escaping @Sendable (Int32) -> Void) {
        self.onSignal = onSignal
    }

    /// Blocks the signals we read in the calling thread: call on the main
    /// thread before any other thread exists, so every thread inherits the mask.
    public static func blockSignals() {
        for s in [SIGCHLD, SIGTERM, SIGINT] { _ = tether_block_signal(s) }
    }

    public func start() throws(SysError) {
        var sigs: [Int32] = [SIGCHLD, SIGTERM, SIGINT]
        let fd = try check(tether_signalfd(&sigs, Int32(sigs.count)), "signalfd")
        OSThread.start("reaper") { [self] in loop(FD(fd)) }
    }

    private func loop(_ sfd: FD) {
        reapAll()  // anything that exited before the signalfd existed
        while true {
            let sig = tether_signalfd_read(sfd.raw)
            if sig == SIGCHLD { reapAll() } else if sig > 0 { onSignal(sig) } else if sig < 0 {
                ShimLog.error("reaper: read signalfd: \(SysError("read", errno: -sig))")
                return
            }
        }
    }

    /// Reaps every child that has exited. Each is first found with WNOWAIT,
    /// then reaped under the table's lock, so `signal` (which holds the same
    /// lock) never signals a pid that has been freed and maybe reused.
    /// Handlers run after the whole batch is reaped, those registered as
    /// `last` (the container's init) after the others: an exec that died
    /// before its init is always reported before it.
    private func reapAll() {
        while true {
            var batch: [(pid: pid_t, code: Int32, handler: ExitHandler, last: Bool)] = []
            let at = WallTime.now()
            while true {
                let pid = tether_peek_exited()
                if pid <= 0 { break }  // 0: none left exited; -ECHILD: no children at all
                let reaped = table.withLock { t -> Bool in
                    var status: Int32 = 0
                    guard tether_reap_pid(pid, &status) == pid else { return false }
                    let code = tether_exit_code(status)
                    if let h = t.handlers.removeValue(forKey: pid) {
                        batch.append((pid, code, h, t.last.remove(pid) != nil))
                    } else {
                        if t.starts > 0 { t.unclaimed[pid] = (code, at) }
                        ShimLog.debug("reaped pid \(pid) (exit \(code)), not one of ours: an orphan")
                    }
                    return true
                }
                if !reaped { break }  // cannot happen (we are the only waiter); never spin on it
            }
            if batch.isEmpty { return }
            for e in batch where !e.last { e.handler(e.code, at) }
            for e in batch where e.last { e.handler(e.code, at) }
        }
    }

    /// Sends `sig` to a registered child that has not been reaped yet.
    /// Returns false, sending nothing, when it has already been reaped.
    public func signal(_ pid: pid_t, _ sig: Int32) throws(SysError) -> Bool {
        try table.withLock { (t) throws(SysError) -> Bool in
            guard t.handlers[pid] != nil else { return false }
            if Glibc.kill(pid, sig) != 0 { throw SysError.last("kill", "pid \(pid)") }
            return true
        }
    }

    /// Starts a child and registers `onExit` for it before it can be reaped.
    public func spawn(_ path: String, _ args: [String], _ options: Spawn.Options, onExit: @escaping ExitHandler) throws(SysError) -> pid_t {
        try table.withLock { (t) throws(SysError) -> pid_t in
            let pid = try Spawn.spawn(path, args, options)
            t.handlers[pid] = onExit
            return pid
        }
    }

    /// Starts a child and waits for its exit code.
    public func run(_ path: String, _ args: [String], _ options: Spawn.Options) async throws -> Int32 {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int32, any Error>) in
            do {
                _ = try spawn(path, args, options) { code, _ in c.resume(returning: code) }
            } catch {
                c.resume(throwing: error)
            }
        }
    }

    /// SIGKILLs every child still registered (runtime calls in flight, the
    /// container's processes): for Shutdown(now), which must leave nothing
    /// half done behind the manager's back.
    public func killAll() {
        table.withLock { t in
            for pid in t.handlers.keys { Glibc.kill(pid, SIGKILL) }
        }
    }

    /// Marks the start of a window in which a process we did not spawn
    /// directly (the container's init, an exec) will be reported to us.
    public func expectingChildren() { table.withLock { $0.starts += 1 } }

    /// Ends the window; forgets unclaimed exits once no start is in flight.
    public func doneExpecting() {
        table.withLock { t in
            t.starts -= 1
            if t.starts == 0 { t.unclaimed.removeAll() }
        }
    }

    /// Registers a pid we learned after the fact. If it already exited during
    /// the start window, `onExit` runs at once with what the reaper saw.
    /// `last`: report this exit after the others reaped with it.
    public func watch(_ pid: pid_t, last: Bool = false, onExit: @escaping ExitHandler) {
        let early = table.withLock { t -> (code: Int32, at: WallTime)? in
            if let e = t.unclaimed.removeValue(forKey: pid) { return e }
            t.handlers[pid] = onExit
            if last { t.last.insert(pid) }
            return nil
        }
        if let early { onExit(early.code, early.at) }
    }
}
