#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherSys

/// Misuse by an operator: a second daemon on the same directories, a file
/// where the exit pipe belongs (issue 16).
@Suite("robustness", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct RobustnessTests {
    @Test("a second tetherd on the same state or root directory refuses with one line; the first loses no exit")
    func oneDaemonPerDirectory() async throws {
        try await withDaemon { d in
            let tetherd = "\(Prerequisites.binDir)/tetherd"
            let sameState = try await runProgram(tetherd, ["--root", "\(d.dir)/root2", "--state", d.state, "--address", "\(d.dir)/second.sock"], timeout: 20)
            #expect(sameState.status == 1, "\(sameState)")
            #expect(sameState.err.contains("another tetherd (pid \(d.pid)) is using the state directory \(d.state): stop it first, or give this one another --state"), "\(sameState)")
            let sameRoot = try await runProgram(tetherd, ["--root", d.root, "--state", "\(d.dir)/state2", "--address", "\(d.dir)/third.sock"], timeout: 20)
            #expect(sameRoot.status == 1 && sameRoot.err.contains("is using the root directory \(d.root)"), "\(sameRoot)")
            #expect(!Files.exists("\(d.dir)/second.sock") && !Files.exists("\(d.dir)/third.sock"))
            try? Files.removeTree("\(d.dir)/state2")
            // The first daemon still hears every exit.
            let r = try await d.tether("run", "--rm", "one", "--", "sh", "-c", "exit 3")
            #expect(r.status == 3, "\(r)")
        }
    }

    @Test("a task whose state directory was removed while it ran: the next tetherd stops its shim and container and lists it stopped, with why")
    func stateDirectoryRemoved() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "o1", "--", "sleep", "1000").status == 0)
            #expect(try await d.tether("run", "-d", "o2", "--", "sleep", "1000").status == 0)
            let shim = try #require(d.shimPid("o1"))
            try await d.stop()
            // As an operator's rm -rf would, once the rootfs mount let it.
            Mounts.unmountTree(under: d.bundle("o1"))
            try Files.removeTree(d.bundle("o1"))
            // Another host user's process dressed as a shim of a task that has no directory:
            // it is not root's, so tetherd neither stops it nor lists a task for it.
            let fakeDir = try makeTempDir()
            defer { try? Files.removeTree(fakeDir) }
            chmod(fakeDir, 0o755)
            #expect(try await runProgram("/bin/cp", ["/bin/bash", "\(fakeDir)/tether-shim"]).status == 0)
            let fake = try StartedProgram("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "\(fakeDir)/tether-shim",
                                                             "-c", "sleep 1000; true", "--namespace", "default", "--id", "fake",
                                                             "--bundle", d.bundle("fake")])
            defer { kill(fake.pid, SIGKILL); _ = fake.wait(timeout: 10) }
            #expect(await eventually(10) { Proc.arguments(fake.pid)?.first?.hasSuffix("tether-shim") == true })
            try await d.start()
            #expect(d.logText.contains("runs without its state directory; stopping it"), "\(d.logText)")
            #expect(await eventually(10) { procStat(shim, field: 3).map { $0 == "Z" } ?? true }, "shim \(shim) still runs")
            #expect(!d.containers().contains("default/o1"), "\(d.containers())")
            let st = try await d.tether("state", "o1")
            #expect(st.out.contains("\"stopped\"") && st.out.contains("was removed while it ran"), "\(st)")
            #expect(try await d.tether("rm", "o1").status == 0)
            #expect(try await d.tether("state", "fake").status != 0)
            #expect(kill(fake.pid, 0) == 0 && procStat(fake.pid, field: 3) != "Z", "tetherd stopped another user's process")
            // The task next to it is untouched.
            #expect(try await d.tether("state", "o2").out.contains("\"running\""))
            try await d.killAndDelete("o2")
        }
    }

    @Test("a regular file where exits.fifo belongs is replaced with a FIFO at start; exits arrive")
    func exitFifoNotAFifo() async throws {
        try await withDaemon { d in
            try await d.stop()
            let fifo = "\(d.state)/exits.fifo"
            unlink(fifo)
            try Files.writeAtomically(fifo, Array("{\"not\": \"a record\"}\n".utf8))
            try await d.start()
            #expect(d.logText.contains("\(fifo) was not a FIFO"), "\(d.logText)")
            var st = stat()
            #expect(lstat(fifo, &st) == 0 && st.st_mode & S_IFMT == S_IFIFO)
            let r = try await d.tether("run", "--rm", "f1", "--", "sh", "-c", "exit 4")
            #expect(r.status == 4, "\(r)")
            let w = try await d.tether("run", "-d", "f2", "--", "sh", "-c", "exit 5")
            #expect(w.status == 0, "\(w)")
            let waited = try await d.tether("wait", "f2")
            #expect(waited.status == 5 && waited.out == "5\n", "\(waited)")
            _ = try await d.tether("delete", "f2")
        }
    }
}

/// Stopping, slow clients, file limits, complete logs and pipelines (issue 16, findings 2, 3, 4, 8 and 9).
@Suite("robustness: clients", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct ClientRobustnessTests {
    @Test("SIGTERM ends a pending wait and a foreground run with a clear error and stops tetherd promptly; files it no longer owns stay")
    func promptStop() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "w1", "--", "sleep", "1000").status == 0)
            let env = ["TETHER_ADDRESS": d.address]
            let tether = "\(Prerequisites.binDir)/tether"
            let waiter = try StartedProgram(tether, ["wait", "w1"], env: env)
            #expect(try await d.waitForLog("waiting for w1", timeout: 20))
            let foreground = try StartedProgram(tether, ["run", "w2", "--", "sleep", "1000"], env: env)
            #expect(try await d.waitForLog("waiting for w2", timeout: 20))
            // A successor's socket and pid file, as if another tetherd had taken over the paths.
            rename(d.address, "\(d.dir)/old.sock")
            try Files.writeAtomically(d.address, Array("not ours".utf8))
            try Files.writeAtomically("\(d.state)/tetherd.pid", Array("4194305\n".utf8))
            let began = Date()
            try await d.stop()
            let took = Date().timeIntervalSince(began)
            #expect(took < 8, "tetherd took \(took) s to stop with a wait pending")
            #expect(try await offPool { waiter.wait(timeout: 10) } == 1)
            #expect(waiter.err.text.contains("tetherd is stopping: wait again once it is back"), "\(waiter.err.text)")
            #expect(try await offPool { foreground.wait(timeout: 10) } == 1)
            #expect(foreground.err.text.contains("tetherd is stopping"), "\(foreground.err.text)")
            #expect((try? Files.readString(d.address)) == "not ours")
            #expect((try? Files.readString("\(d.state)/tetherd.pid")) == "4194305\n")
            unlink(d.address)
            unlink("\(d.dir)/old.sock")
            try await d.start()
            // The tasks ran on; their exits arrive at the next tetherd.
            #expect(try await d.tether("state", "w1").out.contains("\"running\""))
            try await d.killAndDelete("w1")
            try await d.killAndDelete("w2")
        }
    }

    @Test("an event subscriber that stops reading is dropped after --event-buffer events with a final line; the others and the API go on")
    func slowSubscribers() async throws {
        try await withDaemon(["--event-buffer", "16"]) { d in
            #expect(try await d.tether("run", "-d", "ev", "--", "sleep", "1000").status == 0)
            let request = Array("GET /v1/events?task=ev HTTP/1.1\r\nHost: tetherd\r\nConnection: close\r\n\r\n".utf8)
            let slow = try UnixSocket.connect(d.address), silent = try UnixSocket.connect(d.address)
            defer { slow.close(); silent.close() }
            try slow.writeAll(request)
            try silent.writeAll(request)
            let reader = try StartedProgram("\(Prerequisites.binDir)/tether", ["events", "--task", "ev", "--topic", "/tasks/exit"],
                                            env: ["TETHER_ADDRESS": d.address])
            defer { kill(reader.pid, SIGKILL); _ = reader.wait(timeout: 10) }
            // Execs until both stalled subscribers are dropped (each exec is three events).
            var execs = 0
            while d.logText.components(separatedBy: "fell more than 16 events behind").count < 3 {
                try #require(execs < 900, "no subscriber was dropped after \(execs) execs")
                try await withThrowingTaskGroup(of: Void.self) { g in
                    for _ in 0..<6 {
                        g.addTask {
                            let r = try await d.tether("exec", "ev", "--", "true")
                            #expect(r.status == 0, "\(r)")
                        }
                    }
                    try await g.waitForAll()
                }
                execs += 6
            }
            // The API still answers at once.
            let began = Date()
            #expect(try await d.tether("state", "ev").status == 0)
            #expect(Date().timeIntervalSince(began) < 2)
            // The slow one reads now: what was queued, the final line, the end.
            let text = try await offPool { () -> String in
                var all: [UInt8] = []
                while true {
                    let chunk = try slow.read(upTo: 65536)
                    if chunk.isEmpty { return String(decoding: all, as: UTF8.self) }
                    all += chunk
                }
            }
            #expect(text.contains("\"unavailable\"") && text.contains("this subscriber fell more than 16 events behind and was disconnected"), "\(text.suffix(400))")
            // The silent one is closed by tetherd after the grace period.
            #expect(try await d.waitForLog("closed the connection of an event subscriber", timeout: 20))
            // The subscriber that kept up saw every exit.
            let all = await eventually(20) { reader.out.text.components(separatedBy: "\n").filter { $0.contains("/tasks/exit") }.count == execs }
            #expect(all, "\(execs) execs, exits seen: \(reader.out.text.components(separatedBy: "\n").filter { $0.contains("/tasks/exit") }.count)")
            try await d.killAndDelete("ev")
        }
    }

    @Test("tetherd raises its soft open-file limit to the hard one; out of fds, a create gets 503 with what to do, nothing spins, and the API goes on")
    func fileLimit() async throws {
        let prlimit = try #require(Spawn.lookPath("prlimit"), "prlimit (util-linux) is needed")
        try await withDaemon(wrapper: [prlimit, "--nofile=64:4096", "--"]) { d in
            let limits = try Files.readString("/proc/\(d.pid)/limits")
            #expect(limits.contains("Max open files            4096                 4096"), "\(limits)")
        }
        // Hard 40: a few tasks' worth above what tetherd holds at rest (about 22).
        try await withDaemon(wrapper: [prlimit, "--nofile=40:40", "--"]) { d in
            var created: [String] = []
            var refusal: CLIResult?
            for i in 0..<12 {
                // A bundle without rlimits: runc could not give the container 1024 under a hard limit of 40.
                let bundle = try makeBundle(in: d.dir, id: "f\(i)", args: ["sleep", "100"]) { $0.process?.rlimits = nil }
                let r = try await d.tether("run", "-d", "--bundle", bundle, "f\(i)")
                if r.status != 0 { refusal = r; break }
                created.append("f\(i)")
            }
            let r = try #require(refusal, "12 tasks under a limit of 40 fds: none was refused")
            #expect(r.err.contains("tetherd has run out of file descriptors") && r.err.contains("LimitNOFILE"), "\(r)")
            #expect(!created.isEmpty)
            // Idle, it does not spin: under 0.2 s of CPU in 2 s.
            func cpu() -> Double {
                let f = (procStat(d.pid, field: 14).flatMap(Double.init) ?? 0) + (procStat(d.pid, field: 15).flatMap(Double.init) ?? 0)
                return f / Double(sysconf(Int32(_SC_CLK_TCK)))
            }
            let before = cpu()
            try await offPool { usleep(2_000_000) }
            #expect(cpu() - before < 0.2)
            // The API answers what it can.
            let ls = try await d.tether("ls", "-q")
            #expect(ls.status == 0 && ls.out.split(separator: "\n").count == created.count, "\(ls)")
            for id in created { try await d.killAndDelete(id) }
            #expect(try await d.tether("ls", "-q").out == "")
        }
    }

    @Test("wait and /tasks/exit come only once the task's last output is in its log")
    func logCompleteBeforeExit() async throws {
        try await withDaemon { d in
            let log = "\(d.dir)/out.log"
            for round in 0..<3 {
                unlink(log)
                let run = try await d.tether("run", "-d", "--log", log, "lg", "--", "sh", "-c", "seq 1 300000; echo the-end-\(round)")
                #expect(run.status == 0, "\(run)")
                let w = try await d.tether("wait", "lg")
                #expect(w.status == 0, "\(w)")
                let text = (try? Files.readString(log)) ?? ""
                #expect(text.contains(" stdout F 300000\n") && text.hasSuffix(" stdout F the-end-\(round)\n"),
                        "round \(round): the log ends with \(text.suffix(120).debugDescription)")
                #expect(try await d.tether("delete", "lg").status == 0)
            }
        }
    }

    @Test("tether run … | head: the CLI ends at once; with --rm the task is killed and deleted, without it stays, detached, with a note")
    func pipeReaderGone() async throws {
        try await withDaemon { d in
            let tether = "\(Prerequisites.binDir)/tether"
            let env = ["TETHER_ADDRESS": d.address]
            let rm = try await runProgram("/bin/sh", ["-c", "'\(tether)' run --rm p1 -- yes | head -c 10"], env: env, timeout: 30)
            #expect(rm.status == 0 && rm.out == "y\ny\ny\ny\ny\n", "\(rm)")
            #expect(try await d.tether("ls", "-q").out == "")
            let kept = try await runProgram("/bin/sh", ["-c", "'\(tether)' run p2 -- yes | head -c 4"], env: env, timeout: 30)
            #expect(kept.out == "y\ny\n" && kept.err.contains("p2 keeps running, detached"), "\(kept)")
            #expect(try await d.tether("state", "p2").out.contains("\"running\""))
            try await d.killAndDelete("p2")
        }
    }
}
