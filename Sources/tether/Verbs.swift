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
import TetherRuntime

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a created task.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let t = try global.client.start(id)
            print("\(t.id) \(t.pid)")
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the namespace's tasks.", aliases: ["ls"])
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Print IDs only.") var quiet = false

    func run() throws {
        try guarded {
            let tasks = try global.client.list()
            if quiet {
                for t in tasks { print(t.id) }
                return
            }
            var rows = [["ID", "PID", "STATUS", "EXIT"]]
            for t in tasks {
                rows.append([t.id, String(t.pid), t.status.rawValue, t.exit.map { describeStatus($0.status) } ?? "-"])
            }
            let widths = (0..<4).map { c in rows.map { $0[c].count }.max() ?? 0 }
            for r in rows {
                print(r.enumerated().map { i, v in i == 3 ? v : v.padded(to: widths[i] + 3) }.joined())
            }
        }
    }
}

struct StateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "state", abstract: "Print a task's state as JSON.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let t = try global.client.get(id)
            print(String(decoding: try APIJSON.prettyEncoder.encode(t), as: UTF8.self))
        }
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send a signal to a task (TERM unless -s says otherwise).")
    @OptionGroup var global: GlobalOptions
    @Option(name: .shortAndLong, help: "A signal name (TERM, SIGKILL, ...) or number.") var signal = "TERM"
    @Flag(help: "Signal every process in the container, not just its init.") var all = false
    @Option(help: "Signal only this exec'd process.") var execID: String?
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            _ = try Signals.parse(signal)
            if let execID {
                if all { throw UsageError("--all and --exec-id cannot be used together: --all signals the whole container") }
                try global.client.killExec(id, execID, signal: signal)
            } else {
                try global.client.kill(id, signal: signal, all: all)
            }
        }
    }
}

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait for a task to exit; print its exit status and exit with it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let exit = try global.client.wait(id)
            print(exit.status)
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a task that has exited (or was never started); print its exit.", aliases: ["rm"])
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let exit = try global.client.delete(id)
            print("\(id): pid \(exit.pid) exited with status \(describeStatus(exit.status)) at \(RFC3339.format(exit.timestamp))")
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the CLI's and tetherd's versions.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try guarded {
            print("tether \(TetherVersion.string)")
            let v = try global.client.version()
            print("tetherd \(v.version) (runtime \(v.runtime), root \(v.root), state \(v.state))")
        }
    }
}
