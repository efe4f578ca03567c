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
