import Synchronization
import TetherOCI
import TetherRuntime
import TetherSeccomp

/// The seccomp filter a task whose spec Tether generates gets.
public enum SeccompChoice: Sendable, Equatable {
    /// Tether's default allowlist (SeccompDefault), as Docker's and Podman's.
    case `default`
    /// No filter at all (`--security-opt seccomp=unconfined`).
    case unconfined
    /// A profile given by the user, in Docker's format or the OCI form.
    case profile(SeccompProfile, source: String)

    /// The default profile for each capability set seen: resolving and
    /// checking it costs hundreds of libseccomp lookups, the same every time.
    private static let defaults = Mutex<[Set<String>: OCI.Seccomp]>([:])

    /// The OCI section for a task with `capabilities`, checked with the
    /// host's libseccomp; nil when unconfined.
    public func section(capabilities: Set<String>) throws(RuntimeError) -> OCI.Seccomp? {
        switch self {
        case .unconfined:
            return nil
        case .default:
            if let cached = Self.defaults.withLock({ $0[capabilities] }) { return cached }
            // Names this libseccomp does not know yet are dropped, as runc would drop them.
            let s = SeccompCheck.keepingKnown(SeccompDefault.profile.resolved(capabilities: capabilities))
            try SeccompCheck.check(s, source: "(Tether's default)")
            Self.defaults.withLock { $0[capabilities] = s }
            return s
        case .profile(let p, let source):
            let s = p.resolved(capabilities: capabilities)
            try SeccompCheck.check(s, source: source)
            return s
        }
    }
}
