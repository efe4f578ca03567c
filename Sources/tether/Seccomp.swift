import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TetherAPI
import TetherOCI
import TetherRuntime
import TetherSeccomp
import TetherSys

struct SeccompCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seccomp",
        abstract: "Check a seccomp profile, or print Tether's default one.",
        subcommands: [Show.self, Check.self, Default.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What a task's seccomp agent refused (seccomp-audit) or allowed (seccomp-learn): each syscall, its count, the first pid and its exec ID.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print the learned profile instead: Tether's default plus every syscall the task made (for --security-opt seccomp=FILE).")
        var profile = false
        @Argument(help: "The task ID.") var id: String

        func run() throws {
            try guarded {
                let body = try global.client.seccomp(id, profile: profile)
                if profile {
                    print(String(decoding: body, as: UTF8.self), terminator: "")
                    return
                }
                let report = try APIJSON.decoder.decode(SeccompReport.self, from: body)
                print("SYSCALL             COUNT  FIRST PID  EXEC (\(report.mode))")
                for e in report.syscalls {
                    print("\(e.name.rightPad(18))  \(String(e.count).leftPad(5))  \(String(e.firstPid).leftPad(9))  \(e.execID.isEmpty ? "(init)" : e.execID)")
                }
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a profile (Docker's format or the OCI form) with this host's libseccomp, as run and create do.")
        @Argument(help: "The profile file.") var file: String

        func run() throws {
            try guarded {
                let profile = try SeccompFile.load(file)
                let s = try SeccompFile.check(profile, source: file)
                let names = (s.syscalls ?? []).reduce(0) { $0 + $1.names.count }
                print("\(file): ok: default action \(s.defaultAction), \(s.syscalls?.count ?? 0) rules naming \(names) syscalls, architectures \(s.architectures?.joined(separator: ", ") ?? "native") (libseccomp \(SeccompCheck.version))")
            }
        }
    }

    struct Default: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print Tether's default profile in Docker's format: a starting point for your own.")

        func run() throws {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(SeccompDefault.profile), as: UTF8.self))
        }
    }
}

/// Reading and checking a profile file, for `seccomp check` and `--security-opt`.
enum SeccompFile {
    static func load(_ path: String) throws -> SeccompProfile {
        let bytes: [UInt8]
        do { bytes = try Files.readRegular(path, limit: SpecCheck.maxSize) } catch {
            throw UsageError("seccomp profile \(path): \(error)")
        }
        do {
            return try APIJSON.decoder.decode(SeccompProfile.self, from: Data(bytes))
        } catch {
            throw UsageError("seccomp profile \(path) is not a profile: \(describeDecodingError(error))")
        }
    }

    /// The profile as a task with the default capabilities would get it, checked.
    static func check(_ p: SeccompProfile, source: String) throws -> OCI.Seccomp {
        let s = p.resolved(capabilities: Set(OCI.Capabilities.containerdDefault))
        try SeccompCheck.check(s, source: source)
        return s
    }

}

private extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    func rightPad(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}
