import CTether
import Foundation
import Logging
import Synchronization
import TetherOCI
import TetherRuntime
import TetherSys

/// Publishes /tasks/seccomp the first time a task's seccomp agent records
/// a syscall. The shim writes its report (BUNDLE/seccomp.json) atomically,
/// a new syscall before the call is answered; this monitor watches each
/// agent task's bundle with inotify for that rename and publishes the names
/// it has not seen. One thread for every task.
public final class SeccompMonitor: TaskMonitor, Sendable {
    private struct Watch: Sendable {
        let namespace: String
        let id: String
        let bundle: String
        var seen: Set<String>
    }

    private let inotify: FD
    private let watches = Mutex<[Int32: Watch]>([:])
    private let events: EventBus
    private let logger: Logger

    public init(events: EventBus, logger: Logger) throws {
        self.events = events
        self.logger = logger
        inotify = FD(try check(tether_inotify_init(), "inotify_init1"), label: "the seccomp monitor's inotify")
        try inotify.setNonBlocking(false)
        try OSThread.start("seccomp-monitor") { [self] in loop() }
    }

    public func monitor(_ task: any RuntimeTask) throws {
        // Most specs have no listener: a byte search spares decoding them.
        guard let shim = task as? ShimTask, task.info.spec.firstRange(of: Data("\"tether:".utf8)) != nil,
              let spec = try? JSONDecoder().decode(JSONValue.self, from: task.info.spec),
              spec["linux"]?["seccomp"]?["listenerMetadata"]?.stringValue?.hasPrefix("tether:") == true else { return }
        let wd = try check(tether_inotify_watch(inotify.raw, shim.bundle, 0x80 /* IN_MOVED_TO: the shim's atomic rename */), "inotify_add_watch", shim.bundle)
        let seen = Set(Self.report(shim.bundle)?.syscalls.map(\.name) ?? [])
        watches.withLock { $0[wd] = Watch(namespace: task.info.namespace, id: task.id, bundle: shim.bundle, seen: seen) }
    }

    public func stop(_ task: any RuntimeTask) throws {
        let gone = watches.withLock { w in
            let keys = w.filter { $0.value.namespace == task.info.namespace && $0.value.id == task.id }.map(\.key)
            for k in keys { w.removeValue(forKey: k) }
            return keys
        }
        for wd in gone { inotify_rm_watch(inotify.raw, wd) }
    }

    /// The parts of the shim's report (TetherAPI.SeccompReport) this monitor reads.
    struct Report: Decodable {
        var mode: String
        var syscalls: [Entry]
        struct Entry: Decodable {
            var name: String
            var firstPid: Int32
            var execID: String
        }
    }

    static func report(_ bundle: String) -> Report? {
        guard let bytes = try? Files.readRegular("\(bundle)/seccomp.json", limit: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(Report.self, from: Data(bytes))
    }

    private func loop() {
        var buf = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = buf.withUnsafeMutableBytes { read(inotify.raw, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("seccomp monitor: \(SysError.last("read", "inotify").message); /tasks/seccomp events stop")
                return
            }
            // struct inotify_event: wd, mask, cookie, len, then len bytes of name.
            var off = 0
            while off + 16 <= n {
                let wd = buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off, as: Int32.self) }
                let len = Int(buf.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self) })
                let nameBytes = buf[(off + 16)..<min(n, off + 16 + len)].prefix { $0 != 0 }
                off += 16 + len
                guard String(decoding: nameBytes, as: UTF8.self) == "seccomp.json" else { continue }
                changed(wd)
            }
        }
    }

    private func changed(_ wd: Int32) {
        guard let w = watches.withLock({ $0[wd] }), let report = Self.report(w.bundle) else { return }
        let new = report.syscalls.filter { !w.seen.contains($0.name) }
        guard !new.isEmpty else { return }
        watches.withLock { $0[wd]?.seen.formUnion(new.map(\.name)) }
        for e in new {
            events.publish(TaskEvent(namespace: w.namespace, topic: TaskEvent.Topic.seccomp,
                                     event: .init(containerID: w.id, execID: e.execID.isEmpty ? nil : e.execID, pid: UInt32(bitPattern: e.firstPid),
                                                  reason: report.mode == "audit" ? "refused" : "allowed (learning)", syscall: e.name)))
        }
    }
}
