import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TetherManager
import TetherRuntime
import TetherServer
import TetherSys

@main
struct Tetherd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tetherd",
        abstract: "The Tether manager: runs each task under its own tether-shim and serves the HTTP API.",
        version: TetherVersion.string)

    @Option(help: "Persistent state (the default rootfs, tasks' writable layers).")
    var root = "/var/lib/tether"

    @Option(help: "Volatile state (bundles, shim sockets, exit pipe).")
    var state = "/run/tether"

    @Option(help: "The API socket. Default: STATE/tetherd.sock.")
    var address: String?

    @Option(help: "The OCI runtime: a name in PATH or a path (runc, crun, ...).")
    var runtime = "runc"

    @Option(help: "The tether-shim binary. Default: the one next to tetherd, else PATH.")
    var shim: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    @Flag(help: "Start shims with --debug (their logs: STATE/tasks/NS/ID/shim.log).")
    var debugShims = false

    @Option(help: "Seconds a runtime call that starts a process (create, start, exec) may take before it is killed; 1 to 3600.")
    var runtimeTimeout: Int64 = 60

    @Option(help: "Seconds a new shim may take to listen before it is killed; 1 to 600.")
    var shimTimeout: Int32 = 10

    @Option(help: "Events queued for one API event subscriber (GET /v1/events) before it is disconnected as too slow; 16 to 1048576.")
    var eventBuffer = EventBus.defaultLimit

    func validate() throws {
        guard (16...1 << 20).contains(eventBuffer) else { throw ValidationError("--event-buffer \(eventBuffer) is out of range: give 16 to 1048576 events") }
        guard (1...3600).contains(runtimeTimeout) else { throw ValidationError("--runtime-timeout \(runtimeTimeout) is out of range: give 1 to 3600 seconds") }
        guard (1...600).contains(shimTimeout) else { throw ValidationError("--shim-timeout \(shimTimeout) is out of range: give 1 to 600 seconds") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown --log-level \(logLevel): use trace, debug, info, notice, warning, error or critical")
        }
    }

    func run() async throws {
        // Sockets are born 0600 and state files are the owner's alone; every
        // directory is made with an explicit mode. (Shims set 022 for containers.)
        umask(0o177)
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "tetherd")
        raiseFileLimit(logger)
        let address = address ?? "\(state)/tetherd.sock"
        do {
            try await serve(address: address, logger: logger)
        } catch {
            logger.critical("\(error)")
            FileHandle.standardError.write(Data("tetherd: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func serve(address: String, logger: Logger) async throws {
        guard geteuid() == 0 else { throw RuntimeError(.failedPrecondition, "tetherd must run as root: it mounts filesystems and runs containers") }
        guard let shimBinary = findShim() else {
            throw RuntimeError(.failedPrecondition, "tether-shim not found next to tetherd or in PATH: build it (swift build) or pass --shim PATH")
        }
        if Spawn.lookPath(runtime) == nil {
            logger.warning("OCI runtime \(runtime) not found; creating tasks will fail until it is installed")
        }
        try Files.makeDirectories(Files.dirname(address))
        if let fd = try? UnixSocket.connect(address) {
            fd.close()
            throw RuntimeError(.failedPrecondition, "tetherd is already running at \(address)")
        }
        unlink(address)  // a stale socket from a manager that died

        let layout = Layout(root: root, state: state)
        var config = ManagerConfig(layout: layout, runtime: runtime, shimBinary: shimBinary, debugShims: debugShims, logger: logger,
                                   runtimeTimeout: runtimeTimeout, shimReadyTimeout: shimTimeout)
        // A manager that cannot hear exits any more stops, loudly, for its
        // supervisor to restart it (the shims keep the exits on disk).
        config.eventBuffer = eventBuffer
        config.onFatal = { why in
            FileHandle.standardError.write(Data("tetherd: \(why)\n".utf8))
            Glibc.exit(70)
        }
        let runtime = try await ShimRuntime.start(config)
        let ownSocket = Mutex<Files.Identity?>(nil)
        try Files.writeAtomically(layout.pidFile, Array("\(getpid())\n".utf8), mode: 0o644)

        var app = Application(
            router: APIServer(runtime: runtime, logger: logger).router(),
            configuration: .init(address: .unixDomainSocket(path: address), serverName: nil),
            onServerRunning: { _ in
                chmod(address, 0o600)
                ownSocket.withLock { $0 = Files.identity(address) }
                logger.info("tetherd \(TetherVersion.string) listening", metadata: ["address": "\(address)", "root": "\(layout.root)", "state": "\(layout.state)"])
            },
            logger: logger)
        // Only what is still ours: a successor may have its own there by now.
        let release: @Sendable () -> Void = {
            if let mine = ownSocket.withLock({ $0 }), Files.identity(address) == mine { unlink(address) }
            if (try? Files.readString(layout.pidFile)) == "\(getpid())\n" { unlink(layout.pidFile) }
        }
        // PromptStop after the server in the list: a graceful shutdown stops
        // services last to first, so it acts before the server waits for its requests.
        let group = ServiceGroup(configuration: .init(services: [app, PromptStop(runtime: runtime, logger: logger, release: release)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        release()
        let running = (try? await runtime.tasks(namespace: defaultNamespace).count) ?? 0
        logger.info("tetherd stopped; tasks keep running under their shims", metadata: ["tasks in default": "\(running)"])
    }

    /// Raises the soft limit on open files to the hard one, as containerd
    /// does: tetherd holds a few fds per task (docs/architecture.md), and
    /// systemd's default soft limit of 1024 would stop it at a few hundred.
    private func raiseFileLimit(_ logger: Logger) {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return }
        let soft = lim.rlim_cur
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) != 0 {
                logger.warning("setrlimit RLIMIT_NOFILE \(lim.rlim_max): \(String(cString: strerror(errno))); keeping \(soft)")
                return
            }
        }
        logger.debug("open file limit", metadata: ["soft was": "\(soft)", "now": "\(lim.rlim_cur)"])
    }

    private func findShim() -> String? {
        if let shim { return Spawn.lookPath(shim) }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let sibling = Files.dirname(exe) + "/tether-shim"
        if Files.exists(sibling) { return sibling }
        return Spawn.lookPath("tether-shim")
    }
}

/// Makes a graceful shutdown prompt and bounded: when it begins, event
/// streams end and pending waits fail with a clear error (clients retry
/// against the next tetherd; exits stay with the shims); whatever still runs
/// after `bound` (a runtime call mid-create) does not keep tetherd alive.
struct PromptStop: Service {
    let runtime: ShimRuntime
    let logger: Logger
    let release: @Sendable () -> Void
    static let bound: Duration = .seconds(10)

    func run() async throws {
        try? await gracefulShutdown()
        runtime.events.finishAll()
        runtime.refuseWaits()
        let (logger, release) = (logger, release)
        _ = try? OSThread.start("stop-bound") {
            var left = timespec(tv_sec: Int(Self.bound.components.seconds), tv_nsec: 0)
            var asked = left
            while nanosleep(&asked, &left) != 0 && errno == EINTR { asked = left }
            logger.warning("tetherd did not stop within \(Self.bound) of the signal (a request still running); exiting anyway, tasks keep running under their shims")
            release()
            Glibc.exit(0)
        }
    }
}
