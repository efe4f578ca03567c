#if canImport(Glibc)
import Glibc
#endif
import CTether
import Synchronization

/// Files on disk: atomic writes, whole-file reads, directories made and
/// removed without ever crossing into a mounted filesystem.
public enum Files {
    /// Makes temp names unique among the threads of this process.
    private static let tmpCounter = Atomic<UInt64>(0)

    /// Writes `bytes` to `path` atomically: a temp file in the same directory,
    /// fsync, rename over `path`, fsync of the directory. A reader sees the old
    /// content or the new, never a torn file, even across a crash.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SysError) {
        let dir = dirname(path)
        let tmp = "\(path).tmp-\(getpid())-\(tmpCounter.wrappingAdd(1, ordering: .relaxed).oldValue)"
        do {
            let fd = try FD.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: mode)
            try fd.writeAll(bytes)
            _ = try retrying("fsync", tmp) { fsync(fd.raw) }
            fd.close()
            _ = try retrying("rename", path) { rename(tmp, path) }
        } catch {
            unlink(tmp)
            throw error
        }
        try syncDirectory(dir)
    }

    public static func syncDirectory(_ dir: String) throws(SysError) {
        let d = try FD.open(dir, O_RDONLY | O_DIRECTORY)
        _ = try retrying("fsync", dir) { fsync(d.raw) }
    }

    public static func read(_ path: String, limit: Int = 16 << 20) throws(SysError) -> [UInt8] {
        try FD.open(path, O_RDONLY).readToEnd(limit: limit)
    }

    public static func readString(_ path: String) throws(SysError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p, giving every directory it creates `mode`.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(SysError) {
        if isDirectory(path) { return }
        let parent = dirname(path)
        if parent != path { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && Glibc.errno != EEXIST { throw SysError.last("mkdir", path) }
        chmod(path, mode)  // mkdir applies the umask
    }

    /// rm -rf that never follows a symlink and never descends into a mount
    /// point: it fails with EBUSY instead of deleting someone else's files.
    /// (A bind mount of the same filesystem has the same st_dev, so the mount
    /// table is checked first; st_dev is checked again on the way down.)
    public static func removeTree(_ path: String) throws(SysError) {
        if let m = mounts(under: path).first {
            throw SysError("remove", errno: EBUSY, "\(path) (\(m) is mounted)")
        }
        var st = stat()
        if lstat(path, &st) != 0 {
            if Glibc.errno == ENOENT { return }
            throw SysError.last("lstat", path)
        }
        if (st.st_mode & S_IFMT) != S_IFDIR {
            _ = try retrying("unlink", path) { unlink(path) }
            return
        }
        let dirfd = try FD.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        try removeContents(dirfd: dirfd.take(), device: st.st_dev, path: path)
        _ = try retrying("rmdir", path) { rmdir(path) }
    }

    /// Removes everything inside the directory open at `dirfd` (which it takes).
    private static func removeContents(dirfd: Int32, device: dev_t, path: String) throws(SysError) {
        guard let dir = fdopendir(dirfd) else {
            let e = SysError.last("opendir", path)
            Glibc.close(dirfd)
            throw e
        }
        defer { closedir(dir) }
        let names = entries(dir)
        let fd = Glibc.dirfd(dir)
        for name in names {
            let child = "\(path)/\(name)"
            var st = stat()
            if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 { throw SysError.last("stat", child) }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                if st.st_dev != device { throw SysError("remove", errno: EBUSY, "\(child) (a mount point)") }
                let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if sub < 0 { throw SysError.last("open", child) }
                try removeContents(dirfd: sub, device: device, path: child)
                if unlinkat(fd, name, AT_REMOVEDIR) != 0 {
                    if Glibc.errno == EBUSY { throw SysError.last("rmdir", "\(child) (a mount point)") }
                    throw SysError.last("rmdir", child)
                }
            } else if unlinkat(fd, name, 0) != 0 {
                throw SysError.last("unlink", child)
            }
        }
    }

    public static func listDirectory(_ path: String) throws(SysError) -> [String] {
        guard let dir = opendir(path) else { throw SysError.last("opendir", path) }
        defer { closedir(dir) }
        return entries(dir).sorted()
    }

    /// The names in an open directory, without "." and "..".
    private static func entries(_ dir: OpaquePointer) -> [String] {
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public static func makeFifo(_ path: String, mode: mode_t = 0o600) throws(SysError) {
        if mkfifo(path, mode) != 0 && Glibc.errno != EEXIST { throw SysError.last("mkfifo", path) }
    }

    public static func dirname(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        if i == path.startIndex { return "/" }
        return String(path[..<i])
    }

    public static func basename(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: i)...])
    }

    /// Mount targets at or below `prefix`, deepest first (the order to unmount them in).
    public static func mounts(under prefix: String) -> [String] {
        guard let info = try? readString("/proc/self/mountinfo") else { return [] }
        var out: [String] = []
        for line in info.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5)
            guard fields.count > 4 else { continue }
            let target = unescapeMountPath(String(fields[4]))
            if target == prefix || target.hasPrefix(prefix + "/") { out.append(target) }
        }
        return out.sorted { $0.count > $1.count }
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountPath(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
