import ArgumentParser
import Foundation
import TetherAPI
import TetherClient
import TetherRuntime

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

    func request(io: IO) -> CreateTaskRequest {
        let abs = { (p: String) in p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p }
        return CreateTaskRequest(id: id, args: command.isEmpty ? nil : command, env: env.isEmpty ? nil : env, cwd: cwd,
                                 rootfs: rootfs.map(abs), bundle: bundle.map(abs), io: io)
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create and start a task; in the foreground, relay its output and exit with its status.",
        discussion: "With neither --rootfs nor --bundle the task runs on the embedded busybox rootfs.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Delete the task once it has exited.") var rm = false
    @Flag(name: [.short, .long], help: "Start the task and return; its output is discarded.") var detach = false
    @Option(help: "Where to make the stdio FIFOs. Default: the socket's directory/fifo.") var fifoDir: String?
    @OptionGroup var task: TaskOptions

    func run() throws {
        try guarded {
            try task.check()
            if rm && detach { throw UsageError("--rm and --detach cannot be used together: a detached task is deleted with 'tether delete'") }
            let api = global.client
            if detach {
                _ = try api.create(task.request(io: IO()))
                do { _ = try api.start(task.id) } catch {
                    _ = try? api.delete(task.id)
                    throw error
                }
                print(task.id)
                return
            }
            let fifos = try StdioFifos(root: fifoDir ?? (global.address as NSString).deletingLastPathComponent + "/fifo",
                                       name: "\(global.namespace)-\(task.id)")
            defer { fifos.remove() }
            _ = try api.create(task.request(io: fifos.io))
            fifos.startCopying()
            do { _ = try api.start(task.id) } catch {
                _ = try? api.delete(task.id)
                throw error
            }
            let forwarding = SignalForwarder(api: api, id: task.id)
            let exit = try api.wait(task.id)
            forwarding.stop()
            fifos.waitForOutput()
            if rm { _ = try api.delete(task.id) }
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a task without starting it (its output is discarded; start it with 'tether start').")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var task: TaskOptions

    func run() throws {
        try guarded {
            try task.check()
            let t = try global.client.create(task.request(io: IO()))
            print("\(t.id) \(t.pid)")
        }
    }
}
