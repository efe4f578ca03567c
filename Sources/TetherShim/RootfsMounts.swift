#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherProto
import TetherSys

/// The rootfs mounts of CreateTaskRequest: made at <bundle>/rootfs before
/// the container is created, each made private at once (TetherSys.Mounts),
/// and taken down at delete by unmountTree, which unmounts only below the
/// bundle.
enum RootfsMounts {
    /// mount(8) option words that are flags; the rest go to the filesystem as data.
    private static let flagWords: [String: (set: Bool, flag: UInt)] = [
        "ro": (true, UInt(MS_RDONLY)), "rw": (false, UInt(MS_RDONLY)),
        "nosuid": (true, UInt(MS_NOSUID)), "suid": (false, UInt(MS_NOSUID)),
        "nodev": (true, UInt(MS_NODEV)), "dev": (false, UInt(MS_NODEV)),
        "noexec": (true, UInt(MS_NOEXEC)), "exec": (false, UInt(MS_NOEXEC)),
        "noatime": (true, UInt(MS_NOATIME)), "relatime": (true, UInt(MS_RELATIME)),
        "bind": (true, UInt(MS_BIND)), "rbind": (true, UInt(MS_BIND | MS_REC)),
        "sync": (true, UInt(MS_SYNCHRONOUS)), "remount": (true, UInt(MS_REMOUNT)),
    ]

    static func parse(_ options: [String]) -> (flags: UInt, data: String) {
        var flags: UInt = 0
        var data: [String] = []
        for o in options {
            if let w = flagWords[o] {
                if w.set { flags |= w.flag } else { flags &= ~w.flag }
            } else {
                data.append(o)
            }
        }
        return (flags, data.joined(separator: ","))
    }

    /// Mounts each in order; on failure unmounts what it made and throws.
    /// Returns the targets, in the order to unmount them.
    static func mountAll(_ mounts: [Containerd_Types_Mount], rootfs: String) throws(SysError) -> [String] {
        var done: [String] = []
        for m in mounts {
            let target: String
            do {
                target = try resolve(m.target, in: rootfs)
                try mount(m, at: target, bundle: Files.dirname(rootfs))
            } catch {
                unmountAll(under: rootfs)
                throw error
            }
            done.insert(target, at: 0)
        }
        return done
    }

    /// The absolute target of a mount relative to the rootfs directory. A
    /// target never leaves it: ".." is refused, and so is a symlink on the
    /// way (a rootfs is someone else's tree, and mount(2) follows links).
    static func resolve(_ target: String, in rootfs: String) throws(SysError) -> String {
        let parts = target.split(separator: "/").filter { $0 != "." }
        if parts.contains("..") {
            throw SysError("mount", errno: EINVAL, target, explanation: "a mount target may not contain \"..\"")
        }
        var path = rootfs
        for p in parts {
            path += "/\(p)"
            var st = stat()
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                throw SysError("mount", errno: ELOOP, path, explanation: "a symbolic link; mount targets are never followed through one")
            }
        }
        return path
    }

    static func mount(_ m: Containerd_Types_Mount, at target: String, bundle: String) throws(SysError) {
        try Files.makeDirectories(target, mode: 0o755)
        let (flags, data) = parse(m.options)
        let type = m.type == "bind" ? "none" : m.type
        if flags & UInt(MS_BIND) != 0 {
            // The source is bound through a handle opened without following
            // any symlink: what was checked is what is mounted, even if a
            // component of the path was swapped for a link since.
            let source = try openBindSource(m.source, bundle: bundle)
            try Mounts.mount(source: "/proc/self/fd/\(source.raw)", target: target, type: type, flags: flags, data: data.isEmpty ? nil : data)
        } else {
            try Mounts.mount(source: m.source, target: target, type: type, flags: flags, data: data.isEmpty ? nil : data)
        }
        // A bind mount ignores MS_RDONLY until it is remounted.
        if flags & UInt(MS_BIND) != 0 && flags & UInt(MS_RDONLY) != 0 {
            let r = tether_mount("none", target, nil, UInt(MS_REMOUNT | MS_BIND | MS_RDONLY) | (flags & UInt(MS_REC)), nil)
            if r < 0 {
                _ = tether_umount(target, Int32(MNT_DETACH))
                throw SysError("mount", errno: -r, "(read-only remount) \(target)")
            }
        }
        ShimLog.debug("mounted \(m.type) \(m.source) on \(target) (\(m.options.joined(separator: ",")))")
    }

    /// The source of a bind mount, opened with no symlink followed anywhere
    /// on its path, and refused when it is the host's `/` or holds the
    /// bundle (and so the state directory) the shim serves.
    static func openBindSource(_ path: String, bundle: String) throws(SysError) -> FD {
        let fd = FD(try check(tether_open_path_nofollow(path), "open", "\(path) (bind source; no symlink is followed)"), label: path)
        var st = stat(), root = stat()
        if fstat(fd.raw, &st) == 0 && stat("/", &root) == 0 && st.st_dev == root.st_dev && st.st_ino == root.st_ino {
            throw SysError("mount", errno: EPERM, path, explanation: "it is the host's root directory, which is never bound into a container")
        }
        if let real = Proc.readLink("/proc/self/fd/\(fd.raw)"), Files.isWithin(bundle, real) {
            throw SysError("mount", errno: EPERM, path, explanation: "it holds the task's own state directory \(bundle)")
        }
        return fd
    }

    /// Takes down everything mounted under the rootfs directory.
    static func unmountAll(under rootfs: String) {
        for e in Mounts.unmountTree(under: rootfs) { ShimLog.error("unmount: \(e)") }
    }
}
