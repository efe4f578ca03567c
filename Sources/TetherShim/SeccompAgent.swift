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
        var execID: String
    }

    /// A syscall seen, with the process its filter was loaded for: the
    /// exec ID is known once that process's launch has finished (runc exec
    /// can return after the process made its first call).
    private struct Seen {
        var name: String
        var count: UInt64
        var firstPid: Int32
        var owner: Int32
        var since: UInt64
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
    private var records: [String: Seen] = [:]
    private var order: [String] = []
    /// The process each notification fd's filter was loaded for (the pid in runc's state).
    private var owners: [Int32: Int32] = [:]
    /// Launched processes: pid → exec ID ("" for the init), told by the Container.
    private var launched: [Int32: String] = [:]
    private var flushPending = false
    private var stopped = false

    /// Notifications answered; for the log at the end.
    private(set) var answered: UInt64 = 0

    /// The agent a spec asks for: its linux.seccomp names our socket as
    /// listenerPath and "tether:audit" or "tether:learn" as metadata; nil otherwise.
    static func start(bundle: String, loop: EventLoop, execFor: @escaping (Int32) -> String) throws -> SeccompAgent? {
        // Most specs have no listener: a byte search spares decoding them.
        guard let bytes = try? Files.readRegular("\(bundle)/config.json"), bytes.firstRange(of: Array("\"tether:".utf8)) != nil,
              let spec = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)) else { return nil }
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
            owners[notifyFd] = Int32(clamping: pid)
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
                record(name: SeccompCheck.name(ofSyscall: nr, arch: arch) ?? "syscall \(nr)", pid: Int32(bitPattern: pid), owner: owners[raw] ?? 0)
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
        owners.removeValue(forKey: raw)
    }

    /// The Container launched `pid` as `execID` ("" for the init): the
    /// syscalls its filter reported can now be written with their exec ID.
    func started(pid: Int32, execID: String) {
        launched[pid] = execID
        if records.values.contains(where: { $0.owner == pid }) { flush() }
    }

    /// A new syscall is on disk before the call is answered (so a task
    /// that has exited has all its syscalls in the report), unless its
    /// process's launch has not finished: then when it has (`started`), or
    /// 2 s later. Counts follow at most ten times a second.
    private func record(name: String, pid: Int32, owner: Int32) {
        if records[name] == nil {
            records[name] = Seen(name: name, count: 1, firstPid: pid, owner: owner, since: monotonicNanos())
            order.append(name)
            ShimLog.info("seccomp agent: \(mode == .audit ? "refused" : "allowed (learning)") \(name), first by pid \(pid)")
            if launched[owner] != nil { flush() }
        } else {
            records[name]!.count += 1
        }
        guard !flushPending else { return }
        flushPending = true
        loop.after(100_000_000) { [self] in
            flushPending = false
            flush()
        }
    }

    /// BUNDLE/seccomp.json, written atomically: what the manager and `tether seccomp show` read.
    private func flush(final: Bool = false) {
        guard !stopped else { return }
        let now = monotonicNanos()
        var waiting = false
        let report = Report(mode: mode.rawValue, syscalls: order.compactMap { name in
            guard let r = records[name] else { return nil }
            let exec = launched[r.owner]
            if exec == nil && !final && now - r.since < 2_000_000_000 {
                waiting = true
                return nil
            }
            return Record(name: r.name, count: r.count, firstPid: r.firstPid, execID: exec ?? execFor(r.firstPid))
        })
        do {
            try Files.writeAtomically(reportPath, Array(try JSONEncoder().encode(report)) + [0x0A], mode: 0o600)
        } catch {
            ShimLog.warn("seccomp agent: cannot write \(reportPath): \(error)")
        }
        if waiting && !flushPending && !final {
            flushPending = true
            loop.after(100_000_000) { [self] in
                flushPending = false
                flush()
            }
        }
    }

    /// Closes everything (the task is deleted); the report stays with the bundle.
    func stop() {
        flush(final: true)
        stopped = true
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
