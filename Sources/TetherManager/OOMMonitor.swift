import CTether
import Foundation
import Logging
import Synchronization
import TetherRuntime
import TetherSys

/// Notices the kernel's OOM killer acting in a task's cgroup and publishes
/// /tasks/oom. One epoll thread for every task.
///
/// cgroup v1: an eventfd registered on the cgroup's memory.oom_control
/// through cgroup.event_control. The kernel signals it when the cgroup goes
/// under OOM (before the OOM killer has picked its victim, so the oom_kill
/// count may not have moved yet), and also when the cgroup goes away: a
/// signal while the cgroup still exists is an OOM. cgroup v2: inotify on the
/// cgroup's memory.events, whose oom_kill count goes up (other counts in the
/// same file change too, so the count decides).
public final class OOMMonitor: TaskMonitor, Sendable {
    private final class Watch: @unchecked Sendable {
        let namespace: String
        let id: String
        let counterFile: String
        let fds: [FD]
        let v1: Bool
        var count: UInt64

        init(namespace: String, id: String, counterFile: String, fds: [FD], v1: Bool, count: UInt64) {
            self.namespace = namespace
            self.id = id
            self.counterFile = counterFile
            self.fds = fds
            self.v1 = v1
            self.count = count
        }
    }

    private let epfd: FD
    private let watches = Mutex<[UInt64: Watch]>([:])
    private let next = Atomic<UInt64>(1)
    private let events: EventBus
    private let logger: Logger
    /// Where cgroups are mounted (tests may point elsewhere).
    let cgroupRoot: String

    public init(events: EventBus, logger: Logger, cgroupRoot: String = "/sys/fs/cgroup") throws {
        self.events = events
        self.logger = logger
        self.cgroupRoot = cgroupRoot
        epfd = FD(try check(tether_epoll_create(), "epoll_create1"))
        try OSThread.start("oom-monitor") { [self] in loop() }
    }

    public func monitor(_ task: any RuntimeTask) throws {
        guard let path = Cgroups.path(inSpec: Array(task.info.spec)) else {
            logger.debug("no cgroupsPath in the spec: OOM not watched", metadata: ["id": "\(task.id)"])
            return
        }
        let key = next.wrappingAdd(1, ordering: .relaxed).oldValue
        let watch: Watch
        let v1 = "\(cgroupRoot)/memory\(path)"
        if Files.exists("\(v1)/memory.oom_control") {
            let control = try FD.open("\(v1)/memory.oom_control", O_RDONLY)
            let efd = FD(try check(tether_eventfd(1), "eventfd"))
            let registration = FD(try check(open("\(v1)/cgroup.event_control", O_WRONLY | O_CLOEXEC), "open", "\(v1)/cgroup.event_control"))
            try registration.writeAll(Array("\(efd.raw) \(control.raw)".utf8))
            watch = Watch(namespace: task.info.namespace, id: task.id, counterFile: "\(v1)/memory.oom_control",
                          fds: [efd, control], v1: true, count: Self.oomKills("\(v1)/memory.oom_control"))
        } else if Files.exists("\(cgroupRoot)\(path)/memory.events") {
            let ifd = FD(try check(tether_inotify_init(), "inotify_init1"))
            _ = try check(tether_inotify_watch(ifd.raw, "\(cgroupRoot)\(path)/memory.events", UInt32(TETHER_IN_MODIFY)), "inotify_add_watch")
            watch = Watch(namespace: task.info.namespace, id: task.id, counterFile: "\(cgroupRoot)\(path)/memory.events",
                          fds: [ifd], v1: false, count: Self.oomKills("\(cgroupRoot)\(path)/memory.events"))
        } else {
            logger.debug("no memory cgroup found: OOM not watched", metadata: ["id": "\(task.id)", "cgroup": "\(path)"])
            return
        }
        watches.withLock { $0[key] = watch }
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), watch.fds[0].raw, UInt32(TETHER_EPOLLIN), key), "epoll_ctl")
        logger.debug("watching for OOM kills", metadata: ["id": "\(task.id)", "file": "\(watch.counterFile)"])
    }

    public func stop(_ task: any RuntimeTask) throws {
        let gone = watches.withLock { w in
            let keys = w.filter { $0.value.namespace == task.info.namespace && $0.value.id == task.id }.map(\.key)
            return keys.compactMap { w.removeValue(forKey: $0) }
        }
        for w in gone {
            _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), w.fds[0].raw, 0, 0)
            for fd in w.fds { fd.close() }
        }
    }

    private func loop() {
        var datas = [UInt64](repeating: 0, count: 64)
        var evs = [UInt32](repeating: 0, count: 64)
        var drain = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = tether_epoll_wait(epfd.raw, &datas, &evs, 64, -1)
            if n < 0 { return }
            for i in 0..<Int(n) {
                guard let w = watches.withLock({ $0[datas[i]] }) else { continue }
                _ = drain.withUnsafeMutableBytes { read(w.fds[0].raw, $0.baseAddress!, $0.count) }
                guard Files.exists(w.counterFile) else {
                    // The cgroup is gone (the task ended): no OOM, and nothing more to watch.
                    _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), w.fds[0].raw, 0, 0)
                    continue
                }
                let count = Self.oomKills(w.counterFile)
                if w.v1 || count > w.count {
                    w.count = max(count, w.count)
                    logger.warning("OOM killer acted in a task's cgroup", metadata: ["namespace": "\(w.namespace)", "id": "\(w.id)"])
                    events.publish(TaskEvent(namespace: w.namespace, topic: TaskEvent.Topic.oom, event: .init(containerID: w.id)))
                }
            }
        }
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
