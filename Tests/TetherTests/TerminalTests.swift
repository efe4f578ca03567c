#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherRuntime
import TetherSys

@Suite("terminals", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct TerminalTests {
    @Test("a terminal task gets a pty; ResizePty to 40 rows by 100 columns makes stty size print 40 100")
    func resizeThroughAPI() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            let t = try await api.create(CreateTaskRequest(id: "p", args: ["sh"], fifos: FifoRequest(stdin: true, terminal: true)))
            #expect(t.io.terminal && t.io.stderr.isEmpty)
            let out = try FD.open(t.io.stdout, O_RDONLY | O_NONBLOCK)
            try await api.resize("p", width: 100, height: 40)
            _ = try await api.start("p")
            let input = try FD.open(t.io.stdin, O_WRONLY)
            try input.writeAll(Array("tty; stty size; exit 3\n".utf8))
            #expect(try await api.wait("p").status == 3)
            try out.setNonBlocking(false)
            let text = try await readAll(out)
            #expect(text.contains("/dev/pts/0\r\n"), "\(text.debugDescription)")
            #expect(text.contains("40 100\r\n"), "\(text.debugDescription)")
            _ = try await api.delete("p")
        }
    }

    @Test("an exec gets a terminal of its own; ResizePty without a terminal is a clear error")
    func execTerminalAndErrors() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            _ = try await api.create(CreateTaskRequest(id: "t", args: ["sleep", "100"]))
            _ = try await api.start("t")
            let noTTY = await #expect(throws: RuntimeError.self) { try await api.resize("t", width: 80, height: 24) }
            #expect(noTTY?.message == "the task's init has no terminal: ResizePty needs a process started with terminal: true")
            let e = try await api.exec("t", ExecRequest(execID: "e", args: ["sh", "-c", "stty size; tty"], fifos: FifoRequest(terminal: true)))
            let out = try FD.open(e.io.stdout, O_RDONLY | O_NONBLOCK)
            try await api.resize("t", execID: "e", width: 77, height: 11)
            _ = try await api.startExec("t", "e")
            #expect(try await api.waitExec("t", "e").status == 0)
            try out.setNonBlocking(false)
            let text = try await readAll(out)
            #expect(text.hasPrefix("11 77\r\n/dev/pts/"), "\(text.debugDescription)")
            _ = try await api.deleteExec("t", "e")
            // Without a resize first: still a pty, and its output whole.
            let e2 = try await api.exec("t", ExecRequest(execID: "e2", args: ["sh", "-c", "tty; echo done-$((6*7))"], fifos: FifoRequest(terminal: true)))
            let out2 = try FD.open(e2.io.stdout, O_RDONLY | O_NONBLOCK)
            _ = try await api.startExec("t", "e2")
            #expect(try await api.waitExec("t", "e2").status == 0)
            try out2.setNonBlocking(false)
            let text2 = try await readAll(out2)
            #expect(text2.hasPrefix("/dev/pts/") && text2.hasSuffix("done-42\r\n"), "\(text2.debugDescription)")
            _ = try await api.deleteExec("t", "e2")
            _ = try await d.tether("kill", "-s", "KILL", "t")
            _ = try await d.tether("wait", "t")
            _ = try await d.tether("delete", "t")
        }
    }

    @Test("run -t in a real terminal (tmux): raw mode, window size and SIGWINCH, restored on exit; ctrl-p ctrl-q detaches")
    func cliInTmux() async throws {
        let tmux = try #require(Spawn.lookPath("tmux"), "tmux is needed (scripts/setup installs it)")
        try await withDaemon { d in
            let session = Tmux(tmux: tmux, socket: "\(d.dir)/tmux.sock")
            do {
                try await tmuxSession(d, session)
            } catch {
                await session.kill()
                throw error
            }
            await session.kill()
        }
    }

    func tmuxSession(_ d: TestDaemon, _ t: Tmux) async throws {
        let tether = "\(Prerequisites.binDir)/tether"
        try await t.run("new-session", "-d", "-s", "s", "-x", "100", "-y", "40", "env", "TETHER_ADDRESS=\(d.address)", "PS1=$ ", "bash", "--norc")
        try await t.keys("stty -g > \(d.dir)/before; \(tether) run --rm -t tt -- sh; echo \"status $?\"; stty -g > \(d.dir)/after; echo DONE", "Enter")
        try await t.expectScreen("/ #")
        try await t.keys("tty; stty size", "Enter")
        try await t.expectScreen("40 100")
        try await t.expectScreen("/dev/pts/")
        try await t.run("resize-window", "-t", "s", "-x", "120", "-y", "30")
        // SIGWINCH reaches the CLI, which resizes through tetherd: ask until it has landed.
        try await t.expectScreen("30 120", retry: { try await t.keys("clear; stty size", "Enter") })
        try await t.keys("exit 3", "Enter")
        try await t.expectScreen("DONE")
        try await t.expectScreen("status 3")
        #expect(try Files.readString("\(d.dir)/before") == (try Files.readString("\(d.dir)/after")), "the terminal was not restored")

        // Detach with ctrl-p ctrl-q: the task keeps running; attach again.
        // A marker only the new container prints (the first session's "/ #" may still be on screen).
        try await t.keys("clear; \(tether) run -t dt -- sh -c 'echo in-dt-$((6*7)); exec sh'", "Enter")
        try await t.expectScreen("in-dt-42")
        try await t.keys("C-p", "C-q")
        try await t.expectScreen("detached from dt")
        #expect(try await d.tether("state", "dt").out.contains("\"running\""))
        try await t.keys("clear; \(tether) attach dt", "Enter")
        try await t.keys("echo back-$((40+2))", "Enter")
        try await t.expectScreen("back-42")
        // A ctrl-p not followed by ctrl-q reaches the container, even read on its own.
        try await t.keys("cat -v", "Enter")
        try await t.keys("C-p")
        try await t.keys("x", "Enter")
        try await t.expectScreen("^Px")
        try await t.keys("C-d")
        try await t.keys("exit 0", "Enter")
        #expect(try await d.tether("wait", "dt").status == 0)
        #expect(try await d.tether("delete", "dt").status == 0)
    }
}

/// A tmux server of the test's own, driven like a user at a terminal.
struct Tmux {
    let tmux: String
    let socket: String

    /// The tmux server outlives the client that starts it and keeps the
    /// client's stdio: so tmux runs with its output sent to /dev/null.
    func run(_ args: String...) async throws {
        _ = try await runProgram("/bin/sh", ["-c", "exec \"$0\" \"$@\" >/dev/null 2>&1", tmux, "-S", socket] + args)
    }
    func keys(_ keys: String...) async throws { _ = try await runProgram(tmux, ["-S", socket, "send-keys", "-t", "s"] + keys) }
    func screen() async throws -> String { try await runProgram(tmux, ["-S", socket, "capture-pane", "-p", "-t", "s"]).out }

    /// Waits (5 s at most) for `text` on the screen; a failure shows the screen.
    /// `retry` runs every 100 ms meanwhile, for a question to ask again.
    func expectScreen(_ text: String, retry: (() async throws -> Void)? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        var last = ""
        for i in 0..<500 {
            if let retry, i % 10 == 0 { try await retry() }
            last = try await screen()
            if last.contains(text) { return }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        Issue.record("\"\(text)\" never appeared on the screen:\n\(last)", sourceLocation: sourceLocation)
    }

    func kill() async {
        _ = try? await runProgram(tmux, ["-S", socket, "kill-server"])
        unlink(socket)
    }
}
