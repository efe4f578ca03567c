#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherManager
import TetherOCI
import TetherRuntime
import TetherSys

/// A tetherd for the body; always finished (stopped, checked for leaks, removed).
func withDaemon(_ args: [String] = [], env: [String: String] = [:], wrapper: [String] = [],
                _ body: (TestDaemon) async throws -> Void) async throws {
    let d = try await TestDaemon(args, env: env, wrapper: wrapper)
    do {
        try await body(d)
    } catch {
        try? await d.finish()
        throw error
    }
    try await d.finish()
}

/// A bundle on the test rootfs (read-only) whose spec the caller can change.
func makeBundle(in dir: String, id: String, args: [String], edit: (inout OCI.Spec) -> Void = { _ in }) throws -> String {
    let bundle = "\(dir)/bundle-\(id)"
    try Files.makeDirectories(bundle)
    var spec = SpecBuilder.spec(namespace: "default", id: id, process: .init(args: args), rootfs: Prerequisites.rootfs,
                                cgroupParent: Layout(root: "", state: dir).cgroupParent)
    spec.root?.readonly = true
    edit(&spec)
    try Files.writeAtomically("\(bundle)/config.json", SpecCheck.encode(spec))
    return bundle
}

/// Removes the pid namespace from a spec: the init is then an ordinary
/// process, which (unlike a namespace's pid 1) dies of SIGTERM by default.
func hostPidNamespace(_ spec: inout OCI.Spec) {
    spec.linux?.namespaces?.removeAll { $0.type == "pid" }
}

@Suite("task lifecycle through tetherd, a shim and runc", .serialized,
       .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct LifecycleTests {
    @Test("run --rm prints the output and exits with the task's status; nothing is left")
    func runRm() async throws {
        try await withDaemon { d in
            let r = try await d.tether("run", "--rm", "t1", "--", "sh", "-c", "echo hello; echo oops >&2; exit 3")
            #expect(r.status == 3, "\(r)")
            #expect(r.out == "hello\n")
            #expect(r.err == "oops\n")
            #expect(try await d.tether("ls", "-q").out.isEmpty)
            #expect(d.containers().isEmpty)
            #expect(!Files.exists(d.bundle("t1")))
        }
    }

    @Test("the container gets the spec's defaults and a writable layer of its own over the shared rootfs")
    func containerEnvironment() async throws {
        try await withDaemon { d in
            let r = try await d.tether("run", "--rm", "--env", "GREETING=hi", "--cwd", "/tmp", "env1", "--", "sh", "-c",
                                       "umask; hostname; pwd; echo $GREETING; grep NoNewPrivs /proc/self/status; echo 1 > /written; cat /written; echo $$")
            #expect(r.status == 0, "\(r)")
            #expect(r.out == "0022\nenv1\n/tmp\nhi\nNoNewPrivs:\t1\n1\n1\n", "\(r)")
            #expect(!Files.exists("\(Prerequisites.rootfs)/written"), "the task wrote into the shared rootfs")
            #expect(!Files.exists("\(d.root)/tasks/default/env1"), "the task's layer outlived it")
        }
    }

    @Test("stdio FIFOs nobody has opened never hang the shim; rootfs mounts come and go with the task")
    func fifosWithoutReaders() async throws {
        try await withDaemon { d in
            let fifos = "\(d.dir)/fifos"
            try Files.makeDirectories(fifos)
            for name in ["in", "out", "err"] { try Files.makeFifo("\(fifos)/\(name)") }
            let api = AsyncAPI(d)
            let io = IOView(stdin: "\(fifos)/in", stdout: "\(fifos)/out", stderr: "\(fifos)/err")
            // Nobody holds the other ends: create must return, and stdin and
            // stderr stay unopened by anyone to the end.
            let view = try await api.create(CreateTaskRequest(id: "f", args: ["sh", "-c", "echo out; echo err >&2; exit 4"], io: io))
            #expect(view.status == .created && view.io == io)
            #expect(Mounts.targets(under: d.bundle("f")) == ["\(d.bundle("f"))/rootfs"])
            // A reader that comes after create still gets the output.
            let out = try FD.open("\(fifos)/out", O_RDONLY | O_NONBLOCK)
            _ = try await api.start("f")
            #expect(try await api.wait("f").status == 4)
            try out.setNonBlocking(false)
            #expect(try await readAll(out) == "out\n")
            #expect(try await api.delete("f").status == 4)
            #expect(d.taskMounts().isEmpty)
        }
    }

    @Test("the Exit has the status and a timestamp; wait, state and delete agree")
    func exitRecord() async throws {
        try await withDaemon { d in
            let before = Date()
            #expect(try await d.tether("run", "-d", "t1", "--", "sh", "-c", "exit 3").status == 0)
            let w = try await d.tether("wait", "t1")
            let after = Date()
            #expect(w.status == 3 && w.out == "3\n", "\(w)")
            let view = try APIJSON.decoder.decode(TaskView.self, from: Data(try await d.tether("state", "t1").out.utf8))
            let exit = try #require(view.exit)
            #expect(view.status == .stopped && exit.status == 3 && exit.pid == view.pid)
            #expect(exit.timestamp >= before.addingTimeInterval(-0.001) && exit.timestamp <= after)
            let del = try await d.tether("delete", "t1")
            #expect(del.status == 0)
            #expect(del.out == "t1: pid \(exit.pid) exited with status 3 at \(RFC3339.format(exit.timestamp))\n")
        }
    }

    @Test("SIGKILL gives 137; SIGTERM gives 143 (an init outside a pid namespace, which SIGTERM can kill)")
    func signalStatuses() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "k", "--", "sleep", "100").status == 0)
            #expect(try await d.tether("kill", "-s", "KILL", "k").status == 0)
            #expect(try await d.tether("wait", "k").status == 137)
            #expect(try await d.tether("delete", "k").out.contains("status 137 (SIGKILL)"))

            let bundle = try makeBundle(in: d.dir, id: "t", args: ["sleep", "100"], edit: hostPidNamespace)
            #expect(try await d.tether("run", "-d", "--bundle", bundle, "t").status == 0)
            #expect(try await d.tether("kill", "t").status == 0)  // TERM is the default
            let w = try await d.tether("wait", "t")
            #expect(w.status == 143, "\(w)")
            #expect(try await d.tether("delete", "t").out.contains("status 143 (SIGTERM)"))
        }
    }

    @Test("a background child of an init that exits is killed and reaped: no zombie, no container")
    func backgroundChildInPidNamespace() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "bg", "--", "sh", "-c", "sleep 100 & exit 0").status == 0)
            let shim = try #require(d.shimPid("bg"))
            let cgroup = CgroupView(path: Layout(root: "", state: d.state).cgroup("default", "bg"))
            #expect(try await d.tether("wait", "bg").status == 0)
            // Only this task's processes are looked at: its cgroup must be empty.
            #expect(await eventually { zombieChildren(of: shim).isEmpty && cgroup.procs == [] }, "left in the task's cgroup: \(String(describing: cgroup.procs))")
            #expect(try await d.tether("delete", "bg").status == 0)
            #expect(d.containers().isEmpty)
        }
    }

    @Test("an orphan re-parented to the shim (the child subreaper) is reaped when it exits")
    func orphanReapedByShim() async throws {
        try await withDaemon { d in
            let bundle = try makeBundle(in: d.dir, id: "o", args: ["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"], edit: hostPidNamespace)
            let r = try await d.tether("run", "--bundle", bundle, "o")
            #expect(r.status == 0, "\(r)")
            let orphan = try #require(Int32(r.out.filter(\.isNumber)))
            let shim = try #require(d.shimPid("o"))
            // The orphan lives on with the shim as its parent, then exits and is reaped.
            #expect(procStat(orphan, field: 4) == String(shim) || !Files.exists("/proc/\(orphan)"))
            #expect(await eventually(5) { !Files.exists("/proc/\(orphan)") }, "orphan \(orphan) was not reaped")
            #expect(zombieChildren(of: shim).isEmpty)
            #expect(try await d.tether("delete", "o").status == 0)
        }
    }

    @Test("the shim has its own session and process group, and survives tetherd's SIGKILL with its task")
    func shimOutlivesManager() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "s", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("s"))
            let taskPid = try #require(try APIJSON.decoder.decode(TaskView.self, from: Data(try await d.tether("state", "s").out.utf8)).pid)
            #expect(getsid(shim) == shim && getpgid(shim) == shim)
            #expect(getsid(shim) != getsid(d.pid) && getpgid(shim) != getpgid(d.pid))

            try await d.kill9()
            #expect(kill(shim, 0) == 0 && procStat(shim, field: 3) != "Z")
            #expect(kill(Int32(taskPid), 0) == 0 && procStat(Int32(taskPid), field: 3) == "S")

            // A new tetherd finds the task again, still running.
            try await d.start()
            let ls = try await d.tether("ls")
            #expect(ls.out.contains("s ") && ls.out.contains("running"), "\(ls)")
            #expect(try await d.tether("kill", "-s", "KILL", "s").status == 0)
            #expect(try await d.tether("wait", "s").status == 137)
            #expect(try await d.tether("delete", "s").status == 0)
        }
    }

    @Test("SIGTERM stops tetherd and leaves the task running")
    func gracefulStop() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "g", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("g"))
            try await d.stop()
            #expect(d.logText.contains("tetherd stopped"))
            #expect(kill(shim, 0) == 0)
            try await d.start()
            #expect(try await d.tether("state", "g").out.contains("\"running\""))
            _ = try await d.tether("kill", "-s", "KILL", "g")
            #expect(try await d.tether("wait", "g").status == 137)
            _ = try await d.tether("delete", "g")
        }
    }
}
