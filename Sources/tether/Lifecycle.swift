import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherAPI
import TetherOCI
import TetherClient
import TetherRuntime
import TetherSys

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Freeze every process of a running task (cgroup freezer).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws { try guarded { _ = try global.client.pause(id) } }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Thaw a paused task.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws { try guarded { _ = try global.client.resume(id) } }
}

struct Pids: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every process in a task's container, with the exec ID of exec'd ones.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let list = try global.client.pids(id)
            print("PID".padded(to: 10) + "EXEC")
            for p in list { print(String(p.pid).padded(to: 10) + (p.execID ?? "-")) }
        }
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

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change a task's cgroup limits while it runs.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var resources: ResourceOptions
    @Option(help: "OCI LinuxResources JSON from a file ('-' for stdin), instead of the flags.") var resourcesFile: String?
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let data: Data
            if let file = resourcesFile {
                data = Data(file == "-" ? try FD(dup(0), label: "stdin").readToEnd(limit: 1 << 20) : try Files.readRegular(file, limit: 1 << 20))
            } else if let d = try resources.linuxResources() {
                data = d
            } else {
                throw UsageError("nothing to update: give --memory, --cpus, --pids-limit or --resources-file")
            }
            try global.client.update(id, resources: data)
        }
    }
}

struct Checkpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Checkpoint a running task into a directory through CRIU; restore with 'tether create --checkpoint DIR'.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Stop the task once checkpointed (by default it keeps running).") var exit = false
    @Argument(help: "The task ID.") var id: String
    @Argument(help: "The directory for the checkpoint images.") var path: String

    func run() throws { try guarded { try global.client.checkpoint(id, path: absolute(path), exit: exit) } }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a task's cpu, memory and pids from its cgroup.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "JSON instead of text.") var json = false
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let s = try global.client.stats(id)
            if json {
                print(String(decoding: try APIJSON.encoder.encode(s), as: UTF8.self))
                return
            }
            print("cpu:    \(Double(s.cpuUsageNanos) / 1e9) s (user \(Double(s.cpuUserNanos) / 1e9) s, kernel \(Double(s.cpuKernelNanos) / 1e9) s)")
            print("memory: \(s.memoryUsage) bytes (max \(s.memoryMaxUsage), limit \(s.memoryLimit))")
            print("pids:   \(s.pids) (limit \(s.pidsLimit == 0 ? "none" : String(s.pidsLimit)))")
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print task events as they happen, one JSON object per line, until interrupted.",
        discussion: "All namespaces unless --ns narrows them. Topics: /tasks/create, /tasks/start, /tasks/exit, /tasks/delete, /tasks/oom, /tasks/exec-added, /tasks/exec-started, /tasks/paused, /tasks/resumed, /tasks/checkpointed.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this namespace.") var ns: String?
    @Option(help: "Only this task.") var task: String?
    @Option(help: "Only this topic (repeatable).") var topic: [String] = []

    func run() throws {
        try guarded {
            let encoder = APIJSON.encoder
            try global.client.events(namespace: ns, task: task, topics: topic) { e in
                // One write per event, unbuffered: a reader of a pipe sees each at once.
                if let data = try? encoder.encode(e) { try? FD.writeAll(to: 1, Array(data) + [0x0A]) }
            }
            printError("tether: tetherd ended the event stream (it is stopping)")
        }
    }
}
