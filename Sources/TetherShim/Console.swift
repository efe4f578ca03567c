#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherSys

/// The console socket of a terminal process: the runtime connects to it
/// (`--console-socket`) and sends the pty master with SCM_RIGHTS. A unix
/// connection is complete once the runtime's connect returns, so the shim
/// accepts and receives after the runtime has exited: no thread needed.
struct ConsoleSocket: Sendable {
    let path: String
    private let listener: FD

    init(path: String) throws(SysError) {
        self.path = path
        unlink(path)
        listener = try UnixSocket.listen(path, backlog: 1)
        chmod(path, 0o600)
    }

    /// The pty master the runtime sent. Call after the runtime call returned.
    func receiveMaster() throws(SysError) -> FD {
        try listener.setNonBlocking()
        let conn = FD(try check(tether_accept(listener.raw), "accept", "\(path) (the runtime never connected to the console socket)"))
        var buf = [UInt8](repeating: 0, count: 4096)
        var fd: Int32 = -1
        _ = try check(tether_recv_fd(conn.raw, &buf, buf.count, &fd), "recvmsg", path)
        guard fd >= 0 else { throw SysError("recvmsg", errno: EBADMSG, "\(path) (no pty master in the message)") }
        return FD(fd)
    }

    func remove() {
        listener.close()
        unlink(path)
    }
}
