#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherSys

/// Notices the kernel's OOM killer acting in the container's cgroup, on the
/// shim's event loop (under containerd the shim reports OOMs itself; under
/// tetherd the manager's OOMMonitor does). Both watch through OOMNotifier.
final class OOMWatch: @unchecked Sendable {
    private let loop: EventLoop
    private var notifier: OOMNotifier?
    private var source: EventLoop.Source?

    init(loop: EventLoop) { self.loop = loop }

    /// Watches cgroup `path` (absolute, as in linux.cgroupsPath) under `root`;
    /// `onOOM` runs on the loop for each OOM. False when there is nothing to watch.
    @discardableResult
    func start(cgroup path: String, root: String = "/sys/fs/cgroup", onOOM: @escaping () -> Void) -> Bool {
        do {
            guard let n = try OOMNotifier.open(cgroup: path, root: root) else { return false }
            notifier = n
            source = try loop.add(n.fd.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in
                switch n.fired() {
                case .oom: onOOM()
                case .cgroupGone: stop()
                case .nothing: break
                }
            }
            return true
        } catch {
            ShimLog.warn("cannot watch \(path) for OOM kills: \(error)")
            stop()
            return false
        }
    }

    func stop() {
        if let source { loop.remove(source) }
        source = nil
        notifier?.close()
        notifier = nil
    }
}
