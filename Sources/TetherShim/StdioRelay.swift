#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization
import TetherSys

/// Moves bytes between a container's stdio pipes and the task's FIFOs (or
/// files), on one epoll thread for the whole shim. With splice(2) the bytes
/// never enter the shim's memory; where splice cannot work (a tty, say) it
/// falls back to read/write through one 64 KiB buffer for the whole relay;
/// a stream keeps only what its destination has not taken yet.
///
/// Backpressure, not buffering: when a destination is full the relay stops
/// reading its source, so a container writing to an unread stdout blocks once
/// the pipes fill, and the shim's memory stays flat.
///
/// Only the relay thread touches the streams' fds: other threads send it
/// commands (add, close-when-drained, remove) and wake it with an eventfd.
final class StdioRelay: Sendable {
    typealias StreamID = UInt64

    private enum Command: Sendable {
        case add(StreamID, Stream)
        case closeWhenDrained(StreamID)
        case remove(StreamID)
    }

    /// Handed to the relay thread in a command; from then on only that thread touches it.
    private final class Stream: @unchecked Sendable {
        let src: FD
        let dst: FD
        let onDone: (@Sendable () -> Void)?
        /// Sees every chunk before it is written on (the task's log file).
        let tap: LogTap?
        var useSplice: Bool
        /// A regular file or a device cannot be in an epoll set: it is always
        /// ready, so it is read until its destination is full or it ends.
        var srcPollable = true
        var dstPollable = true
        var waitingForDst = false
        var closeWhenDrained = false
        /// Read but not yet written (the destination was full): `pending[sent...]`.
        var pending: [UInt8] = []
        var sent = 0
        var hasPending: Bool { sent < pending.count }

        init(src: FD, dst: FD, tap: LogTap?, onDone: (@Sendable () -> Void)?) {
            self.src = src
            self.dst = dst
            self.tap = tap
            self.onDone = onDone
            useSplice = tap == nil  // a tap must see the bytes, so they go through memory
        }
    }

    private let epfd: FD
    /// The read/write fallback's buffer; only the relay thread touches it.
    private nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    private let wake: FD
    private let commands = Mutex<[Command]>([])
    /// Streams waiting for room at their destination (nobody reads it).
    private let blocked = Mutex<Set<StreamID>>([])
    private let nextID = Atomic<UInt64>(1)

    init() throws(SysError) {
        epfd = FD(try check(tether_epoll_create(), "epoll_create1"))
        wake = FD(try check(tether_eventfd(1), "eventfd"))
        _ = try check(tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), wake.raw, UInt32(TETHER_EPOLLIN), 0), "epoll_ctl")
        OSThread.start("stdio") { [self] in loop() }
    }

    /// Copies `src` to `dst` until `src` reaches end of file (every writer
    /// closed), then closes both and calls `onDone` on the relay thread.
    /// The relay owns both fds from now on.
    @discardableResult
    func add(from src: FD, to dst: FD, tap: LogTap? = nil, onDone: (@Sendable () -> Void)? = nil) -> StreamID {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        send(.add(id, Stream(src: src, dst: dst, tap: tap, onDone: onDone)))
        return id
    }

    /// Finishes the stream once `src` has nothing more to read right now:
    /// for stdin, whose FIFO never reaches end of file (the shim holds a writer).
    func closeWhenDrained(_ id: StreamID) { send(.closeWhenDrained(id)) }

    /// Drops the stream now, closing both fds.
    func remove(_ id: StreamID) { send(.remove(id)) }

    /// Is this stream stuck on a full destination (a FIFO nobody reads)?
    func isBlocked(_ id: StreamID) -> Bool { blocked.withLock { $0.contains(id) } }

    private func send(_ c: Command) {
        commands.withLock { $0.append(c) }
        var one: UInt64 = 1
        _ = Glibc.write(wake.raw, &one, 8)
    }

    // MARK: - the relay thread

    private func loop() {
        var streams: [StreamID: Stream] = [:]
        var datas = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while true {
            let n = tether_epoll_wait(epfd.raw, &datas, &events, 64, -1)
            if n < 0 {
                ShimLog.error("stdio: epoll_wait: \(SysError("epoll_wait", errno: -n))")
                return
            }
            for i in 0..<Int(n) {
                let data = datas[i]
                if data == 0 {
                    var v: UInt64 = 0
                    _ = Glibc.read(wake.raw, &v, 8)
                    apply(commands.withLock { c in let all = c; c.removeAll(); return all }, &streams)
                    continue
                }
                let id = data >> 1
                guard let s = streams[id] else { continue }
                let isDst = data & 1 == 1
                if isDst && events[i] & (UInt32(TETHER_EPOLLERR) | UInt32(TETHER_EPOLLHUP)) != 0 {
                    finish(id, s, &streams)  // nobody reads the destination any more
                    continue
                }
                pump(id, s, &streams)
            }
        }
    }

    private func apply(_ list: [Command], _ streams: inout [StreamID: Stream]) {
        for c in list {
            switch c {
            case .add(let id, let s):
                _ = tether_set_nonblock(s.src.raw, 1)
                _ = tether_set_nonblock(s.dst.raw, 1)
                streams[id] = s
                let rc = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), s.src.raw, UInt32(TETHER_EPOLLIN), id << 1)
                if rc == -EPERM {
                    s.srcPollable = false  // a regular file or a device: always readable
                } else if rc < 0 {
                    ShimLog.error("stdio: cannot watch \(s.src): \(SysError("epoll_ctl", errno: -rc))")
                    finish(id, s, &streams)
                    continue
                }
                // Regular files cannot be polled (EPERM); they are always writable.
                if tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), s.dst.raw, 0, id << 1 | 1) < 0 { s.dstPollable = false }
                pump(id, s, &streams)
            case .closeWhenDrained(let id):
                guard let s = streams[id] else { continue }
                s.closeWhenDrained = true
                pump(id, s, &streams)
            case .remove(let id):
                if let s = streams[id] { finish(id, s, &streams, notify: false) }
            }
        }
    }

    private enum Outcome { case srcEmpty, dstFull, eof, failed }

    /// Moves what can be moved now, then waits on the right fd.
    private func pump(_ id: StreamID, _ s: Stream, _ streams: inout [StreamID: Stream]) {
        var moved = 0
        var outcome = Outcome.srcEmpty
        while true {
            if moved >= 16 << 20 {
                // Yield to the other streams; epoll is level-triggered and
                // brings us back. A source epoll cannot watch comes back
                // through its destination's readiness instead.
                if !s.srcPollable { outcome = .dstFull }
                break
            }
            let n = s.useSplice ? splice(s) : copy(s)
            if n > 0 { moved += n; continue }
            // A pty master reads EIO once every slave fd is closed: its end of file.
            if n == 0 || n == -Int(EIO) { outcome = .eof; break }
            if n == -Int(EAGAIN) {
                // A source epoll cannot watch is never empty (it ends with 0):
                // EAGAIN is its destination being full, even if it has room again by now.
                outcome = !s.srcPollable || (s.dstPollable && !writable(s.dst.raw)) || s.hasPending ? .dstFull : .srcEmpty
                break
            }
            if n == -Int(EINVAL) && s.useSplice { s.useSplice = false; continue }
            ShimLog.warn("stdio: stream \(id) failed: \(SysError("splice", errno: Int32(-n)))")
            outcome = .failed
            break
        }
        switch outcome {
        case .eof, .failed:
            finish(id, s, &streams)
        case .srcEmpty where s.closeWhenDrained || !s.srcPollable:
            finish(id, s, &streams)
        case .srcEmpty:
            if s.waitingForDst { waitFor(dst: false, id, s) }
        case .dstFull:
            if !s.waitingForDst { waitFor(dst: true, id, s) }
        }
    }

    /// Watches the source or the destination. The source is taken out of the
    /// epoll set while we wait for the destination: a pipe whose writers are
    /// gone reports EPOLLHUP whatever events are asked for, and would spin us.
    private func waitFor(dst: Bool, _ id: StreamID, _ s: Stream) {
        s.waitingForDst = dst
        blocked.withLock { if dst { $0.insert(id) } else { $0.remove(id) } }
        if s.srcPollable {
            if dst {
                _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), s.src.raw, 0, 0)
            } else {
                _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_ADD), s.src.raw, UInt32(TETHER_EPOLLIN), id << 1)
            }
        }
        if s.dstPollable {
            _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_MOD), s.dst.raw, dst ? UInt32(TETHER_EPOLLOUT) : 0, id << 1 | 1)
        }
    }

    /// Bytes spliced, 0 at end of file, or -errno.
    private func splice(_ s: Stream) -> Int {
        tether_splice(s.src.raw, s.dst.raw, 1 << 20)
    }

    /// The read/write fallback: bytes moved, 0 at end of file, or -errno.
    /// What the destination does not take at once waits in the stream.
    private func copy(_ s: Stream) -> Int {
        if s.hasPending {
            let w = s.pending.withUnsafeBytes { Glibc.write(s.dst.raw, $0.baseAddress! + s.sent, $0.count - s.sent) }
            if w < 0 { return errno == EINTR ? 1 : -Int(errno) }
            s.sent += w
            if !s.hasPending { s.pending = []; s.sent = 0 }
            return max(w, 1)
        }
        let r = Glibc.read(s.src.raw, scratch.baseAddress!, scratch.count)
        if r < 0 { return errno == EINTR ? 1 : -Int(errno) }
        if r == 0 { return 0 }
        let chunk = UnsafeRawBufferPointer(rebasing: scratch[0..<r])
        s.tap?.write(Array(chunk))
        var w = 0
        while w < r {
            let n = Glibc.write(s.dst.raw, chunk.baseAddress! + w, r - w)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // full (EAGAIN) or failing: the rest waits, and the next write says which
            w += n
        }
        if w < r { s.pending = Array(chunk[w...]) }
        return r
    }

    private func writable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLOUT) != 0
    }

    private func finish(_ id: StreamID, _ s: Stream, _ streams: inout [StreamID: Stream], notify: Bool = true) {
        if !s.waitingForDst && s.srcPollable { _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), s.src.raw, 0, 0) }
        if s.dstPollable { _ = tether_epoll_ctl(epfd.raw, Int32(TETHER_EPOLL_DEL), s.dst.raw, 0, 0) }
        s.src.close()
        s.dst.close()
        s.tap?.close()
        streams.removeValue(forKey: id)
        blocked.withLock { _ = $0.remove(id) }
        if notify { s.onDone?() }
    }
}
