/// Facts about processes from /proc.
public enum Proc {
    /// The process's start time in clock ticks since boot (field 22 of
    /// /proc/PID/stat): with the pid, it names one process for good, since a
    /// recycled pid gets a later start time.
    public static func startTime(_ pid: Int32) -> UInt64? {
        guard let s = try? Files.readString("/proc/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ", fields start at 3; starttime is field 22.
        let fields = s[s.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    /// The parent's pid (field 4 of /proc/PID/stat).
    public static func parent(_ pid: Int32) -> Int32? {
        guard let s = try? Files.readString("/proc/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
        let fields = s[s.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// The process's owner (its real uid, as /proc/PID belongs to it).
    public static func owner(_ pid: Int32) -> uid_t? {
        var st = stat()
        return stat("/proc/\(pid)", &st) == 0 ? st.st_uid : nil
    }

    /// The command line's arguments.
    public static func arguments(_ pid: Int32) -> [String]? {
        guard let raw = try? Files.read("/proc/\(pid)/cmdline"), !raw.isEmpty else { return nil }
        return raw.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
    }

    /// Open file descriptors: number and what they point at.
    public static func fds(_ pid: Int32) -> [(Int32, String)] {
        ((try? Files.listDirectory("/proc/\(pid)/fd")) ?? []).compactMap { name in
            guard let n = Int32(name) else { return nil }
            return (n, readLink("/proc/\(pid)/fd/\(name)") ?? "?")
        }.sorted { $0.0 < $1.0 }
    }

    public static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

#if canImport(Glibc)
import Glibc
#endif
