import CTether
import Foundation
import Logging
import Synchronization
import TetherRuntime
import TetherSys

/// Notices the kernel's OOM killer acting in a task's cgroup and publishes
/// /tasks/oom. One epoll thread for every task.
///
/// (How each cgroup version announces an OOM: OOMNotifier.)
public final class OOMMonitor: TaskMonitor, Sendable {
    private struct Watch: Sendable {
        let namespace: String
        let id: String
        let notifier: OOMNotifier
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
        guard let notifier = try OOMNotifier.open(cgroup: path, root: cgroupRoot) else {
            logger.debug("no memory cgroup found: OOM not watched", metadata: ["id": "\(task.id)", "cgroup": "\(path)"])
            return
        }
        let watch = Watch(namespace: task.info.namespace, id: task.id, notifier: notifier)
        watches.withLock { $0[key] = watch }
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), notifier.fd.raw, UInt32(TETHER_EPOLLIN), key), "epoll_ctl")
        logger.debug("watching for OOM kills", metadata: ["id": "\(task.id)", "file": "\(notifier.counterFile)"])
    }

    public func stop(_ task: any RuntimeTask) throws {
        let gone = watches.withLock { w in
            let keys = w.filter { $0.value.namespace == task.info.namespace && $0.value.id == task.id }.map(\.key)
            return keys.compactMap { w.removeValue(forKey: $0) }
        }
        for w in gone {
            _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), w.notifier.fd.raw, 0, 0)
            w.notifier.close()
        }
    }

    private func loop() {
        var datas = [UInt64](repeating: 0, count: 64)
        var evs = [UInt32](repeating: 0, count: 64)
        while true {
            let n = tether_epoll_wait(epfd.raw, &datas, &evs, 64, -1)
            if n < 0 { return }
            for i in 0..<Int(n) {
                guard let w = watches.withLock({ $0[datas[i]] }) else { continue }
                switch w.notifier.fired() {
                case .cgroupGone:
                    // The task ended: no OOM, and nothing more to watch.
                    _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), w.notifier.fd.raw, 0, 0)
                case .oom:
                    logger.warning("OOM killer acted in a task's cgroup", metadata: ["namespace": "\(w.namespace)", "id": "\(w.id)"])
                    events.publish(TaskEvent(namespace: w.namespace, topic: TaskEvent.Topic.oom, event: .init(containerID: w.id)))
                case .nothing:
                    break
                }
            }
        }
    }
}
