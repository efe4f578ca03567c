import CTether
import Foundation
import Synchronization
import TetherSys

/// Notices shim exits at once: a pidfd per shim on one epoll thread. A shim
/// the manager started is its child, and is reaped here (waitid on the pidfd);
/// one started by an earlier manager belongs to init by now, and is only watched.
final class ShimWatcher: Sendable {
    typealias OnExit = @Sendable (_ code: Int32?) -> Void

    private let epfd: FD
    private let watched = Mutex<[Int32: (pid: Int32, pidfd: FD, onExit: OnExit)]>([:])

    init() throws(SysError) {
        epfd = FD(try check(tether_epoll_create(), "epoll_create1"))
        try OSThread.start("shim-watcher") { [self] in loop() }
    }

    /// Calls `onExit` (on the watcher thread) when `pid` exits; with its exit
    /// code when it was our child. Returns false if the process is gone already.
    @discardableResult
    func watch(_ pid: Int32, onExit: @escaping OnExit) -> Bool {
        let raw = TestFault.pidfdOpen ? -EMFILE : tether_pidfd_open(pid)
        guard raw >= 0 else { return false }
        let pidfd = FD(raw)
        watched.withLock { $0[raw] = (pid, pidfd, onExit) }
        if tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), raw, UInt32(TETHER_EPOLLIN), UInt64(raw)) < 0 {
            watched.withLock { _ = $0.removeValue(forKey: raw) }
            return false
        }
        return true
    }

    /// Signals a watched process through its pidfd: never a process that
    /// has since taken its pid. False if it is not watched (or gone).
    @discardableResult
    func signal(_ pid: Int32, _ sig: Int32) -> Bool {
        watched.withLock { w in
            guard let e = w.values.first(where: { $0.pid == pid }) else { return false }
            return tether_pidfd_send_signal(e.pidfd.raw, sig) == 0
        }
    }

    private func loop() {
        var datas = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while true {
            let n = tether_epoll_wait(epfd.raw, &datas, &events, 64, -1)
            if n < 0 { return }
            for i in 0..<Int(n) {
                let raw = Int32(truncatingIfNeeded: datas[i])
                guard let entry = watched.withLock({ $0.removeValue(forKey: raw) }) else { continue }
                _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), raw, 0, 0)
                var code: Int32 = 0
                let reaped = tether_pidfd_reap(raw, &code)  // -ECHILD: not our child
                entry.pidfd.close()
                entry.onExit(reaped == 1 ? code : nil)
            }
        }
    }
}
