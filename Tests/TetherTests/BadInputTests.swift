#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherSys

/// Every mistake gives one line that says what is wrong, a non-zero exit,
/// and leaves nothing behind: no task, shim, bundle, mount or container.
@Suite("bad input", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(3)))
struct BadInputTests {
    /// Runs `tether ARGS`, expects failure with one stderr line containing
    /// `phrase`, and checks that the daemon holds exactly the tasks in `remaining`.
    func expectRefused(_ d: TestDaemon, _ args: [String], _ phrase: String, remaining: [String] = [],
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let r = try await runProgram("\(Prerequisites.binDir)/tether", args, env: ["TETHER_ADDRESS": d.address])
        #expect(r.status != 0, "\(args): \(r)", sourceLocation: sourceLocation)
        #expect(r.out.isEmpty, "\(args): \(r)", sourceLocation: sourceLocation)
        let lines = r.err.split(separator: "\n")
        #expect(lines.count == 1, "\(args) should print one line: \(r)", sourceLocation: sourceLocation)
        #expect(r.err.contains(phrase), "\(args): \(r)", sourceLocation: sourceLocation)
        let ls = try await d.tether("ls", "-q").out.split(separator: "\n").map(String.init)
        #expect(ls == remaining, "after \(args)", sourceLocation: sourceLocation)
        #expect(d.shims().count == remaining.count, "after \(args)", sourceLocation: sourceLocation)
        let bundles = (try? Files.listDirectory("\(d.state)/tasks/default")) ?? []
        #expect(bundles == remaining, "bundles after \(args)", sourceLocation: sourceLocation)
        #expect(d.taskMounts().count == remaining.count, "mounts after \(args)", sourceLocation: sourceLocation)
    }

    @Test("no daemon, unknown ID, invalid ID, missing rootfs, broken spec, failing command, bad signal")
    func refusals() async throws {
        try await withDaemon { d in
            try await expectRefused(d, ["--address", "\(d.dir)/nobody.sock", "ls"], "cannot reach tetherd at \(d.dir)/nobody.sock")
            try await expectRefused(d, ["state", "nope"], "task \"nope\" not found in namespace \"default\"")
            try await expectRefused(d, ["delete", "nope"], "not found")
            try await expectRefused(d, ["run", "-d", "bad/id", "--", "true"], "invalid task ID \"bad/id\"")
            try await expectRefused(d, ["run", "-d", String(repeating: "x", count: 77), "--", "true"], "the limit is 76")
            try await expectRefused(d, ["-n", "../etc", "ls"], "invalid namespace \"../etc\"")
            try await expectRefused(d, ["run", "-d", "--rootfs", "/nonexistent/rootfs", "r", "--", "true"],
                                    "rootfs /nonexistent/rootfs does not exist")

            let broken = "\(d.dir)/broken"
            try Files.makeDirectories(broken)
            try Files.writeAtomically("\(broken)/config.json", Array("{\"ociVersion\": oops".utf8))
            try await expectRefused(d, ["run", "-d", "--bundle", broken, "b"], "config.json is not valid JSON")
            try await expectRefused(d, ["run", "-d", "--bundle", "\(d.dir)/nobundle", "b"], "has no readable config.json")

            try await expectRefused(d, ["run", "-d", "x", "--", "/no/such/program"], "/no/such/program")
            try await expectRefused(d, ["kill", "-s", "99", "x"], "signal 99 is out of range")
            try await expectRefused(d, ["kill", "-s", "NOPE", "x"], "unknown signal \"NOPE\"")
        }
    }

    @Test("a duplicate ID is refused and the running task is untouched")
    func duplicate() async throws {
        try await withDaemon { d in
            #expect(try await d.tether("run", "-d", "dup", "--", "sleep", "100").status == 0)
            let shim = d.shimPid("dup")
            try await expectRefused(d, ["run", "-d", "dup", "--", "true"], "task \"dup\" already exists in namespace \"default\"",
                                    remaining: ["dup"])
            #expect(d.shimPid("dup") == shim)
            #expect(try await d.tether("state", "dup").out.contains("\"running\""))
            _ = try await d.tether("kill", "-s", "KILL", "dup")
            _ = try await d.tether("wait", "dup")
            #expect(try await d.tether("delete", "dup").status == 0)
        }
    }

    @Test("a missing runtime binary is named")
    func missingRuntime() async throws {
        try await withDaemon(["--runtime", "/nonexistent/runc"]) { d in
            try await expectRefused(d, ["run", "-d", "m", "--", "true"], "OCI runtime \"/nonexistent/runc\" not found")
        }
    }

    @Test("a runtime that fails gives its own error, and nothing is lost or left")
    func deadRuntime() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        // A runc stand-in that fails create the way runc does: an error line in its --log file.
        let fake = "\(dir)/fake-runc"
        try Files.writeAtomically(fake, Array("""
            #!/bin/sh
            log=; while [ $# -gt 0 ]; do case "$1" in --log) log=$2; shift;; create|start|kill) op=$1;; esac; shift; done
            [ "$op" = create ] || exit 0
            echo '{"level":"error","msg":"fake runtime: broken on purpose","time":"2026-01-01T00:00:00Z"}' >>"$log"
            exit 1

            """.utf8), mode: 0o755)
        try await withDaemon(["--runtime", fake]) { d in
            try await expectRefused(d, ["run", "-d", "f", "--", "true"], "fake-runc create failed: fake runtime: broken on purpose")
        }
    }
}
