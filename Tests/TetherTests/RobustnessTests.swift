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
