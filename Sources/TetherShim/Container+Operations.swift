#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import TTRPC
import TetherOCI
import TetherProto
import TetherSys

/// What a live container does besides starting and deleting: signals, the
/// freezer, and the runtime's calls on its cgroup.
extension Container {
    // MARK: - signals and the freezer

    func kill(_ execID: String, signal: UInt32, all: Bool) async throws(RPCError) {
        guard signal >= 1 && signal <= 64 else { throw RPCError(.invalidArgument, "signal \(signal) is out of range: use 1 to 64") }
        let process = try process(execID)
        if process.exit != nil { throw RPCError(.notFound, "process already finished: \(process.name) has exited") }
        do {
            if all && process.isInit {
                try await runtime.kill(id: options.id, signal: signal, all: true)
            } else if process.phase == .created && process.isInit {
                try await runtime.kill(id: options.id, signal: signal, all: false)
            } else if process.phase == .created {
                throw RPCError(.failedPrecondition, "\(process.name) has not been started")
            } else {
                try process.signal(Int32(signal), reaper: reaper)
            }
            // A frozen process takes its signals only when thawed: SIGKILL means
            // "die now", so thaw it (as docker does); other signals wait for resume.
            if signal == UInt32(SIGKILL), let initProcess, initProcess.phase == .paused {
                try? await runtime.resume(id: options.id)
                initProcess.frozen(false)
            }
        } catch {
            if let e = error as? RPCError { throw e }
            throw RPCError(.unknown, "\(error)")
        }
        ShimLog.info("sent signal \(signal)\(all ? " to all processes" : "") to \(process.name) of \(options.id)")
    }

    /// Pause (running → paused) or resume (paused → running) through the runtime's freezer.
    func freeze(_ frozen: Bool) async throws {
        let process = try process("")
        try process.checkFreeze(frozen)
        if frozen { try await runtime.pause(id: options.id) } else { try await runtime.resume(id: options.id) }
        process.frozen(frozen)
        ShimLog.info("\(frozen ? "paused" : "resumed") \(options.id)")
        if frozen {
            var e = Containerd_Events_TaskPaused()
            e.containerID = options.id
            events?.publish("/tasks/paused", e)
        } else {
            var e = Containerd_Events_TaskResumed()
            e.containerID = options.id
            events?.publish("/tasks/resumed", e)
        }
    }

    // MARK: - the container's cgroup

    /// Every process in the container (runtime ps).
    func pids() async throws -> [Int32] {
        let process = try process("")
        guard process.phase == .running || process.phase == .paused else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): it has no processes to list")
        }
        return try await runtime.ps(id: options.id, scratch: options.bundle)
    }

    /// New resources (OCI LinuxResources JSON) through the runtime's update.
    func update(resources: [UInt8]) async throws {
        let process = try process("")
        guard process.phase == .running || process.phase == .paused || process.phase == .created else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): only a live task can be updated")
        }
        do { _ = try OCI.LinuxResources.validated(resources, source: "the resources") } catch {
            throw RPCError(.invalidArgument, error.message)
        }
        let path = "\(options.bundle)/resources.json"
        try Files.writeAtomically(path, resources)
        try await runtime.update(id: options.id, resourcesFile: path)
        ShimLog.info("updated the resources of \(options.id)")
    }

    func checkpoint(path: String, exit: Bool) async throws {
        let process = try process("")
        guard process.phase == .running || process.phase == .paused else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): only a running task can be checkpointed")
        }
        guard path.hasPrefix("/") else { throw RPCError(.invalidArgument, "checkpoint path \(path) is not absolute") }
        let work = "\(options.bundle)/criu"
        try Files.makeDirectories(path, mode: 0o700)
        try Files.makeDirectories(work)
        do {
            try await runtime.checkpoint(id: options.id, imagePath: path, workPath: work, leaveRunning: !exit)
        } catch {
            throw RPCError(.failedPrecondition, "cannot checkpoint task \"\(options.id)\": \(await CRIU.diagnose(error, workDir: work, reaper: reaper)); the task is left as it was")
        }
        ShimLog.info("checkpointed \(options.id) to \(path)\(exit ? " and stopped it" : "")")
        var e = Containerd_Events_TaskCheckpointed()
        e.containerID = options.id
        e.checkpoint = path
        events?.publish("/tasks/checkpointed", e)
    }

    func stats() async throws -> [UInt8] {
        let process = try process("")
        guard process.phase == .running || process.phase == .paused || process.phase == .created else {
            throw RPCError(.failedPrecondition, "task \"\(options.id)\" is \(process.phase.rawValue): it has no cgroup to read")
        }
        return try await runtime.stats(id: options.id, scratch: options.bundle)
    }
}
