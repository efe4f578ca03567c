#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

extension OCI {
    /// `linux.seccomp` of an OCI spec: what runc loads into the kernel.
    public struct Seccomp: Codable, Sendable, Equatable {
        public var defaultAction: String
        public var defaultErrnoRet: UInt32?
        public var architectures: [String]?
        public var flags: [String]?
        public var listenerPath: String?
        public var listenerMetadata: String?
        public var syscalls: [Syscall]?

        public init(defaultAction: String, defaultErrnoRet: UInt32? = nil, architectures: [String]? = nil, syscalls: [Syscall]? = nil) {
            self.defaultAction = defaultAction
            self.defaultErrnoRet = defaultErrnoRet
            self.architectures = architectures
            self.syscalls = syscalls
        }

        public struct Syscall: Codable, Sendable, Equatable {
            public var names: [String]
            public var action: String
            public var errnoRet: UInt32?
            public var args: [Arg]?

            public init(names: [String], action: String, errnoRet: UInt32? = nil, args: [Arg]? = nil) {
                self.names = names
                self.action = action
                self.errnoRet = errnoRet
                self.args = args
            }
        }

        public struct Arg: Codable, Sendable, Equatable {
            public var index: UInt32
            public var value: UInt64
            public var valueTwo: UInt64?
            public var op: String

            public init(index: UInt32, value: UInt64, valueTwo: UInt64? = nil, op: String) {
                self.index = index
                self.value = value
                self.valueTwo = valueTwo
                self.op = op
            }
        }
    }
}

/// A seccomp profile as a file gives it: Docker's and Podman's format
/// (`archMap`, rules with `includes`/`excludes` by capability and
/// architecture), of which the OCI form (`architectures`, plain rules) is a
/// subset. `resolved` turns it into the OCI form for one task on this host.
public struct SeccompProfile: Codable, Sendable, Equatable {
    public var defaultAction: String
    public var defaultErrnoRet: UInt32?
    public var architectures: [String]?
    public var archMap: [ArchMapEntry]?
    public var flags: [String]?
    public var listenerPath: String?
    public var listenerMetadata: String?
    public var syscalls: [Rule]?

    public struct ArchMapEntry: Codable, Sendable, Equatable {
        public var architecture: String
        public var subArchitectures: [String]?
    }

    public struct Rule: Codable, Sendable, Equatable {
        public var names: [String]?
        /// Docker's older single-name form.
        public var name: String?
        public var action: String
        public var errnoRet: UInt32?
        public var args: [OCI.Seccomp.Arg]?
        public var includes: Filter?
        public var excludes: Filter?

        public init(names: [String], action: String, errnoRet: UInt32? = nil, args: [OCI.Seccomp.Arg]? = nil,
                    includes: Filter? = nil, excludes: Filter? = nil) {
            self.names = names
            self.action = action
            self.errnoRet = errnoRet
            self.args = args
            self.includes = includes
            self.excludes = excludes
        }

        public var allNames: [String] { (names ?? []) + (name.map { [$0] } ?? []) }
    }

    /// Docker's rule conditions: capabilities the task has, Go architecture
    /// names (amd64, 386, x32, arm64, arm), a lowest kernel version.
    public struct Filter: Codable, Sendable, Equatable {
        public var caps: [String]?
        public var arches: [String]?
        public var minKernel: String?

        public init(caps: [String]? = nil, arches: [String]? = nil, minKernel: String? = nil) {
            self.caps = caps
            self.arches = arches
            self.minKernel = minKernel
        }
    }

    public init(defaultAction: String, defaultErrnoRet: UInt32? = nil, archMap: [ArchMapEntry]? = nil, syscalls: [Rule]) {
        self.defaultAction = defaultAction
        self.defaultErrnoRet = defaultErrnoRet
        self.archMap = archMap
        self.syscalls = syscalls
    }

    /// The host's architecture as libseccomp names it, and the Go name
    /// Docker's `includes.arches` uses for it and its compatible ones.
    public struct Host: Sendable {
        public var scmpArches: [String]
        public var goArches: Set<String>
        public var kernel: (Int, Int)

        public static var current: Host {
            #if arch(x86_64)
            Host(scmpArches: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], goArches: ["amd64", "386", "x32"], kernel: kernelVersion())
            #elseif arch(arm64)
            Host(scmpArches: ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], goArches: ["arm64", "arm"], kernel: kernelVersion())
            #else
            Host(scmpArches: [], goArches: [], kernel: kernelVersion())
            #endif
        }

        static func kernelVersion() -> (Int, Int) {
            var u = utsname()
            uname(&u)
            let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
            return (parts.first ?? 0, parts.dropFirst().first ?? 0)
        }
    }

    /// The OCI form for a task with `capabilities` (its bounding set) on
    /// `host`: architectures from `archMap` (the host's entry and its
    /// sub-architectures) or `architectures`; each rule kept when its
    /// `includes` hold and its `excludes` do not; rules with the same
    /// action, errno and no arguments merged, in order.
    public func resolved(capabilities: Set<String>, host: Host = .current) -> OCI.Seccomp {
        var arches = architectures
        if let archMap {
            let native = host.scmpArches.first
            if let entry = archMap.first(where: { $0.architecture == native }) {
                arches = [entry.architecture] + (entry.subArchitectures ?? [])
            } else {
                arches = []
            }
        }
        var out: [OCI.Seccomp.Syscall] = []
        for rule in syscalls ?? [] {
            if let inc = rule.includes {
                if let caps = inc.caps, !caps.allSatisfy(capabilities.contains) { continue }
                if let a = inc.arches, !a.contains(where: host.goArches.contains) { continue }
                if let k = inc.minKernel, !Self.atLeast(host.kernel, k) { continue }
            }
            if let exc = rule.excludes {
                if let caps = exc.caps, caps.contains(where: capabilities.contains) { continue }
                if let a = exc.arches, a.contains(where: host.goArches.contains) { continue }
            }
            let names = rule.allNames
            if names.isEmpty { continue }
            if (rule.args ?? []).isEmpty, let last = out.last, last.action == rule.action, last.errnoRet == rule.errnoRet,
               (last.args ?? []).isEmpty {
                out[out.count - 1].names += names
            } else {
                out.append(OCI.Seccomp.Syscall(names: names, action: rule.action, errnoRet: rule.errnoRet,
                                               args: (rule.args ?? []).isEmpty ? nil : rule.args))
            }
        }
        var s = OCI.Seccomp(defaultAction: defaultAction, defaultErrnoRet: defaultErrnoRet,
                            architectures: arches.map { $0.isEmpty ? nil : $0 } ?? nil, syscalls: out)
        s.flags = flags
        s.listenerPath = listenerPath
        s.listenerMetadata = listenerMetadata
        return s
    }

    static func atLeast(_ have: (Int, Int), _ want: String) -> Bool {
        let p = want.split(separator: ".").compactMap { Int($0) }
        let w = (p.first ?? 0, p.dropFirst().first ?? 0)
        return have.0 != w.0 ? have.0 > w.0 : have.1 >= w.1
    }
}
