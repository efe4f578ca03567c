#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherSys

/// The console socket of a terminal process: the runtime connects to it
/// (`--console-socket`) and sends the pty master with SCM_RIGHTS. A unix
/// connection is complete once the runtime's connect returns, so the shim
/// accepts and receives after the runtime has exited: no thread needed.
///
/// The socket lives in a new 0700 directory under /tmp (as containerd's
/// does), not in the bundle: the runtime gets the path itself, which must
/// fit sun_path (107 bytes) whatever the length of the task's ID.
struct ConsoleSocket: Sendable {
    let path: String
    private let dir: String
    private let listener: FD

    init() throws(SysError) {
        var template = Array("/tmp/tether-pty-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SysError.last("mkdtemp", "/tmp/tether-pty-XXXXXX")
        }
        dir = String(cString: made)
        path = "\(dir)/pty.sock"
        do {
            listener = try UnixSocket.listen(path, backlog: 1)
        } catch {
            rmdir(dir)
            throw error
        }
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
        return FD(fd, label: "the pty master")
    }

    func remove() {
        listener.close()
        unlink(path)
        rmdir(dir)
    }
}
