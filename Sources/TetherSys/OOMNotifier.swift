#if canImport(Glibc)
import Glibc
#endif
import CTether

/// One cgroup's OOM notifications, for a poller (the manager's OOMMonitor,
/// the shim's OOMWatch) to watch `fd` for readability and call `fired()`.
///
/// cgroup v1: an eventfd registered on memory.oom_control through
/// cgroup.event_control. The kernel signals it when the cgroup goes under
/// OOM (before the OOM killer has picked its victim, so the oom_kill count
/// may not have moved yet), and also when the cgroup goes away: a signal
/// while the cgroup still exists is an OOM. cgroup v2: inotify on
/// memory.events, whose oom_kill count goes up (other counts in the same
/// file change too, so the count decides). Used from one thread at a time.
public final class OOMNotifier: @unchecked Sendable {
    /// The descriptor that becomes readable (owned; closed by `close()`).
    public var fd: FD { fds[0] }
    public let counterFile: String
    private let fds: [FD]
    private let v1: Bool
    private var count: UInt64

    private init(fds: [FD], counterFile: String, v1: Bool) {
        self.fds = fds
        self.counterFile = counterFile
        self.v1 = v1
        count = Self.oomKills(counterFile)
    }

    /// Notifications for cgroup `path` (absolute, as in linux.cgroupsPath)
    /// under `root`, v1 or v2, whichever holds it; nil when neither has a
    /// memory cgroup there.
    public static func open(cgroup path: String, root: String = "/sys/fs/cgroup") throws(SysError) -> OOMNotifier? {
        guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else { return nil }
        let v1Dir = "\(root)/memory\(path)"
        if Files.exists("\(v1Dir)/memory.oom_control") {
            let control = try FD.open("\(v1Dir)/memory.oom_control", O_RDONLY | O_CLOEXEC)
            let efd = FD(try check(tether_eventfd(1), "eventfd"))
            do {
                let registration = try FD.open("\(v1Dir)/cgroup.event_control", O_WRONLY | O_CLOEXEC)
                defer { registration.close() }
                try registration.writeAll(Array("\(efd.raw) \(control.raw)".utf8))
            } catch {
                efd.close()
                control.close()
                throw error
            }
            return OOMNotifier(fds: [efd, control], counterFile: "\(v1Dir)/memory.oom_control", v1: true)
        }
        let events = "\(root)\(path)/memory.events"
        guard Files.exists(events) else { return nil }
        let ifd = FD(try check(tether_inotify_init(), "inotify_init1"))
        do {
            _ = try check(tether_inotify_watch(ifd.raw, events, UInt32(TETHER_IN_MODIFY)), "inotify_add_watch", events)
        } catch {
            ifd.close()
            throw error
        }
        return OOMNotifier(fds: [ifd], counterFile: events, v1: false)
    }

    public enum Outcome { case oom, nothing, cgroupGone }

    /// After `fd` became readable: drains it and says what it meant.
    public func fired() -> Outcome {
        var drain = [UInt8](repeating: 0, count: 4096)
        _ = drain.withUnsafeMutableBytes { read(fd.raw, $0.baseAddress!, $0.count) }
        guard Files.exists(counterFile) else { return .cgroupGone }
        let now = Self.oomKills(counterFile)
        guard v1 || now > count else { return .nothing }
        count = max(now, count)
        return .oom
    }

    public func close() { for f in fds { f.close() } }

    /// The "oom_kill N" count of memory.oom_control (v1) or memory.events (v2).
    public static func oomKills(_ path: String) -> UInt64 {
        guard let text = try? Files.readString(path) else { return 0 }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2 && f[0] == "oom_kill" { return UInt64(f[1]) ?? 0 }
        }
        return 0
    }
}
