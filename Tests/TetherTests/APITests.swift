#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherSys

/// docs/api.md's examples, with curl against a real tetherd.
@Suite("HTTP API with curl", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(2)))
struct APITests {
    func curl(_ d: TestDaemon, _ args: String...) async throws -> CLIResult {
        let curl = try #require(Spawn.lookPath("curl"), "curl is needed (scripts/setup installs it)")
        return try await runProgram(curl, ["-sS", "--unix-socket", d.address, "-w", "\n%{http_code}"] + args)
    }

    /// The body and the status code curl printed after it.
    func split(_ r: CLIResult) -> (body: String, code: Int) {
        let lines = r.out.split(separator: "\n", omittingEmptySubsequences: false)
        return (lines.dropLast().joined(separator: "\n"), Int(lines.last ?? "") ?? 0)
    }

    @Test("version, create, start, wait, kill errors and delete over curl --unix-socket")
    func curlSession() async throws {
        try await withDaemon { d in
            let v = split(try await curl(d, "http://tether/v1/version"))
            #expect(v.code == 200 && v.body.contains("\"version\":\"0.1.0\""), "\(v)")

            let c = split(try await curl(d, "-X", "POST", "-d", #"{"id":"web","args":["sh","-c","exit 7"]}"#,
                                         "http://tether/v1/namespaces/default/tasks"))
            #expect(c.code == 201 && c.body.contains("\"status\":\"created\""), "\(c)")
            #expect(split(try await curl(d, "-X", "POST", "http://tether/v1/namespaces/default/tasks/web/start")).code == 200)
            let w = split(try await curl(d, "-X", "POST", "http://tether/v1/namespaces/default/tasks/web/wait"))
            #expect(w.code == 200 && w.body.contains("\"status\":7"), "\(w)")

            let k = split(try await curl(d, "-X", "POST", "-d", #"{"signal":99}"#, "http://tether/v1/namespaces/default/tasks/web/kill"))
            #expect(k.code == 400 && k.body.contains("\"code\":\"invalid_argument\""), "\(k)")
            let gone = split(try await curl(d, "-X", "POST", "-d", #"{"signal":"KILL"}"#, "http://tether/v1/namespaces/default/tasks/web/kill"))
            #expect(gone.code == 409 && gone.body.contains("process_already_exited"), "\(gone)")
            let nf = split(try await curl(d, "http://tether/v1/namespaces/default/tasks/nope"))
            #expect(nf.code == 404 && nf.body.contains("container_does_not_exist"), "\(nf)")
            let bad = split(try await curl(d, "-X", "POST", "-d", "{", "http://tether/v1/namespaces/default/tasks"))
            #expect(bad.code == 400, "\(bad)")

            let del = split(try await curl(d, "-X", "DELETE", "http://tether/v1/namespaces/default/tasks/web"))
            #expect(del.code == 200 && del.body.contains("\"status\":7"), "\(del)")
            #expect(split(try await curl(d, "http://tether/v1/namespaces/default/tasks")).body.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
        }
    }

    @Test("the socket is 0600 in a 0700 directory")
    func socketMode() async throws {
        try await withDaemon { d in
            var st = stat()
            #expect(stat(d.address, &st) == 0 && st.st_mode & 0o777 == 0o600)
            #expect(stat(d.state, &st) == 0 && st.st_mode & 0o777 == 0o700)
            #expect(stat("\(d.state)/tasks", &st) == 0 && st.st_mode & 0o777 == 0o700)
        }
    }
}
