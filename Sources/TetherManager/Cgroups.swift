#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TetherOCI
import TetherSys

/// A task's cgroup in every hierarchy mounted on this machine: each cgroup v1
/// controller's and the cgroup v2 unified one (both on a hybrid host). The
/// runtime makes and removes them; the manager only removes what a runtime
/// left behind (a full disk, a runtime killed mid-create).
struct Cgroups: Sendable {
    /// Where the hierarchies are mounted: /sys/fs/cgroup, or a test's tree.
    let root: String

    init(root: String = "/sys/fs/cgroup") { self.root = root }

    /// The directory of cgroup `path` (absolute, as in linux.cgroupsPath) in
    /// each hierarchy where it exists.
    func directories(of path: String) -> [String] {
        guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else { return [] }
        return hierarchies().map { $0 + path }.filter(Files.isDirectory)
    }

    /// The hierarchies: cgroup and cgroup2 mounts at or below `root`; for a
    /// test's tree (no cgroup mounts), `root` and the directories in it.
    func hierarchies() -> [String] {
        let mounted = Mounts.table().filter { ($0.fsType == "cgroup" || $0.fsType == "cgroup2") && Files.isWithin($0.target, root) }
        if !mounted.isEmpty { return Array(Set(mounted.map(\.target))).sorted() }
        return [root]
    }

    /// Removes cgroup `path` everywhere: every process still in it (and in
    /// the cgroups below it) is killed, then the directories are removed,
    /// deepest first. Waits at most `timeoutNanos` for the processes to go.
    /// Returns what it could not remove.
    @discardableResult
    func remove(_ path: String, timeoutNanos: UInt64 = 5_000_000_000) -> [SysError] {
        var failures: [SysError] = []
        let deadline = monotonicNanos() + timeoutNanos
        let tops = directories(of: path)
        guard !tops.isEmpty else { return [] }
        Self.killAll(tops)
        for top in tops {
            for dir in Self.tree(top) {  // deepest first
                while rmdir(dir) != 0 {
                    let e = errno
                    if e == ENOENT { break }
                    // EBUSY: killed processes are still on their way out.
                    guard e == EBUSY, monotonicNanos() < deadline else {
                        failures.append(SysError("rmdir", errno: e, dir))
                        break
                    }
                    Self.killAll(tops)
                    usleep(10_000)
                }
            }
        }
        return failures
    }

    /// SIGKILLs every process in the cgroups `tops` (one cgroup, one
    /// directory per hierarchy) and below, without ever signalling a pid
    /// that has been freed and reused: cgroup v2's cgroup.kill does it in
    /// the kernel; with v1 the cgroup is frozen first (a frozen process
    /// cannot exit, so its pid cannot be reused) and thawed after.
    static func killAll(_ tops: [String]) {
        if let v2 = tops.first(where: { Files.exists("\($0)/cgroup.kill") }) {
            write("1", to: "\(v2)/cgroup.kill")
            return
        }
        let freezer = tops.first { Files.exists("\($0)/freezer.state") }
        if let freezer {
            write("FROZEN", to: "\(freezer)/freezer.state")
            let deadline = monotonicNanos() + 1_000_000_000
            while (try? Files.readString("\(freezer)/freezer.state"))?.hasPrefix("FROZEN") == false && monotonicNanos() < deadline {
                usleep(1_000)
            }
        }
        for top in tops {
            for dir in tree(top) {
                guard let text = try? Files.readString("\(dir)/cgroup.procs") else { continue }
                for line in text.split(separator: "\n") {
                    if let pid = Int32(line), pid > 0 { kill(pid, SIGKILL) }
                }
            }
        }
        if let freezer { write("THAWED", to: "\(freezer)/freezer.state") }
    }

    private static func write(_ text: String, to path: String) {
        guard let fd = try? FD.open(path, O_WRONLY) else { return }
        try? fd.writeAll(Array(text.utf8))
    }

    /// `dir` and every cgroup below it, deepest first.
    static func tree(_ dir: String) -> [String] {
        var out: [String] = []
        for name in (try? Files.listDirectory(dir)) ?? [] {
            var st = stat()
            let child = "\(dir)/\(name)"
            if lstat(child, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { out += tree(child) }
        }
        return out + [dir]
    }

    /// linux.cgroupsPath of an OCI spec, when it is an absolute cgroup path,
    /// in its plain form (no empty, "." or ".." parts).
    static func path(inSpec spec: [UInt8]) -> String? {
        let json = try? JSONDecoder().decode(JSONValue.self, from: Data(spec))
        return json?["linux"]?["cgroupsPath"]?.stringValue.flatMap(normalized)
    }

    /// "/a/b" for "/a//b/"; nil for a relative path or one with "." or "..".
    static func normalized(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return nil }
        let parts = path.split(separator: "/")
        guard !parts.contains(".") && !parts.contains("..") else { return nil }
        return "/" + parts.joined(separator: "/")
    }
}
