#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import CTether
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherRuntime
import TetherSys

/// containerd-shim-tether-v1: the same shim, driven the way containerd
/// drives a runtime v2 shim binary (`io.containerd.tether.v1`).
///
///     … -namespace NS -address A -publish-binary P -id ID [-debug] start
///         (in the bundle, TTRPC_ADDRESS set) starts the shim server
///         detached, listening before it returns, writes BUNDLE/address
///         and prints its unix:// address, one line, nothing else
///     … -namespace NS -address A -publish-binary P -id ID -bundle B delete
///         cleans up after a shim that is gone or done, and prints a
///         marshalled containerd.task.v2.DeleteResponse
///     … -namespace NS -address A -publish-binary P -id ID [-debug]
///         (no action: started by `start`) the server: the listening socket
///         is fd 3, the log goes to the bundle's `log` FIFO, task events
///         go to containerd at TTRPC_ADDRESS.
public enum ContainerdShim {
    struct Flags {
        var namespace = ""
        var address = ""
        var publishBinary = ""
        var id = ""
        var bundle = ""
        var debug = false
        var action = ""
    }

    public static func run(_ args: [String]) -> Never {
        let flags: Flags
        do { flags = try parse(args) } catch {
            printError("containerd-shim-tether-v1: \(error)")
            exit(2)
        }
        switch flags.action {
        case "start": start(flags)
        case "delete": delete(flags)
        case "": serve(flags)
        default:
            printError("containerd-shim-tether-v1: unknown action \"\(flags.action)\": use start or delete")
            exit(2)
        }
    }

    /// Go-style flags, as containerd passes them: -name value, -name=value, --name value.
    static func parse(_ args: [String]) throws(ShimUsageError) -> Flags {
        var f = Flags()
        var i = 0
        while i < args.count {
            var arg = args[i]
            guard arg.hasPrefix("-") else {
                guard f.action.isEmpty else { throw ShimUsageError("unexpected argument \"\(arg)\"") }
                f.action = arg
                i += 1
                continue
            }
            while arg.hasPrefix("-") { arg.removeFirst() }
            var value: String?
            if let eq = arg.firstIndex(of: "=") {
                value = String(arg[arg.index(after: eq)...])
                arg = String(arg[..<eq])
            }
            func next() throws(ShimUsageError) -> String {
                if let value { return value }
                i += 1
                guard i < args.count else { throw ShimUsageError("-\(arg) needs a value") }
                return args[i]
            }
            switch arg {
            case "namespace": f.namespace = try next()
            case "address": f.address = try next()
            case "publish-binary": f.publishBinary = try next()
            case "id": f.id = try next()
            case "bundle": f.bundle = try next()
            case "socket": _ = try next()
            case "debug": f.debug = value.map { $0 != "false" } ?? true
            case "v", "version":
                print("containerd-shim-tether-v1 \(TetherVersion.string)")
                exit(0)
            default: throw ShimUsageError("unknown flag -\(arg)")
            }
            i += 1
        }
        guard !f.namespace.isEmpty else { throw ShimUsageError("-namespace is required") }
        if f.action != "" || !f.id.isEmpty {
            guard Identifier.isValid(f.id) else { throw ShimUsageError("-id \"\(f.id)\" is not a valid task ID") }
        }
        return f
    }

    // MARK: - where things are

    /// The shim's socket: in a 0700 directory of its own, named by a hash of
    /// containerd's address, the namespace and the ID, so it always fits
    /// sun_path and two containerds never share one.
    static func socketPath(_ f: Flags) -> String {
        "\(socketDir)/\(hash128(Array("\(f.address)/\(f.namespace)/\(f.id)".utf8)))"
    }

    static let socketDir = "/run/tether/containerd-shims"

    /// 32 hex digits: FNV-1a 64 of the bytes, then of the bytes reversed.
    /// (Unique names for a host's tasks, not a secret: nothing hides behind it.)
    static func hash128(_ bytes: [UInt8]) -> String {
        func fnv(_ b: some Sequence<UInt8>) -> UInt64 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for x in b { h = (h ^ UInt64(x)) &* 0x0000_0100_0000_01b3 }
            return h
        }
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return hex(fnv(bytes)) + hex(fnv(bytes.reversed()))
    }

    /// runc's --root for the namespace: next to containerd's own state, as
    /// containerd's runc shim keeps it (/run/containerd/runc/NS), unless the
    /// task's options name another. The bundle is STATE/io.containerd.runtime.v2.task/NS/ID.
    static func defaultRuntimeRoot(bundle: String, namespace: String) -> String {
        let parts = bundle.split(separator: "/")
        if parts.count >= 3 && parts[parts.count - 3] == "io.containerd.runtime.v2.task" {
            return "/" + parts.dropLast(3).joined(separator: "/") + "/runc/\(namespace)"
        }
        return "/run/containerd/runc/\(namespace)"
    }

    // MARK: - start

    static func start(_ f: Flags) -> Never {
        func fail(_ why: String) -> Never {
            printError("containerd-shim-tether-v1 start: \(why)")
            exit(1)
        }
        let bundle = cwd()
        guard (try? Files.readRegular("\(bundle)/config.json", limit: 4 << 20)) != nil else {
            fail("no readable config.json in the bundle \(bundle) (the working directory): containerd's bundle is incomplete")
        }
        let socket = socketPath(f)
        let address = "unix://\(socket)"
        // Already served (a start retried): the live shim's address, once more.
        if let c = try? UnixSocket.connect(socket, timeoutMs: 500) {
            c.close()
            guard writeAddress(bundle, address) else { exit(1) }
            print(address)
            exit(0)
        }
        do {
            try Files.ensureDirectory(socketDir, mode: 0o700)
            unlink(socket)
            let listener = try UnixSocket.listen(socket)
            chmod(socket, 0o600)
            var exe = Proc.readLink("/proc/self/exe") ?? "containerd-shim-tether-v1"
            if exe.hasSuffix(" (deleted)") { exe = String(exe.dropLast(10)) }
            var args = [exe, "-namespace", f.namespace, "-id", f.id, "-address", f.address, "-publish-binary", f.publishBinary]
            if f.debug { args.append("-debug") }
            var options = Spawn.Options()
            options.fds = [-1, -1, -1, listener.raw]  // nothing of start's stdio: containerd waits for it to close
            options.newSession = true
            options.cwd = bundle
            _ = try Spawn.spawn(exe, args, options)
            guard writeAddress(bundle, address) else { exit(1) }
        } catch {
            fail("\(error)")
        }
        print(address)
        exit(0)
    }

    /// BUNDLE/address, exactly the address (containerd reads it as it is).
    static func writeAddress(_ bundle: String, _ address: String) -> Bool {
        do { try Files.writeAtomically("\(bundle)/address", Array(address.utf8), mode: 0o600) } catch {
            printError("containerd-shim-tether-v1: \(error)")
            return false
        }
        return true
    }

    // MARK: - the server

    static func serve(_ f: Flags) -> Never {
        let bundle = cwd()
        // The log: the FIFO containerd reads, non-blocking, so that a
        // containerd that is away never stalls the shim's one thread.
        if let log = try? FD.open("\(bundle)/log", O_WRONLY | O_NONBLOCK) {
            dup2(log.raw, 2)
        }
        var o = ShimOptions()
        o.namespace = f.namespace
        o.id = f.id
        o.bundle = bundle
        o.runtimeRoot = defaultRuntimeRoot(bundle: bundle, namespace: f.namespace)
        o.debug = f.debug
        o.containerd = ShimOptions.Containerd(ttrpcAddress: getenv("TTRPC_ADDRESS").map { String(cString: $0) } ?? "",
                                              socketPath: socketPath(f), listenerFD: 3)
        ShimMain.run(options: o)
    }

    // MARK: - delete

    /// Cleans up after a shim that is gone or done: the runtime's container
    /// (force), the rootfs mounts; prints a DeleteResponse with the init's
    /// exit (from the shim's own records when it left one, else 137). A task
    /// still running under a live shim is not touched.
    static func delete(_ f: Flags) -> Never {
        let bundle = f.bundle.isEmpty ? cwd() : f.bundle
        if let c = try? TTRPCBlockingClient(socketPath: socketPath(f), timeout: 2) {
            // A live shim: a task of its that still runs is not ours to
            // touch; one that is over, the shim is told to finish.
            var state = Containerd_Task_V2_StateRequest()
            state.id = f.id
            if let s = try? c.call("containerd.task.v2.Task", "State", state, as: Containerd_Task_V2_StateResponse.self),
               [.created, .running, .paused, .pausing].contains(s.status) {
                c.close()
                printError("containerd-shim-tether-v1 delete: task \(f.namespace)/\(f.id) is \(s.status) (pid \(s.pid)) under its live shim: kill it first")
                exit(1)
            }
            var shutdown = Containerd_Task_V2_ShutdownRequest()
            shutdown.id = f.id
            shutdown.now = true
            _ = try? c.call("containerd.task.v2.Task", "Shutdown", shutdown, as: Google_Protobuf_Empty.self)
            c.close()
        }
        unlink(socketPath(f))  // the dead shim's
        let runtime = RuntimeChoice.load(bundle: bundle) ?? RuntimeChoice(binary: "runc", root: defaultRuntimeRoot(bundle: bundle, namespace: f.namespace))
        if let binary = Spawn.lookPath(runtime.binary) {
            var o = Spawn.Options()
            o.fds = [-1, -1, -1]
            if let pid = try? Spawn.spawn(binary, [binary, "--root", runtime.root, "delete", "--force", f.id], o) {
                let pidfd = tether_pidfd_open(pid)
                var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                if pidfd >= 0 && poll(&p, 1, 4000) == 0 { kill(pid, SIGKILL) }
                if pidfd >= 0 { close(pidfd) }
                var status: Int32 = 0
                _ = tether_wait_pid(pid, &status)
            }
        }
        for e in Mounts.unmountTree(under: "\(bundle)/rootfs") { printError("containerd-shim-tether-v1 delete: \(e)") }
        var out = Containerd_Task_V2_DeleteResponse()
        let initPid = Int32(((try? Files.readString("\(bundle)/init.pid")) ?? "").filter(\.isNumber)) ?? 0
        out.pid = UInt32(bitPattern: initPid)
        out.exitStatus = 137
        let now = WallTime.now()
        out.exitedAt = .init(seconds: now.seconds, nanos: now.nanos)
        for r in ExitJournal.records(in: "\(bundle)/exits") where r.execID.isEmpty {
            out.pid = r.pid
            out.exitStatus = r.exitStatus
            out.exitedAt = r.exitedAt
        }
        let bytes: [UInt8] = (try? out.serializedBytes()) ?? []
        try? FD.writeAll(to: 1, bytes)
        exit(0)
    }

    static func cwd() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return "." }
        return String(cString: buf)
    }
}

/// The runtime a containerd task runs on (its options may name another
/// binary or root), kept in the bundle for `delete`, which runs without
/// the shim.
struct RuntimeChoice: Codable, Sendable {
    var binary: String
    var root: String

    static func load(bundle: String) -> RuntimeChoice? {
        guard let bytes = try? Files.readRegular("\(bundle)/tether-runtime.json", limit: 65536) else { return nil }
        return try? JSONDecoder().decode(RuntimeChoice.self, from: Data(bytes))
    }

    func save(bundle: String) throws {
        try Files.writeAtomically("\(bundle)/tether-runtime.json", Array(try JSONEncoder().encode(self)))
    }
}
