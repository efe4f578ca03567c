#if canImport(Glibc)
import Glibc
#endif
import CTether
import TTRPC
import TetherSys

/// How a process comes to run: one function for a task's init (runtime
/// create), a restore (runtime restore) and an exec (runtime exec). It owns,
/// in this order: the process's stdio (a console socket for a terminal, else
/// pipes to the relay), the pid file, the reaper's start window, the runtime
/// call (with its deadline), closing the container's ends of the pipes,
/// receiving the pty master, reading the pid and watching it. Whatever it
/// made is undone when a step fails, and a process the runtime did start is
/// never left running untracked: a failure after the runtime call kills it
/// (the container's init, by deleting the container; an exec, found among
/// the shim's children) and its exit is recorded like any other.
///
/// One error mapping for all three: stdio or socket setup fails with
/// failedPrecondition, the runtime's own failure keeps its code (unknown,
/// deadlineExceeded), and a failure after a successful runtime call is internal.
struct Launcher: Sendable {
    let options: ShimOptions
    let reaper: Reaper
    let runtime: OCIRuntime
    let relay: StdioRelay

    enum Kind: Sendable {
        case create(bundle: String)
        case restore(bundle: String, imagePath: String, workPath: String)
        /// The exec's process spec at `processFile`; `initPid` names the container (its pid namespace).
        case exec(processFile: String, initPid: Int32)

        var what: String {
            switch self {
            case .create: "create"
            case .restore: "restore"
            case .exec: "exec"
            }
        }
    }

    /// Launches `process` and returns its pid, watched: `onExit` runs on the
    /// loop when it exits (after every other exit reaped with it, for the init).
    func launch(_ process: ShimProcess, _ kind: Kind, files: ProcessStdio.Opened, pidFile: String,
                onExit: @escaping (_ pid: Int32, _ code: Int32, _ at: WallTime) -> Void) async throws(RPCError) -> Int32 {
        var stdio: ProcessStdio?
        var console: ConsoleSocket?
        func undoStdio() {
            console?.remove()
            console = nil
            if let stdio {
                stdio.closeContainerEnds()
                stdio.remove(from: relay)
            }
            stdio = nil
        }
        do {
            if process.io.terminal { console = try ConsoleSocket() } else {
                stdio = try ProcessStdio.pipes(files, relay: relay) { process.outputFinished() }
            }
        } catch {
            undoStdio()
            throw RPCError(.failedPrecondition, "\(kind.what) of \(process.name): \(error)")
        }
        unlink(pidFile)
        reaper.expectingChildren()
        defer { reaper.doneExpecting() }
        let startTicks = Self.bootTicks()

        do {
            let fds = stdio?.spawnFDs ?? [-1, -1, -1]
            switch kind {
            case .create(let bundle):
                try await runtime.create(id: options.id, bundle: bundle, pidFile: pidFile, stdio: fds, consoleSocket: console?.path)
            case .restore(let bundle, let image, let work):
                try await runtime.restore(id: options.id, bundle: bundle, imagePath: image, workPath: work, pidFile: pidFile,
                                          stdio: fds, consoleSocket: console?.path)
            case .exec(let processFile, _):
                try await runtime.exec(id: options.id, processFile: processFile, pidFile: pidFile, stdio: fds, consoleSocket: console?.path)
            }
        } catch {
            undoStdio()
            if case .exec = kind {} else { try? await runtime.delete(id: options.id, force: true) }  // what it left half made
            if let e = error as? RPCError { throw e }
            throw RPCError(.unknown, "\(kind.what) of \(process.name): \(error)")
        }

        // The runtime says a process runs: from here, a failure must not leave it untracked.
        do {
            stdio?.closeContainerEnds()
            if let console {
                stdio = try ProcessStdio.terminal(files, master: try console.receiveMaster(), relay: relay) { process.outputFinished() }
                console.remove()
            }
            let pid = try Self.readPid(pidFile)
            reaper.watch(pid, last: process.isInit) { code, at in onExit(pid, code, at) }
            process.attach(pid: pid, stdio: stdio)
            return pid
        } catch {
            undoStdio()
            let why = "\(kind.what) of \(process.name) started it, but \(error)"
            switch kind {
            case .create, .restore:
                try? await runtime.delete(id: options.id, force: true)
                throw RPCError(.internal, "\(why); the container was deleted")
            case .exec(_, let initPid):
                let killed = killUntracked(initPid: initPid, since: startTicks, onExit: onExit)
                // It ran: it stays running until its exit (SIGKILL, on its way) makes it stopped.
                if let first = killed.first { process.started(pid: first, stdio: nil) }
                throw RPCError(.internal, "\(why); \(killed.isEmpty ? "it has already ended" : "it was killed (pid \(killed.map(String.init).joined(separator: ", ")))")")
            }
        }
    }

    /// The process an exec started whose pid we could not learn: a child of
    /// the shim (re-parented to it, the subreaper) that nobody registered,
    /// in the container's pid namespace, started since the launch began.
    /// Launches of execs are one at a time (`Container`), so it is this
    /// exec's process. Each is watched (its exit is recorded as the exec's)
    /// and SIGKILLed.
    private func killUntracked(initPid: Int32, since: UInt64,
                               onExit: @escaping (_ pid: Int32, _ code: Int32, _ at: WallTime) -> Void) -> [Int32] {
        let ns = Proc.readLink("/proc/\(initPid)/ns/pid")
        let found = reaper.unregisteredChildren().filter { pid in
            pid != initPid && Proc.readLink("/proc/\(pid)/ns/pid") == ns && (Proc.startTime(pid) ?? 0) + 1 >= since
        }
        for pid in found {
            reaper.watch(pid) { code, at in onExit(pid, code, at) }
            _ = try? reaper.signal(pid, SIGKILL)
        }
        return found
    }

    static func readPid(_ path: String) throws(RPCError) -> Int32 {
        let text = ((try? Files.readString(path)) ?? "").filter { !$0.isWhitespace }
        guard let pid = Int32(text), pid > 0 else {
            throw RPCError(.internal, "its pid file \(path) holds \"\(text.prefix(40))\", not a pid")
        }
        return pid
    }

    /// Now, in the clock ticks /proc/PID/stat counts start times in.
    static func bootTicks() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        let hz = UInt64(max(sysconf(Int32(_SC_CLK_TCK)), 1))
        return UInt64(ts.tv_sec) * hz + UInt64(ts.tv_nsec) * hz / 1_000_000_000
    }
}
