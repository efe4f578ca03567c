#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherProto
import TetherSys

/// Tether's shim under Debian's containerd 1.6, driven by ctr as a user
/// would: `ctr run --runtime io.containerd.tether.v1`.
@Suite("containerd runtime", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(5)))
struct ContainerdTests {
    static let image = ContainerdInstance.image

    @Test("ctr run --rm: the output, the exit status, and the task events in order; the shim is gone after")
    func runRemove() async throws {
        try await withContainerd { c in
            let events = try await c.events()
            let r = try await c.run(["--rm", Self.image, "r1", "sh", "-c", "echo hello from tether; echo to-stderr >&2; exit 3"])
            #expect(r.status == 3, "\(r)")
            #expect(r.out == "hello from tether\n" && r.err == "to-stderr\n", "\(r)")
            #expect(events.out.waitFor("/tasks/delete", timeout: 10))
            let topics = events.out.text.split(separator: "\n").filter { $0.contains("r1") }.compactMap { line in
                line.split(separator: " ").first { $0.hasPrefix("/tasks/") }.map(String.init)
            }
            #expect(topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "\(events.out.text)")
            #expect(events.out.text.contains("\"exit_status\":3"), "\(events.out.text)")
            kill(events.pid, SIGTERM)
            _ = events.wait(timeout: 10)
            #expect(await eventually(10) { c.shims().isEmpty }, "a shim is still running")
        }
    }

    @Test("ctr run -d, then exec, ps, pause, resume, kill and delete through the one shim")
    func detachedLifecycle() async throws {
        try await withContainerd { c in
            let events = try await c.events()
            let r = try await c.run(["-d", Self.image, "d1", "sleep", "1000"])
            #expect(r.status == 0, "\(r)")
            let shim = try #require(c.shim("d1"), "no shim for d1")
            // Detached from containerd: it outlives it (its parent is not containerd).
            #expect(procStat(shim, field: 4) != String(c.pid))
            let ls = try await c.ctr("tasks", "ls")
            let initPid = try #require(ls.out.split(separator: "\n").first { $0.hasPrefix("d1 ") }?.split(separator: " ").dropFirst().first)
            #expect(ls.out.contains("RUNNING"), "\(ls)")

            let e = try await c.ctr("tasks", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo in-exec; exit 5")
            #expect(e.status == 5 && e.out == "in-exec\n", "\(e)")
            let ps = try await c.ctr("tasks", "ps", "d1")
            #expect(ps.out.contains(String(initPid)), "\(ps)")

            #expect(try await c.ctr("tasks", "pause", "d1").status == 0)
            #expect(try await c.ctr("tasks", "ls").out.contains("PAUSED"))
            #expect(events.out.waitFor("/tasks/paused", timeout: 10))
            #expect(try await c.ctr("tasks", "resume", "d1").status == 0)
            #expect(try await c.ctr("tasks", "ls").out.contains("RUNNING"))

            #expect(try await c.ctr("tasks", "kill", "-s", "KILL", "d1").status == 0)
            #expect(events.out.waitFor("\"id\":\"d1\",\"pid\":\(initPid),\"exit_status\":137", timeout: 10), "\(events.out.text)")
            #expect(try await c.ctr("tasks", "ls").out.contains("STOPPED"))
            let d = try await c.ctr("tasks", "delete", "d1")
            #expect(d.status == 0 && d.err.contains("exit code 137"), "\(d)")
            #expect(try await c.ctr("containers", "delete", "d1").status == 0)
            #expect(waitForExit(shim, timeoutMs: 10_000) || kill(shim, 0) != 0, "the shim did not exit after delete")
            #expect(c.containers().isEmpty)
            kill(events.pid, SIGTERM)
            _ = events.wait(timeout: 10)
        }
    }

    @Test("ctr run -t: the task has a pty of the size of ctr's terminal")
    func terminal() async throws {
        try await withContainerd { c in
            // script(1) gives ctr a terminal of 40 rows by 120 columns. ctr
            // resizes the task's pty only after it has started it (as with
            // runc's shim), so the task waits, a bounded while, for a size.
            let command = ([ContainerdInstance.ctrBinary, "--address", c.socket, "-n", c.namespace, "run", "-t", "--rm",
                            "--runtime", ContainerdInstance.runtime, "--fifo-dir", "\(c.dir)/fifo", Self.image, "t1",
                            "sh", "-c", "'i=0; until [ -n \"$(stty size 2>/dev/null)\" ] || [ $i = 200 ]; do usleep 20000; i=$((i+1)); done; tty; stty size; exit 4'"]).joined(separator: " ")
            let r = try await runProgram("/usr/bin/script", ["-qec", "stty rows 40 cols 120; \(command)", "/dev/null"])
            #expect(r.status == 4, "\(r)")
            // Two pty layers (the task's and script's) make each newline "\r\r\n".
            #expect(r.out.contains("/dev/pts/0\r\r\n40 120\r\r\n"), "\(r)")
        }
    }

    @Test("containerd killed and restarted: a running task keeps its pid, an exit during the outage reaches containerd")
    func containerdRestart() async throws {
        try await withContainerd { c in
            #expect(try await c.run(["-d", Self.image, "keep", "sleep", "1000"]).status == 0)
            #expect(try await c.run(["-d", Self.image, "gone", "sleep", "1000"]).status == 0)
            let keepPid = try #require(Int32((try? Files.readString("\(c.bundle("keep"))/init.pid")) ?? ""))
            let gonePid = try #require(Int32((try? Files.readString("\(c.bundle("gone"))/init.pid")) ?? ""))
            try await c.kill9()
            kill(gonePid, SIGKILL)
            // The shim records the exit on disk and holds it while containerd is away.
            #expect(await eventually(10) { ((try? Files.listDirectory("\(c.bundle("gone"))/exits")) ?? []).count == 1 })
            try await c.start()
            let ls = try await c.ctr("tasks", "ls")
            #expect(ls.out.contains("keep    \(keepPid)    RUNNING"), "\(ls)")
            // Forwarded once containerd is back, then dropped from disk.
            #expect(await eventually(20) { ((try? Files.listDirectory("\(c.bundle("gone"))/exits")) ?? []).isEmpty })
            #expect(try await c.ctr("tasks", "ls").out.contains("gone    \(gonePid)    STOPPED"))
            let d = try await c.ctr("tasks", "delete", "gone")
            #expect(d.status == 0 && d.err.contains("exit code 137"), "\(d)")
            let e = try await c.ctr("tasks", "exec", "--exec-id", "after", "keep", "sh", "-c", "exit 7")
            #expect(e.status == 7, "\(e)")
            let forced = try await c.ctr("tasks", "delete", "-f", "keep")
            #expect(forced.status == 0, "\(forced)")
            for id in ["keep", "gone"] { _ = try await c.ctr("containers", "delete", id) }
        }
    }

    @Test("a SIGKILLed shim: containerd cleans up through `delete`, the container is gone and the exit is 137")
    func deadShim() async throws {
        try await withContainerd { c in
            let events = try await c.events()
            #expect(try await c.run(["-d", Self.image, "k1", "sleep", "1000"]).status == 0)
            let shim = try #require(c.shim("k1"))
            let initPid = try #require(Int32((try? Files.readString("\(c.bundle("k1"))/init.pid")) ?? ""))
            kill(shim, SIGKILL)
            #expect(events.out.waitFor("\"exit_status\":137", timeout: 20), "\(events.out.text)")
            #expect(await eventually(10) { kill(initPid, 0) != 0 }, "the container's init outlived its shim's cleanup")
            #expect(c.containers().isEmpty, "runc still has \(c.containers())")
            #expect(try await c.ctr("tasks", "ls", "-q").out.isEmpty)
            _ = try await c.ctr("containers", "delete", "k1")
            kill(events.pid, SIGTERM)
            _ = events.wait(timeout: 10)
        }
    }

    @Test("a task over its 16 MiB memory limit under containerd: the shim publishes /tasks/oom, then the exit")
    func oomEvent() async throws {
        try await withContainerd { c in
            let events = try await c.events()
            // /dev/shm is a tmpfs charged to the task's memory cgroup: dd fills it past the limit.
            let r = try await c.run(["--rm", "--memory-limit", "\(16 << 20)", Self.image, "o1",
                                     "sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60"])
            #expect(r.status == 137, "\(r)")
            #expect(events.out.waitFor("/tasks/delete", timeout: 10))
            let lines = events.out.text.split(separator: "\n").filter { $0.contains("o1") }
            #expect(lines.contains { $0.contains("/tasks/oom") }, "\(events.out.text)")
            kill(events.pid, SIGTERM)
            _ = events.wait(timeout: 10)
        }
    }

    @Test("containerd-shim-tether-v1 on bad flags: one clear line; delete with no shim prints a DeleteResponse")
    func binaryFlags() async throws {
        try Prerequisites.require()
        let shim = "\(Prerequisites.binDir)/containerd-shim-tether-v1"
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let badID = try await runProgram(shim, ["-namespace", "n", "-id", "../etc", "-address", "/x", "start"])
        #expect(badID.status == 2 && badID.err == "containerd-shim-tether-v1: -id \"../etc\" is not a valid task ID\n", "\(badID)")
        let noNS = try await runProgram(shim, ["-id", "a", "start"])
        #expect(noNS.status == 2 && noNS.err.contains("-namespace is required"), "\(noNS)")
        let unknown = try await runProgram(shim, ["-namespace", "n", "-id", "a", "-frobnicate", "start"])
        #expect(unknown.status == 2 && unknown.err.contains("unknown flag -frobnicate"), "\(unknown)")
        let version = try await runProgram(shim, ["-v"])
        #expect(version.status == 0 && version.out.hasPrefix("containerd-shim-tether-v1 "), "\(version)")
        // start outside a bundle: no config.json, refused before anything is spawned.
        let noBundle = try await runProgram("/bin/sh", ["-c", "cd \(dir) && exec \(shim) -namespace n -id a -address /x start"])
        #expect(noBundle.status == 1 && noBundle.err.contains("no readable config.json"), "\(noBundle)")
        // delete for a task whose shim never ran: idempotent, a DeleteResponse on stdout.
        let del = try await runProgram("/bin/sh", ["-c", "exec \(shim) -namespace n -id never-ran -address /x -bundle \(dir) delete >\(dir)/out"], timeout: 10)
        #expect(del.status == 0, "\(del)")
        let resp = try Containerd_Task_V2_DeleteResponse(serializedBytes: try Files.read("\(dir)/out"))
        #expect(resp.exitStatus == 137 && resp.exitedAt.seconds > 0)
        // ... and for a bundle that is not there at all.
        let gone = try await runProgram("/bin/sh", ["-c", "exec \(shim) -namespace n -id gone -address /x -bundle \(dir)/no/such delete >\(dir)/out2"], timeout: 10)
        #expect(gone.status == 0, "\(gone)")
        #expect(try Containerd_Task_V2_DeleteResponse(serializedBytes: try Files.read("\(dir)/out2")).exitStatus == 137)
    }
}

/// Tether under containerd's CRI plugin, driven the way a kubelet drives it
/// (scripts/cri-client.py: a pod with host networking, a container, an
/// ExecSync, its CRI log, stop and removal), with the RuntimeClass handler
/// `tether`, and with `runc` (containerd's own shim) as the control.
@Suite("containerd CRI", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(5)))
struct CRITests {
    /// The Python with grpcio and protobuf that scripts/test prepares.
    static var python: String {
        ProcessInfo.processInfo.environment["TETHER_CRI_PYTHON"]
            ?? "\(ProcessInfo.processInfo.environment["HOME"] ?? "/root")/.cache/tether/cri-venv/bin/python"
    }

    @Test("a pod and a container through RuntimeClass handler tether behave as through runc", arguments: ["tether", "runc"])
    func podLifecycle(handler: String) async throws {
        try #require(Files.exists(Self.python), "no Python with grpcio at \(Self.python): scripts/test prepares it")
        try await withContainerd(cri: true) { c in
            let r = try await runProgram(Self.python, ["\(ContainerdInstance.scripts)/cri-client.py", "--socket", c.socket,
                                                       "--image", ContainerdInstance.image, "--logdir", "\(c.dir)/pods",
                                                       "--handler", handler], timeout: 120)
            #expect(r.status == 0, "\(r)\n\(c.log.suffix(3000))")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any], "\(r)")
            #expect(report["running_state"] as? Int == 1)  // CONTAINER_RUNNING
            let exec = report["exec"] as? [String: Any]
            #expect(exec?["exit_code"] as? Int == 3 && exec?["stdout"] as? String == "hi\n", "\(report)")
            let log = report["log"] as? [String] ?? []
            // Two streams, copied apart by containerd: in either order.
            #expect(log.count == 2 && log.contains { $0.hasSuffix(" stdout F hello from cri") }
                        && log.contains { $0.hasSuffix(" stderr F oops") }, "\(log)")
            #expect(report["stopped_state"] as? Int == 2 && report["exit_code"] as? Int == 143, "\(report)")  // EXITED, SIGTERM
            #expect(report["sandboxes_left"] as? Int == 0)
            // Each task of the pod had a Tether shim of its own (or none, for runc).
            let shimsSeen = c.log.components(separatedBy: "tether-shim[").count - 1
            #expect(handler == "tether" ? shimsSeen > 0 : shimsSeen == 0, "\(c.log.suffix(2000))")
        }
    }
}
