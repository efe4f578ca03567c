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

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a running task; in the foreground, exit with its status.",
        discussion: "The exec'd process is deleted once it has exited, unless -d leaves it running.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: [.short, .long], help: "Start it and return its exec ID.") var detach = false
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
            let p = try api.exec(id, ExecRequest(execID: execID, args: command, env: env.isEmpty ? nil : env, cwd: cwd,
                                                 fifos: FifoRequest(stdin: interactive || tty, terminal: tty)))
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
            guard case .exited(let exit) = outcome else {
                printError("tether: detached from exec \(execID) of \(id); it keeps running")
                return
            }
            _ = try? api.deleteExec(id, execID)
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}

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
            guard case .exited(let exit) = outcome else { return }
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}
