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

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a task without starting it (start it with 'tether start', see its output with 'tether attach').")

    @OptionGroup var global: GlobalOptions
    @Flag(name: [.short, .long], help: "Keep a stdin for the task ('tether attach -i').") var interactive = false
    @Flag(name: [.short, .long], help: "Give the task a terminal.") var tty = false
    @Option(help: "Restore the task from this checkpoint directory when it starts.") var checkpoint: String?
    @OptionGroup var task: TaskOptions

    func run() throws {
        try guarded {
            try task.check()
            var req = try task.request(fifos: FifoRequest(stdin: interactive || tty, terminal: tty))
            req.checkpoint = checkpoint.map(absolute)
            let t = try global.client.create(req)
            print("\(t.id) \(t.pid)")
        }
    }
}
