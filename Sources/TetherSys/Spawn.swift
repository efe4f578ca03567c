#if canImport(Glibc)
import Glibc
#endif
import CTether

/// Starting programs without Swift's fork(): posix_spawn through CTether,
/// with signals reset to their defaults, an empty mask and every fd but the
/// given stdio closed in the child.
public enum Spawn {
    public struct Options: Sendable {
        /// The child's fds 0, 1, 2, ...: each an fd of ours to dup there, or -1 for /dev/null.
        public var fds: [Int32] = [-1, -1, -1]
        /// Start a new session (setsid) so the child leaves our process group and terminal.
        public var newSession = false
        public var cwd: String? = nil
        /// The child's environment; nil inherits ours.
        public var environment: [String]? = nil
        public init() {}
    }

    /// Starts `path` with `args` (args[0] included). Returns the child's pid.
    /// The caller is responsible for reaping it.
    public static func spawn(_ path: String, _ args: [String], _ options: Options = Options()) throws(SysError) -> pid_t {
        var pid: pid_t = 0
        let env = options.environment ?? currentEnvironment()
        let rc = withCStrings(args) { argv in
            withCStrings(env) { envp in
                options.fds.withUnsafeBufferPointer { fds in
                    tether_spawn(path, argv, envp, fds.baseAddress, Int32(fds.count),
                                 options.newSession ? TETHER_SPAWN_SETSID : 0, options.cwd, &pid)
                }
            }
        }
        if rc != 0 { throw SysError("exec", errno: rc, path) }
        return pid
    }

    public static func currentEnvironment() -> [String] {
        var out: [String] = []
        var p = environ
        while let s = p.pointee {
            out.append(String(cString: s))
            p += 1
        }
        return out
    }

    /// Finds an executable: a path with a slash is taken as is, a bare name is looked up in PATH.
    public static func lookPath(_ name: String, path: String? = nil) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let search = path ?? (getenv("PATH").map { String(cString: $0) } ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        for dir in search.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }
}

/// Calls body with a NULL-terminated C array of the strings.
public func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}
