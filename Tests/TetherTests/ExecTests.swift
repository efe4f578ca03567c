#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherManager
import TetherRuntime
import TetherSys

@Suite("exec", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct ExecTests {
    @Test("an exec's output and exit status are the CLI's; two execs run at once; their pids are reaped")
    func execBasics() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let shim = try #require(d.shimPid("t"))
            let r = try await d.tether("exec", "t", "--", "sh", "-c", "echo x; exit 5")
            #expect(r.status == 5 && r.out == "x\n", "\(r)")

            // Two at once: each waits for the other's file, so they must overlap.
            async let a = d.tether("exec", "--exec-id", "a", "t", "--", "sh", "-c", "touch /a; until [ -e /b ]; do sleep 0.01; done; echo A")
            async let b = d.tether("exec", "--exec-id", "b", "t", "--", "sh", "-c", "touch /b; until [ -e /a ]; do sleep 0.01; done; echo B")
            let (ra, rb) = try await (a, b)
            #expect(ra.out == "A\n" && ra.status == 0, "\(ra)")
            #expect(rb.out == "B\n" && rb.status == 0, "\(rb)")
            #expect(await eventually { zombieChildren(of: shim).isEmpty })

            // An exec's environment and directory come from the task's spec, with overrides.
            let env = try await d.tether("exec", "--env", "X=1", "--cwd", "/tmp", "t", "--", "sh", "-c", "echo $X $PATH; pwd")
            #expect(env.out == "1 \(SpecBuilder.defaultPath.dropFirst(5))\n/tmp\n", "\(env)")

            _ = try await d.tether("kill", "-s", "KILL", "t")
            #expect(try await d.tether("wait", "t").status == 137)
            #expect(try await d.tether("delete", "t").status == 0)
        }
    }

    @Test("exec -d follows run -d: no FIFOs, output discarded, so a chatty detached exec runs to its end")
    func detachedExecDiscardsOutput() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            // 8 MiB of output, four times what FIFOs and pipes hold unread.
            #expect(try await d.tether("exec", "-d", "--exec-id", "loud", "t", "--", "sh", "-c", "head -c 8388608 /dev/zero; exit 4").status == 0)
            let view = try await AsyncAPI(d).getExec("t", "loud")
            #expect(view.io.stdout.isEmpty && view.io.stderr.isEmpty && view.io.stdin.isEmpty, "\(view.io)")
            #expect(try await AsyncAPI(d).waitExec("t", "loud").status == 4)
            #expect(!Files.exists("\(d.bundle("t"))/io/exec-loud.stdout"))
            try await d.killAndDelete("t")
        }
    }

    @Test("exited execs are kept up to 16 per task: older ones lose their record, FIFOs and ID; every exit is still published")
    func exitedExecsBounded() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            let exits = try StartedProgram("\(Prerequisites.binDir)/tether", ["events", "--task", "t", "--topic", "/tasks/exit"],
                                           env: ["TETHER_ADDRESS": d.address])
            defer { kill(exits.pid, SIGKILL); _ = exits.wait(timeout: 10) }
            // With -i the execs have FIFOs, as a health check run with exec -d -i would.
            for i in 0..<24 {
                let r = try await d.tether("exec", "-d", "-i", "--exec-id", "e\(i)", "t", "--", "true")
                #expect(r.status == 0, "\(r)")
                #expect(try await AsyncAPI(d).waitExec("t", "e\(i)").status == 0)
            }
            func recorded() -> [String] {
                guard let data = try? Files.read("\(d.bundle("t"))/task.json"),
                      let json = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any] else { return [] }
                return ((json["execs"] as? [String: Any]) ?? [:]).keys.sorted()
            }
            #expect(await eventually(10) { recorded().count == 16 }, "\(recorded())")
            #expect(Set(recorded()) == Set((8..<24).map { "e\($0)" }), "\(recorded())")
            let fifos = (try? Files.listDirectory("\(d.bundle("t"))/io")) ?? []
            #expect(!fifos.contains { $0.hasPrefix("exec-e0.") } && fifos.contains { $0.hasPrefix("exec-e23.") }, "\(fifos)")
            await #expect(throws: (any Error).self) { _ = try await AsyncAPI(d).getExec("t", "e0") }
            // The old IDs are free again.
            #expect(try await d.tether("exec", "--exec-id", "e0", "t", "--", "true").status == 0)
            #expect(await eventually(10) { exits.out.text.components(separatedBy: "/tasks/exit").count - 1 == 25 }, "\(exits.out.text)")
            try await d.killAndDelete("t")
        }
    }

    @Test("an exec's exit carries its exec ID; a duplicate exec ID and an exec into a stopped task are clear errors")
    func execIdentity() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "t", "--", "sleep", "100").status == 0)
            #expect(try await d.tether("exec", "-d", "--exec-id", "e1", "t", "--", "sh", "-c", "exit 9").out == "e1\n")
            let api = AsyncAPI(d)
            #expect(try await api.waitExec("t", "e1").status == 9)
            let record = try TaskRecord.load("\(d.bundle("t"))/task.json")
            #expect(record.execs["e1"]?.exit?.status == 9, "the exit reached the manager under its exec ID")
            #expect(d.logText.contains("exec=e1 id=t namespace=default pid=\(record.execs["e1"]?.pid ?? 0)"))

            let dup = try await d.tether("exec", "-d", "--exec-id", "e1", "t", "--", "true")
            #expect(dup.status != 0 && dup.err == "tether: exec ID \"e1\" is already in use in task \"t\"\n", "\(dup)")
            let bad = try await d.tether("exec", "--exec-id", "../x", "t", "--", "true")
            #expect(bad.status != 0 && bad.err.contains("invalid exec ID"), "\(bad)")
            #expect(try await api.deleteExec("t", "e1").status == 9)

            _ = try await d.tether("kill", "-s", "KILL", "t")
            _ = try await d.tether("wait", "t")
            let late = try await d.tether("exec", "t", "--", "true")
            #expect(late.status != 0 && late.err.contains("has already exited"), "\(late)")
            #expect(try await d.tether("delete", "t").status == 0)
        }
    }

    @Test("kill of an exec signals only it; kill --all signals every process")
    func killScopes() async throws {
        try await withDaemon { (d) async throws -> Void in
            let script = "trap 'exit 42' TERM; while true; do sleep 0.05; done"
            #expect(try await d.tether("run", "-d", "t", "--", "sh", "-c", script).status == 0)
            #expect(try await d.tether("exec", "-d", "--exec-id", "e", "t", "--", "sleep", "100").status == 0)
            let api = AsyncAPI(d)
            // TERM: an init wrongly signalled too would exit 42 (its trap), and the last wait would say so.
            #expect(try await d.tether("kill", "-s", "TERM", "--exec-id", "e", "t").status == 0)
            #expect(try await api.waitExec("t", "e").status == 143)
            let state = try await d.tether("state", "t")
            #expect(state.out.contains("\"running\""), "the init was not touched: \(state)\n\(d.logText.split(separator: "\n").filter { !$0.contains("debug") }.joined(separator: "\n"))\n\((try? Files.readString("\(d.bundle("t"))/shim.log")) ?? "")")

            let f = try await d.tether("exec", "-d", "--exec-id", "f", "t", "--", "sleep", "100")
            #expect(f.status == 0, "\(f)\n\(d.logText.split(separator: "\n").filter { !$0.contains("debug") }.joined(separator: "\n"))\n\((try? Files.readString("\(d.bundle("t"))/shim.log")) ?? "")\n\((try? Files.readString("\(d.bundle("t"))/task.json")) ?? "")")
            #expect(try await d.tether("kill", "--all", "-s", "KILL", "t").status == 0)
            #expect(try await d.tether("wait", "t").status == 137)
            #expect(try await api.waitExec("t", "f").status == 137)
            #expect(try await d.tether("delete", "t").status == 0)
        }
    }

    @Test("an exec that dies before its init is reported before it, even when both are reaped together")
    func exitOrder() async throws {
        try await withDaemon { d in
            // No pid namespace: a namespace's init cannot turn zombie while a zombie
            // of its namespace waits to be reaped, so only here can both be dead at once.
            let bundle = try makeBundle(in: d.dir, id: "t", args: ["sleep", "100"], edit: hostPidNamespace)
            #expect(try await d.tether("run", "-d", "--bundle", bundle, "t").status == 0)
            #expect(try await d.tether("exec", "-d", "--exec-id", "e", "t", "--", "sleep", "100").status == 0)
            let api = AsyncAPI(d)
            let execPid = Int32(try await api.getExec("t", "e").pid)
            let initPid = Int32(try await api.get("t").pid)
            let shim = try #require(d.shimPid("t"))
            // Freeze the shim, kill the exec, then the init: the shim's reaper
            // then finds both dead in one pass, and must still report the exec first.
            kill(shim, SIGSTOP)
            // Every thread of the shim must really be stopped before anything dies.
            #expect(await eventually { allThreadsStopped(shim) })
            kill(execPid, SIGKILL)
            #expect(await eventually { procStat(execPid, field: 3) == "Z" })
            kill(initPid, SIGKILL)
            #expect(await eventually { procStat(initPid, field: 3) == "Z" })
            kill(shim, SIGCONT)
            #expect(try await d.tether("wait", "t").status == 137)
            #expect(try await api.waitExec("t", "e").status == 137)
            let lines = d.logText.split(separator: "\n").filter { $0.contains("process exited") }
            let execLine = try #require(lines.firstIndex { $0.contains("exec=e ") })
            let initLine = try #require(lines.firstIndex { $0.contains("exec= ") })
            #expect(execLine < initLine, "\(lines)")
            #expect(try await d.tether("delete", "t").status == 0)
        }
    }
}

/// Are all threads of `pid` in the stopped state (T)?
func allThreadsStopped(_ pid: Int32) -> Bool {
    let tids = ((try? Files.listDirectory("/proc/\(pid)/task")) ?? []).compactMap { Int32($0) }
    return !tids.isEmpty && tids.allSatisfy { tid in
        guard let s = try? Files.readString("/proc/\(pid)/task/\(tid)/stat"), let close = s.lastIndex(of: ")") else { return false }
        return s[s.index(close, offsetBy: 2)] == "T"
    }
}
