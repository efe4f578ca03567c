#if canImport(Glibc)
import Glibc
#endif
import TetherRuntime
import TetherSys

/// One manager per directory: an exclusive flock on DIR/tetherd.lock,
/// held for as long as this object lives (the daemon's life; the kernel
/// drops it when the daemon dies, however it dies). Two managers on one
/// state directory would both read the exit pipe and each drop the other's
/// exits; on one root they would share tasks' writable layers.
final class DaemonLock: Sendable {
    private let fd: FD

    /// Takes the lock of `dir` or fails with one line naming the holder.
    /// `flag` is the option that chose the directory ("state", "root").
    init(dir: String, flag: String) throws {
        let path = "\(dir)/tetherd.lock"
        let fd = try FD.open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, mode: 0o600)
        guard flock(fd.raw, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            let holder = (try? fd.read(upTo: 32)).map { String(decoding: $0, as: UTF8.self).filter(\.isNumber) } ?? ""
            fd.close()
            guard e == EWOULDBLOCK else { throw SysError("flock", errno: e, path) }
            throw RuntimeError(.failedPrecondition,
                               "another tetherd\(holder.isEmpty ? "" : " (pid \(holder))") is using the \(flag) directory \(dir): stop it first, or give this one another --\(flag)")
        }
        // Whose it is, for the next one's message (the lock is the flock, not this).
        _ = ftruncate(fd.raw, 0)
        _ = try? fd.writeAll(Array("\(getpid())\n".utf8))
        self.fd = fd
    }

    deinit { fd.close() }
}
