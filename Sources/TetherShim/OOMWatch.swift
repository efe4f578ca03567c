#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherSys

/// Notices the kernel's OOM killer acting in the container's cgroup, on the
/// shim's event loop (under containerd the shim reports OOMs itself; under
/// tetherd the manager's OOMMonitor does). cgroup v1: an eventfd registered
/// on memory.oom_control through cgroup.event_control, signalled when the
/// cgroup goes under OOM (and when it is removed: a signal while the cgroup
/// exists is an OOM). cgroup v2: inotify on memory.events, whose oom_kill
/// count rises.
final class OOMWatch: @unchecked Sendable {
    private let loop: EventLoop
    private var fds: [FD] = []
    private var source: EventLoop.Source?
    private var counterFile = ""
    private var v1 = false
    private var count: UInt64 = 0

    init(loop: EventLoop) { self.loop = loop }

    /// Watches cgroup `path` (absolute, as in linux.cgroupsPath) under `root`;
    /// `onOOM` runs on the loop for each OOM. False when there is nothing to watch.
    @discardableResult
    func start(cgroup path: String, root: String = "/sys/fs/cgroup", onOOM: @escaping () -> Void) -> Bool {
        guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else { return false }
        do {
            let v1Dir = "\(root)/memory\(path)"
            if Files.exists("\(v1Dir)/memory.oom_control") {
                let control = try FD.open("\(v1Dir)/memory.oom_control", O_RDONLY)
                let efd = FD(try check(tether_eventfd(1), "eventfd"))
                let registration = try FD.open("\(v1Dir)/cgroup.event_control", O_WRONLY)
                try registration.writeAll(Array("\(efd.raw) \(control.raw)".utf8))
                fds = [efd, control]
                counterFile = "\(v1Dir)/memory.oom_control"
                v1 = true
            } else if Files.exists("\(root)\(path)/memory.events") {
                let ifd = FD(try check(tether_inotify_init(), "inotify_init1"))
                _ = try check(tether_inotify_watch(ifd.raw, "\(root)\(path)/memory.events", UInt32(TETHER_IN_MODIFY)), "inotify_add_watch")
                fds = [ifd]
                counterFile = "\(root)\(path)/memory.events"
            } else {
                return false
            }
            count = Self.oomKills(counterFile)
            source = try loop.add(fds[0].raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in fired(onOOM) }
            return true
        } catch {
            ShimLog.warn("cannot watch \(path) for OOM kills: \(error)")
            stop()
            return false
        }
    }

    private func fired(_ onOOM: () -> Void) {
        var drain = [UInt8](repeating: 0, count: 4096)
        _ = drain.withUnsafeMutableBytes { read(fds[0].raw, $0.baseAddress!, $0.count) }
        guard Files.exists(counterFile) else { stop(); return }  // the cgroup is gone: no OOM
        let now = Self.oomKills(counterFile)
        if v1 || now > count {
            count = max(now, count)
            onOOM()
        }
    }

    func stop() {
        if let source { loop.remove(source) }
        source = nil
        for fd in fds { fd.close() }
        fds = []
    }

    /// The "oom_kill N" count of memory.oom_control (v1) or memory.events (v2).
    static func oomKills(_ path: String) -> UInt64 {
        guard let text = try? Files.readString(path) else { return 0 }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2 && f[0] == "oom_kill" { return UInt64(f[1]) ?? 0 }
        }
        return 0
    }
}
