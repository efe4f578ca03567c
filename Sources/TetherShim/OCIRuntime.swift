#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import TTRPC
import TetherSys

/// Drives a runc-compatible CLI (runc, crun, ...) for one container. Every
/// call is a child started and reaped through the shim's Reaper. Errors come
/// back with the runtime's own message, taken from its JSON log.
struct OCIRuntime: Sendable {
    let binary: String
    let root: String
    let logPath: String
    let reaper: Reaper

    /// `runtime create`: the container's init starts and waits on the exec
    /// fifo. `stdio` becomes the init's fds 0-2 (runc passes its own through);
    /// with a console socket the init gets a pty instead.
    func create(id: String, bundle: String, pidFile: String, stdio: [Int32], consoleSocket: String?) async throws {
        try await run(["create", "--bundle", bundle, "--pid-file", pidFile]
                      + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], stdio: stdio, cwd: bundle)
    }

    /// `runtime exec --detach`: starts the process described by the JSON at
    /// `processFile` in the container; its pid lands in `pidFile`.
    func exec(id: String, processFile: String, pidFile: String, stdio: [Int32], consoleSocket: String?) async throws {
        try await run(["exec", "--detach", "--process", processFile, "--pid-file", pidFile]
                      + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], stdio: stdio)
    }

    func start(id: String) async throws {
        try await run(["start", id])
    }

    func kill(id: String, signal: UInt32, all: Bool) async throws {
        try await run(["kill"] + (all ? ["--all"] : []) + [id, String(signal)])
    }

    func delete(id: String, force: Bool) async throws {
        try await run(["delete"] + (force ? ["--force"] : []) + [id])
    }

    private func run(_ args: [String], stdio: [Int32] = [-1, -1, -1], cwd: String? = nil) async throws {
        var options = Spawn.Options()
        options.fds = stdio
        options.cwd = cwd
        let argv = [binary, "--root", root, "--log", logPath, "--log-format", "json"] + args
        let logOffset = Self.size(of: logPath)
        ShimLog.debug("exec \(argv.joined(separator: " "))")
        let code: Int32
        do {
            code = try await reaper.run(binary, argv, options)
        } catch let e as SysError {
            throw RPCError(.failedPrecondition, "cannot run the OCI runtime \(binary): \(e.message)")
        }
        guard code == 0 else {
            let why = lastError(after: logOffset) ?? "exit status \(code), and no error in \(logPath)"
            throw RPCError(.unknown, "\(Files.basename(binary)) \(args[0]) failed: \(why)")
        }
    }

    /// The message of the newest error line the runtime logged past `offset`
    /// (the log's size before the call), so older calls' errors are never blamed.
    func lastError(after offset: Int) -> String? {
        guard let fd = try? FD.open(logPath, O_RDONLY), lseek(fd.raw, off_t(offset), SEEK_SET) >= 0,
              let bytes = try? fd.readToEnd(limit: 1 << 20) else { return nil }
        struct Line: Decodable { let level: String?; let msg: String? }
        for raw in bytes.split(separator: UInt8(ascii: "\n")).reversed() {
            guard let line = try? JSONDecoder().decode(Line.self, from: Data(raw)),
                  line.level == "error", let msg = line.msg else { continue }
            return msg
        }
        return nil
    }

    static func size(of path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }
}
