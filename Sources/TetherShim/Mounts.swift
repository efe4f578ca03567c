#if canImport(Glibc)
import Glibc
#endif
import CTether
import TetherProto
import TetherSys

/// The rootfs mounts of CreateTaskRequest: made at <bundle>/rootfs before
/// the container is created, unmounted (deepest first) at delete.
enum Mounts {
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
            let target = m.target.isEmpty ? rootfs : "\(rootfs)/\(m.target)"
            do {
                try mount(m, at: target)
            } catch {
                unmountAll(done)
                throw error
            }
            done.insert(target, at: 0)
        }
        return done
    }

    static func mount(_ m: Containerd_Types_Mount, at target: String) throws(SysError) {
        try Files.makeDirectories(target, mode: 0o755)
        let (flags, data) = parse(m.options)
        let type = m.type == "bind" ? "none" : m.type
        let rc = tether_mount(m.source, target, type, flags, data.isEmpty ? nil : data)
        if rc < 0 { throw SysError("mount", errno: -rc, "\(m.type) \(m.source) on \(target)") }
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

    /// Unmounts each target; a busy one is detached (MNT_DETACH) rather than left.
    static func unmountAll(_ targets: [String]) {
        for t in targets {
            var rc = tether_umount(t, 0)
            if rc == -EBUSY { rc = tether_umount(t, Int32(MNT_DETACH)) }
            if rc < 0 && rc != -EINVAL && rc != -ENOENT {
                ShimLog.error("unmount \(t): \(SysError("umount", errno: -rc).message)")
            }
        }
    }
}
