#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization

/// One thread's event loop: epoll over file descriptors, timers, and the
/// jobs of Swift tasks that prefer it as their executor. A process built on
/// it (the shim) runs everything on this one thread: fd handlers, timers
/// and async code alike, so its state needs no locks and no two pieces of
/// it ever race; no thread pool is ever started.
///
/// Handlers, timers and `add`/`remove` are for the loop's own thread (code
/// run by a handler, a timer or a task on this loop). `execute` and task
/// jobs may come from any thread.
public final class EventLoop: TaskExecutor, @unchecked Sendable {
    public typealias Handler = (_ events: UInt32) -> Void

    /// A registered fd. Remove it before closing the fd.
    public struct Source: Hashable, Sendable { let key: UInt64 }
    public struct Timer: Hashable, Sendable { let id: UInt64 }

    private struct Inbox {
        var jobs: [UnownedJob] = []
        var calls: [@Sendable () -> Void] = []
        var woken = false
    }

    private let epfd: FD
    private let wake: FD
    private let inbox = Mutex(Inbox())
    // The loop thread's own state.
    private var sources: [UInt64: (fd: Int32, handler: Handler)] = [:]
    private var timers: [(at: UInt64, id: UInt64, body: () -> Void)] = []
    private var nextKey: UInt64 = 1
    private var stopped = false

    public init() throws(SysError) {
        epfd = FD(try check(tether_epoll_create(), "epoll_create1"), label: "epoll")
        wake = FD(try check(tether_eventfd(1), "eventfd"), label: "the loop's eventfd")
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), wake.raw, UInt32(TETHER_EPOLLIN), 0), "epoll_ctl")
    }

    // MARK: - fds

    /// Calls `handler` on the loop whenever `fd` is ready for `events`
    /// (level-triggered; EPOLLERR and EPOLLHUP always count).
    public func add(_ fd: Int32, events: UInt32, _ handler: @escaping Handler) throws(SysError) -> Source {
        let key = nextKey
        nextKey += 1
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), fd, events, key), "epoll_ctl(ADD)", "fd \(fd)")
        sources[key] = (fd, handler)
        return Source(key: key)
    }

    public func modify(_ s: Source, events: UInt32) throws(SysError) {
        guard let fd = sources[s.key]?.fd else { return }
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_MOD), fd, events, s.key), "epoll_ctl(MOD)", "fd \(fd)")
    }

    /// Stops watching the source; an event for it already fetched is dropped.
    public func remove(_ s: Source) {
        guard let entry = sources.removeValue(forKey: s.key) else { return }
        _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), entry.fd, 0, 0)
    }

    // MARK: - timers

    /// Runs `body` on the loop once `nanos` have passed.
    @discardableResult
    public func after(_ nanos: UInt64, _ body: @escaping () -> Void) -> Timer {
        let id = nextKey
        nextKey += 1
        let at = monotonicNanos() &+ nanos
        let i = timers.firstIndex { $0.at > at } ?? timers.count
        timers.insert((at, id, body), at: i)
        return Timer(id: id)
    }

    public func cancel(_ t: Timer) { timers.removeAll { $0.id == t.id } }

    /// Suspends the calling task (which runs on this loop) for `nanos`.
    public func sleep(_ nanos: UInt64) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            after(nanos) { c.resume() }
        }
    }

    // MARK: - work from anywhere

    /// Runs `body` on the loop soon. Safe from any thread.
    public func execute(_ body: @escaping @Sendable () -> Void) {
        post { $0.calls.append(body) }
    }

    /// Starts an async task whose code runs on this loop.
    @discardableResult
    public func task(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        Task(executorPreference: self) { await body() }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        post { $0.jobs.append(job) }
    }

    private func post(_ body: (inout Inbox) -> Void) {
        let poke = inbox.withLock { i -> Bool in
            body(&i)
            defer { i.woken = true }
            return !i.woken
        }
        if poke {
            var one: UInt64 = 1
            _ = Glibc.write(wake.raw, &one, 8)
        }
    }

    // MARK: - running

    /// Runs until `stop()`. Throws only if epoll itself fails: then nothing
    /// on this loop can make progress, and the caller must end the process.
    public func run() throws(SysError) {
        var keys = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while !stopped {
            runDue()
            if drainInbox() { continue }
            var timeout: Int32 = -1
            if let first = timers.first {
                let now = monotonicNanos()
                timeout = first.at <= now ? 0 : Int32(clamping: (first.at - now + 999_999) / 1_000_000)
            }
            let n = tether_epoll_wait(epfd.raw, &keys, &events, 64, timeout)
            if n < 0 { throw SysError("epoll_wait", errno: -n, "the event loop") }
            for i in 0..<Int(n) {
                if keys[i] == 0 {
                    var v: UInt64 = 0
                    _ = Glibc.read(wake.raw, &v, 8)
                    continue
                }
                sources[keys[i]]?.handler(events[i])
            }
        }
    }

    /// Makes `run` return once the current event is handled.
    public func stop() { stopped = true }

    private func runDue() {
        let now = monotonicNanos()
        while let first = timers.first, first.at <= now {
            timers.removeFirst()
            first.body()
        }
    }

    /// Runs what other threads and resumed tasks handed in. True if it ran anything.
    private func drainInbox() -> Bool {
        let (jobs, calls) = inbox.withLock { i in
            defer { i.jobs = []; i.calls = []; i.woken = false }
            return (i.jobs, i.calls)
        }
        for c in calls { c() }
        for j in jobs { j.runSynchronously(on: asUnownedTaskExecutor()) }
        return !jobs.isEmpty || !calls.isEmpty
    }

    /// Runs the loop on a thread of its own (tests, tools). A failure of the loop is fatal.
    public func runOnNewThread(_ name: String) throws(SysError) {
        try OSThread.start(name) { [self] in
            do { try run() } catch { fatalError("\(name): \(error)") }
        }
    }
}
