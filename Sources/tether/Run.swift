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

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create and start a task; in the foreground, relay its stdio and exit with its status.",
        discussion: """
            With neither --rootfs nor --bundle the task runs on the embedded busybox rootfs.
            With -t the local terminal goes raw; ctrl-p ctrl-q detaches and leaves the task running.
            """)

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Delete the task once it has exited.") var rm = false
    @Flag(name: [.short, .long], help: "Start the task and return. Its output is discarded (or logged, with --log) unless -i or -t keeps it for 'tether attach'.") var detach = false
    @Flag(name: [.short, .long], help: "Keep stdin open and pass ours to the task.") var interactive = false
    @Flag(name: [.short, .long], help: "Give the task a terminal (and pass ours to it).") var tty = false
    @OptionGroup var task: TaskOptions

    func run() throws {
        try guarded {
            try task.check()
            if rm && detach { throw UsageError("--rm and --detach cannot be used together: a detached task is deleted with 'tether delete'") }
            let api = global.client
            let id = task.id
            // Detached without -i or -t, the output is discarded, as with `ctr run -d`
            // (or logged with --log); otherwise FIFOs to attach to, and come back to.
            let attachable = !detach || interactive || tty
            let view = try api.create(task.request(fifos: attachable ? FifoRequest(stdin: interactive || tty, terminal: tty) : nil))
            if detach {
                do { _ = try api.start(id) } catch {
                    _ = try? api.delete(id)
                    throw error
                }
                print(id)
                return
            }
            let session = Session(attachment: try Attachment(view.io), tty: tty, stdin: interactive || tty)
            let outcome = try session.run(
                resize: { rows, cols in try? api.resize(id, width: UInt32(cols), height: UInt32(rows)) },
                kill: { sig in try? api.kill(id, signal: String(sig), all: false) },
                closeIO: { try? api.closeIO(id) },
                start: {
                    do { _ = try api.start(id) } catch {
                        _ = try? api.delete(id)
                        throw error
                    }
                },
                wait: { try api.wait(id) })
            switch outcome {
            case .exited(let exit):
                if rm { _ = try api.delete(id) }
                throw ExitCode(Int32(truncatingIfNeeded: exit.status))
            case .detached:
                printError("tether: detached from \(id); it keeps running ('tether attach \(id)' to come back)")
            case .outputClosed where rm:
                // As a shell pipeline ends its writer once the reader is gone.
                // SIGKILL: a container's init ignores signals it has no handler for.
                _ = try? api.kill(id, signal: "KILL", all: true)
                _ = try? api.wait(id)
                _ = try api.delete(id)
                throw ExitCode(128 + SIGPIPE)
            case .outputClosed:
                printError("tether: our output was closed; \(id) keeps running, detached ('tether attach \(id)' to read it, 'tether kill -s KILL \(id)' then 'tether delete \(id)' to end it)")
                throw ExitCode(128 + SIGPIPE)
            }
        }
    }
}
