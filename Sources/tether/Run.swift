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

/// What foreground `run`, `exec` and `attach` share: relay the process's
/// stdio, forward signals or window sizes, and wait for its exit or for
/// the user to detach.
struct Session {
    enum Outcome { case exited(Exit), detached }

    let attachment: Attachment
    let tty: Bool
    let stdin: Bool

    /// Runs until the process exits (and its output is drained) or the user
    /// detaches. `start` starts the process (nil when attaching to a running one).
    func run(resize: @escaping @Sendable (UInt16, UInt16) -> Void, kill: @escaping @Sendable (Int32) -> Void,
             closeIO: @escaping @Sendable () -> Void, start: (() throws -> Void)?, wait: @escaping @Sendable () throws -> Exit) throws -> Outcome {
        let raw = tty ? RawTerminal.enter() : nil
        defer { raw?.restore() }
        let winch = tty ? WindowSizeForwarder(resize: resize) : nil
        defer { winch?.stop() }
        try start?()
        try attachment.start(stdin: stdin, closeIO: closeIO)
        let forwarder = tty ? nil : SignalForwarder(kill)
        defer { forwarder?.stop() }

        let result = Box<Result<Outcome, any Error>>()
        let finished = DispatchSemaphore(value: 0)
        OSThread.start("wait") {
            result.set(Result { .exited(try wait()) })
            finished.signal()
        }
        let attachment = self.attachment
        OSThread.start("detach-keys") {
            attachment.detached.wait()
            result.set(.success(.detached))
            finished.signal()
        }
        finished.wait()
        let outcome = try result.get()!.get()
        if case .exited = outcome { attachment.waitForOutput() }
        return outcome
    }
}

/// A value set once by one thread and read by another.
final class Box<T>: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)  // a stable address
    private var value: T?
    init() { pthread_mutex_init(lock, nil) }
    deinit { pthread_mutex_destroy(lock); lock.deallocate() }
    func set(_ v: T) { pthread_mutex_lock(lock); if value == nil { value = v }; pthread_mutex_unlock(lock) }
    func get() -> T? { pthread_mutex_lock(lock); defer { pthread_mutex_unlock(lock) }; return value }
}

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
            guard case .exited(let exit) = outcome else {
                printError("tether: detached from \(id); it keeps running ('tether attach \(id)' to come back)")
                return
            }
            if rm { _ = try api.delete(id) }
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}

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
