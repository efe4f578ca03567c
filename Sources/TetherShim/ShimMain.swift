#if canImport(Glibc)
import Glibc
#endif
import CTether
import TTRPC
import TetherProto
import TetherSys

/// tether-shim's main: detach, become the child subreaper, and serve the
/// task API on one event loop, on the main thread. The reaper, the stdio
/// relay, the exit journal and the ttrpc server are sources on that loop,
/// and every request runs as a task on it: the shim has one thread.
public enum ShimMain {
    public static func run(_ args: [String]) -> Never {
        let options: ShimOptions
        do {
            options = try ShimOptions.parse(args)
        } catch {
            printError("tether-shim: \(error)")
            exit(2)
        }
        run(options: options)
    }

    /// Serves `options`' task until the shim is told to stop.
    public static func run(options: ShimOptions) -> Never {
        // One malloc arena: a shim allocates little, and has one thread.
        _ = tether_limit_malloc_arenas(1)
        ShimLog.debugEnabled = options.debug
        let loop: EventLoop
        do {
            loop = try serve(options)
        } catch {
            ShimLog.error("cannot start: \(error)")
            printError("tether-shim: \(error)")
            exit(1)
        }
        do {
            try loop.run()
        } catch {
            fatal(options, "the event loop failed: \(error)")
        }
        exitCleanly(options)
    }

    /// Sets everything up on the main thread, before the loop runs: nothing
    /// can happen to a piece before every piece exists.
    static func serve(_ options: ShimOptions) throws -> EventLoop {
        // Before any thread exists: the reaper reads the blocked signals from
        // a signalfd. SIGCHLD is never ignored.
        Reaper.blockSignals()
        _ = tether_ignore_signal(SIGPIPE)
        // The runtime and the container inherit this: the usual 022, whatever
        // the manager's own (its files are the owner's alone). Our own files
        // are made with explicit modes.
        umask(0o022)
        if getsid(0) != getpid() && setsid() < 0 {
            ShimLog.warn("setsid: \(SysError.last("setsid").message); staying in the caller's session")
        }
        _ = try check(tether_set_child_subreaper(), "prctl(PR_SET_CHILD_SUBREAPER)")

        guard Files.isDirectory(options.bundle) else {
            throw SysError("open", errno: ENOENT, "bundle \(options.bundle)")
        }
        guard let binary = Spawn.lookPath(options.runtime) else {
            throw SysError("exec", errno: ENOENT, "OCI runtime \(options.runtime)")
        }
        try Files.makeDirectories(options.runtimeRoot)

        let loop = try EventLoop()
        let reaper = Reaper(loop: loop)
        let journal = try ExitJournal(loop: loop, dir: options.exitsDir, fifoPath: options.exitFifo,
                                      namespace: options.namespace, taskID: options.id, instance: options.instance)
        let runtime = OCIRuntime(binary: binary, root: options.runtimeRoot, logPath: options.runtimeLog, reaper: reaper,
                                 timeout: options.runtimeTimeout * 1_000_000_000)
        let container = Container(options: options, reaper: reaper, runtime: runtime, relay: StdioRelay(loop: loop),
                                  journal: journal, loop: loop)
        if let c = options.containerd, !c.ttrpcAddress.isEmpty {
            container.events = ShimEvents(loop: loop, address: c.ttrpcAddress, namespace: options.namespace, journal: journal)
        }
        reaper.onSignal = { sig in
            if container.isIdle {
                ShimLog.info("signal \(sig) with no container left: exiting")
                exitCleanly(options)
            }
            ShimLog.warn("ignored signal \(sig): task \(options.id) still has a container; delete it first (or SIGKILL the shim)")
        }
        reaper.onFatal = { error in fatal(options, "the reaper failed: \(error)") }
        try reaper.start()

        let server = TTRPCServer(name: Container.version, registry: TaskAPI.registry(container) {
            // Exit once the events still queued for containerd are out (a few seconds at most).
            loop.task {
                await container.events?.drain(timeoutNanos: 5_000_000_000)
                exitCleanly(options)
            }
        }, loop: loop) { ShimLog.warn($0) }
        let listener: FD
        if let c = options.containerd {
            listener = FD(c.listenerFD, label: c.socketPath)  // made and bound by `start`
        } else {
            unlink(options.socketPath)
            listener = try UnixSocket.listen(options.socketPath)
            chmod(options.socketPath, 0o600)
        }
        try Files.writeAtomically(options.shimPidFile, Array("\(getpid())\n".utf8), mode: 0o644)
        try server.serve(listener)
        ShimLog.info("serving task \(options.namespace)/\(options.id) on \(options.socketPath) (runtime \(binary))")

        if options.readyFD >= 0 {
            let ready = FD(options.readyFD, label: "the ready pipe")
            do { try ready.writeAll(Array("ready\n".utf8)) } catch {
                // The manager that started us is gone before we were ready:
                // its create failed, and nobody would ever stop us.
                ShimLog.error("nobody reads \(error.subject ?? "the ready pipe") (\(error.message)): the manager that started this shim is gone; exiting")
                exitCleanly(options)
            }
            ready.close()
        }
        return loop
    }

    /// The shim cannot go on (its loop or its reaper broke): it says why in
    /// its bundle, where the manager reads it when it sees the shim gone, and
    /// exits. The manager then records the task's exit with that reason and
    /// takes the container down; nothing is left running unwatched.
    static func fatal(_ options: ShimOptions, _ reason: String) -> Never {
        ShimLog.error("fatal: \(reason); exiting")
        try? Files.writeAtomically(options.fatalFile, Array((reason + "\n").utf8))
        unlink(options.socketPath)
        exit(70)
    }

    static func exitCleanly(_ options: ShimOptions) -> Never {
        unlink(options.socketPath)
        exit(0)
    }
}

/// Test faults, from TETHER_SHIM_FAULT (a comma-separated list): how the
/// tests prove that a broken part takes the shim down where the manager sees it.
enum Faults {
    static let list: Set<String> = {
        guard let v = getenv("TETHER_SHIM_FAULT") else { return [] }
        return Set(String(cString: v).split(separator: ",").map(String.init))
    }()

    static func has(_ name: String) -> Bool { list.contains(name) }
}

/// One line on stderr, in one write.
func printError(_ line: String) {
    let s = line + "\n"
    s.utf8CString.withUnsafeBufferPointer { b in _ = Glibc.write(2, b.baseAddress!, b.count - 1) }
}
