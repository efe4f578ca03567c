import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherAPI
import TetherClient
import TetherOCI
import TetherRuntime
import TetherSys

/// The flags that say what a new task is: shared by run and create.
struct TaskOptions: ParsableArguments {
    @Option(help: "A directory to use as the container's root filesystem.")
    var rootfs: String?

    @Option(help: "An OCI bundle directory (config.json and its rootfs).")
    var bundle: String?

    @Option(name: .long, help: "Set an environment variable (K=V); repeatable.")
    var env: [String] = []

    @Option(help: "The working directory inside the container.")
    var cwd: String?

    @Argument(help: "The task ID.")
    var id: String

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    /// Checked in run(), not validate(), so a mistake is one line, not a usage page.
    func check() throws {
        if rootfs != nil && bundle != nil { throw UsageError("--rootfs and --bundle cannot be used together") }
        if bundle == nil && command.isEmpty { throw UsageError("no command given: name one after --, as in: tether run \(id) -- sh -c 'echo hi'") }
        for e in env where !e.contains("=") { throw UsageError("--env \(e) is not K=V") }
    }

    @OptionGroup var resources: ResourceOptions

    @Option(help: "Add a capability (SYS_ADMIN, CAP_NET_ADMIN, ALL); repeatable.") var capAdd: [String] = []
    @Option(help: "Drop a capability (or ALL); repeatable.") var capDrop: [String] = []
    @Flag(help: "Every capability, no seccomp filter, no masked kernel paths, the host's devices: the container is as strong as root on the host.")
    var privileged = false
    @Flag(help: "Mount the container's root filesystem read-only.") var readOnly = false
    @Option(name: [.short, .long], help: "Run as UID or UID:GID (numbers).") var user: String?

    @Option(name: .customLong("security-opt"),
            help: "seccomp=unconfined (no syscall filter), seccomp=FILE (a profile in Docker's format or the OCI form), seccomp-audit (refuse and record what the profile does not allow) or seccomp-learn (allow and record it); repeatable. The default is Tether's profile, as strict as Docker's ('tether seccomp default').")
    var securityOpt: [String] = []

    @Option(help: "Also write stdout and stderr to this file, one CRI log record per line.")
    var log: String?

    @Option(help: "Rotate the log past this size (bytes, or with K, M, G).")
    var logMaxSize: String?

    func request(fifos: FifoRequest?) throws -> CreateTaskRequest {
        var logRequest: LogRequest?
        if let log {
            var max: UInt64?
            if let text = logMaxSize {
                guard let n = parseSize(text) else { throw UsageError("--log-max-size \(text) is not a size (e.g. 10M)") }
                max = UInt64(n)
            }
            logRequest = LogRequest(path: absolute(log), maxSize: max)
        }
        var r = CreateTaskRequest(id: id, args: command.isEmpty ? nil : command, env: env.isEmpty ? nil : env, cwd: cwd,
                                  rootfs: rootfs.map(absolute), bundle: bundle.map(absolute), fifos: fifos, log: logRequest)
        r.resources = try resources.request()
        let agent: String?
        (r.seccomp, agent) = try seccompRequest()
        var security = Confinement(capAdd: capAdd, capDrop: capDrop, privileged: privileged, readOnly: readOnly, user: user)
        security.seccompAgent = agent
        if !security.isDefault || user != nil || agent != nil {
            if bundle != nil { throw UsageError("--cap-add, --cap-drop, --privileged, --read-only and --user are for generated specs: a bundle's config.json says its own") }
            _ = try security.capabilities()
            _ = try security.ids()
            r.security = security
        }
        return r
    }

    /// --security-opt seccomp=…: the profile file is read and checked here,
    /// so a mistake in it is one line naming the file.
    private func seccompRequest() throws -> (JSONValue?, String?) {
        var choice: JSONValue?
        var seccompAgent: String?
        for opt in securityOpt {
            let (key, value) = opt.split(separator: "=", maxSplits: 1).map(String.init).pair
            switch key {
            case "seccomp" where value == "unconfined":
                choice = .string("unconfined")
            case "seccomp" where !value.isEmpty:
                if bundle != nil { throw UsageError("--security-opt seccomp= is for generated specs: a bundle's config.json brings its own") }
                let profile = try SeccompFile.load(value)
                _ = try SeccompFile.check(profile, source: value)
                choice = try APIJSON.decoder.decode(JSONValue.self, from: try APIJSON.encoder.encode(profile))
            case "seccomp-audit" where value.isEmpty, "seccomp-learn" where value.isEmpty:
                seccompAgent = String(key.dropFirst("seccomp-".count))
            case "no-new-privileges" where value.isEmpty || value == "true":
                continue  // always on
            default:
                throw UsageError("unknown --security-opt \(opt): use seccomp=unconfined, seccomp=FILE, seccomp-audit or seccomp-learn")
            }
        }
        return (choice, seccompAgent)
    }
}

private extension Array where Element == String {
    var pair: (String, String) { (first ?? "", count > 1 ? self[1] : "") }
}

/// --memory, --cpus, --pids-limit: for run, create and update.
struct ResourceOptions: ParsableArguments {
    @Option(help: "Memory limit (bytes, or with K, M, G, T).") var memory: String?
    @Option(help: "CPU limit as a number of CPUs, e.g. 0.5.") var cpus: Double?
    @Option(help: "Most processes the task may have.") var pidsLimit: Int64?

    /// The limits asked for, range-checked (nil when none was asked for).
    func request() throws -> ResourceLimits? {
        var r = ResourceLimits()
        if let memory {
            guard let n = parseSize(memory) else { throw UsageError("--memory \(memory) is not a size (e.g. 64M)") }
            r.memory = n
        }
        r.cpus = cpus
        r.pidsLimit = pidsLimit
        do { try r.validate() } catch { throw UsageError(error.message) }
        return r.isEmpty ? nil : r
    }

    /// As OCI LinuxResources JSON.
    func linuxResources() throws -> Data? {
        guard let r = try request() else { return nil }
        return Data(SpecCheck.encode(r.linuxResources))
    }
}

func absolute(_ p: String) -> String { p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p }

/// "4096", "64K", "10M", "1G", "2T": a byte count; nil when it is not one
/// or does not fit in 63 bits.
func parseSize(_ s: String) -> Int64? {
    let units: [Character: Int64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50]
    var digits = Substring(s)
    var unit: Int64 = 1
    if let last = s.uppercased().last, let u = units[last] {
        unit = u
        digits = digits.dropLast()
    }
    guard let n = Int64(digits), n >= 0 else { return nil }
    let (v, overflow) = n.multipliedReportingOverflow(by: unit)
    return overflow ? nil : v
}
