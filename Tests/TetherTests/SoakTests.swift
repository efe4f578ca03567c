#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherAPI
import TetherClient
import TetherManager
import TetherSys

/// The soak of issue 16: rounds of 200 tasks created, exec'd into, waited
/// and deleted, for TETHER_SOAK_SECONDS (300 by default), while 10 event
/// subscribers read slowly and 10 never read. tetherd's RSS and fd count
/// must come back to within 10% of where they were after the first round,
/// every exit must reach a subscriber that keeps up exactly once, and
/// nothing may be left behind.
@Suite("soak", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(15)))
struct SoakTests {
    static var seconds: Double { Double(ProcessInfo.processInfo.environment["TETHER_SOAK_SECONDS"] ?? "") ?? 300 }
    static let tasksPerRound = 200
    static let width = 8

    @Test("200 tasks a round for the soak time, with slow and silent event subscribers: memory and fds come back, every exit once, nothing left")
    func soak() async throws {
        try await withDaemon { d in
            let api = AsyncAPI(d)
            let exits = EventCollector(address: d.address, topics: ["/tasks/exit"])
            try #require(exits.ready.wait(timeout: .now() + 20) == .success, "the exit subscriber did not start")
            let stress = StressSubscribers(address: d.address)
            defer { stress.stop() }

            var expected: Set<String> = []
            var round = 0
            var baseline: (rss: Int, fds: Int)?
            var peak = (rss: 0, fds: 0)
            let began = Date()
            while baseline == nil || Date().timeIntervalSince(began) < Self.seconds {
                stress.reopenSilent()
                let ids = (0..<Self.tasksPerRound).map { "r\(round)-\($0)" }
                try await concurrently(ids) { id in
                    _ = try await api.create(CreateTaskRequest(id: id, args: ["sleep", "1000"]))
                    _ = try await api.start(id)
                }
                peak = (max(peak.rss, rss(d.pid)), max(peak.fds, fds(d.pid)))
                try await concurrently(ids) { id in
                    _ = try await api.exec(id, ExecRequest(execID: "x", args: ["true"]))
                    _ = try await api.startExec(id, "x")
                    let e = try await api.waitExec(id, "x")
                    #expect(e.status == 0, "exec in \(id): \(e)")
                }
                try await concurrently(ids) { id in
                    try await api.kill(id, signal: "KILL")
                    let e = try await api.wait(id)
                    #expect(e.status == 137, "\(id): \(e)")
                    _ = try await api.delete(id)
                }
                for id in ids { expected.insert("\(id)/"); expected.insert("\(id)/x") }
                if baseline == nil {
                    // After the first round: what tetherd holds once warmed up.
                    baseline = try await quiet(d, api, stress)
                    print("soak: baseline after round 0: RSS \(baseline!.rss / 1024) KiB, \(baseline!.fds) fds")
                }
                round += 1
            }
            let end = try await quiet(d, api, stress)
            let base = try #require(baseline)
            print("soak: \(round) rounds of \(Self.tasksPerRound) tasks in \(Int(Date().timeIntervalSince(began))) s; RSS \(base.rss / 1024) → \(end.rss / 1024) KiB (peak \(peak.rss / 1024)), fds \(base.fds) → \(end.fds) (peak \(peak.fds)); slow subscribers dropped \(stress.drops) times, silent ones \(stress.silentDrops)")
            #expect(Double(end.rss) <= Double(base.rss) * 1.1, "RSS \(base.rss) → \(end.rss)")
            #expect(Double(end.fds) <= Double(base.fds) * 1.1, "fds \(base.fds) → \(end.fds)")
            #expect(stress.slowLinesRead > 0, "the slow subscribers read nothing")
            // Long enough for the silent ones to fill their socket and queue: tetherd dropped them.
            if round >= 6 { #expect(stress.silentDrops > 0, "no silent subscriber was dropped in \(round) rounds") }
            // Every exit, exactly once, to the subscriber that kept up.
            // Each exit by task and exec; the probes between rounds are not counted.
            func counts() -> [String: Int] {
                Dictionary(exits.all.filter { $0.event.containerID != "probe" }.map { ("\($0.event.containerID)/\($0.event.execID ?? "")", 1) }, uniquingKeysWith: +)
            }
            let all = await eventually(30) { counts().values.reduce(0, +) >= expected.count }
            #expect(all, "\(counts().values.reduce(0, +)) exits seen of \(expected.count)")
            let counts = counts()
            #expect(Set(counts.keys) == expected, "missing \(expected.subtracting(counts.keys).sorted().prefix(5)), unexpected \(Set(counts.keys).subtracting(expected).sorted().prefix(5))")
            let twice = counts.filter { $0.value != 1 }
            #expect(twice.isEmpty, "delivered more than once: \(twice.sorted { $0.key < $1.key }.prefix(5))")
            // No task cgroup left under Tether's parent, on any hierarchy.
            let parent = Layout(root: d.root, state: d.state).cgroupParent
            for hierarchy in (try? Files.listDirectory("/sys/fs/cgroup")) ?? [] {
                let dir = "/sys/fs/cgroup/\(hierarchy)\(parent)/default"
                let left = ((try? Files.listDirectory(dir)) ?? []).filter { Files.isDirectory("\(dir)/\($0)") }
                #expect(left.isEmpty, "cgroups left in \(dir): \(left.prefix(5))")
            }
            let unified = "/sys/fs/cgroup\(parent)/default"
            let left = ((try? Files.listDirectory(unified)) ?? []).filter { Files.isDirectory("\(unified)/\($0)") }
            #expect(left.isEmpty, "cgroups left in \(unified): \(left.prefix(5))")
            stress.stop()
        }
    }

    /// Runs `body` for every ID, `width` at a time.
    private func concurrently(_ ids: [String], _ body: @escaping @Sendable (String) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { g in
            var next = ids.makeIterator()
            for _ in 0..<Self.width { if let id = next.next() { g.addTask { try await body(id) } } }
            while try await g.next() != nil {
                if let id = next.next() { g.addTask { try await body(id) } }
            }
        }
    }

    /// Closes the stress subscribers, makes one event so tetherd notices
    /// the closed ones, and waits until its fd count settles; then samples.
    private func quiet(_ d: TestDaemon, _ api: AsyncAPI, _ stress: StressSubscribers) async throws -> (rss: Int, fds: Int) {
        stress.closeAll()
        #expect(await eventually(10) { stress.slowConnected == 0 })
        _ = try await api.create(CreateTaskRequest(id: "probe", args: ["true"]))
        _ = try await api.delete("probe")
        var last = -1
        for _ in 0..<40 {
            let now = fds(d.pid)
            if now == last { break }
            last = now
            try await offPool { usleep(250_000) }
        }
        return (rss(d.pid), fds(d.pid))
    }
}

private func rss(_ pid: Int32) -> Int {
    let status = (try? Files.readString("/proc/\(pid)/status")) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
}

private func fds(_ pid: Int32) -> Int { ((try? Files.listDirectory("/proc/\(pid)/fd")) ?? []).count }

extension AsyncAPI {
    func kill(_ id: String, signal: String) async throws {
        let c = client
        try await offPool { try c.kill(id, signal: signal, all: false) }
    }
}

/// 10 subscribers that read a little, slowly (reconnecting when dropped),
/// and 10 that never read (reopened at a round's start once dropped).
final class StressSubscribers: @unchecked Sendable {
    private let address: String
    private let lock = NSLock()
    private var silent: [FD] = []
    private var slow: [FD] = []
    private var stopped = false
    private var paused = false
    private(set) var drops = 0
    private(set) var silentDrops = 0
    private(set) var slowLinesRead = 0
    private var slowOpen = 0
    /// Slow subscribers connected now.
    var slowConnected: Int { lock.lock(); defer { lock.unlock() }; return slowOpen }
    private static let request = Array("GET /v1/events HTTP/1.1\r\nHost: tetherd\r\nConnection: close\r\n\r\n".utf8)

    init(address: String) {
        self.address = address
        for _ in 0..<10 {
            Thread.detachNewThread { [self] in slowReader() }
        }
    }

    private func connect() -> FD? {
        guard let fd = try? UnixSocket.connect(address) else { return nil }
        guard (try? fd.writeAll(Self.request)) != nil else { fd.close(); return nil }
        return fd
    }

    /// Reads 2 KiB every 100 ms; reconnects when tetherd drops it.
    private func slowReader() {
        var fd: FD?
        while true {
            lock.lock()
            let (stop, pause) = (stopped, paused)
            lock.unlock()
            if stop { fd?.close(); return }
            if pause {
                if let open = fd {
                    open.close()
                    fd = nil
                    lock.lock(); slowOpen -= 1; lock.unlock()
                }
                usleep(100_000)
                continue
            }
            if fd == nil {
                fd = connect()
                guard let open = fd else { usleep(100_000); continue }
                // Reads give up after 200 ms, so a pause is noticed without an event.
                var tv = timeval(tv_sec: 0, tv_usec: 200_000)
                setsockopt(open.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                lock.lock(); slowOpen += 1; lock.unlock()
            }
            var buf = [UInt8](repeating: 0, count: 2048)
            let n = recv(fd!.raw, &buf, buf.count, 0)
            if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            if n <= 0 {
                fd?.close()
                fd = nil
                lock.lock(); drops += 1; slowOpen -= 1; lock.unlock()
                continue
            }
            lock.lock(); slowLinesRead += buf[0..<n].filter { $0 == 0x0A }.count; lock.unlock()
            usleep(100_000)
        }
    }

    /// Opens the silent subscribers that are not open: at first, after a
    /// pause, and in place of those tetherd dropped (it hung up on them).
    func reopenSilent() {
        lock.lock()
        defer { lock.unlock() }
        paused = false
        silent = silent.filter { fd in
            // POLLRDHUP (0x2000): the peer hung up, though unread data remains.
            var p = pollfd(fd: fd.raw, events: Int16(0x2000), revents: 0)
            let hungUp = poll(&p, 1, 0) == 1 && p.revents & Int16(0x2000 | POLLHUP) != 0
            if hungUp {
                silentDrops += 1
                fd.close()
            }
            return !hungUp
        }
        while silent.count < 10, let fd = connect() { silent.append(fd) }
    }

    /// Closes every stress connection (the slow readers wait until the next round).
    func closeAll() {
        lock.lock()
        defer { lock.unlock() }
        paused = true
        for fd in silent { fd.close() }
        silent = []
    }

    func stop() {
        lock.lock()
        defer { lock.unlock() }
        stopped = true
        for fd in silent { fd.close() }
        silent = []
    }
}
