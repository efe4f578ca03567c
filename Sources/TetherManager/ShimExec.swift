import Foundation
import SwiftProtobuf
import TetherProto
import TetherRuntime
import TetherSys

public final class ShimExec: RuntimeProcess, Sendable {
    public let id: String
    let task: ShimTask
    public var taskID: String { task.id }

    init(task: ShimTask, id: String) {
        self.task = task
        self.id = id
    }

    public func state() async throws -> TetherRuntime.State {
        guard let r = task.execRecord(id) else { throw RuntimeError(.containerDoesNotExist, "no exec \"\(id)\" in task \"\(task.id)\"") }
        if let exit = r.exit {
            return State(status: .stopped, pid: exit.pid, stdin: r.io.stdin, stdout: r.io.stdout, stderr: r.io.stderr,
                         terminal: r.io.terminal, exit: exit)
        }
        var req = Containerd_Task_V2_StateRequest()
        req.id = task.id
        req.execID = id
        let s = try await task.rpc("State", req, as: Containerd_Task_V2_StateResponse.self, timeout: task.timeouts.quick)
        let status: Status = switch s.status {
        case .created: .created
        case .running: .running
        case .paused, .pausing: .paused
        default: .stopped
        }
        let exit = status == .stopped && s.hasExitedAt ? Exit(pid: s.pid, status: s.exitStatus, timestamp: s.exitedAt.date) : nil
        return State(status: status, pid: s.pid, stdin: r.io.stdin, stdout: r.io.stdout, stderr: r.io.stderr,
                     terminal: r.io.terminal, exit: exit)
    }

    public func start() async throws {
        var req = Containerd_Task_V2_StartRequest()
        req.id = task.id
        req.execID = id
        let r = try await task.startingProcess(id, topic: TaskEvent.Topic.execStarted) {
            try await task.rpc("Start", req, as: Containerd_Task_V2_StartResponse.self, timeout: task.timeouts.start)
        }
        let id = self.id
        try await task.runtime.onDisk { try self.task.update { rec in
            rec.execs[id]?.pid = r.pid
            rec.execs[id]?.started = true
        } }
    }

    /// Signals this process only (`all` is for the task's init).
    public func kill(signal: UInt32, all: Bool) async throws {
        guard signal >= 1 && signal <= UInt32(Signals.max) else {
            throw RuntimeError(.invalidArgument, "signal \(signal) is out of range: use 1 to \(Signals.max)")
        }
        if task.execRecord(id)?.exit != nil { throw RuntimeError.processAlreadyExited(id) }
        var req = Containerd_Task_V2_KillRequest()
        req.id = task.id
        req.execID = id
        req.signal = signal
        let _: Google_Protobuf_Empty = try await task.rpc("Kill", req, timeout: task.timeouts.kill)
    }

    public func resizePty(_ size: ConsoleSize) async throws {
        var req = Containerd_Task_V2_ResizePtyRequest()
        req.id = task.id
        req.execID = id
        req.width = size.width
        req.height = size.height
        let _: Google_Protobuf_Empty = try await task.rpc("ResizePty", req, timeout: task.timeouts.quick)
    }

    public func closeIO() async throws {
        var req = Containerd_Task_V2_CloseIORequest()
        req.id = task.id
        req.execID = id
        req.stdin = true
        let _: Google_Protobuf_Empty = try await task.rpc("CloseIO", req, timeout: task.timeouts.quick)
    }

    public func wait() async throws -> Exit { try await task.waitExec(id) }
}
