#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization
import TetherSys

/// Moves bytes between a container's stdio pipes and the task's FIFOs (or
/// files), on the shim's event loop. With splice(2) the bytes
/// never enter the shim's memory; where splice cannot work (a tty, say) it
/// falls back to read/write through one 64 KiB buffer for the whole relay;
/// a stream keeps only what its destination has not taken yet.
///
/// Backpressure, not buffering: when a destination is full the relay stops
/// reading its source, so a container writing to an unread stdout blocks once
/// the pipes fill, and the shim's memory stays flat.
///
/// Everything runs on the loop's thread: a stream's fds are the relay's
/// from `add` on, and closed by it alone.
final class StdioRelay: @unchecked Sendable {
    typealias StreamID = UInt64

    private final class Stream {
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
        var srcSource: EventLoop.Source?
        var dstSource: EventLoop.Source?

        init(src: FD, dst: FD, tap: LogTap?, onDone: (@Sendable () -> Void)?) {
            self.src = src
            self.dst = dst
            self.tap = tap
            self.onDone = onDone
            useSplice = tap == nil  // a tap must see the bytes, so they go through memory
        }
    }

    private let loop: EventLoop
    /// The read/write fallback's buffer.
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    private var streams: [StreamID: Stream] = [:]
    /// Streams waiting for room at their destination (nobody reads it).
    private var blocked: Set<StreamID> = []
    private var nextID: StreamID = 1

    init(loop: EventLoop) { self.loop = loop }

    /// Copies `src` to `dst` until `src` reaches end of file (every writer
    /// closed), then closes both and calls `onDone`. The relay owns both fds
    /// from now on.
    @discardableResult
    func add(from src: FD, to dst: FD, tap: LogTap? = nil, onDone: (@Sendable () -> Void)? = nil) -> StreamID {
        let id = nextID
        nextID += 1
        let s = Stream(src: src, dst: dst, tap: tap, onDone: onDone)
        _ = tether_set_nonblock(s.src.raw, 1)
        _ = tether_set_nonblock(s.dst.raw, 1)
        streams[id] = s
        do {
            s.srcSource = try loop.add(s.src.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in pumpIfLive(id) }
        } catch {
            if error.errno == EPERM {
                s.srcPollable = false  // a regular file or a device: always readable
            } else {
                ShimLog.error("stdio: cannot watch \(s.src): \(error)")
                finish(id, s)
                return id
            }
        }
        // Regular files cannot be polled (EPERM); they are always writable.
        s.dstSource = try? loop.add(s.dst.raw, events: 0) { [self] events in dstReady(id, events) }
        if s.dstSource == nil { s.dstPollable = false }
        // Not now: the caller is still setting the stream up, and onDone
        // must not run inside it. epoll brings a pollable source back
        // anyway; this covers one it cannot watch.
        loop.execute { [self] in pumpIfLive(id) }
        return id
    }

    /// Finishes the stream once `src` has nothing more to read right now:
    /// for stdin, whose FIFO never reaches end of file (the shim holds a writer).
    func closeWhenDrained(_ id: StreamID) {
        guard let s = streams[id] else { return }
        s.closeWhenDrained = true
        pump(id, s)
    }

    /// Drops the stream now, closing both fds.
    func remove(_ id: StreamID) {
        if let s = streams[id] { finish(id, s, notify: false) }
    }

    /// Is this stream stuck on a full destination (a FIFO nobody reads)?
    func isBlocked(_ id: StreamID) -> Bool { blocked.contains(id) }

    private func pumpIfLive(_ id: StreamID) {
        if let s = streams[id] { pump(id, s) }
    }

    private func dstReady(_ id: StreamID, _ events: UInt32) {
        guard let s = streams[id] else { return }
        if events & (UInt32(TETHER_EPOLLERR) | UInt32(TETHER_EPOLLHUP)) != 0 {
            finish(id, s)  // nobody reads the destination any more
            return
        }
        pump(id, s)
    }

    private enum Outcome { case srcEmpty, dstFull, eof, failed }

    /// Bytes one stream moves per wakeup before the loop serves the rest
    /// (other streams, RPCs, exits). A stream tapped into a CRI log formats
    /// every line it moves, about 2 MB/s in a debug build: a large budget
    /// there kept a State call waiting for seconds behind `seq 1 3000000`.
    static let budget = 1 << 20
    static let tappedBudget = 64 << 10

    /// Moves what can be moved now, then waits on the right fd.
    private func pump(_ id: StreamID, _ s: Stream) {
        var moved = 0
        var outcome = Outcome.srcEmpty
        while true {
            if moved >= (s.tap == nil ? Self.budget : Self.tappedBudget) {
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
            finish(id, s)
        case .srcEmpty where s.closeWhenDrained || !s.srcPollable:
            finish(id, s)
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
        if dst { blocked.insert(id) } else { blocked.remove(id) }
        if s.srcPollable {
            if dst, let src = s.srcSource {
                loop.remove(src)
                s.srcSource = nil
            } else if !dst && s.srcSource == nil {
                s.srcSource = try? loop.add(s.src.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in pumpIfLive(id) }
            }
        }
        if let dstSource = s.dstSource {
            try? loop.modify(dstSource, events: dst ? UInt32(TETHER_EPOLLOUT) : 0)
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

    private func finish(_ id: StreamID, _ s: Stream, notify: Bool = true) {
        if let src = s.srcSource { loop.remove(src) }
        if let dst = s.dstSource { loop.remove(dst) }
        s.srcSource = nil
        s.dstSource = nil
        s.src.close()
        s.dst.close()
        s.tap?.close()
        streams.removeValue(forKey: id)
        blocked.remove(id)
        if notify { s.onDone?() }
    }
}
