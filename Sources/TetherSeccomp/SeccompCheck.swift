import CSeccomp
#if canImport(Glibc)
import Glibc
#endif
import TetherOCI
import TetherRuntime

/// Checks a seccomp profile with the host's libseccomp before any shim or
/// runtime sees it. runc skips a syscall name libseccomp does not know,
/// so a typo would leave a container without that rule and nobody told:
/// here it is one line naming the name and the profile, and nothing is
/// created.
public enum SeccompCheck {
    public static let actions: Set<String> = [
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
    ]
    public static let operators: Set<String> = [
        "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
    ]
    public static let flags: Set<String> = [
        "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    ]

    /// libseccomp's token for an OCI architecture name (SCMP_ARCH_X86_64), 0 if unknown.
    public static func archToken(_ name: String) -> UInt32 {
        guard name.hasPrefix("SCMP_ARCH_") else { return 0 }
        return seccomp_arch_resolve_name(String(name.dropFirst("SCMP_ARCH_".count)).lowercased())
    }

    /// Does libseccomp know `name` on the architecture `token`?
    public static func resolves(_ name: String, arch token: UInt32) -> Bool {
        seccomp_syscall_resolve_name_arch(token, name) != -1  // __NR_SCMP_ERROR
    }

    /// The syscall's name for a number and architecture (an AUDIT_ARCH
    /// value, which is libseccomp's token) the kernel reported.
    public static func name(ofSyscall number: Int32, arch: UInt32 = seccomp_arch_native()) -> String? {
        guard let p = seccomp_syscall_resolve_num_arch(arch, number) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The arches a section applies to (the host's native one when it names none).
    static func tokens(_ s: OCI.Seccomp) -> [UInt32] {
        let named = (s.architectures ?? []).map(archToken)
        return named.isEmpty ? [seccomp_arch_native()] : named
    }

    /// Drops the names no architecture of the section knows (Tether's
    /// default profile lists syscalls newer than some libseccomp releases;
    /// runc would skip them the same way).
    public static func keepingKnown(_ s: OCI.Seccomp) -> OCI.Seccomp {
        let arches = tokens(s)
        var out = s
        out.syscalls = (s.syscalls ?? []).compactMap { rule in
            var r = rule
            r.names = rule.names.filter { n in arches.contains { resolves(n, arch: $0) } }
            return r.names.isEmpty ? nil : r
        }
        return out
    }

    /// Throws one line naming the first problem in `s`, from `source`.
    public static func check(_ s: OCI.Seccomp, source: String, host: SeccompProfile.Host = .current) throws(RuntimeError) {
        func bad(_ what: String) -> RuntimeError { RuntimeError(.invalidArgument, "seccomp profile \(source): \(what)") }
        guard actions.contains(s.defaultAction) else {
            throw bad("unknown defaultAction \(s.defaultAction): use one of \(actions.sorted().joined(separator: ", "))")
        }
        if s.defaultAction == "SCMP_ACT_NOTIFY" {
            throw bad("SCMP_ACT_NOTIFY cannot be the defaultAction (runc refuses it): list the syscalls to notify")
        }
        for a in s.architectures ?? [] {
            guard archToken(a) != 0 else { throw bad("unknown architecture \(a): use SCMP_ARCH_ names such as \(host.scmpArches.joined(separator: ", "))") }
            guard host.scmpArches.contains(a) else {
                throw bad("architecture \(a) is not one this host runs (\(host.scmpArches.joined(separator: ", ")))")
            }
        }
        for f in s.flags ?? [] where !flags.contains(f) {
            throw bad("unknown flag \(f): use one of \(flags.sorted().joined(separator: ", "))")
        }
        let arches = tokens(s)
        var notifies = false
        for (i, rule) in (s.syscalls ?? []).enumerated() {
            guard !rule.names.isEmpty else { throw bad("rule \(i + 1) names no syscall") }
            guard actions.contains(rule.action) else {
                throw bad("rule \(i + 1) (\(rule.names.prefix(3).joined(separator: ", "))): unknown action \(rule.action): use one of \(actions.sorted().joined(separator: ", "))")
            }
            if let e = rule.errnoRet, e > 4095 { throw bad("rule \(i + 1): errnoRet \(e) is not an errno (1 to 4095)") }
            for arg in rule.args ?? [] {
                guard operators.contains(arg.op) else {
                    throw bad("rule \(i + 1) (\(rule.names.prefix(3).joined(separator: ", "))): unknown operator \(arg.op): use one of \(operators.sorted().joined(separator: ", "))")
                }
                guard arg.index < 6 else { throw bad("rule \(i + 1): argument index \(arg.index) is out of range: a syscall has arguments 0 to 5") }
            }
            for n in rule.names where !arches.contains(where: { resolves(n, arch: $0) }) {
                throw bad("unknown syscall \"\(n)\" (libseccomp \(version) knows no such name on \(s.architectures?.joined(separator: ", ") ?? "this architecture")): fix the name, or remove it if it is newer than this libseccomp")
            }
            if rule.action == "SCMP_ACT_NOTIFY" {
                notifies = true
                if rule.names.contains("write") { throw bad("SCMP_ACT_NOTIFY on write is refused by runc (the agent could never be told)") }
            }
        }
        if notifies && (s.listenerPath ?? "").isEmpty {
            throw bad("SCMP_ACT_NOTIFY rules need a listenerPath to send notifications to")
        }
    }

    /// `s` with every syscall it neither allows nor refuses by a rule of
    /// its own sent to the agent at `listenerPath` (SCMP_ACT_NOTIFY), named
    /// from libseccomp's table for this architecture. The default action
    /// stays (runc refuses NOTIFY there), and so do calls with rules of
    /// their own (clone, clone3, socket, personality: their other
    /// arguments get the default action, unreported). `write` is never
    /// notified (runc refuses it: the agent could not be told).
    public static func notifying(_ s: OCI.Seccomp, listenerPath: String, metadata: String) -> OCI.Seccomp {
        let covered = Set((s.syscalls ?? []).flatMap(\.names))
        let native = seccomp_arch_native()
        var names: Set<String> = []
        for nr in 0..<1024 {
            guard let n = name(ofSyscall: Int32(nr), arch: native), !covered.contains(n), n != "write" else { continue }
            names.insert(n)
        }
        var out = s
        out.syscalls = (s.syscalls ?? []) + [OCI.Seccomp.Syscall(names: names.sorted(), action: "SCMP_ACT_NOTIFY")]
        out.listenerPath = listenerPath
        out.listenerMetadata = metadata
        return out
    }

    public static var version: String {
        guard let v = seccomp_version() else { return "?" }
        return "\(v.pointee.major).\(v.pointee.minor).\(v.pointee.micro)"
    }
}
