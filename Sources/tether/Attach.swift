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

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to a running task's (or exec's) output, and stdin with -i; ctrl-p ctrl-q detaches a terminal.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: [.short, .long], help: "Pass our stdin to it too (it must have one).") var interactive = false
    @Option(help: "Attach to this exec'd process instead of the task's init.") var execID: String?
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let api = global.client
            let id = self.id
            let execID = self.execID
            let io = try execID.map { try api.getExec(id, $0).io } ?? api.get(id).io
            if io.stdout.isEmpty && io.stderr.isEmpty {
                throw UsageError("\(id) was started without stdio to attach to (run it without -d, or with create, to keep FIFOs)")
            }
            let session = Session(attachment: try Attachment(io), tty: io.terminal, stdin: interactive || io.terminal)
            let outcome = try session.run(
                resize: { rows, cols in try? api.resize(id, execID: execID, width: UInt32(cols), height: UInt32(rows)) },
                kill: { sig in
                    if let execID { try? api.killExec(id, execID, signal: String(sig)) } else { try? api.kill(id, signal: String(sig), all: false) }
                },
                closeIO: { try? api.closeIO(id, execID: execID) },
                start: nil,
                wait: { try execID.map { try api.waitExec(id, $0) } ?? api.wait(id) })
            switch outcome {
            case .exited(let exit): throw ExitCode(Int32(truncatingIfNeeded: exit.status))
            case .detached: return
            case .outputClosed: throw ExitCode(128 + SIGPIPE)
            }
        }
    }
}
