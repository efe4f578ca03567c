#if canImport(Glibc)
import Glibc
#endif
import CTether
import Foundation
import Testing
import TetherAPI
import TetherManager
import TetherOCI
import TetherRuntime
import TetherSys

@Suite("identifiers")
struct IdentifierTests {
    @Test("containerd's rules: alphanumerics joined by single . _ -, at most 76",
          arguments: ["a", "t1", "A.b_c-d", "abc123", "x-y.z", String(repeating: "a", count: 76)])
    func valid(_ id: String) {
        #expect(Identifier.isValid(id))
    }

    @Test("anything else is refused, path tricks included",
          arguments: ["", ".", "..", "a/b", "../x", "-a", "a-", "a..b", "a-_b", "a b", "é", "a\u{0}b",
                      "_x", "x.", String(repeating: "a", count: 77), "/abs"])
    func invalid(_ id: String) {
        #expect(!Identifier.isValid(id))
        #expect(throws: RuntimeError.self) { try Identifier.validate(id) }
    }

    @Test("the error says what is wrong")
    func message() {
        #expect(throws: RuntimeError(.invalidArgument, "invalid task ID \"a/b\": use letters and digits, joined by single '.', '_' or '-'")) {
            try Identifier.validate("a/b")
        }
        #expect(throws: RuntimeError(.invalidArgument, "invalid task ID \"\(String(repeating: "a", count: 77))\": it is 77 characters long, the limit is 76")) {
            try Identifier.validate(String(repeating: "a", count: 77))
        }
    }
}

@Suite("signals")
struct SignalTests {
    @Test("names with or without SIG, any case, and numbers")
    func parse() throws {
        #expect(try Signals.parse("TERM") == 15)
        #expect(try Signals.parse("sigkill") == 9)
        #expect(try Signals.parse("9") == 9)
        #expect(try Signals.parse("RTMIN+2") == 36)
        #expect(try Signals.parse("RTMAX") == 64)
        #expect(Signals.name(15) == "TERM")
    }

    @Test("out of range and unknown signals are clear errors", arguments: ["0", "65", "-1", "FOO", "SIG", "RTMIN+40"])
    func refused(_ s: String) {
        #expect(throws: RuntimeError.self) { try Signals.parse(s) }
    }

    @Test("a death by signal is 128 + the signal, an exit is its code")
    func exitStatusEncoding() throws {
        for (script, want) in [("exit 3", Int32(3)), ("kill -TERM $$", 143), ("kill -KILL $$", 137)] {
            let pid = try Spawn.spawn("/bin/sh", ["sh", "-c", script])
            var status: Int32 = 0
            #expect(tether_wait_pid(pid, &status) == pid)
            #expect(tether_exit_code(status) == want, "\(script)")
        }
    }
}

@Suite("time")
struct TimeTests {
    @Test("RFC 3339 with nanoseconds, and back")
    func roundTrip() throws {
        #expect(RFC3339.format(seconds: 0, nanos: 5) == "1970-01-01T00:00:00.000000005Z")
        #expect(RFC3339.format(seconds: 1_795_917_776, nanos: 600_472_626) == "2026-11-29T02:02:56.600472626Z")
        let d = try #require(RFC3339.parse("2026-11-29T02:02:56.5Z"))
        #expect(d.timeIntervalSince1970 == 1_795_917_776.5)
        #expect(RFC3339.parse("2026-11-29T03:02:56+01:00")?.timeIntervalSince1970 == 1_795_917_776)
        #expect(RFC3339.parse("yesterday") == nil)
    }

    @Test("the API's JSON: RFC 3339 times, sorted keys, topics with plain slashes")
    func apiJSON() throws {
        let event = TaskEvent(timestamp: Date(timeIntervalSince1970: 1_795_917_776.5), namespace: "default", topic: "/tasks/exit",
                              event: .init(containerID: "t1", pid: 42, exitStatus: 3))
        let text = String(decoding: try APIJSON.encoder.encode(event), as: UTF8.self)
        #expect(text.contains(#""topic":"/tasks/exit""#), "\(text)")
        #expect(text.contains(#""timestamp":"2026-11-29T02:02:56.500000000Z""#), "\(text)")
        #expect(try APIJSON.decoder.decode(TaskEvent.self, from: Data(text.utf8)).topic == "/tasks/exit")
    }
}

@Suite("signal names")
struct SignalNameTests {
    @Test("RTMIN+N and RTMAX-N stay in range, and a huge N is an error, not a trap")
    func realtime() throws {
        #expect(try Signals.parse("RTMIN+2") == 36)
        #expect(try Signals.parse("SIGRTMAX-1") == 63)
        for bad in ["RTMIN+2147483647", "RTMIN+31", "RTMAX-2147483647", "RTMAX-31", "99999999999", "0", "65"] {
            #expect(throws: RuntimeError.self, "\(bad)") { try Signals.parse(bad) }
        }
    }
}

@Suite("OCI specs")
struct SpecTests {
    @Test("the generated spec has the defaults runc spec and ctr run give")
    func defaults() throws {
        let data = SpecBuilder.specJSON(namespace: "default", id: "t1", process: .init(args: ["sh"], env: ["A=1", "PATH=/x"]))
        let spec = try SpecCheck.check(Array(data), source: "test").spec
        let process = try #require(spec.process)
        #expect(process.noNewPrivileges == true)
        #expect(process.env == ["A=1", "PATH=/x"])
        #expect(Set(spec.linux?.namespaces?.map(\.type) ?? []) == ["pid", "ipc", "uts", "mount", "network"])
        #expect(Set(["/proc", "/dev", "/sys"]).isSubset(of: Set(spec.mounts?.map(\.destination) ?? [])))
        let caps = process.capabilities?.bounding ?? []
        #expect(caps.contains("CAP_KILL") && !caps.contains("CAP_SYS_ADMIN"))
        #expect(spec.linux?.resources?.devices == [OCI.LinuxResources.DeviceRule(allow: false, access: "rwm")])
    }

    @Test("broken specs are refused with what is wrong")
    func broken() {
        #expect(throws: RuntimeError.self) { try SpecCheck.check(Array("{not json".utf8), source: "x") }
        #expect(throws: RuntimeError(.invalidArgument, "x is not a JSON object: an OCI spec is one, see 'runc spec'")) {
            try SpecCheck.check(Array("[1]".utf8), source: "x")
        }
        #expect(throws: RuntimeError(.invalidArgument, "x has no process.args: name the command to run")) {
            try SpecCheck.check(Array(#"{"ociVersion":"1.0.2","root":{"path":"r"}}"#.utf8), source: "x")
        }
        // A number outside the type runc decodes it into is refused here, not passed on.
        let huge = #"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":1e300,"gid":0}},"root":{"path":"r"}}"#
        #expect(throws: RuntimeError(.invalidArgument, "x is not an OCI spec: a number out of its field's range (too large, negative or fractional where a count is expected)")) {
            try SpecCheck.check(Array(huge.utf8), source: "x")
        }
        let quota = #"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"r"},"linux":{"resources":{"cpu":{"quota":1e300}}}}"#
        #expect(throws: RuntimeError.self) { try SpecCheck.check(Array(quota.utf8), source: "x") }
    }

    @Test("a spec passes through with its numbers and fields as they were")
    func lossless() throws {
        // 10^15 and above came back as floats before (1e+15), which runc refuses;
        // fields Tether does not model (hooks, annotations) must survive too.
        let text = #"{"annotations":{"a":"b"},"hooks":{"prestart":[{"path":"/bin/true"}]},"linux":{"resources":{"memory":{"limit":1125899906842624}}},"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"gid":0,"uid":0}},"root":{"path":"r"}}"#
        var checked = try SpecCheck.check(Array(text.utf8), source: "x")
        #expect(String(decoding: checked.bytes, as: UTF8.self) == text)
        checked.setTerminal(true)
        let out = String(decoding: checked.bytes, as: UTF8.self)
        #expect(out.contains(#""limit":1125899906842624"#) && out.contains(#""terminal":true"#) && out.contains(#""hooks""#), "\(out)")
    }

    @Test("resource limits: every bad number is one clear line, never a trap")
    func limits() {
        for bad in [ResourceLimits(cpus: 1e300), ResourceLimits(cpus: -1), ResourceLimits(cpus: 0), ResourceLimits(cpus: .nan),
                    ResourceLimits(cpus: .infinity), ResourceLimits(memory: -1), ResourceLimits(memory: 0), ResourceLimits(memory: .max),
                    ResourceLimits(pidsLimit: 0), ResourceLimits(pidsLimit: -5), ResourceLimits(pidsLimit: .max)] {
            #expect(throws: RuntimeError.self, "\(bad)") { try bad.validate() }
        }
        let ok = ResourceLimits(memory: 64 << 20, cpus: 0.5, pidsLimit: 100)
        #expect(throws: Never.self) { try ok.validate() }
        #expect(ok.linuxResources.cpu == OCI.LinuxResources.CPU(quota: 50_000, period: 100_000))
        #expect(ResourceLimits(cpus: 10_000).linuxResources.cpu?.quota == 1_000_000_000)
        for body in [#"{"cpu":{"quota":1e300}}"#, #"{"cpu":{"period":0}}"#, #"{"memory":{"limit":-7}}"#, #"[1]"#, #"{"pids":{"limit":"x"}}"#] {
            #expect(throws: RuntimeError.self, "\(body)") { try OCI.LinuxResources.validated(Array(body.utf8), source: "b") }
        }
    }
}

@Suite("state files")
struct StateFileTests {
    @Test("a task record of the first format (fewer fields) still loads")
    func previousFormat() throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let old = #"{"namespace":"default","id":"t1","bundle":"\#(dir)","phase":"running","pid":42}"#
        try Files.writeAtomically("\(dir)/task.json", Array(old.utf8))
        let r = try TaskRecord.load("\(dir)/task.json")
        #expect(r.id == "t1" && r.pid == 42 && r.phase == .running)
        #expect(r.exit == nil && r.ackedSeq == 0 && r.rootfs.isEmpty && r.runtime == "runc")
    }

    @Test("a record survives a save and a load, exit and time included")
    func roundTrip() throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        var r = TaskRecord(namespace: "n", id: "i", instance: "x", runtime: "/usr/sbin/runc", bundle: dir,
                           io: IO(stdout: "/o"), rootfs: [Mount(type: "bind", source: "/s", options: ["rbind"])],
                           scratch: nil, phase: .stopped, createdAt: Date(timeIntervalSince1970: 1_700_000_000.25))
        r.exit = Exit(pid: 7, status: 137, timestamp: Date(timeIntervalSince1970: 1_700_000_001.5))
        r.ackedSeq = 3
        try r.save()
        #expect(try TaskRecord.load("\(dir)/task.json") == r)
    }

    @Test("concurrent atomic writes of one file all succeed and leave one whole version")
    func concurrentAtomicWrites() async throws {
        let dir = try makeTempDir()
        defer { try? Files.removeTree(dir) }
        let path = "\(dir)/f"
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<16 {
                group.addTask {
                    try await offPool { try Files.writeAtomically(path, Array(repeating: UInt8(65 + i), count: 4096)) }
                }
            }
            try await group.waitForAll()
        }
        let bytes = try Files.read(path)
        #expect(bytes.count == 4096 && Set(bytes).count == 1)
        #expect(try Files.listDirectory(dir) == ["f"])  // no temp file left
    }

    @Test("removeTree removes a tree 20,000 directories deep (as a container can make one) without deep recursion")
    func removeDeepTree() throws {
        let dir = try makeTempDir()
        var fd = open(dir, O_RDONLY | O_DIRECTORY)
        for i in 0..<20_000 {
            #expect(mkdirat(fd, "d", 0o755) == 0)
            if i % 1000 == 0 { close(openat(fd, "f", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)) }
            let next = openat(fd, "d", O_RDONLY | O_DIRECTORY)
            close(fd)
            fd = next
        }
        close(fd)
        try Files.removeTree(dir)
        #expect(!Files.exists(dir))
    }

    @Test("removeTree refuses to cross into a mount", .enabled(if: geteuid() == 0 || inCI, "root is needed to mount"))
    func removeTreeStopsAtMounts() throws {
        try #require(geteuid() == 0, "root is needed to mount")
        let dir = try makeTempDir()
        try Files.makeDirectories("\(dir)/keep")
        try Files.writeAtomically("\(dir)/keep/precious", [1])
        try Files.makeDirectories("\(dir)/victim/mnt")
        #expect(tether_mount("\(dir)/keep", "\(dir)/victim/mnt", "none", UInt(MS_BIND), nil) == 0)
        #expect(throws: SysError.self) { try Files.removeTree("\(dir)/victim") }
        #expect(Files.exists("\(dir)/keep/precious"))
        #expect(tether_umount("\(dir)/victim/mnt", 0) == 0)
        try Files.removeTree(dir)
        #expect(!Files.exists(dir))
    }
}

var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
