#if canImport(Glibc)
import Glibc
#endif
import CTether

/// Unix stream sockets at filesystem paths (never abstract: containerd's
/// CVE-2020-15257). Paths longer than sun_path (107 bytes) still work: the
/// call goes through /proc/self/fd/N/NAME with N an O_PATH fd of the directory.
public enum UnixSocket {
    public static func listen(_ path: String, backlog: Int32 = 128) throws(SysError) -> FD {
        try viaShortPath(path) { (p) throws(SysError) in FD(try check(tether_unix_listen(p, backlog), "listen", path)) }
    }

    /// Connects to the socket at `path`. With `timeoutMs`, neither the connect
    /// nor a later read or write waits longer than that (EAGAIN instead).
    public static func connect(_ path: String, timeoutMs: Int32 = 0) throws(SysError) -> FD {
        try viaShortPath(path) { (p) throws(SysError) in
            FD(try check(tether_unix_connect(p, timeoutMs), "connect", path), label: path)
        }
    }

    /// The uid and pid of the process at the other end.
    public static func peer(_ fd: FD) throws(SysError) -> (pid: pid_t, uid: uid_t) {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        _ = try check(tether_peer_cred(fd.raw, &pid, &uid, &gid), "getsockopt(SO_PEERCRED)")
        return (pid, uid)
    }

    private static func viaShortPath<T>(_ path: String, _ body: (String) throws(SysError) -> T) throws(SysError) -> T {
        if path.utf8.count < 108 { return try body(path) }
        let dir = FD(try check(tether_open_path(Files.dirname(path)), "open", Files.dirname(path)))
        return try body("/proc/self/fd/\(dir.raw)/\(Files.basename(path))")
    }
}
