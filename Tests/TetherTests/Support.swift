#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherRuntime
import CTether
import TetherSys

/// What the integration tests need: root, runc and the built binaries.
/// Outside CI a missing prerequisite skips them; in CI (CI=true) it fails them.
enum Prerequisites {
    static var isRoot: Bool { geteuid() == 0 }
    static var hasRunc: Bool { Spawn.lookPath("runc") != nil }
    static var met: Bool { isRoot && hasRunc }
    /// Integration suites run when the prerequisites are met, and always in CI (where they then fail).
    static var runIntegration: Bool { met || inCI }

    static func require() throws {
        try #require(isRoot, "integration tests run containers: run them as root (scripts/test)")
        try #require(hasRunc, "runc is not installed: scripts/setup installs it")
        try #require(Files.exists("\(rootfs)/bin/sh"), "no test rootfs at \(rootfs): scripts/test builds it")
        if inCI {
            // As on a systemd host: a mount Tether leaks, or an unmount that
            // propagates where it should not, shows up only with / shared.
            try #require(rootIsShared, "/ is not a shared mount: run the suite through scripts/test (unshare --propagation shared)")
        }
    }

    /// Is `/` a shared mount (as systemd makes it)?
    static var rootIsShared: Bool { Mounts.table().last { $0.target == "/" }?.isShared ?? false }

    /// The busybox rootfs scripts/test builds.
    static var rootfs: String {
        ProcessInfo.processInfo.environment["TETHER_TEST_ROOTFS"] ?? "/tmp/tether-test-root/rootfs/busybox"
    }

    /// Where swift build put tetherd, tether and tether-shim.
    static var binDir: String {
        if let d = ProcessInfo.processInfo.environment["TETHER_BIN_DIR"] { return d }
        let pkg = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return pkg.appendingPathComponent(".build/debug").path
    }
}

struct CLIResult: Sendable, CustomStringConvertible {
    var status: Int32
    var out: String
    var err: String
    var description: String { "exit \(status), stdout \(out.debugDescription), stderr \(err.debugDescription)" }
}

/// Runs a program to completion with a deadline; returns its status (128+N
/// for a death by signal N) and output. Started and reaped with our own
/// spawn and waitpid: Foundation's Process once left a tmux client unreaped.
func runProgram(_ path: String, _ args: [String], env: [String: String] = [:], stdin: Data? = nil,
                timeout: TimeInterval = 60) async throws -> CLIResult {
    try await offPool {
        let out = try FD.pipe(), err = try FD.pipe()
        let input = stdin == nil ? nil : try FD.pipe()
        var options = Spawn.Options()
        options.fds = [input?.read.raw ?? -1, out.write.raw, err.write.raw]
        options.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }.map { "\($0)=\($1)" }
        let pid = try Spawn.spawn(path, [path] + args, options)
        out.write.close()
        err.write.close()
        input?.read.close()
        if let stdin, let input {
            Thread.detachNewThread {
                try? input.write.writeAll(Array(stdin))
                input.write.close()
            }
        }
        let o = ReadAll(out.read), e = ReadAll(err.read)
        let timedOut = Box(false)
        let timer = DispatchWorkItem {
            timedOut.value = true
            kill(pid, SIGKILL)
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer)
        var status: Int32 = 0
        _ = tether_wait_pid(pid, &status)
        timer.cancel()
        if timedOut.value { Issue.record("\(path) \(args) did not finish within \(timeout) s") }
        return CLIResult(status: tether_exit_code(status), out: o.wait(), err: e.wait())
    }
}

final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return v }
        set { lock.lock(); v = newValue; lock.unlock() }
    }
}

/// Reads a pipe to its end on a thread of its own.
final class ReadAll: @unchecked Sendable {
    private var data: [UInt8] = []
    private let done = DispatchSemaphore(value: 0)

    init(_ fd: FD) {
        Thread.detachNewThread { [self] in
            data = (try? fd.readToEnd(limit: 1 << 30)) ?? []
            fd.close()
            done.signal()
        }
    }

    func wait() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}

/// A tetherd of the test's own: its own root, state, socket and runc roots
/// under /tmp/tt-XXXXXX, the test rootfs linked in as the default rootfs.
/// `finish()` stops it and fails the test if anything was left behind.
final class TestDaemon: @unchecked Sendable {
    let dir: String
    var root: String { "\(dir)/root" }
    var state: String { "\(dir)/state" }
    var address: String { "\(state)/tetherd.sock" }
    /// tetherd's pid while it runs (started and reaped here, not by Foundation).
    private(set) var pid: Int32 = 0
    private var log: ReadLines?
    private var extraArgs: [String]
    /// Everything every tetherd of this test wrote, across restarts.
    private var earlierLogs = ""
    /// Test hooks: pause files here stop tetherd at named points (TestHook).
    var hooks: String { "\(dir)/hooks" }

    /// The mount table outside the test's directory when the test began.
    private let mountsBefore: [String]

    /// More environment for tetherd (and so for its shims): test faults.
    private let extraEnv: [String: String]

    /// A program tetherd is started through (prlimit ... --), if any.
    private let wrapper: [String]

    init(_ extraArgs: [String] = [], env: [String: String] = [:], wrapper: [String] = []) async throws {
        self.wrapper = wrapper
        try Prerequisites.require()
        dir = try makeTempDir()
        mountsBefore = Self.mountsOutside(dir)
        self.extraArgs = extraArgs
        extraEnv = env
        try Files.makeDirectories("\(dir)/hooks")
        try Files.makeDirectories("\(root)/rootfs")
        symlink(Prerequisites.rootfs, "\(root)/rootfs/busybox")
        try await start()
    }

    /// Starts tetherd and waits for its "listening" line (20 s at most).
    func start(_ args: [String]? = nil) async throws {
        if let args { extraArgs = args }
        earlierLogs += log?.text ?? ""
        let err = try FD.pipe()
        var options = Spawn.Options()
        options.fds = [-1, -1, err.write.raw]
        options.environment = ProcessInfo.processInfo.environment.merging(["TETHER_TEST_HOOKS": hooks]) { $1 }
            .merging(extraEnv) { $1 }.map { "\($0)=\($1)" }
        let bin = "\(Prerequisites.binDir)/tetherd"
        let argv = wrapper + [bin, "--root", root, "--state", state, "--log-level", "debug"] + extraArgs
        pid = try Spawn.spawn(argv[0], argv, options)
        err.write.close()
        let lines = ReadLines(err.read)
        log = lines
        let up = try await offPool { lines.waitFor("tetherd \(TetherVersion.string) listening", timeout: 20) }
        try #require(up, "tetherd did not start: \(lines.text)")
    }

    /// This tetherd's log.
    var logText: String { log?.text ?? "" }
    /// Waits (off the pool) until this tetherd's log has `needle`.
    func waitForLog(_ needle: String, timeout: TimeInterval) async throws -> Bool {
        guard let log else { return false }
        return try await offPool { log.waitFor(needle, timeout: timeout) }
    }
    /// The logs of every tetherd this test started.
    var allLogs: String { earlierLogs + logText }

    /// SIGTERM, and wait (20 s at most) for tetherd to exit.
    func stop() async throws {
        guard pid > 0 else { return }
        let p = pid
        kill(p, SIGTERM)
        let exited = try await offPool { waitForExit(p, timeoutMs: 20_000) }
        if !exited {
            Issue.record("tetherd did not stop within 20 s of SIGTERM")
            kill(p, SIGKILL)
            _ = try await offPool { waitForExit(p, timeoutMs: 20_000) }
        }
        pid = 0
    }

    func kill9() async throws {
        guard pid > 0 else { return }
        let p = pid
        kill(p, SIGKILL)
        _ = try await offPool { waitForExit(p, timeoutMs: 20_000) }
        pid = 0
    }


    /// `tether ARGS` against this daemon.
    func tether(_ args: String..., stdin: Data? = nil, timeout: TimeInterval = 60) async throws -> CLIResult {
        try await tether(args, stdin: stdin, timeout: timeout)
    }

    func tether(_ args: [String], stdin: Data? = nil, timeout: TimeInterval = 60) async throws -> CLIResult {
        try await runProgram("\(Prerequisites.binDir)/tether", args, env: ["TETHER_ADDRESS": address], stdin: stdin, timeout: timeout)
    }

    /// SIGKILLs a task, waits for it and deletes it; the delete must succeed.
    func killAndDelete(_ id: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        _ = try await tether("kill", "-s", "KILL", id)
        let w = try await tether("wait", id)
        #expect(w.status == 137, "wait \(id): \(w)", sourceLocation: sourceLocation)
        let rm = try await tether("rm", id)
        #expect(rm.status == 0, "rm \(id): \(rm)", sourceLocation: sourceLocation)
    }

    func bundle(_ id: String, namespace: String = "default") -> String { "\(state)/tasks/\(namespace)/\(id)" }

    func shimPid(_ id: String, namespace: String = "default") -> Int32? {
        (try? Files.readString("\(bundle(id, namespace: namespace))/shim.pid")).flatMap { Int32($0.filter(\.isNumber)) }
    }

    /// Processes whose command line mentions this daemon's directory (shims).
    func shims() -> [Int32] {
        processes { $0.contains("tether-shim") && $0.contains(dir) }
    }

    /// Containers runc knows under this daemon's runc roots.
    func containers() -> [String] {
        var out: [String] = []
        for ns in (try? Files.listDirectory("\(state)/runc")) ?? [] {
            for id in (try? Files.listDirectory("\(state)/runc/\(ns)")) ?? [] { out.append("\(ns)/\(id)") }
        }
        return out
    }

    /// Stops tetherd and checks that the test left no task, shim, container,
    /// mount or directory; anything found is a test failure, then cleaned up.
    func finish() async throws {
        if pid == 0 { try await start() }
        let ls = try await tether("ls", "-q")
        let left = ls.out.split(separator: "\n")
        for id in left {
            Issue.record("the test left task \(id) behind (\(ls))")
            _ = try await tether("kill", "-s", "KILL", String(id))
            _ = try await tether("delete", String(id))
        }
        try await stop()
        for pid in shims() {
            Issue.record("tether-shim \(pid) still running after the test")
            kill(pid, SIGKILL)
        }
        for c in containers() {
            Issue.record("runc container \(c) left behind")
            let parts = c.split(separator: "/")
            _ = try await runProgram(Spawn.lookPath("runc")!, ["--root", "\(state)/runc/\(parts[0])", "delete", "--force", String(parts[1])])
        }
        // tetherd keeps its tasks directory a private mount of its own; nothing else may stay.
        for m in Mounts.targets(under: dir) where m != "\(state)/tasks" {
            Issue.record("mount \(m) left behind")
        }
        Mounts.unmountTree(under: dir)
        let after = Self.mountsOutside(dir)
        if after != mountsBefore {
            Issue.record("the mount table outside the test changed: gone \(Set(mountsBefore).subtracting(after).sorted()), new \(Set(after).subtracting(mountsBefore).sorted())")
        }
        try Files.removeTree(dir)
    }

    /// Mounts under the tasks directory (each task's rootfs), not the tasks directory itself.
    func taskMounts() -> [String] { Mounts.targets(under: "\(state)/tasks").filter { $0 != "\(state)/tasks" } }

    /// "id target" of every mount outside `dir`, to compare before and after a test.
    static func mountsOutside(_ dir: String) -> [String] {
        Mounts.table().filter { !Files.isWithin($0.target, dir) }.map { "\($0.id) \($0.target)" }
    }
}

/// Lines of a pipe as they come; lets a test wait for one.
final class ReadLines: @unchecked Sendable {
    private let lock = NSCondition()
    private var buffer = ""
    private var closed = false

    init(_ fd: FD) {
        Thread.detachNewThread { [self] in
            while true {
                let d = (try? fd.read(upTo: 65536)) ?? []
                lock.lock()
                if d.isEmpty { closed = true } else { buffer += String(decoding: d, as: UTF8.self) }
                lock.broadcast()
                lock.unlock()
                if d.isEmpty { fd.close(); return }
            }
        }
    }

    var text: String { lock.lock(); defer { lock.unlock() }; return buffer }

    /// Waits until `needle` has appeared (true) or the pipe closed or time ran out (false).
    func waitFor(_ needle: String, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while !buffer.contains(needle) {
            if closed || !lock.wait(until: deadline) { return buffer.contains(needle) }
        }
        return true
    }
}

/// Pids of processes whose command line matches.
func processes(_ match: (String) -> Bool) -> [Int32] {
    ((try? Files.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
        guard let raw = try? Files.read("/proc/\(pid)/cmdline") else { return false }
        return match(String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self))
    }
}

/// A field of /proc/PID/stat (1-based, as in proc(5)); 3 is the state letter.
func procStat(_ pid: Int32, field: Int) -> String? {
    guard let s = try? Files.readString("/proc/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
    let rest = s[s.index(close, offsetBy: 2)...].split(separator: " ")
    return field >= 3 && field - 3 < rest.count ? String(rest[field - 3]) : nil
}

/// Children of `pid` that are zombies.
func zombieChildren(of pid: Int32) -> [Int32] {
    ((try? Files.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.filter {
        procStat($0, field: 4) == String(pid) && procStat($0, field: 3) == "Z"
    }
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass. For facts
/// no event announces (another process reaped a child); returns the last check.
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return condition()
}

/// Waits for a child to exit (a pidfd, polled) and reaps it. False on timeout.
func waitForExit(_ pid: Int32, timeoutMs: Int32) -> Bool {
    let pidfd = tether_pidfd_open(pid)
    if pidfd >= 0 {
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, timeoutMs)
        close(pidfd)
        if n == 0 { return false }
    }
    var status: Int32 = 0
    _ = tether_wait_pid(pid, &status)
    return true
}

/// A program running in the background whose output a test watches as it comes.
final class StartedProgram: @unchecked Sendable {
    let pid: Int32
    let out: ReadLines
    let err: ReadLines

    init(_ path: String, _ args: [String], env: [String: String] = [:]) throws {
        let o = try FD.pipe(), e = try FD.pipe()
        var options = Spawn.Options()
        options.fds = [-1, o.write.raw, e.write.raw]
        options.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }.map { "\($0)=\($1)" }
        pid = try Spawn.spawn(path, [path] + args, options)
        o.write.close()
        e.write.close()
        out = ReadLines(o.read)
        err = ReadLines(e.read)
    }

    /// Its exit status (128+N for signal N), or -1 (and a SIGKILL) after `timeout` seconds.
    func wait(timeout: Int32) -> Int32 {
        let pidfd = tether_pidfd_open(pid)
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, timeout * 1000)
        close(pidfd)
        if ready == 0 { kill(pid, SIGKILL) }
        var status: Int32 = 0
        _ = tether_wait_pid(pid, &status)
        return ready == 0 ? -1 : tether_exit_code(status)
    }
}

/// A task's cgroup as the tests read it, on cgroup v1 (a controller per
/// hierarchy) or v2 (one unified hierarchy), whichever holds it: the same
/// assertion holds on a hybrid host like this one and on a v2-only one
/// (Debian 12's default). `root` lets a test emulate either layout.
struct CgroupView {
    let path: String
    var root = "/sys/fs/cgroup"

    enum Version { case v1, v2 }

    /// v1 if the pids controller has the cgroup, v2 if the unified root has it, else nil.
    var version: Version? {
        if Files.isDirectory("\(root)/pids\(path)") { return .v1 }
        if Files.exists("\(root)\(path)/cgroup.procs") { return .v2 }
        return nil
    }

    private func read(_ file: String) -> String? {
        (try? Files.readString(file))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The memory limit in bytes (nil for none).
    var memoryLimit: Int64? {
        switch version {
        case .v1: read("\(root)/memory\(path)/memory.limit_in_bytes").flatMap { Int64($0) }.flatMap { $0 >= (1 << 62) ? nil : $0 }
        case .v2: read("\(root)\(path)/memory.max").flatMap { $0 == "max" ? nil : Int64($0) }
        case nil: nil
        }
    }

    /// The CFS quota and period in microseconds (nil quota for none).
    var cpu: (quota: Int64?, period: Int64)? {
        switch version {
        case .v1:
            guard let q = read("\(root)/cpu\(path)/cpu.cfs_quota_us").flatMap({ Int64($0) }),
                  let p = read("\(root)/cpu\(path)/cpu.cfs_period_us").flatMap({ Int64($0) }) else { return nil }
            return (q < 0 ? nil : q, p)
        case .v2:
            guard let parts = read("\(root)\(path)/cpu.max")?.split(separator: " "), parts.count == 2, let p = Int64(parts[1]) else { return nil }
            return (parts[0] == "max" ? nil : Int64(parts[0]), p)
        case nil: return nil
        }
    }

    var pidsMax: String? {
        switch version {
        case .v1: read("\(root)/pids\(path)/pids.max")
        case .v2: read("\(root)\(path)/pids.max")
        case nil: nil
        }
    }

    /// Is the cgroup frozen (v1 freezer.state FROZEN, v2 cgroup.events frozen 1)?
    var isFrozen: Bool? {
        switch version {
        case .v1: read("\(root)/freezer\(path)/freezer.state").map { $0 == "FROZEN" }
        case .v2: read("\(root)\(path)/cgroup.events").map { $0.split(separator: "\n").contains("frozen 1") }
        case nil: nil
        }
    }

    /// The pids in the cgroup (and nil when the cgroup is gone).
    var procs: [Int32]? {
        let file: String
        switch version {
        case .v1: file = "\(root)/pids\(path)/cgroup.procs"
        case .v2: file = "\(root)\(path)/cgroup.procs"
        case nil: return nil
        }
        return read(file).map { $0.split(separator: "\n").compactMap { Int32($0) } }
    }
}
