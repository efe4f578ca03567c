#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherOCI
import TetherSeccomp
import TetherSys

/// The shim as a seccomp agent. A task created with `seccomp-audit` or
/// `seccomp-learn` has a profile whose syscalls outside the allowlist are
/// `SCMP_ACT_NOTIFY`, with `listenerPath` the socket BUNDLE/seccomp.sock
/// this agent listens on. runc connects to it when it has loaded a
/// process's filter (the init at create, each exec) and sends the
/// container's state with the notification fd (SCM_RIGHTS). Each
/// notification is taken on the shim's event loop, named with libseccomp,
/// answered at once (audit: EPERM; learn: the kernel runs the call), and
/// recorded in BUNDLE/seccomp.json: every syscall with its count, the
/// first pid that made it and that pid's exec ID.
///
/// A notification is never left waiting on anything but this loop; if the
/// shim dies, the kernel fails every pending and later notified call
/// (ENOSYS) once the last notification fd is closed, so the container goes
/// on, it does not hang.
final class SeccompAgent {
    enum Mode: String { case audit, learn }

    struct Record: Codable {
        var name: String
        var count: UInt64
        var firstPid: Int32
        /// Known once the shim has the pid of the exec it belongs to
        /// (runc exec may return after the process made its first call).
        var execID: String?
    }

    struct Report: Codable {
        var mode: String
        var syscalls: [Record]
    }

    let mode: Mode
    private let loop: EventLoop
    private let socketPath: String
    private let reportPath: String
    /// The exec ID of a pid in the container, "" for the init (the Container knows).
    private let execFor: (Int32) -> String
    private var listener: (fd: FD, source: EventLoop.Source)?
    private var connections: [Int32: (fd: FD, source: EventLoop.Source)] = [:]
    private var notifiers: [Int32: (fd: FD, source: EventLoop.Source)] = [:]
    private var records: [String: Record] = [:]
    private var order: [String] = []
    private var flushPending = false

    /// Notifications answered; for the log at the end.
    private(set) var answered: UInt64 = 0

    /// The agent a spec asks for: its linux.seccomp names our socket as
    /// listenerPath and "tether:audit" or "tether:learn" as metadata; nil otherwise.
    static func start(spec: JSONValue, bundle: String, loop: EventLoop, execFor: @escaping (Int32) -> String) throws -> SeccompAgent? {
        let seccomp = spec["linux"]?["seccomp"]
        guard let path = seccomp?["listenerPath"]?.stringValue, path == "\(bundle)/seccomp.sock",
              let meta = seccomp?["listenerMetadata"]?.stringValue, meta.hasPrefix("tether:"),
              let mode = Mode(rawValue: String(meta.dropFirst("tether:".count))) else { return nil }
        let agent = SeccompAgent(mode: mode, loop: loop, socketPath: path, reportPath: "\(bundle)/seccomp.json", execFor: execFor)
        try agent.listen()
        return agent
    }

    private init(mode: Mode, loop: EventLoop, socketPath: String, reportPath: String, execFor: @escaping (Int32) -> String) {
        self.mode = mode
        self.loop = loop
        self.socketPath = socketPath
        self.reportPath = reportPath
        self.execFor = execFor
    }

    private func listen() throws {
        unlink(socketPath)
        let fd = try UnixSocket.listen(socketPath)
        chmod(socketPath, 0o600)
        try fd.setNonBlocking(true)
        let source = try loop.add(fd.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in accept() }
        listener = (fd, source)
        flush()
        ShimLog.info("seccomp agent (\(mode.rawValue)) listening on \(socketPath)")
    }

    /// runc connects once per process whose filter it loaded.
    private func accept() {
        guard let l = listener else { return }
        let raw = tether_accept(l.fd.raw)
        guard raw >= 0 else { return }  // EAGAIN: another wakeup took it
        let conn = FD(raw, label: "seccomp listener connection")
        guard let source = try? loop.add(raw, events: UInt32(TETHER_EPOLLIN), { [self] _ in receive(raw) }) else {
            conn.close()
            return
        }
        connections[raw] = (conn, source)
    }

    /// The container's state (JSON) and the notification fd, in one message.
    private func receive(_ raw: Int32) {
        guard let c = connections.removeValue(forKey: raw) else { return }
        loop.remove(c.source)
        defer { c.fd.close() }
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        var notifyFd: Int32 = -1
        let n = buf.withUnsafeMutableBytes { tether_recv_fd(raw, $0.baseAddress!, $0.count, &notifyFd) }
        guard n > 0, notifyFd >= 0 else {
            if notifyFd >= 0 { close(notifyFd) }
            ShimLog.warn("seccomp agent: a connection brought no notification fd (\(n < 0 ? SysError("recvmsg", errno: Int32(-n)).message : "no fd"))")
            return
        }
        let fd = FD(notifyFd, label: "seccomp notification fd")
        var pid: Int64 = 0
        switch (try? JSONDecoder().decode(JSONValue.self, from: Data(buf[0..<n])))?["pid"] {
        case .int(let p)?: pid = p
        case .uint(let p)?: pid = Int64(clamping: p)
        default: break
        }
        do {
            try fd.setNonBlocking(true)
            let source = try loop.add(notifyFd, events: UInt32(TETHER_EPOLLIN)) { [self] events in notified(notifyFd, events) }
            notifiers[notifyFd] = (fd, source)
            ShimLog.info("seccomp agent: watching the filter of pid \(pid)")
        } catch {
            fd.close()
            ShimLog.error("seccomp agent: cannot watch the notification fd of pid \(pid): \(error); its notified calls fail with ENOSYS")
        }
    }

    /// A notification is ready (EPOLLIN: the ioctl will not block), or
    /// every process using the filter is gone (EPOLLHUP alone).
    private func notified(_ raw: Int32, _ events: UInt32) {
        if events & UInt32(TETHER_EPOLLIN) != 0 {
            var id: UInt64 = 0, pid: UInt32 = 0, arch: UInt32 = 0
            var nr: Int32 = 0
            let r = tether_seccomp_recv(raw, &id, &pid, &nr, &arch)
            if r == 0 {
                let answer = mode == .audit ? tether_seccomp_respond(raw, id, -EPERM, 0) : tether_seccomp_respond(raw, id, 0, 1)
                answered += 1
                record(name: SeccompCheck.name(ofSyscall: nr, arch: arch) ?? "syscall \(nr)", pid: Int32(bitPattern: pid))
                if answer != 0 && answer != -ENOENT {
                    ShimLog.warn("seccomp agent: answering pid \(pid): \(SysError("ioctl(SECCOMP_IOCTL_NOTIF_SEND)", errno: -answer).message)")
                }
                return
            }
            // ENOENT: the caller died before we read it.
            if r == -ENOENT || r == -EINTR { return }
            ShimLog.warn("seccomp agent: \(SysError("ioctl(SECCOMP_IOCTL_NOTIF_RECV)", errno: -r).message); no longer watching that filter")
        } else if events & UInt32(TETHER_EPOLLHUP | TETHER_EPOLLERR) == 0 {
            return
        }
        if let n = notifiers.removeValue(forKey: raw) {
            loop.remove(n.source)
            n.fd.close()
        }
    }

    /// A new syscall is on disk before the call is answered (so a task
    /// that has exited has all its syscalls in the report); counts follow
    /// at most ten times a second.
    private func record(name: String, pid: Int32) {
        if records[name] == nil {
            records[name] = Record(name: name, count: 1, firstPid: pid, execID: nil)
            order.append(name)
            ShimLog.info("seccomp agent: \(mode == .audit ? "refused" : "allowed (learning)") \(name), first by pid \(pid)")
            flush()
        } else {
            records[name]!.count += 1
        }
        guard !flushPending else { return }
        // At most ten writes a second, however many calls come.
        flushPending = true
        loop.after(100_000_000) { [self] in
            flushPending = false
            flush()
        }
    }

    /// BUNDLE/seccomp.json, written atomically: what the manager and `tether seccomp show` read.
    private func flush() {
        // "" may only mean the exec's pid is not known yet: an exec ID, once found, is kept.
        for name in order where records[name]?.execID == nil {
            let exec = execFor(records[name]!.firstPid)
            if !exec.isEmpty { records[name]!.execID = exec }
        }
        let report = Report(mode: mode.rawValue, syscalls: order.compactMap { r in
            records[r].map { Record(name: $0.name, count: $0.count, firstPid: $0.firstPid, execID: $0.execID ?? execFor($0.firstPid)) }
        })
        do {
            try Files.writeAtomically(reportPath, Array(try JSONEncoder().encode(report)) + [0x0A], mode: 0o600)
        } catch {
            ShimLog.warn("seccomp agent: cannot write \(reportPath): \(error)")
        }
    }

    /// Closes everything (the task is deleted); the report stays with the bundle.
    func stop() {
        if flushPending { flush() }
        for c in connections.values { loop.remove(c.source); c.fd.close() }
        for n in notifiers.values { loop.remove(n.source); n.fd.close() }
        if let l = listener { loop.remove(l.source); l.fd.close() }
        connections = [:]
        notifiers = [:]
        listener = nil
        unlink(socketPath)
    }
}

extension Container {
    /// The exec ID of the process `pid` belongs to ("" for the init's tree),
    /// following parents up to an exec'd process.
    func execID(of pid: Int32) -> String {
        let execs = execPids()
        var p = pid
        for _ in 0..<64 where p > 1 && p != initProcess?.pid {
            if let e = execs[p] { return e }
            guard let parent = Proc.parent(p) else { break }
            p = parent
        }
        return ""
    }
}
