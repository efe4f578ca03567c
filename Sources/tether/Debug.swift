import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import SwiftProtobuf
import TTRPC
import TetherAPI
import TetherClient
import TetherProto
import TetherRuntime
import TetherSys

struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at one shim, or drive one started by hand.",
        subcommands: [DebugShim.self, DebugCall.self])
}

/// Where a shim listens: asked of tetherd by task ID, or given.
struct ShimAddress: ParsableArguments {
    @Option(help: "The shim's socket (a shim started by hand: BUNDLE/shim.sock).") var socket: String?
    @Option(name: .customLong("id"), help: "The task ID the shim serves (with --socket).") var taskID: String?
    @Argument(help: "A task ID known to tetherd (instead of --socket and --id).") var task: String?

    func resolve(_ global: GlobalOptions) throws -> (socket: String, id: String) {
        if let socket {
            guard let taskID = taskID ?? task else { throw UsageError("--socket needs --id: the task ID the shim serves") }
            return (socket, taskID)
        }
        guard let task else { throw UsageError("name a task ID, or give --socket and --id for a shim started by hand") }
        let view = try global.client.get(task)
        guard let bundle = view.bundle else { throw UsageError("tetherd did not say where \(task)'s bundle is") }
        return ("\(bundle)/shim.sock", task)
    }
}

struct DebugShim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shim", abstract: "Print a shim's pid, its task's pid and status, its pending exit records and open fds.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var address: ShimAddress

    func run() throws {
        try guarded {
            let (socket, id) = try address.resolve(global)
            let c = try TTRPCBlockingClient(socketPath: socket)
            defer { c.close() }
            var connect = Containerd_Task_V2_ConnectRequest()
            connect.id = id
            let info = try c.call("containerd.task.v2.Task", "Connect", connect, as: Containerd_Task_V2_ConnectResponse.self)
            print("shim:     pid \(info.shimPid) (\(info.version)), socket \(socket)")
            var req = Containerd_Task_V2_StateRequest()
            req.id = id
            if let s = try? c.call("containerd.task.v2.Task", "State", req, as: Containerd_Task_V2_StateResponse.self) {
                let exit = s.hasExitedAt ? ", exit status \(s.exitStatus) at \(RFC3339.format(seconds: s.exitedAt.seconds, nanos: s.exitedAt.nanos))" : ""
                print("task:     \(id), pid \(s.pid), \(describe(s.status))\(exit)\(s.terminal ? ", terminal" : "")")
                print("stdio:    stdin \(s.stdin.isEmpty ? "-" : s.stdin), stdout \(s.stdout.isEmpty ? "-" : s.stdout), stderr \(s.stderr.isEmpty ? "-" : s.stderr)")
            } else {
                print("task:     \(id), no container (not created, or deleted)")
            }
            let pending = try c.call("tether.shim.v1.Exits", "Pending", Tether_Shim_V1_PendingRequest(), as: Tether_Shim_V1_PendingResponse.self)
            print("pending exit records: \(pending.records.count)")
            for r in pending.records {
                print("  seq \(r.seq): exec \"\(r.execID)\" pid \(r.pid) status \(r.exitStatus) at \(RFC3339.format(seconds: r.exitedAt.seconds, nanos: r.exitedAt.nanos))")
            }
            let fds = Proc.fds(Int32(info.shimPid))
            print("open fds: \(fds.count)")
            for (n, target) in fds { print("  \(n) -> \(target)") }
        }
    }

    private func describe(_ s: Containerd_V1_Types_Status) -> String {
        switch s {
        case .created: "created"
        case .running: "running"
        case .stopped: "stopped"
        case .paused: "paused"
        case .pausing: "pausing"
        default: "unknown"
        }
    }
}

struct DebugCall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call one method of a shim's task API and print the answer as JSON.",
        discussion: """
            METHOD is create, start, state, kill, wait, delete, connect or shutdown. For a shim
            started by hand: tether debug call --socket B/shim.sock --id demo --method create --bundle B
            """)
    @OptionGroup var global: GlobalOptions
    @OptionGroup var address: ShimAddress
    @Option(help: "The method.") var method: String
    @Option(help: "create: the bundle (default: the socket's directory).") var bundle: String?
    @Option(help: "create: where stdout goes (a file or FIFO).") var stdout: String?
    @Option(name: .shortAndLong, help: "kill: the signal.") var signal = "TERM"
    @Flag(help: "kill: every process; shutdown: now.") var all = false
    @Option(help: "The exec ID, for the methods that take one.") var execID = ""

    func run() throws {
        try guarded {
            let (socket, id) = try address.resolve(global)
            let c = try TTRPCBlockingClient(socketPath: socket)
            defer { c.close() }
            let t = "containerd.task.v2.Task"
            let answer: any SwiftProtobuf.Message
            switch method.lowercased() {
            case "create":
                var r = Containerd_Task_V2_CreateTaskRequest()
                r.id = id
                r.bundle = bundle ?? Files.dirname(socket)
                r.stdout = stdout ?? ""
                answer = try c.call(t, "Create", r, as: Containerd_Task_V2_CreateTaskResponse.self)
            case "start":
                var r = Containerd_Task_V2_StartRequest(); r.id = id; r.execID = execID
                answer = try c.call(t, "Start", r, as: Containerd_Task_V2_StartResponse.self)
            case "state":
                var r = Containerd_Task_V2_StateRequest(); r.id = id; r.execID = execID
                answer = try c.call(t, "State", r, as: Containerd_Task_V2_StateResponse.self)
            case "kill":
                var r = Containerd_Task_V2_KillRequest(); r.id = id; r.execID = execID
                r.signal = UInt32(try Signals.parse(signal)); r.all = all
                answer = try c.call(t, "Kill", r, as: Google_Protobuf_Empty.self)
            case "wait":
                var r = Containerd_Task_V2_WaitRequest(); r.id = id; r.execID = execID
                answer = try c.call(t, "Wait", r, as: Containerd_Task_V2_WaitResponse.self)
            case "delete":
                var r = Containerd_Task_V2_DeleteRequest(); r.id = id; r.execID = execID
                answer = try c.call(t, "Delete", r, as: Containerd_Task_V2_DeleteResponse.self)
            case "connect":
                var r = Containerd_Task_V2_ConnectRequest(); r.id = id
                answer = try c.call(t, "Connect", r, as: Containerd_Task_V2_ConnectResponse.self)
            case "shutdown":
                var r = Containerd_Task_V2_ShutdownRequest(); r.id = id; r.now = all
                answer = try c.call(t, "Shutdown", r, as: Google_Protobuf_Empty.self)
            default:
                throw UsageError("unknown method \(method): use create, start, state, kill, wait, delete, connect or shutdown")
            }
            print(try answer.jsonString())
        }
    }
}
