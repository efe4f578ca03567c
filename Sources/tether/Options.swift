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
        return r
    }
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
