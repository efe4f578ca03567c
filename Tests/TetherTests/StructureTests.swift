#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SwiftProtobuf
import Testing
import TTRPC
import TetherAPI
@testable import TetherManager
import TetherProto
import TetherRuntime
import TetherSys

@Suite("the task state machine")
struct TaskStateTests {
    typealias M = TaskState.Move

    @Test("every (state, move) pair: the moves the lifecycle makes, and a clear error for the rest")
    func table() throws {
        let all: [TaskState] = [.creating, .created, .running, .paused, .stopped, .deleting(prior: .stopped), .deleting(prior: .created), .deleted]
        let allowed: [String: TaskState] = [
            "creating created": .created, "creating exited": .creating,
            "created started": .running, "created exited": .stopped, "created deleteBegan": .deleting(prior: .created),
            "running started": .running, "running paused": .paused, "running resumed": .running, "running exited": .stopped,
            "running deleteBegan": .deleting(prior: .running),
            "paused paused": .paused, "paused resumed": .running, "paused exited": .stopped, "paused deleteBegan": .deleting(prior: .paused),
            "stopped started": .stopped, "stopped paused": .stopped, "stopped resumed": .stopped, "stopped exited": .stopped,
            "stopped deleteBegan": .deleting(prior: .stopped),
            "deleting(stopped) exited": .deleting(prior: .stopped), "deleting(stopped) deleteFailed": .stopped,
            "deleting(stopped) deleted": .deleted,
            "deleting(created) exited": .deleting(prior: .stopped), "deleting(created) deleteFailed": .created,
            "deleting(created) deleted": .deleted,
            "deleted exited": .deleted,
        ]
        func key(_ s: TaskState) -> String {
            if case .deleting(let p) = s { return "deleting(\(key(p)))" }
            return "\(s)"
        }
        for s in all {
            for m in [M.created, .started, .paused, .resumed, .exited, .deleteBegan, .deleteFailed, .deleted] {
                let k = "\(key(s)) \(m.rawValue)"
                if let want = allowed[k] {
                    #expect(try s.moved(m, task: "t") == want, "\(k)")
                } else {
                    #expect(throws: RuntimeError.self, "\(k) should be refused") { try s.moved(m, task: "t") }
                }
            }
        }
        #expect(throws: RuntimeError(.failedPrecondition, "task \"t\" is already being deleted")) {
            try TaskState.deleting(prior: .stopped).moved(.deleteBegan, task: "t")
        }
    }

    @Test("the phase on disk is derived from the state, and a record loads back into the state it stands for")
    func phases() {
        #expect(TaskState.deleting(prior: .running).phase == .deleting && TaskState.paused.phase == .paused)
        #expect(!TaskState.creating.isVisible && !TaskState.deleted.isVisible && TaskState.stopped.isVisible)
        var r = TaskRecord(namespace: "n", id: "t", instance: "i", runtime: "runc", bundle: "/b", io: IO(), rootfs: [],
                           scratch: nil, phase: .running, createdAt: Date())
        #expect(TaskState(r) == .running)
        r.exit = Exit(pid: 1, status: 0, timestamp: Date())
        #expect(TaskState(r) == .stopped)
        r.phase = .deleting
        #expect(TaskState(r) == .stopped)  // an unfinished delete: the next one finishes it
    }
}

/// The bugs the structure review found in the shim and the manager, each
/// shown by a fault: a runtime that hangs or lies, a shim that never says
/// ready, a reaper that breaks, a peer that never reads, no pidfds.
@Suite("faults in the shim and the manager", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct FaultTests {
    /// A runtime wrapper: real runc, but `action` runs instead for the operation named `op`.
    func wrapper(_ dir: String, _ name: String, op: String, _ action: String) throws -> String {
        let runc = try #require(Spawn.lookPath("runc"))
        let path = "\(dir)/\(name)"
        try Files.writeAtomically(path, Array("""
            #!/bin/sh
            op=; pidfile=
            prev=; for a in "$@"; do
                case "$a" in create|start|exec|kill|delete|pause|resume|ps|update|events) [ -z "$op" ] && op=$a ;; esac
                [ "$prev" = --pid-file ] && pidfile=$a; prev=$a
            done
            [ "$op" = \(op) ] || exec \(runc) "$@"
            \(action)

            """.utf8), mode: 0o755)
        return path
    }

    @Test("an exec whose pid file cannot be read after runc exec succeeded is killed and its exit recorded, not left untracked")
    func execPidFileUnreadable() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let runc = try #require(Spawn.lookPath("runc"))
        let liar = try wrapper(dir, "liar-runc", op: "exec", "\(runc) \"$@\" || exit $?\necho bogus > \"$pidfile\"")
        try await withDaemon(["--runtime", liar]) { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let api = AsyncAPI(d)
            _ = try await api.exec("t", ExecRequest(execID: "e", args: ["sleep", "1000"]))
            do {
                _ = try await api.startExec("t", "e")
                Issue.record("the start of an exec with a bogus pid file succeeded")
            } catch let e as RuntimeError {
                #expect(e.message.contains("not a pid") && e.message.contains("was killed"), "\(e)")
            }
            // The exec's process is gone, and its exit is the exec's.
            #expect(try await api.waitExec("t", "e").status == 137)
            #expect(try await api.deleteExec("t", "e").status == 137)
            let pids = try await offPool { try api.client.pids("t") }
            #expect(pids.count == 1 && pids[0].execID == nil, "left running: \(pids)")
            #expect(zombieChildren(of: try #require(d.shimPid("t"))).isEmpty)
            try await d.killAndDelete("t")
        }
    }

    @Test("a runtime call that hangs is killed at its deadline and named; the shim answers meanwhile")
    func hungRuntime() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let hung = try wrapper(dir, "hung-runc", op: "pause", "echo $$ > \(dir)/hung.pid; exec sleep 1000")
        try await withDaemon(["--runtime", hung, "--runtime-timeout", "3"]) { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let pause = Task { try await d.tether("pause", "t") }
            #expect(await eventually(10) { Files.exists("\(dir)/hung.pid") })
            // The shim is not stuck behind its runtime.
            #expect(try await d.tether("state", "t").out.contains("\"running\""))
            let r = try await pause.value
            #expect(r.status == 1 && r.err.contains("hung-runc pause t did not finish within 3 s and was killed"), "\(r)")
            let pid = try #require(Int32((try Files.readString("\(dir)/hung.pid")).filter(\.isNumber)))
            #expect(await eventually { kill(pid, 0) != 0 }, "the hung runtime was not killed")
            try await d.killAndDelete("t")
        }
    }

    @Test("a shim that never says ready is killed within the shim timeout and reaped; the create fails clearly")
    func shimNeverReady() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let fake = "\(dir)/tether-shim"
        try Files.writeAtomically(fake, Array("#!/bin/sh\necho $$ > \(dir)/fake.pid\nexec sleep 1000\n".utf8), mode: 0o755)
        try await withDaemon(["--shim", fake, "--shim-timeout", "2"]) { d in
            let start = monotonicNanos()
            let r = try await d.tether("run", "-d", "x", "--", "true")
            #expect(r.status == 1 && r.err.contains("did not listen within 2 s"), "\(r)")
            #expect(monotonicNanos() - start < 10_000_000_000)
            let pid = try #require(Int32((try Files.readString("\(dir)/fake.pid")).filter(\.isNumber)))
            #expect(await eventually { kill(pid, 0) != 0 }, "the shim that never said ready still runs (or is a zombie of tetherd)")
            #expect(zombieChildren(of: d.pid).isEmpty)
            #expect(try await d.tether("ls", "-q").out.isEmpty && !Files.exists(d.bundle("x")))
        }
    }

    @Test("without pidfds the manager still kills and reaps the shim it started, and says why the create failed")
    func noPidfd() async throws {
        try await withDaemon(env: ["TETHER_TEST_FAULTS": "pidfd_open"]) { d in
            let r = try await d.tether("run", "-d", "x", "--", "true")
            #expect(r.status == 1 && r.err.contains("cannot watch tether-shim"), "\(r)")
            #expect(await eventually { d.shims().isEmpty && zombieChildren(of: d.pid).isEmpty }, "shims \(d.shims())")
            #expect(try await d.tether("ls", "-q").out.isEmpty && !Files.exists(d.bundle("x")))
        }
    }

    @Test("a shim whose reaper breaks stops where the manager sees it: the task's exit says why, at once")
    func brokenReaper() async throws {
        try await withDaemon(env: ["TETHER_SHIM_FAULT": "reaper"]) { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let pid = try #require(Int32(exactly: try await AsyncAPI(d).get("t").pid))
            kill(pid, SIGKILL)  // SIGCHLD: the reaper's next read, which fails
            let w = try await d.tether("wait", "t", timeout: 20)
            #expect(w.status == 137, "\(w)")
            let view = try await AsyncAPI(d).get("t")
            #expect(view.exitReason?.contains("the reaper failed") == true, "\(String(describing: view.exitReason))")
            #expect(try await d.tether("rm", "t").status == 0)
        }
    }

    @Test("the shim is one thread; a peer that never reads its answers holds up nobody else")
    func oneThreadNoBlockingReplies() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("t"))
            #expect(try Files.listDirectory("/proc/\(shim)/task").count == 1, "the shim has more than one thread")
            let socket = "\(d.bundle("t"))/shim.sock"
            try await offPool {
                // 20,000 requests whose answers (~2.6 MB) nobody reads: far past a socket's buffer.
                let greedy = try UnixSocket.connect(socket)
                var state = Containerd_Task_V2_StateRequest()
                state.id = "t"
                var req = Ttrpc_Request()
                req.service = "containerd.task.v2.Task"
                req.method = "State"
                req.payload = try state.serializedData()
                let payload: [UInt8] = try req.serializedBytes()
                var burst: [UInt8] = []
                for i in 0..<20_000 { burst += try Frame(streamID: UInt32(2 * i + 1), type: .request, payload: payload).encoded() }
                try greedy.writeAll(burst)
                // Another client is answered at once.
                let start = monotonicNanos()
                let c = try TTRPCBlockingClient(socketPath: socket, timeout: 10)
                defer { c.close() }
                let s = try c.call("containerd.task.v2.Task", "State", state, as: Containerd_Task_V2_StateResponse.self)
                #expect(s.status == .running && monotonicNanos() - start < 2_000_000_000)
                greedy.close()
            }
            try await d.killAndDelete("t")
        }
    }
}
