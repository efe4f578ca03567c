#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherSys

/// The ttrpc handlers of containerd.task.v2.Task and tether.shim.v1.Exits:
/// each checks the task ID, calls the Container, and builds the answer.
enum TaskAPI {
    static let task = "containerd.task.v2.Task"
    static let exits = "tether.shim.v1.Exits"

    static func registry(_ c: Container, onShutdown: @escaping @Sendable () -> Void) -> TTRPCServer.Registry {
        var r = TTRPCServer.Registry()
        r.add(task, "Create") { (req: Containerd_Task_V2_CreateTaskRequest) in
            try c.checkID(req.id)
            var out = Containerd_Task_V2_CreateTaskResponse()
            out.pid = UInt32(bitPattern: try await c.create(req))
            return out
        }
        r.add(task, "Start") { (req: Containerd_Task_V2_StartRequest) in
            try c.checkID(req.id)
            var out = Containerd_Task_V2_StartResponse()
            out.pid = UInt32(bitPattern: try await c.start(req.execID))
            return out
        }
        r.add(task, "State") { (req: Containerd_Task_V2_StateRequest) in
            try c.checkID(req.id)
            return try c.process(req.execID).stateResponse(taskID: c.options.id, bundle: c.bundle)
        }
        r.add(task, "Kill") { (req: Containerd_Task_V2_KillRequest) in
            try c.checkID(req.id)
            try await c.kill(req.execID, signal: req.signal, all: req.all)
            return Google_Protobuf_Empty()
        }
        r.add(task, "Wait") { (req: Containerd_Task_V2_WaitRequest) in
            try c.checkID(req.id)
            let e = try await c.process(req.execID).waitForExit()
            var out = Containerd_Task_V2_WaitResponse()
            out.exitStatus = e.code
            out.exitedAt = e.timestamp
            return out
        }
        r.add(task, "Delete") { (req: Containerd_Task_V2_DeleteRequest) in
            try c.checkID(req.id)
            let e = req.execID.isEmpty ? try await c.deleteTask() : try await c.deleteExec(req.execID)
            var out = Containerd_Task_V2_DeleteResponse()
            out.pid = UInt32(bitPattern: e.pid)
            out.exitStatus = e.code
            out.exitedAt = e.timestamp
            return out
        }
        r.add(task, "Exec") { (req: Containerd_Task_V2_ExecProcessRequest) in
            try c.checkID(req.id)
            try c.addExec(req.execID, io: IOPaths(stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal),
                          spec: [UInt8](req.spec.value))
            return Google_Protobuf_Empty()
        }
        r.add(task, "CloseIO") { (req: Containerd_Task_V2_CloseIORequest) in
            try c.checkID(req.id)
            if req.stdin { try c.process(req.execID).closeStdin(relay: c.relay) }
            return Google_Protobuf_Empty()
        }
        r.add(task, "ResizePty") { (req: Containerd_Task_V2_ResizePtyRequest) in
            try c.checkID(req.id)
            try c.process(req.execID).resize(width: req.width, height: req.height)
            return Google_Protobuf_Empty()
        }
        r.add(task, "Pause") { (req: Containerd_Task_V2_PauseRequest) in
            try c.checkID(req.id)
            try await c.freeze(true)
            return Google_Protobuf_Empty()
        }
        r.add(task, "Resume") { (req: Containerd_Task_V2_ResumeRequest) in
            try c.checkID(req.id)
            try await c.freeze(false)
            return Google_Protobuf_Empty()
        }
        r.add(task, "Pids") { (req: Containerd_Task_V2_PidsRequest) in
            try c.checkID(req.id)
            let pids = try await c.pids()
            let execs = c.execPids()
            var out = Containerd_Task_V2_PidsResponse()
            out.processes = pids.map { pid in
                var p = Containerd_V1_Types_ProcessInfo()
                p.pid = UInt32(bitPattern: pid)
                if let execID = execs[pid] {
                    var d = Tether_Shim_V1_ProcessDetails()
                    d.execID = execID
                    p.info.typeURL = "types.tether.dev/tether.shim.v1.ProcessDetails"
                    p.info.value = (try? d.serializedData()) ?? Data()
                }
                return p
            }
            return out
        }
        r.add(task, "Update") { (req: Containerd_Task_V2_UpdateTaskRequest) in
            try c.checkID(req.id)
            try await c.update(resources: [UInt8](req.resources.value))
            return Google_Protobuf_Empty()
        }
        r.add(task, "Checkpoint") { (req: Containerd_Task_V2_CheckpointTaskRequest) in
            try c.checkID(req.id)
            var exit = false
            if !req.options.typeURL.isEmpty { exit = (try Tether_Shim_V1_CheckpointOptions(serializedBytes: req.options.value)).exit }
            try await c.checkpoint(path: req.path, exit: exit)
            return Google_Protobuf_Empty()
        }
        r.add(task, "Stats") { (req: Containerd_Task_V2_StatsRequest) in
            try c.checkID(req.id)
            var out = Containerd_Task_V2_StatsResponse()
            out.stats.typeURL = "types.tether.dev/runc.events.Stats"
            out.stats.value = Data(try await c.stats())
            return out
        }
        r.add(task, "Connect") { (_: Containerd_Task_V2_ConnectRequest) in
            var out = Containerd_Task_V2_ConnectResponse()
            out.shimPid = UInt32(bitPattern: getpid())
            out.taskPid = UInt32(bitPattern: c.initProcess?.pid ?? 0)
            out.version = Container.version
            return out
        }
        let exiting = Flag()
        r.add(task, "Shutdown") { (req: Containerd_Task_V2_ShutdownRequest) in
            try c.checkID(req.id)
            if req.now || c.isIdle {
                ShimLog.info("shutdown requested\(req.now ? " (now): killing what is left of the task," : ""): exiting")
                if req.now { c.reaper.killAll() }
                exiting.set()
            } else {
                ShimLog.info("shutdown requested while the task still has a container: staying")
            }
            return Google_Protobuf_Empty()
        }
        // Answer first, then exit: the manager sees the reply, not a closed socket.
        r.afterReply(task, "Shutdown") { if exiting.isSet { onShutdown() } }

        r.add(exits, "Pending") { (_: Tether_Shim_V1_PendingRequest) in
            var out = Tether_Shim_V1_PendingResponse()
            out.records = c.journal.pending()
            return out
        }
        r.add(exits, "Ack") { (req: Tether_Shim_V1_AckRequest) in
            c.journal.ack(upTo: req.seq)
            return Google_Protobuf_Empty()
        }
        return r
    }
}

/// A flag set once, read later (all on the loop).
final class Flag: @unchecked Sendable {
    private(set) var isSet = false
    func set() { isSet = true }
}
