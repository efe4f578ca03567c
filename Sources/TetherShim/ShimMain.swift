#if canImport(Glibc)
import Glibc
#endif
import CTether
import SwiftProtobuf
import Synchronization
import TTRPC
import TetherProto
import TetherSys

/// tether-shim's main: detach, become the child subreaper, serve the task API.
public enum ShimMain {
    public static func run(_ args: [String]) -> Never {
        // One malloc arena for all threads: a shim allocates little, and each
        // extra arena is dirty memory paid per task.
        _ = tether_limit_malloc_arenas(1)
        let options: ShimOptions
        do {
            options = try ShimOptions.parse(args)
        } catch {
            printError("tether-shim: \(error)")
            exit(2)
        }
        ShimLog.debugEnabled = options.debug
        do {
            try serve(options)
        } catch {
            ShimLog.error("cannot start: \(error)")
            printError("tether-shim: \(error)")
            exit(1)
        }
        while true { pause() }  // the threads do the work; exit comes from Shutdown
    }

    static func serve(_ options: ShimOptions) throws {
        // Before any thread exists: every thread inherits this mask, and the
        // reaper reads the blocked signals from a signalfd. SIGCHLD is never ignored.
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

        let holder = ServiceHolder()
        let reaper = Reaper { sig in
            if holder.service?.isIdle ?? true {
                ShimLog.info("signal \(sig) with no container left: exiting")
                ShimMain.exitCleanly(options)
            }
            ShimLog.warn("ignored signal \(sig): task \(options.id) still has a container; delete it first (or SIGKILL the shim)")
        }
        try reaper.start()
        let journal = try ExitJournal(dir: options.exitsDir, fifoPath: options.exitFifo,
                                      namespace: options.namespace, taskID: options.id, instance: options.instance)
        let service = TaskService(
            options: options, reaper: reaper,
            runtime: OCIRuntime(binary: binary, root: options.runtimeRoot, logPath: options.runtimeLog, reaper: reaper),
            relay: try StdioRelay(), journal: journal)
        holder.service = service

        let server = TTRPCServer(name: TaskService.version, registry: registry(service, journal, options)) { ShimLog.warn($0) }
        unlink(options.socketPath)
        let listener = try UnixSocket.listen(options.socketPath)
        chmod(options.socketPath, 0o600)
        try Files.writeAtomically(options.shimPidFile, Array("\(getpid())\n".utf8), mode: 0o644)
        server.serve(listener)
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
    }

    static func registry(_ s: TaskService, _ journal: ExitJournal, _ options: ShimOptions) -> TTRPCServer.Registry {
        let task = "containerd.task.v2.Task"
        var r = TTRPCServer.Registry()
        r.add(task, "Create", s.create)
        r.add(task, "Start", s.start)
        r.add(task, "State", s.state)
        r.add(task, "Kill", s.kill)
        r.add(task, "Wait", s.wait)
        r.add(task, "Delete", s.delete)
        r.add(task, "Connect", s.connect)
        r.add(task, "Exec", s.exec)
        r.add(task, "CloseIO", s.closeIO)
        r.add(task, "ResizePty", s.resizePty)
        r.add(task, "Pause", s.pause)
        r.add(task, "Resume", s.resume)
        r.add(task, "Pids", s.pids)
        r.add(task, "Update", s.update)
        r.add(task, "Checkpoint", s.checkpoint)
        r.add(task, "Stats", s.stats)
        let exiting = Atomic<Bool>(false)
        r.add(task, "Shutdown") { (req: Containerd_Task_V2_ShutdownRequest) async throws -> Google_Protobuf_Empty in
            try s.checkID(req.id)
            if req.now || s.isIdle {
                ShimLog.info("shutdown requested\(req.now ? " (now): killing what is left of the task," : ""): exiting")
                if req.now { s.reaper.killAll() }
                exiting.store(true, ordering: .sequentiallyConsistent)
            } else {
                ShimLog.info("shutdown requested while the task still has a container: staying")
            }
            return Google_Protobuf_Empty()
        }
        // Answer first, then exit: the manager sees the reply, not a closed socket.
        r.afterReply(task, "Shutdown") {
            if exiting.load(ordering: .sequentiallyConsistent) { exitCleanly(options) }
        }
        let exits = "tether.shim.v1.Exits"
        r.add(exits, "Pending") { (_: Tether_Shim_V1_PendingRequest) async throws -> Tether_Shim_V1_PendingResponse in
            var out = Tether_Shim_V1_PendingResponse()
            out.records = journal.pending()
            return out
        }
        r.add(exits, "Ack") { (req: Tether_Shim_V1_AckRequest) async throws -> Google_Protobuf_Empty in
            journal.ack(upTo: req.seq)
            return Google_Protobuf_Empty()
        }
        return r
    }

    static func exitCleanly(_ options: ShimOptions) -> Never {
        unlink(options.socketPath)
        exit(0)
    }
}

/// Lets the signal handler find the service created after it.
final class ServiceHolder: @unchecked Sendable {
    // Written once on the main thread before any signal is read.
    nonisolated(unsafe) var service: TaskService?
}

/// One line on stderr, in one write.
func printError(_ line: String) {
    let s = line + "\n"
    s.utf8CString.withUnsafeBufferPointer { b in _ = Glibc.write(2, b.baseAddress!, b.count - 1) }
}
