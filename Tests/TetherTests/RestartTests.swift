#if canImport(Glibc)
import Glibc
#endif
import CTether
import Foundation
import Testing
import TetherAPI
import TetherManager
import TetherRuntime
import TetherSys

/// A runc that pauses before an operation while HOOKS/runc.OP.pause exists
/// (creating HOOKS/runc.OP.reached), then runs the real runc. Fault injection
/// around real containers.
func pausingRuntime(_ d: TestDaemon) throws -> String {
    let path = "\(d.dir)/runc-pausing"
    let runc = try #require(Spawn.lookPath("runc"))
    try Files.writeAtomically(path, Array("""
        #!/bin/sh
        op=
        for a in "$@"; do
            case "$a" in create|start|exec|delete|kill) op=$a; break ;; esac
        done
        if [ -n "$op" ] && [ -e "\(d.hooks)/runc.$op.pause" ]; then
            touch "\(d.hooks)/runc.$op.reached"
            while [ -e "\(d.hooks)/runc.$op.pause" ]; do sleep 0.01; done
        fi
        exec \(runc) "$@"

        """.utf8), mode: 0o755)
    return path
}

/// Sets a pause point (a TestHook in tetherd, or "runc.OP" in the pausing runtime).
func pause(_ d: TestDaemon, _ point: String) throws { try Files.writeAtomically("\(d.hooks)/\(point).pause", []) }
func release(_ d: TestDaemon, _ point: String) { unlink("\(d.hooks)/\(point).pause") }
func reached(_ d: TestDaemon, _ point: String) async -> Bool { await eventually(10) { Files.exists("\(d.hooks)/\(point).reached") } }

/// Checks that nothing of task `id` is left: no bundle, shim, container or mount.
func expectGone(_ d: TestDaemon, _ id: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    #expect(!Files.exists(d.bundle(id)), "bundle of \(id)", sourceLocation: sourceLocation)
    #expect(await eventually { d.shims().isEmpty }, "shims: \(d.shims())", sourceLocation: sourceLocation)
    #expect(d.containers().isEmpty, "containers: \(d.containers())", sourceLocation: sourceLocation)
    #expect(d.taskMounts().isEmpty, "mounts: \(d.taskMounts())", sourceLocation: sourceLocation)
}

@Suite("restarts and dead shims", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(5)))
struct RestartTests {
    @Test("an exit while no manager runs is delivered to the next one, once, with its status")
    func exitWhileManagerDown() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sh", "-c", "until [ -e /go ]; do sleep 0.01; done; exit 7").status == 0)
            try await d.kill9()
            try Files.writeAtomically("\(d.bundle("t"))/rootfs/go", [])
            // The shim records the exit on disk; nobody is listening on the exit pipe.
            #expect(await eventually { ((try? Files.listDirectory("\(d.bundle("t"))/exits")) ?? []).count == 1 })
            try await d.start()
            let w = try await d.tether("wait", "t")
            #expect(w.status == 7 && w.out == "7\n", "\(w)")
            #expect(try await d.tether("ls").out.contains("stopped   7"))
            let lines = d.allLogs.split(separator: "\n").filter { $0.contains("process exited") && $0.contains("id=t ") }
            #expect(lines.count == 1, "\(lines)")
            // Acknowledged: the shim has let the record go.
            #expect(await eventually { ((try? Files.listDirectory("\(d.bundle("t"))/exits")) ?? []).isEmpty })
            #expect(try await d.tether("delete", "t").status == 0)
        }
    }

    @Test("tetherd killed while a create is half done (bundle written; shim started): the task is removed on restart")
    func killedDuringCreate() async throws {
        try await withDaemon { d in
            for point in ["create.before-shim", "create.before-create-call"] {
                try pause(d, point)
                async let run = d.tether("run", "-d", "h", "--", "sleep", "100")
                #expect(await reached(d, point), "\(point) never reached")
                try await d.kill9()
                release(d, point)
                #expect(try await run.status != 0)
                unlink("\(d.hooks)/\(point).reached")
                try await d.start()
                #expect(try await d.tether("ls", "-q").out.isEmpty, "after \(point)")
                try await expectGone(d, "h")
                // The ID is free again.
                #expect(try await d.tether("run", "--rm", "h", "--", "true").status == 0)
            }
        }
    }

    @Test("tetherd killed between create and start, during start, during exec: the task goes on and can be deleted")
    func killedAroundStart() async throws {
        try await withDaemon { d in
            try await d.stop()
            try await d.start(["--runtime", try pausingRuntime(d)])

            // Created, not started.
            #expect(try await d.tether("create", "c", "--", "sleep", "100").status == 0)
            try await d.kill9()
            try await d.start()
            #expect(try await d.tether("state", "c").out.contains("\"created\""))

            // During start: runc start pauses, the manager dies, runc goes on.
            try pause(d, "runc.start")
            async let start = d.tether("start", "c")
            #expect(await reached(d, "runc.start"))
            try await d.kill9()
            _ = try await start
            try await d.start()
            release(d, "runc.start")
            #expect(await eventually { (try? Files.readString("\(d.bundle("c"))/shim.log"))?.contains("started the task's init") ?? false })
            #expect(try await d.tether("state", "c").out.contains("\"running\""))

            // During exec: the exec's record is written, runc exec pauses, the manager dies.
            try pause(d, "runc.exec")
            async let exec = d.tether("exec", "-d", "--exec-id", "e", "c", "--", "sleep", "100")
            #expect(await reached(d, "runc.exec"))
            try await d.kill9()
            _ = try await exec
            try await d.start()
            release(d, "runc.exec")
            #expect(await eventually { (try? Files.readString("\(d.bundle("c"))/shim.log"))?.contains("started exec \"e\"") ?? false })
            let api = AsyncAPI(d)
            #expect(try await api.getExec("c", "e").status == .running)
            #expect(try await d.tether("kill", "-s", "KILL", "--exec-id", "e", "c").status == 0)
            #expect(try await api.waitExec("c", "e").status == 137)

            #expect(try await d.tether("kill", "-s", "KILL", "c").status == 0)
            #expect(try await d.tether("wait", "c").status == 137)
            #expect(try await d.tether("delete", "c").status == 0)
            try await expectGone(d, "c")
        }
    }

    @Test("tetherd killed during delete (before the shim hears of it, and while runc deletes): the next delete finishes it")
    func killedDuringDelete() async throws {
        try await withDaemon { d in
            try await d.stop()
            try await d.start(["--runtime", try pausingRuntime(d)])
            for (id, point) in [("d1", "delete.before-delete-call"), ("d2", "runc.delete")] {
                #expect(try await d.tether("run", "-d", id, "--", "sh", "-c", "exit 3").status == 0)
                #expect(try await d.tether("wait", id).status == 3)
                try pause(d, point)
                async let del = d.tether("delete", id)
                #expect(await reached(d, point), "\(point)")
                try await d.kill9()
                _ = try await del
                try await d.start()
                release(d, point)
                let again = try await d.tether("delete", id)
                #expect(again.status == 0 && again.out.contains("status 3"), "\(point): \(again)")
                try await expectGone(d, id)
            }
        }
    }

    @Test("a shim killed with SIGKILL: exit 137 with a reason, at once; nothing leaks")
    func shimKilled() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "s", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("s"))
            let taskPid = try await AsyncAPI(d).get("s").pid
            let start = monotonicNanos()
            kill(shim, SIGKILL)
            #expect(try await d.tether("wait", "s").status == 137)
            let ms = (monotonicNanos() - start) / 1_000_000
            #expect(ms < 1000, "noticed after \(ms) ms")
            let view = try await AsyncAPI(d).get("s")
            #expect(view.status == .stopped && view.exit?.status == 137)
            #expect(view.exitReason?.contains("shim died") == true, "\(String(describing: view.exitReason))")
            #expect(await eventually { kill(Int32(taskPid), 0) != 0 }, "the container's init outlived its shim")
            #expect(await eventually { d.containers().isEmpty })
            #expect(zombieChildren(of: d.pid).isEmpty)
            #expect(try await d.tether("delete", "s").status == 0)
            try await expectGone(d, "s")
        }
    }

    @Test("a shim that does not answer at reload is slow, not dead: reload is bounded, the task is kept, its exit arrives once it answers")
    func unresponsiveShim() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "u", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("u"))
            let pid = try #require(Int32(exactly: try await AsyncAPI(d).get("u").pid))
            try await d.kill9()
            // The task exits while no manager runs; its shim records it, then stops answering.
            kill(pid, SIGKILL)
            #expect(await eventually(10) { !((try? Files.listDirectory("\(d.bundle("u"))/exits")) ?? []).isEmpty }, "no exit record")
            kill(shim, SIGSTOP)
            defer { kill(shim, SIGCONT) }
            let start = monotonicNanos()
            try await d.start()
            let ms = (monotonicNanos() - start) / 1_000_000
            #expect(ms < 5000, "reload took \(ms) ms")
            let ls = try await d.tether("ls")
            #expect(ls.out.contains("running"), "the task was dropped or taken for dead: \(ls)")
            #expect(kill(shim, 0) == 0 && procStat(shim, field: 3) == "T", "the stopped shim was killed")
            kill(shim, SIGCONT)
            // Once it answers, the exit it kept is delivered: not 137 from a manager's guess, the real one.
            let w = try await d.tether("wait", "u")
            #expect(w.status == 137 && w.out == "137\n", "\(w)")
            let view = try await AsyncAPI(d).get("u")
            #expect(view.exitReason == nil, "the manager recorded the exit itself: \(view)")
            #expect(try await d.tether("delete", "u").status == 0)
            try await expectGone(d, "u")
        }
    }

    @Test("a recorded pid that now belongs to another process is never taken for the shim, nor signalled")
    func pidReuse() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "r", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("r"))
            try await d.kill9()
            kill(shim, SIGKILL)
            // Another process now holds the pid the record names.
            let other = try Spawn.spawn("/bin/sleep", ["sleep", "1000"])
            defer { kill(other, SIGKILL); var st: Int32 = 0; _ = tether_wait_pid(other, &st) }
            var record = try TaskRecord.load("\(d.bundle("r"))/task.json")
            record.shimPid = other
            try record.save()
            try await d.start()
            let view = try await AsyncAPI(d).get("r")
            #expect(view.status == .stopped && view.exit?.status == 137, "\(view)")
            #expect(try await d.tether("delete", "r").status == 0)
            #expect(kill(other, 0) == 0 && procStat(other, field: 3) != "Z", "the unrelated process was signalled")
            try await expectGone(d, "r")
        }
    }

    @Test("an unreadable task.json is reported with its path and the task handled as dead, not a crash")
    func unreadableRecord() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "x", "--", "sleep", "100").status == 0)
            #expect(try await d.tether("run", "-d", "y", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("x"))
            try await d.kill9()
            try Files.writeAtomically("\(d.bundle("x"))/task.json", Array("{\"namespace\": \"def".utf8))
            try await d.start()
            #expect(d.logText.contains("task record is unreadable") && d.logText.contains("\(d.bundle("x"))/task.json"))
            let view = try await AsyncAPI(d).get("x")
            #expect(view.status == .stopped && view.exitReason?.contains("unreadable") == true, "\(view)")
            #expect(await eventually { kill(shim, 0) != 0 }, "its shim was left running")
            #expect(try await d.tether("state", "y").out.contains("\"running\""), "the other task was touched")
            #expect(try await d.tether("delete", "x").status == 0)
            _ = try await d.tether("kill", "-s", "KILL", "y")
            _ = try await d.tether("wait", "y")
            #expect(try await d.tether("delete", "y").status == 0)
            try await expectGone(d, "x")
        }
    }

    @Test("100 tasks, tetherd killed and restarted 5 times while they exit: every exit delivered once, with its status")
    func hundredTasksFiveRestarts() async throws {
        try await withDaemon { d in
            let n = 100
            for i in 0..<n {
                // Each exits with its own status after its own delay (0 to 2.5 s), spread over the restarts.
                let script = "sleep \(Double((i * 37) % 100) / 40); exit \(i % 120)"
                let r = try await d.tether("run", "-d", "t\(i)", "--", "sh", "-c", script)
                try #require(r.status == 0, "\(r)")
            }
            for _ in 0..<5 {
                try await d.kill9()
                try await Task.sleep(nanoseconds: 150_000_000)  // let some exits happen with nobody listening
                try await d.start()
            }
            let reloadLines = d.allLogs.split(separator: "\n").filter { $0.contains("reloaded tasks") }
            print("reload times: \(reloadLines.compactMap { $0.split(separator: " ").first { $0.hasPrefix("ms=") } })")
            for i in 0..<n {
                let w = try await d.tether("wait", "t\(i)")
                #expect(w.status == Int32(i % 120), "t\(i): \(w)")
            }
            let exits = d.allLogs.split(separator: "\n").filter { $0.contains("process exited") }
            for i in 0..<n {
                let count = exits.filter { $0.contains("id=t\(i) ") }.count
                #expect(count == 1, "t\(i) delivered \(count) times")
            }
            for i in 0..<n { _ = try await d.tether("delete", "t\(i)") }
            #expect(try await d.tether("ls", "-q").out.isEmpty)
        }
    }
}
