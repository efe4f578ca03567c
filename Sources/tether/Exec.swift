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

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a running task; in the foreground, exit with its status.",
        discussion: "The exec'd process is deleted once it has exited, unless -d leaves it running.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: [.short, .long], help: "Start it and return its exec ID. Its output is discarded unless -i or -t keeps it for 'tether attach --exec-id'.") var detach = false
    @Flag(name: [.short, .long], help: "Keep stdin open and pass ours to it.") var interactive = false
    @Flag(name: [.short, .long], help: "Give it a terminal (and pass ours to it).") var tty = false
    @Option(help: "The exec ID (default: a new one).") var execID: String?
    @Option(name: .long, help: "Set an environment variable (K=V); repeatable.") var env: [String] = []
    @Option(help: "The working directory inside the container.") var cwd: String?
    @Argument(help: "The task ID.") var taskID: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func run() throws {
        try guarded {
            if command.isEmpty { throw UsageError("no command given: name one after --, as in: tether exec \(taskID) -- sh") }
            for e in env where !e.contains("=") { throw UsageError("--env \(e) is not K=V") }
            let api = global.client
            let id = taskID
            // The same rule as run: detached without -i or -t, the output is
            // discarded (nobody would read FIFOs, and a chatty process would
            // stop once they filled); otherwise FIFOs to attach to.
            let attachable = !detach || interactive || tty
            let p = try api.exec(id, ExecRequest(execID: execID, args: command, env: env.isEmpty ? nil : env, cwd: cwd,
                                                 fifos: attachable ? FifoRequest(stdin: interactive || tty, terminal: tty) : nil))
            let execID = p.execID
            if detach {
                do { _ = try api.startExec(id, execID) } catch {
                    _ = try? api.deleteExec(id, execID)
                    throw error
                }
                print(execID)
                return
            }
            let session = Session(attachment: try Attachment(p.io), tty: tty, stdin: interactive || tty)
            let outcome = try session.run(
                resize: { rows, cols in try? api.resize(id, execID: execID, width: UInt32(cols), height: UInt32(rows)) },
                kill: { sig in try? api.killExec(id, execID, signal: String(sig)) },
                closeIO: { try? api.closeIO(id, execID: execID) },
                start: {
                    do { _ = try api.startExec(id, execID) } catch {
                        _ = try? api.deleteExec(id, execID)
                        throw error
                    }
                },
                wait: { try api.waitExec(id, execID) })
            switch outcome {
            case .exited(let exit):
                _ = try? api.deleteExec(id, execID)
                throw ExitCode(Int32(truncatingIfNeeded: exit.status))
            case .detached:
                printError("tether: detached from exec \(execID) of \(id); it keeps running")
            case .outputClosed:
                printError("tether: our output was closed; exec \(execID) of \(id) keeps running, detached ('tether attach --exec-id \(execID) \(id)' to read it)")
                throw ExitCode(128 + SIGPIPE)
            }
        }
    }
}
