import TetherRuntime

/// The shim's command line. The manager passes all of it; by hand, only
/// --id and --bundle are needed (see the README, "Debugging one shim").
public struct ShimOptions: Sendable {
    public var namespace = defaultNamespace
    public var id = ""
    /// The task's bundle and state directory: config.json, rootfs/, the socket, exit records.
    public var bundle = ""
    /// The OCI runtime: a name looked up in PATH, or a path.
    public var runtime = "runc"
    /// The OCI runtime's --root (its own state directory).
    public var runtimeRoot = "/run/tether/runc/default"
    /// Seconds a runtime call that starts a process may take before it is killed (OCIRuntime).
    public var runtimeTimeout: UInt64 = 60
    /// The manager's exit pipe (a FIFO); empty when no manager listens.
    public var exitFifo = ""
    /// The task incarnation, echoed in exit records.
    public var instance = ""
    /// An inherited fd to write "ready" to once the socket is listening.
    public var readyFD: Int32 = -1
    /// Set when containerd drives the shim (containerd-shim-tether-v1).
    public var containerd: Containerd?

    /// How a shim serving containerd differs: its socket is made by `start`
    /// and inherited, it publishes task events to containerd itself, and it
    /// has no tetherd to report exits to (they go out as events).
    public struct Containerd: Sendable {
        public var ttrpcAddress: String
        public var socketPath: String
        public var listenerFD: Int32
    }
    public var debug = false

    public static let usage = """
        usage: tether-shim --id ID --bundle DIR [--namespace NS] [--runtime runc|PATH]
                           [--runtime-root DIR] [--runtime-timeout SECONDS] [--exit-fifo PATH] [--instance X]
                           [--ready-fd N] [--debug]
        Serves containerd's shim v2 task API over ttrpc at DIR/shim.sock for one task.
        """

    public var socketPath: String { containerd?.socketPath ?? "\(bundle)/shim.sock" }
    public var exitsDir: String { "\(bundle)/exits" }
    public var initPidFile: String { "\(bundle)/init.pid" }
    /// Why the shim had to stop, when it did (read by the manager).
    public var fatalFile: String { "\(bundle)/shim.fatal" }
    public var shimPidFile: String { "\(bundle)/shim.pid" }
    public var runtimeLog: String { "\(bundle)/log.json" }

    public init() {}

    /// Parses `--flag value` and `--flag=value`. Throws a one-line message.
    public static func parse(_ args: [String]) throws(ShimUsageError) -> ShimOptions {
        var o = ShimOptions()
        var i = 0
        func value(_ name: String, _ inline: String?) throws(ShimUsageError) -> String {
            if let inline { return inline }
            i += 1
            guard i < args.count else { throw ShimUsageError("\(name) needs a value") }
            return args[i]
        }
        while i < args.count {
            var arg = args[i]
            var inline: String? = nil
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                inline = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            }
            switch arg {
            case "--namespace", "-namespace": o.namespace = try value(arg, inline)
            case "--id", "-id": o.id = try value(arg, inline)
            case "--bundle": o.bundle = try value(arg, inline)
            case "--runtime": o.runtime = try value(arg, inline)
            case "--runtime-root": o.runtimeRoot = try value(arg, inline)
            case "--runtime-timeout":
                guard let t = UInt64(try value(arg, inline)), (1...3600).contains(t) else {
                    throw ShimUsageError("--runtime-timeout needs a number of seconds from 1 to 3600")
                }
                o.runtimeTimeout = t
            case "--exit-fifo": o.exitFifo = try value(arg, inline)
            case "--instance": o.instance = try value(arg, inline)
            case "--ready-fd":
                guard let fd = Int32(try value(arg, inline)), fd > 2 else { throw ShimUsageError("--ready-fd needs an fd number above 2") }
                o.readyFD = fd
            case "--debug", "-debug": o.debug = true
            case "-h", "--help": throw ShimUsageError(usage)
            default: throw ShimUsageError("unknown argument \"\(args[i])\"")
            }
            i += 1
        }
        do {
            try Identifier.validate(o.id, kind: "task ID")
            try Identifier.validate(o.namespace, kind: "namespace")
        } catch { throw ShimUsageError(error.message) }
        guard o.bundle.hasPrefix("/") else { throw ShimUsageError("--bundle needs an absolute directory path") }
        while o.bundle.count > 1 && o.bundle.hasSuffix("/") { o.bundle.removeLast() }
        return o
    }
}

public struct ShimUsageError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
