#if canImport(Glibc)
import Glibc
#endif
import CTether

/// Mounts: reading the mount table, making mounts, and taking down the ones
/// Tether made without ever touching anyone else's.
///
/// On a systemd host `/` is shared: a bind mount made under it joins the
/// source's peer group, and unmounting a mount inside such a copy unmounts
/// the same mount in every peer, the host's own included. So every mount
/// Tether makes is made private right after it is made (`mount` below), and
/// every teardown makes the tree private again before it unmounts anything
/// (`unmountTree`), which also covers a mount left shared by a process that
/// died between the two calls.
public enum Mounts {
    /// One line of /proc/self/mountinfo.
    public struct Entry: Sendable, Equatable {
        public var id: Int
        public var parent: Int
        public var target: String
        public var fsType: String
        public var source: String
        /// The optional fields: "shared:N", "master:N", "propagate_from:N", "unbindable".
        public var propagation: [String]
        public var isShared: Bool { propagation.contains { $0.hasPrefix("shared:") } }
    }

    /// The calling process's mount table, in mount order.
    public static func table() -> [Entry] {
        guard let info = try? Files.readString("/proc/self/mountinfo") else { return [] }
        return info.split(separator: "\n").compactMap { line in
            // id parent major:minor root target options [optional...] - fstype source superoptions
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 6, let id = Int(fields[0]), let parent = Int(fields[1]),
                  let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { return nil }
            return Entry(id: id, parent: parent, target: unescape(String(fields[4])),
                         fsType: String(fields[dash + 1]), source: unescape(String(fields[dash + 2])),
                         propagation: fields[6..<dash].map(String.init))
        }
    }

    /// Mount targets at or below `prefix`, deepest first (the order to unmount them in).
    public static func targets(under prefix: String) -> [String] {
        table().map(\.target).filter { Files.isWithin($0, prefix) }.sorted { $0.count > $1.count }
    }

    /// Is `path` the root of a mount (as seen from here: a mount hidden
    /// under a later one at the same place does not count)?
    public static func isMountPoint(_ path: String) -> Bool {
        let rc = tether_is_mount_root(path)
        if rc >= 0 { return rc == 1 }
        return table().last { Files.isWithin(path, $0.target) }?.target == path  // kernels before 5.8
    }

    /// mount(2), then, for anything but a remount, the new mount made
    /// private (recursively for a recursive bind): nothing Tether mounts
    /// stays in a peer group with the host's mounts.
    public static func mount(source: String, target: String, type: String?, flags: UInt, data: String?) throws(SysError) {
        let rc = tether_mount(source, target, type, flags, data)
        if rc < 0 { throw SysError("mount", errno: -rc, "\(type ?? "bind") \(source) on \(target)") }
        if flags & UInt(MS_REMOUNT) != 0 { return }
        do {
            try makePrivate(target, recursive: flags & UInt(MS_REC) != 0)
        } catch {
            // Still shared: unmounting it now could propagate to its peers.
            // As a slave it receives from them but sends nothing back.
            if tether_mount("none", target, nil, UInt(MS_SLAVE | MS_REC), nil) == 0 {
                _ = tether_umount(target, Int32(MNT_DETACH))
            }
            throw error
        }
    }

    /// mount --make-private (or --make-rprivate) TARGET: the mount leaves its
    /// peer group; what happens to it stops propagating, both ways.
    public static func makePrivate(_ target: String, recursive: Bool) throws(SysError) {
        let rc = tether_mount("none", target, nil, UInt(MS_PRIVATE) | (recursive ? UInt(MS_REC) : 0), nil)
        if rc < 0 { throw SysError("mount", errno: -rc, "\(target) (make \(recursive ? "r" : "")private)") }
    }

    /// Takes down every mount at or below `path` (mounts Tether made there):
    /// first the topmost ones are made recursively private, so no unmount
    /// below can propagate to a peer (the host's own mounts, when a bind
    /// source was shared), then each is unmounted, deepest first; a busy one
    /// is detached. Returns the targets it could not remove.
    @discardableResult
    public static func unmountTree(under path: String) -> [SysError] {
        let all = targets(under: path)
        guard !all.isEmpty else { return [] }
        var failures: [SysError] = []
        let tops = all.filter { t in !all.contains { $0 != t && Files.isWithin(t, $0) } }
        var unsafe: [String] = []
        for t in tops {
            do { try makePrivate(t, recursive: true) } catch {
                // Left alone: unmounting below it might reach the host.
                failures.append(error)
                unsafe.append(t)
            }
        }
        for t in all where !unsafe.contains(where: { Files.isWithin(t, $0) }) {
            var rc = tether_umount(t, 0)
            if rc == -EBUSY { rc = tether_umount(t, Int32(MNT_DETACH)) }
            if rc < 0 && rc != -EINVAL && rc != -ENOENT { failures.append(SysError("umount", errno: -rc, t)) }
        }
        return failures
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: String) -> String {
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
