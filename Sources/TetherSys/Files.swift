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
    /// content or the new, never a torn file, even across a crash. Errors name
    /// `path` (a full disk says which file it could not write).
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SysError) {
        let dir = dirname(path)
        let tmp = "\(path).tmp-\(getpid())-\(tmpCounter.wrappingAdd(1, ordering: .relaxed).oldValue)"
        do {
            let fd = try FD.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode)
            try fd.writeAll(bytes)
            _ = try retrying("fsync", tmp) { fsync(fd.raw) }
            fd.close()
            _ = try retrying("rename", path) { rename(tmp, path) }
        } catch {
            unlink(tmp)
            throw error.about(path)
        }
        try syncDirectory(dir)
    }

    public static func syncDirectory(_ dir: String) throws(SysError) {
        let d = try FD.open(dir, O_RDONLY | O_DIRECTORY)
        _ = try retrying("fsync", dir) { fsync(d.raw) }
    }

    /// The whole of a file Tether owns (its own state files).
    public static func read(_ path: String, limit: Int = 16 << 20) throws(SysError) -> [UInt8] {
        try FD.open(path, O_RDONLY).readToEnd(limit: limit)
    }

    /// The whole of a regular file someone else named (a bundle's config.json,
    /// a resources file): opened without blocking and without following a
    /// symlink, checked to be a regular file, and read only up to `limit`
    /// bytes. A FIFO, a device or a directory there gets an error, never a
    /// hang; so does a file larger than `limit`.
    public static func readRegular(_ path: String, limit: Int = 16 << 20) throws(SysError) -> [UInt8] {
        let fd = try openRegular(path, O_RDONLY)
        let bytes = try fd.readToEnd(limit: limit + 1)
        if bytes.count > limit {
            throw SysError("read", errno: EFBIG, path, explanation: "larger than \(limit) bytes")
        }
        return bytes
    }

    /// Opens `path` with `flags` plus O_NONBLOCK and O_NOFOLLOW, requires a
    /// regular file (O_CREAT makes one), then makes the fd blocking again.
    public static func openRegular(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(SysError) -> FD {
        let fd: FD
        do {
            fd = try FD.open(path, flags | O_NONBLOCK | O_NOFOLLOW, mode: mode)
        } catch where error.errno == ELOOP {
            throw SysError("open", errno: ELOOP, path, explanation: "a symbolic link, which is not followed here: name the file itself")
        }
        let st = try fd.status()
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw SysError("open", errno: EINVAL, path, explanation: "\(describe(st.st_mode)), not a regular file")
        }
        try fd.setNonBlocking(false)
        return fd
    }

    /// "a FIFO", "a directory", … for an st_mode.
    public static func describe(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "an unknown kind of file"
        }
    }

    public static func readString(_ path: String) throws(SysError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// Which file a path names (device and inode, the link itself for a
    /// symlink): to tell "still the one I made" from "another one there now".
    public struct Identity: Equatable, Sendable {
        public let device: UInt64
        public let inode: UInt64
    }

    public static func identity(_ path: String) -> Identity? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// A directory of Tether's own with exactly `mode` and owned by root:
    /// made (with its parents, as makeDirectories) when missing; when present,
    /// its mode is set (an install from an older version is fixed). A symlink
    /// there is refused: Tether never follows one into its own state.
    public static func ensureDirectory(_ path: String, mode: mode_t) throws(SysError) {
        var st = stat()
        if lstat(path, &st) != 0 {
            guard Glibc.errno == ENOENT else { throw SysError.last("lstat", path) }
            try makeDirectories(path, mode: mode)
            return
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw SysError("mkdir", errno: ENOTDIR, path, explanation: "\(describe(st.st_mode)) is there, not a directory")
        }
        if st.st_mode & 0o7777 != mode { _ = try retrying("chmod", path) { chmod(path, mode) } }
        if st.st_uid != geteuid() { _ = try retrying("chown", path) { chown(path, geteuid(), st.st_gid) } }
    }

    /// realpath(3): the path with every symlink, "." and ".." resolved.
    public static func realPath(_ path: String) throws(SysError) -> String {
        guard let p = realpath(path, nil) else { throw SysError.last("realpath", path) }
        defer { free(p) }
        return String(cString: p)
    }

    /// Is `path` at or below `dir`? Both are taken as they are (resolve them first).
    public static func isWithin(_ path: String, _ dir: String) -> Bool {
        dir == "/" || path == dir || path.hasPrefix(dir.hasSuffix("/") ? dir : dir + "/")
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
    ///
    /// Iterative, with at most `maxOpenDepth` directories open at once: a
    /// tree a container made 100,000 levels deep is removed like any other
    /// (what lies deeper is moved up to the top directory first), without
    /// a deep recursion or one fd per level.
    public static func removeTree(_ path: String) throws(SysError) {
        if let m = Mounts.targets(under: path).first {
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
        let top = try FD.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        try removeContents(top, device: st.st_dev, path: path)
        _ = try retrying("rmdir", path) { rmdir(path) }
    }

    static let maxOpenDepth = 64

    /// Empties the directory open at `top` (on `device`), depth first.
    private static func removeContents(_ top: FD, device: dev_t, path: String) throws(SysError) {
        struct Frame { let fd: FD; let name: String; let path: String; var names: [String]; var next = 0 }
        var stack = [Frame(fd: top, name: "", path: path, names: try names(in: top, path))]
        var moved = 0
        while !stack.isEmpty {
            let depth = stack.count
            var frame = stack[depth - 1]
            if frame.next == frame.names.count {
                // Everything listed is gone; anything new (moved up here) is listed again.
                let again = try names(in: frame.fd, frame.path)
                if !again.isEmpty {
                    stack[depth - 1].names = again
                    stack[depth - 1].next = 0
                    continue
                }
                stack.removeLast()
                guard let parent = stack.last else { return }
                if unlinkat(parent.fd.raw, frame.name, AT_REMOVEDIR) != 0 {
                    if Glibc.errno == EBUSY { throw SysError.last("rmdir", "\(frame.path) (a mount point)") }
                    throw SysError.last("rmdir", frame.path)
                }
                continue
            }
            let name = frame.names[frame.next]
            frame.next += 1
            stack[depth - 1].next = frame.next
            let child = "\(frame.path)/\(name)"
            var st = stat()
            if fstatat(frame.fd.raw, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                if Glibc.errno == ENOENT { continue }
                throw SysError.last("stat", child)
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                if unlinkat(frame.fd.raw, name, 0) != 0 && Glibc.errno != ENOENT { throw SysError.last("unlink", child) }
                continue
            }
            if st.st_dev != device { throw SysError("remove", errno: EBUSY, "\(child) (a mount point)") }
            if depth >= maxOpenDepth {
                // Too deep to keep descending: move it up to the top, where it is removed later.
                let newName = ".tether-rm-\(getpid())-\(moved)"
                moved += 1
                if renameat(frame.fd.raw, name, stack[0].fd.raw, newName) != 0 { throw SysError.last("rename", child) }
                continue
            }
            let sub = openat(frame.fd.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if sub < 0 { throw SysError.last("open", child) }
            let fd = FD(sub, label: child)
            stack.append(Frame(fd: fd, name: name, path: child, names: try names(in: fd, child)))
        }
    }

    /// The names in the directory open at `fd` (which stays open and ours).
    private static func names(in fd: FD, _ path: String) throws(SysError) -> [String] {
        let copy = dup(fd.raw)
        if copy < 0 { throw SysError.last("dup", path) }
        guard let dir = fdopendir(copy) else {
            let e = SysError.last("opendir", path)
            Glibc.close(copy)
            throw e
        }
        defer { closedir(dir) }
        rewinddir(dir)
        return entries(dir)
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
}
