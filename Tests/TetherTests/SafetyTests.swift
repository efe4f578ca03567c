#if canImport(Glibc)
import Glibc
#endif
import CTether
import Foundation
import Testing
import TetherAPI
import TetherClient
@testable import TetherManager
import TetherOCI
import TetherRuntime
import TetherSys

/// Tether on a host set up like a normal server, tried the way someone
/// hostile would: shared mount propagation, other users, bad numbers,
/// files that are FIFOs, a full disk, a manager killed mid-create, a shim
/// that stops answering. Each test failed before its fix.
@Suite("safety on a real host", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(5)))
struct SafetyTests {
    // MARK: - mounts

    @Test("--rootfs DIR never unmounts the host's mounts, even when DIR's mounts are shared (as systemd makes them)")
    func rootfsPropagation() async throws {
        try await withDaemon { d in
            // A shared mount with a mount inside it: exactly what / looks like on a systemd host.
            let host = "\(d.dir)/host"
            try Files.makeDirectories(host)
            try Mounts.mount(source: Prerequisites.rootfs, target: host, type: nil, flags: UInt(MS_BIND), data: nil)
            #expect(tether_mount("none", host, nil, UInt(MS_SHARED), nil) == 0)
            #expect(tether_mount("tmpfs", "\(host)/tmp", "tmpfs", 0, "size=1m") == 0)
            try Files.writeAtomically("\(host)/tmp/file", Array("secret\n".utf8), mode: 0o644)
            defer { Mounts.unmountTree(under: host) }
            #expect(Mounts.table().last { $0.target == "\(host)/tmp" }?.isShared == true)

            let r = try await d.tether("run", "--rm", "--rootfs", host, "p", "--", "cat", "/tmp/file")
            #expect(r.status == 0 && r.out == "secret\n", "\(r)")
            // The host's mount is still there, with its file.
            #expect(Mounts.isMountPoint("\(host)/tmp"), "the task's teardown unmounted the host's \(host)/tmp")
            #expect(try Files.readString("\(host)/tmp/file") == "secret\n")
            #expect(d.taskMounts().isEmpty)
        }
    }

    @Test("a rootfs that is / or holds Tether's own directories is refused, and nothing is mounted")
    func dangerousRootfs() async throws {
        try await withDaemon { d in
            for (dir, phrase) in [("/", "is the host's own root directory"), (d.dir, "contains Tether's state directory"),
                                  ("\(d.state)/tasks", "lies inside Tether's state directory"),
                                  ("\(d.root)/rootfs", "lies inside Tether's root directory")] {
                let r = try await d.tether("run", "--rm", "--rootfs", dir, "x", "--", "true")
                #expect(r.status == 1 && r.err.contains(phrase) && r.err.split(separator: "\n").count == 1, "\(dir): \(r)")
            }
            // The same rules for a spec sent through the API.
            let spec = String(decoding: SpecCheck.encode(SpecBuilder.spec(namespace: "default", id: "s", process: .init(args: ["true"]), rootfs: "/")), as: UTF8.self)
            let http = HTTPUnixClient(socketPath: d.address, timeout: 30)
            let root = try http.send("POST", "/v1/namespaces/default/tasks", body: Data(#"{"id":"s","spec":\#(spec)}"#.utf8))
            #expect(root.status == 400 && String(decoding: root.body, as: UTF8.self).contains("is the host's own root directory"))
            let relative = spec.replacingOccurrences(of: #""path":"/""#, with: #""path":"rootfs""#)
            let rel = try http.send("POST", "/v1/namespaces/default/tasks", body: Data(#"{"id":"s","spec":\#(relative)}"#.utf8))
            #expect(rel.status == 400 && String(decoding: rel.body, as: UTF8.self).contains("is not absolute"), "\(String(decoding: rel.body, as: UTF8.self))")
            #expect(d.taskMounts().isEmpty)
        }
    }

    // MARK: - other users

    @Test("no other user reaches anything Tether creates: bundles, sockets, FIFOs, logs, writable layers, a setuid file a container made")
    func otherUsers() async throws {
        try await withDaemon { d in
            // Directories as an older install (or scripts/make-rootfs) left them:
            // reachable by all. tetherd fixes them when it starts.
            for dir in [d.dir, d.root, "\(d.root)/rootfs", "\(d.root)/tasks", "\(d.root)/tasks/default", d.state] {
                try Files.makeDirectories(dir)
                chmod(dir, 0o755)
            }
            try await d.stop()
            try await d.start()

            // A container leaves a setuid copy of busybox in its /tmp (its writable layer).
            let log = "\(d.dir)/task.log"
            #expect(try await d.tether("create", "-i", "--log", log, "u", "--", "sh", "-c",
                                       "cp /bin/busybox /tmp/sb && chmod 4755 /tmp/sb && echo made && exec sleep 100").status == 0)
            #expect(try await d.tether("start", "u").status == 0)
            let setuid = "\(d.root)/tasks/default/u/upper/tmp/sb"
            #expect(await eventually(10) { ((try? Files.readString(log)) ?? "").contains("made") }, "the task did not run")
            var st = stat()
            #expect(lstat(setuid, &st) == 0 && st.st_mode & S_ISUID != 0, "no setuid file at \(setuid): the test proves nothing")

            // Everything Tether made, as root sees it.
            var paths: [String] = []
            for top in [d.state, d.root] { walk(top, into: &paths) }
            #expect(paths.contains("\(d.state)/tetherd.sock") && paths.contains("\(d.state)/exits.fifo") && paths.contains(setuid)
                    && paths.contains { $0.hasSuffix("/io/init.stdin") } && paths.contains { $0.hasSuffix("/shim.sock") }, "walk missed files")

            // As nobody: nothing inside is even visible; the two top directories cannot be listed or entered.
            let all = paths
            let seen = try await asUser(65534) { () -> [String] in
                var reached: [String] = []
                for p in all {
                    var st = stat()
                    if p == d.state || p == d.root {
                        if let dir = opendir(p) { closedir(dir); reached.append("\(p) (listed)") }
                        if access(p, X_OK) == 0 { reached.append("\(p) (entered)") }
                    } else if lstat(p, &st) == 0 {
                        reached.append(p)
                    }
                }
                let fd = open(log, O_RDONLY | O_NONBLOCK)
                if fd >= 0 { close(fd); reached.append(log) }
                return reached
            }
            #expect(seen.isEmpty, "uid 65534 reached: \(seen.prefix(10))")
            // Nor can it run the setuid file, which is what made this a way to root.
            let run = try await runProgram("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", setuid, "id", "-u"])
            #expect(run.status != 0 && !run.out.contains("0"), "\(run)")

            try await d.killAndDelete("u")
        }
    }

    // MARK: - numbers

    @Test("bad numbers in every numeric field of the API get a 400 and one message; the daemon lives on")
    func badNumbersAPI() async throws {
        try await withDaemon { d in
            let http = HTTPUnixClient(socketPath: d.address, timeout: 30)
            let base = "/v1/namespaces/default/tasks"
            #expect(try await d.tether("create", "n", "--", "sleep", "100").status == 0)
            var cases: [(String, String, String)] = []
            for r in [#"{"cpus":1e300}"#, #"{"cpus":-1}"#, #"{"cpus":0}"#, #"{"memory":-5}"#, #"{"memory":1e300}"#,
                      #"{"memory":99999999999999999999}"#, #"{"pidsLimit":0}"#, #"{"pidsLimit":-1}"#, #"{"pidsLimit":1e30}"#] {
                cases.append(("POST", base, #"{"id":"b","args":["true"],"resources":\#(r)}"#))
            }
            cases.append(("POST", base, #"{"id":"b","args":["true"],"log":{"path":"/tmp/x.log","maxSize":1e300}}"#))
            cases.append(("POST", base, #"{"id":"b","args":["true"],"log":{"path":"/tmp/x.log","maxSize":18446744073709551615}}"#))
            for s in ["1e300", "-1", "0", "65", "99999999999", #""99999999999""#, #""SIGNOPE""#, "9.5", #""RTMIN+2147483647""#] {
                cases.append(("POST", "\(base)/n/kill", #"{"signal":\#(s)}"#))
            }
            for (w, h) in [("0", "0"), ("70000", "20"), ("-1", "5"), ("1e300", "1"), ("80", "4294967296")] {
                cases.append(("POST", "\(base)/n/resize", #"{"width":\#(w),"height":\#(h)}"#))
            }
            for u in [#"{"cpu":{"quota":1e300}}"#, #"{"cpu":{"period":0}}"#, #"{"cpu":{"quota":-5}}"#, #"{"memory":{"limit":-2}}"#,
                      #"{"memory":{"limit":1e19}}"#, #"{"pids":{"limit":-9}}"#, #"{"pids":{"limit":1.5}}"#, #"[]"#, #"7"#] {
                cases.append(("POST", "\(base)/n/update", u))
            }
            for (method, path, body) in cases {
                let r = try http.send(method, path, body: Data(body.utf8))
                let text = String(decoding: r.body, as: UTF8.self)
                #expect(r.status == 400, "\(path) \(body): \(r.status) \(text)")
                let e = try? APIJSON.decoder.decode(ErrorBody.self, from: r.body)
                #expect(e?.error.code == "invalid_argument" && e?.error.message.contains("\n") == false, "\(body): \(text)")
            }
            #expect(try http.send("GET", "/v1/version").status == 200, "tetherd died")
            _ = try await d.tether("rm", "n")
        }
    }

    @Test("bad numbers on the command line: one line, exit 1, never a crash")
    func badNumbersCLI() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "c", "--", "sleep", "100").status == 0)
            let cases: [[String]] = [
                ["run", "--cpus", "1e300", "x", "--", "true"], ["run", "--cpus=-1", "x", "--", "true"],
                ["run", "--cpus", "nan", "x", "--", "true"], ["run", "--memory", "99999999999G", "x", "--", "true"],
                ["run", "--memory=-5", "x", "--", "true"], ["run", "--memory", "99999999999999999999", "x", "--", "true"],
                ["run", "--pids-limit=-1", "x", "--", "true"], ["run", "--log", "/tmp/l", "--log-max-size", "99999999999P", "x", "--", "true"],
                ["update", "--cpus", "1e300", "c"], ["update", "--memory", "0", "c"], ["update", "--pids-limit", "9223372036854775807", "c"],
                ["kill", "-s", "1e300", "c"], ["kill", "--signal=-3", "c"], ["kill", "-s", "4294967297", "c"],
                ["kill", "-s", "RTMIN+2147483647", "c"], ["kill", "-s", "SIGRTMAX-2147483647", "c"],
            ]
            for args in cases {
                let r = try await d.tether(args)
                #expect(r.status == 1 && r.err.split(separator: "\n").count == 1 && r.err.hasPrefix("tether: "), "\(args): \(r)")
            }
            #expect(try await d.tether("state", "c").out.contains("\"running\""))
            try await d.killAndDelete("c")
        }
    }

    // MARK: - files that are not what they claim

    @Test("a FIFO where a file is expected (config.json, --log) and a symlinked --log are refused at once; the API never hangs")
    func fifosAndLinks() async throws {
        try await withDaemon { d in
            let bundle = "\(d.dir)/fifo-bundle"
            try Files.makeDirectories("\(bundle)/rootfs")
            try Files.makeFifo("\(bundle)/config.json")
            for i in 0..<3 {
                let start = monotonicNanos()
                let r = try await d.tether("run", "-d", "--bundle", bundle, "f\(i)")
                #expect(r.status == 1 && r.err.contains("a FIFO, not a regular file"), "\(r)")
                #expect(monotonicNanos() - start < 5_000_000_000, "refusing took \((monotonicNanos() - start) / 1_000_000) ms")
            }
            #expect(try await d.tether("version").status == 0)

            try Files.makeFifo("\(d.dir)/log.fifo")
            let fifoLog = try await d.tether("run", "-d", "--log", "\(d.dir)/log.fifo", "l", "--", "true")
            #expect(fifoLog.status == 1 && fifoLog.err.contains("a FIFO, not a regular file"), "\(fifoLog)")

            let target = "\(d.dir)/precious"
            try Files.writeAtomically(target, Array("keep\n".utf8))
            symlink(target, "\(d.dir)/log.link")
            let linkLog = try await d.tether("run", "--rm", "--log", "\(d.dir)/log.link", "l", "--", "echo", "hi")
            #expect(linkLog.status == 1 && linkLog.err.contains("a symbolic link"), "\(linkLog)")
            #expect(try Files.readString(target) == "keep\n")
            #expect(try await d.tether("ls", "-q").out.isEmpty)
        }
    }

    @Test("a regular file and /dev/zero as stdin reach the process")
    func fileStdin() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            let input = "\(d.dir)/input"
            try Files.writeAtomically(input, Array(String(repeating: "0123456789", count: 20_000).utf8))
            try Files.makeFifo("\(d.dir)/out")
            let out = try FD.open("\(d.dir)/out", O_RDWR | O_NONBLOCK)
            _ = try await api.create(CreateTaskRequest(id: "f", args: ["sh", "-c", "wc -c; head -c 1000000 /dev/stdin | wc -c"],
                                                       io: IOView(stdin: input, stdout: "\(d.dir)/out")))
            _ = try await api.start("f")
            #expect(try await api.wait("f").status == 0)
            let lines = try await readLinesAsync(out, count: 2)
            #expect(lines == ["200000", "0"])
            _ = try await api.delete("f")

            _ = try await api.create(CreateTaskRequest(id: "z", args: ["sh", "-c", "head -c 3000000 | wc -c"],
                                                       io: IOView(stdin: "/dev/zero", stdout: "\(d.dir)/out")))
            _ = try await api.start("z")
            #expect(try await api.wait("z").status == 0)
            let zeros = try await readLinesAsync(out, count: 1)
            #expect(zeros == ["3000000"])
            _ = try await api.delete("z")
        }
    }

    // MARK: - a full disk, a runtime killed mid-create

    @Test("a full disk: the error names the file, and each failed create leaves no container, cgroup, bundle or mount")
    func fullDisk() async throws {
        try await withDaemon { d in
            try await d.stop()
            #expect(tether_mount("tmpfs", d.state, "tmpfs", 0, "size=2m,mode=0700") == 0)
            try await d.start()
            let filler = "\(d.state)/filler"
            let cgroup = Layout(root: d.root, state: d.state).cgroupParent + "/default/f73"
            var failures = 0
            // Leave less and less room: each create fails at another step.
            for free in stride(from: 4096, through: 96 * 1024, by: 12 * 1024) {
                unlink(filler)
                try fill(d.state, leaving: free, file: filler)
                let r = try await d.tether("run", "-d", "f73", "--", "sleep", "100")
                if r.status == 0 {
                    unlink(filler)  // room to record the exit and the delete
                    try await d.killAndDelete("f73")
                    continue
                }
                failures += 1
                #expect(r.err.contains("No space left on device") && r.err.contains("/"), "the error names no file: \(r)")
                #expect(try await d.tether("ls", "-q").out.isEmpty)
                #expect(d.containers().isEmpty, "runc kept \(d.containers()) after \(r.err)")
                #expect(Cgroups().directories(of: cgroup).isEmpty, "cgroup left: \(Cgroups().directories(of: cgroup))")
                #expect(!Files.exists(d.bundle("f73")) && d.taskMounts().isEmpty && d.shims().isEmpty)
            }
            #expect(failures > 0, "the disk was never full enough to fail a create")
            unlink(filler)
            // With room again, the same ID works.
            #expect(try await d.tether("run", "--rm", "f73", "--", "true").status == 0)
            try await d.stop()
            Mounts.unmountTree(under: d.state)
            try await d.start()
        }
    }

    @Test("a runtime killed in the middle of create leaves no cgroup, container or process")
    func runtimeKilledMidCreate() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let runc = try #require(Spawn.lookPath("runc"))
        // Runs the real runc, and SIGKILLs it once the container's cgroup exists.
        let wrapper = "\(dir)/killed-runc"
        try Files.writeAtomically(wrapper, Array("""
            #!/bin/sh
            op=; bundle=
            prev=; for a in "$@"; do [ "$a" = create ] && op=create; [ "$prev" = --bundle ] && bundle=$a; prev=$a; done
            [ "$op" = create ] || exec \(runc) "$@"
            cg=$(sed -n 's/.*"cgroupsPath":"\\([^"]*\\)".*/\\1/p' "$bundle/config.json")
            \(runc) "$@" & pid=$!
            while [ ! -d "/sys/fs/cgroup/pids$cg" ] && [ ! -f "/sys/fs/cgroup$cg/cgroup.procs" ] && kill -0 $pid 2>/dev/null; do :; done
            echo "$pid" > "$bundle/../../../killed-runc.pid"
            kill -9 $pid
            exit 137

            """.utf8), mode: 0o755)
        try await withDaemon(["--runtime", wrapper]) { d in
            let cgroup = Layout(root: d.root, state: d.state).cgroupParent + "/default/k"
            let r = try await d.tether("run", "-d", "k", "--", "sleep", "100")
            #expect(r.status == 1, "\(r)")
            #expect(Cgroups().directories(of: cgroup).isEmpty, "cgroup left: \(Cgroups().directories(of: cgroup))")
            #expect(d.containers().isEmpty && d.shims().isEmpty && !Files.exists(d.bundle("k")))
            // The wrapper did kill runc mid-create (else this proves nothing), and runc is gone.
            let killed = try #require(Int32((try? Files.readString("\(d.state)/killed-runc.pid"))?.filter(\.isNumber) ?? ""), "runc was never killed mid-create")
            #expect(kill(killed, 0) != 0)
        }
    }

    // MARK: - a manager killed mid-create

    @Test("tetherd SIGKILLed during 20 parallel creates: after a restart, no orphan shim, no phantom task")
    func killedDuringCreates() async throws {
        try await withDaemon { d in
            for round in 0..<3 {
                let ids = (0..<20).map { "r\(round)c\($0)" }
                let runs = Task {
                    try await withThrowingTaskGroup(of: CLIResult.self) { g in
                        for id in ids { g.addTask { try await d.tether("run", "-d", id, "--", "sleep", "100") } }
                        return try await g.reduce(into: []) { $0.append($1) }
                    }
                }
                // Kill once a few shims run: creates are at every step by then.
                #expect(await eventually(20) { d.shims().count >= 2 + round * 3 })
                try await d.kill9()
                _ = try await runs.value
                try await d.start()

                let listed = try await d.tether("ls").out.split(separator: "\n").dropFirst().map { $0.split(separator: " ") }
                for row in listed {
                    // A task that came back ran or was created; none is a stopped phantom of a failed create.
                    #expect(row.count >= 3 && (row[2] == "running" || row[2] == "created"), "after round \(round): \(row)")
                }
                let alive = Set(listed.map { String($0[0]) })
                let count = alive.count
                #expect(await eventually(10) { d.shims().count == count }, "shims \(d.shims().count), tasks \(count)")
                let containers = Set(d.containers().map { String($0.dropFirst("default/".count)) })
                #expect(containers.isSubset(of: alive), "containers \(containers.sorted())")
                let bundles = Set((try? Files.listDirectory("\(d.state)/tasks/default")) ?? [])
                #expect(bundles == alive, "bundles \(bundles.sorted()) for tasks \(alive.sorted())")
                #expect(d.taskMounts().count == count)
                for id in alive {
                    try await d.killAndDelete(id)
                }
            }
        }
    }

    // MARK: - a stopped shim

    @Test("a stopped shim is slow, not dead: prompt errors for its own calls, ls answers, and its container is never killed")
    func stoppedShim() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "s", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("s"))
            let pid = try #require(Int32(try await AsyncAPI(d).get("s").pid))
            kill(shim, SIGSTOP)
            defer { kill(shim, SIGCONT) }

            var start = monotonicNanos()
            let ls = try await d.tether("ls")
            #expect(ls.status == 0 && ls.out.contains("running"), "\(ls)")
            #expect(monotonicNanos() - start < 1_000_000_000, "ls took \((monotonicNanos() - start) / 1_000_000) ms")
            start = monotonicNanos()
            let state = try await d.tether("state", "s")
            #expect(state.status == 1 && state.err.contains("did not answer"), "\(state)")
            #expect(monotonicNanos() - start < 5_000_000_000)
            let rm = try await d.tether("rm", "s")
            #expect(rm.status == 1 && rm.err.contains("did not answer"), "\(rm)")
            // Another task is not held up by it.
            #expect(try await d.tether("run", "--rm", "other", "--", "true").status == 0)

            // A restarted manager keeps the task, and does not kill it either.
            try await d.kill9()
            try await d.start()
            #expect(try await d.tether("ls").out.contains("running"))
            #expect(kill(pid, 0) == 0 && procStat(shim, field: 3) == "T")

            kill(shim, SIGCONT)
            let after = try await d.tether("state", "s")
            #expect(after.status == 0 && after.out.contains("\"running\"") && !after.out.contains("exitReason\" : \""), "\(after)")
            try await d.killAndDelete("s")
        }
    }

    // MARK: - smaller ones

    @Test("a terminal task with a 76-character ID works (the console socket fits sun_path)")
    func longIDTerminal() async throws {
        try await withDaemon { d in
            let id = String(repeating: "t", count: 76)
            let r = try await d.tether("run", "--rm", "-t", id, "--", "echo", "hi")
            #expect(r.status == 0 && r.out.contains("hi"), "\(r)")
        }
    }

    @Test("a huge body gets 413 and an unknown route 404, both in the error shape")
    func httpErrors() async throws {
        try await withDaemon { d in
            let http = HTTPUnixClient(socketPath: d.address, timeout: 30)
            let missing = try http.send("GET", "/v1/nope")
            #expect(missing.status == 404)
            #expect((try? APIJSON.decoder.decode(ErrorBody.self, from: missing.body))?.error.code == "not_found")

            let big = try await offPool { try rawPost(d.address, "/v1/namespaces/default/tasks", bodySize: 100 << 20) }
            #expect(big.hasPrefix("HTTP/1.1 413"), "\(big.prefix(200))")
            #expect(big.contains(#""code":"too_large""#), "\(big.prefix(400))")
            #expect(try http.send("GET", "/v1/version").status == 200)
        }
    }

    @Test("tether events fails with a line when tetherd dies; the CLI gives up on a stopped tetherd")
    func cliAgainstDeadOrStoppedDaemon() async throws {
        try await withDaemon { d in
            let events = try StartedProgram("\(Prerequisites.binDir)/tether", ["events"], env: ["TETHER_ADDRESS": d.address])
            // An event on its output: the subscription is in place.
            #expect(try await d.tether("run", "--rm", "e", "--", "true").status == 0)
            #expect(try await offPool { events.out.waitFor("/tasks/delete", timeout: 20) }, "no events: \(events.err.text)")
            try await d.kill9()
            let status = try await offPool { events.wait(timeout: 20) }
            #expect(status == 1 && events.err.text.contains("tetherd stopped or died"), "\(status): \(events.err.text)")
            try await d.start()

            kill(d.pid, SIGSTOP)
            let start = monotonicNanos()
            let ls = try await d.tether(["ls"], timeout: 40)
            kill(d.pid, SIGCONT)
            #expect(ls.status == 1 && ls.err.contains("did not answer within 10 s"), "\(ls)")
            #expect(monotonicNanos() - start < 15_000_000_000)
        }
    }

    @Test("a second attach to the same output is refused while the first is attached")
    func twoAttaches() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("create", "a", "--", "sh", "-c", "while :; do echo x; sleep 1; done").status == 0)
            #expect(try await d.tether("start", "a").status == 0)
            let first = Task { try await d.tether(["attach", "a"], timeout: 60) }
            let fifo = "\(d.bundle("a"))/io/init.stdout"
            var st = stat()
            #expect(stat(fifo, &st) == 0)
            #expect(await eventually(10) { ((try? Files.readString("/proc/locks")) ?? "").contains(":\(st.st_ino) ") }, "the first attach took no lock")
            let second = try await d.tether("attach", "a")
            #expect(second.status == 1 && second.err.contains("another client is attached"), "\(second)")
            _ = try await d.tether("kill", "-s", "KILL", "a")
            _ = try await first.value
            _ = try await d.tether("rm", "a")
        }
    }
}

/// Every path at or below `path`, symlinks not followed.
func walk(_ path: String, into out: inout [String]) {
    out.append(path)
    var st = stat()
    guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return }
    for name in (try? Files.listDirectory(path)) ?? [] { walk("\(path)/\(name)", into: &out) }
}

/// Runs `body` on a thread that has become `uid` (and gid, no groups) for good.
func asUser<T: Sendable>(_ uid: uid_t, _ body: @escaping @Sendable () -> T) async throws -> T {
    try await offPool {
        let rc = tether_thread_become(uid, uid)
        guard rc == 0 else { throw SysError("setresuid", errno: -rc) }
        return body()
    }
}

/// Fills the filesystem of `dir` with `file` until `leaving` bytes are free.
func fill(_ dir: String, leaving: Int, file: String) throws {
    var s = statvfs()
    guard statvfs(dir, &s) == 0 else { throw SysError.last("statvfs", dir) }
    let free = Int(s.f_bavail) * Int(s.f_frsize)
    guard free > leaving else { return }
    let fd = try FD.open(file, O_WRONLY | O_CREAT | O_TRUNC)
    let chunk = [UInt8](repeating: 0, count: 4096)
    for _ in 0..<((free - leaving) / 4096) { try? fd.writeAll(chunk) }
}

/// A POST with a body of `bodySize` bytes, written until the server stops
/// reading; returns what the server answered.
func rawPost(_ socket: String, _ path: String, bodySize: Int) throws -> String {
    let fd = try UnixSocket.connect(socket, timeoutMs: 30_000)
    try fd.writeAll(Array("POST \(path) HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: \(bodySize)\r\n\r\n".utf8))
    let chunk = [UInt8](repeating: UInt8(ascii: " "), count: 1 << 16)
    var sent = 0
    while sent < bodySize {
        do { try fd.writeAll(chunk) } catch { break }  // the server answered and closed
        sent += chunk.count
    }
    shutdown(fd.raw, Int32(SHUT_WR))
    return String(decoding: (try? fd.readToEnd(limit: 1 << 20)) ?? [], as: UTF8.self)
}

@Suite("the systemd unit")
struct SystemdUnitTests {
    static let unit = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/systemd/tetherd.service").path

    @Test("stopping or restarting tetherd.service leaves the shims and tasks alone, and /run/tether in place")
    func keepsTasks() throws {
        let text = try Files.readString(Self.unit)
        let settings = Set(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map(String.init))
        for line in ["KillMode=process", "Delegate=yes", "RuntimeDirectory=tether", "RuntimeDirectoryMode=0700",
                     "RuntimeDirectoryPreserve=yes", "StateDirectoryMode=0700", "TasksMax=infinity"] {
            #expect(settings.contains(line), "tetherd.service lacks \(line)")
        }
    }

    static let analyze = Spawn.lookPath("systemd-analyze")

    @Test("systemd-analyze verify accepts it", .enabled(if: analyze != nil || inCI, "systemd-analyze is not installed"))
    func verifies() async throws {
        let analyze = try #require(Self.analyze, "systemd-analyze is missing (Debian's systemd package)")
        // The unit names the installed binary; verify it against the one just built.
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let text = try Files.readString(Self.unit).replacingOccurrences(of: "/usr/local/bin/tetherd", with: "\(Prerequisites.binDir)/tetherd")
        try Files.writeAtomically("\(dir)/tetherd.service", Array(text.utf8), mode: 0o644)
        let r = try await runProgram(analyze, ["verify", "\(dir)/tetherd.service"])
        #expect(r.status == 0 && r.err.isEmpty && r.out.isEmpty, "\(r)")
    }
}
