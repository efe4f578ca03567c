#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization

/// A file descriptor with one owner. The owner closes it exactly once:
/// explicitly with `close()`, or when the last reference goes away.
/// Hand it to someone else with `take()`, which leaves this object empty.
public final class FD: Sendable, CustomStringConvertible {
    private let fd: Mutex<Int32>
    /// What the fd is (the path it was opened at): errors on it name this.
    public let label: String?

    /// Takes ownership of `raw`.
    public init(_ raw: Int32, label: String? = nil) {
        fd = Mutex(raw)
        self.label = label
    }

    deinit { let raw = fd.withLock { $0 }; if raw >= 0 { Glibc.close(raw) } }

    /// The raw descriptor, or -1 once closed or taken. Valid only while this object owns it.
    public var raw: Int32 { fd.withLock { $0 } }

    /// Gives up ownership: the caller must close the returned descriptor.
    public func take() -> Int32 {
        fd.withLock { v in let r = v; v = -1; return r }
    }

    /// The same descriptor under another label (this object is left empty).
    public func relabeled(_ label: String) -> FD { FD(take(), label: label) }

    /// Closes now; later calls do nothing.
    public func close() {
        let r = take()
        if r >= 0 { Glibc.close(r) }
    }

    public var description: String { label.map { "\($0) (fd \(raw))" } ?? "fd \(raw)" }

    // MARK: - opening

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(SysError) -> FD {
        let raw = try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FD(raw, label: path)
    }

    /// A pipe: (read end, write end), both close-on-exec.
    public static func pipe(nonblocking: Bool = false) throws(SysError) -> (read: FD, write: FD) {
        var fds: [Int32] = [-1, -1]
        _ = try check(tether_pipe(&fds, nonblocking ? 1 : 0), "pipe2")
        return (FD(fds[0]), FD(fds[1]))
    }

    /// Sets the capacity of the pipe or FIFO behind this fd (F_SETPIPE_SZ);
    /// returns the capacity it got.
    @discardableResult
    public func setPipeSize(_ bytes: Int32) throws(SysError) -> Int32 {
        try Self.setPipeSize(raw, bytes)
    }

    /// The capacity of the pipe or FIFO behind this fd (F_GETPIPE_SZ).
    public func pipeSize() throws(SysError) -> Int32 {
        try check(tether_pipe_size(raw), "fcntl(F_GETPIPE_SZ)")
    }

    /// The same for an fd this process does not own as an FD (its stdout, say).
    @discardableResult
    public static func setPipeSize(_ fd: Int32, _ bytes: Int32) throws(SysError) -> Int32 {
        try check(tether_set_pipe_size(fd, bytes), "fcntl(F_SETPIPE_SZ)")
    }

    // MARK: - io

    /// Moves up to `max` bytes from this fd to `dst` without copying them
    /// (splice(2); one end must be a pipe; non-blocking on the pipe side).
    /// Returns the bytes moved, 0 at end of file, or -errno (EAGAIN: nothing
    /// to move or no room; EINVAL: these two cannot be spliced).
    public func splice(to dst: Int32, max: Int) -> Int {
        tether_splice(raw, dst, max)
    }

    /// Writes all of `bytes`, retrying short writes and EINTR. Blocking fds only.
    public func writeAll(_ bytes: [UInt8]) throws(SysError) { try Self.writeAll(to: raw, bytes, subject: label) }

    /// The same to an fd this process does not own as an FD (its stdout, say).
    public static func writeAll(to fd: Int32, _ bytes: [UInt8], subject: String? = nil) throws(SysError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b in Glibc.write(fd, b.baseAddress! + off, b.count - off) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SysError.last("write", subject)
            }
            off += n
        }
    }

    /// Reads up to `count` bytes; an empty result means end of file.
    public func read(upTo count: Int) throws(SysError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        while true {
            let n = buf.withUnsafeMutableBytes { b in Glibc.read(raw, b.baseAddress!, count) }
            if n >= 0 {
                buf.removeLast(count - n)
                return buf
            }
            if Glibc.errno != EINTR { throw SysError.last("read", label) }
        }
    }

    /// Reads until end of file, at most `limit` bytes (what lies beyond is not read).
    public func readToEnd(limit: Int = 16 << 20) throws(SysError) -> [UInt8] {
        var out: [UInt8] = []
        while out.count < limit {
            let chunk = try read(upTo: min(65536, limit - out.count))
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }

    /// fstat(2).
    public func status() throws(SysError) -> stat {
        var st = stat()
        _ = try retrying("fstat", label) { fstat(raw, &st) }
        return st
    }

    public func setNonBlocking(_ on: Bool = true) throws(SysError) {
        _ = try check(tether_set_nonblock(raw, on ? 1 : 0), "fcntl(O_NONBLOCK)")
    }
}
