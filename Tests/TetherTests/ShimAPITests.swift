#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SwiftProtobuf
import Testing
import TTRPC
import TetherManager
import TetherOCI
import TetherProto
import TetherSys

/// The shim's ttrpc API as containerd would call it, straight on its socket.
@Suite("the shim's task API over ttrpc", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(2)))
struct ShimAPITests {
    @Test("Connect, State, Pause, Kill and Wait answer; an unknown method is named in its error; SIGKILL reaches a paused task")
    func taskService() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "s1", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("s1"))
            let socket = "\(d.bundle("s1"))/shim.sock"
            try await offPool {
                let c = try TTRPCBlockingClient(socketPath: socket, timeout: 20)
                defer { c.close() }
                var connect = Containerd_Task_V2_ConnectRequest()
                connect.id = "s1"
                let info = try c.call("containerd.task.v2.Task", "Connect", connect, as: Containerd_Task_V2_ConnectResponse.self)
                #expect(info.shimPid == UInt32(shim) && info.taskPid > 0 && info.version.hasPrefix("tether-shim"))

                var state = Containerd_Task_V2_StateRequest()
                state.id = "s1"
                let s = try c.call("containerd.task.v2.Task", "State", state, as: Containerd_Task_V2_StateResponse.self)
                #expect(s.status == .running && s.pid == info.taskPid && s.bundle == d.bundle("s1"))

                state.id = "other"
                #expect(throws: RPCError.self) {
                    try c.call("containerd.task.v2.Task", "State", state, as: Containerd_Task_V2_StateResponse.self)
                }
                #expect(throws: RPCError(.unimplemented, "containerd.task.v2.Task/Teleport is not implemented by tether-shim 0.1.0")) {
                    try c.call("containerd.task.v2.Task", "Teleport", state, as: Google_Protobuf_Empty.self)
                }
                // Pause, then SIGKILL: the frozen init is thawed so that it dies.
                var pause = Containerd_Task_V2_PauseRequest()
                pause.id = "s1"
                _ = try c.call("containerd.task.v2.Task", "Pause", pause, as: Google_Protobuf_Empty.self)
                state.id = "s1"
                #expect(try c.call("containerd.task.v2.Task", "State", state, as: Containerd_Task_V2_StateResponse.self).status == .paused)
                var kill = Containerd_Task_V2_KillRequest()
                kill.id = "s1"
                kill.signal = 9
                _ = try c.call("containerd.task.v2.Task", "Kill", kill, as: Google_Protobuf_Empty.self)
                var wait = Containerd_Task_V2_WaitRequest()
                wait.id = "s1"
                let w = try c.call("containerd.task.v2.Task", "Wait", wait, as: Containerd_Task_V2_WaitResponse.self)
                #expect(w.exitStatus == 137 && w.exitedAt.seconds > 0)
            }
            #expect(try await d.tether("wait", "s1").status == 137)
            #expect(try await d.tether("delete", "s1").status == 0)
            #expect(await eventually { kill(shim, 0) != 0 }, "the shim should exit after delete")
        }
    }

    @Test("a bind source is mounted through a handle: a symlink on its path, the host's / and the shim's own state are refused")
    func bindSourceNeverFollowed() async throws {
        try Prerequisites.require()
        let dir = try makeTempDir()
        defer { Mounts.unmountTree(under: dir); try? Files.removeTree(dir) }
        let bundle = "\(dir)/bundle"
        try Files.makeDirectories("\(bundle)/rootfs")
        try Files.writeAtomically("\(bundle)/config.json", SpecCheck.encode(SpecBuilder.spec(namespace: "default", id: "b", process: .init(args: ["true"]))))
        // A rootfs reached through a symlink: a path swapped this way after tetherd checked it.
        try Files.makeDirectories("\(dir)/real")
        symlink("\(dir)/real", "\(dir)/link")
        let shim = try StartedProgram("\(Prerequisites.binDir)/tether-shim", ["--id", "b", "--bundle", bundle, "--runtime-root", "\(dir)/runc"])
        #expect(await eventually(10) { Files.exists("\(bundle)/shim.sock") }, "the shim did not listen: \(shim.err.text)")
        try await offPool {
            let c = try TTRPCBlockingClient(socketPath: "\(bundle)/shim.sock", timeout: 20)
            defer { c.close() }
            for (source, phrase) in [("\(dir)/link", "no symlink is followed"), ("/", "the host's root directory"), (dir, "holds the task's own state directory")] {
                var m = Containerd_Types_Mount()
                m.type = "bind"
                m.source = source
                m.options = ["rbind", "rw"]
                var create = Containerd_Task_V2_CreateTaskRequest()
                create.id = "b"
                create.bundle = bundle
                create.rootfs = [m]
                do {
                    _ = try c.call("containerd.task.v2.Task", "Create", create, as: Containerd_Task_V2_CreateTaskResponse.self)
                    Issue.record("a bind of \(source) was mounted")
                } catch let e as RPCError {
                    #expect(e.message.contains(phrase), "\(source): \(e.message)")
                }
                #expect(Mounts.targets(under: bundle).isEmpty)
            }
            var shutdown = Containerd_Task_V2_ShutdownRequest()
            shutdown.id = "b"
            _ = try c.call("containerd.task.v2.Task", "Shutdown", shutdown, as: Google_Protobuf_Empty.self)
        }
        #expect(try await offPool { shim.wait(timeout: 10) } == 0)
    }
}
