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
    /// How long a call that starts or restores a process may take (create,
    /// start, exec, restore) before it is killed; the quick ones (kill,
    /// pause, resume, ps, stats, update, delete) get at most 8 s of it, and
    /// checkpoint five times it. A hung runtime never hangs the shim.
    let timeout: UInt64

    enum Kind { case long, quick, checkpoint }

    func deadline(_ kind: Kind) -> UInt64 {
        switch kind {
        case .long: timeout
        case .quick: min(timeout, 8_000_000_000)
        case .checkpoint: timeout * 5
        }
    }

    /// `runtime create`: the container's init starts and waits on the exec
    /// fifo. `stdio` becomes the init's fds 0-2 (runc passes its own through);
    /// with a console socket the init gets a pty instead.
    func create(id: String, bundle: String, pidFile: String, stdio: [Int32], consoleSocket: String?) async throws {
        try await run(["create", "--bundle", bundle, "--pid-file", pidFile]
                      + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], .long, stdio: stdio, cwd: bundle)
    }

    /// `runtime exec --detach`: starts the process described by the JSON at
    /// `processFile` in the container; its pid lands in `pidFile`.
    func exec(id: String, processFile: String, pidFile: String, stdio: [Int32], consoleSocket: String?) async throws {
        try await run(["exec", "--detach", "--process", processFile, "--pid-file", pidFile]
                      + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], .long, stdio: stdio)
    }

    func start(id: String) async throws {
        try await run(["start", id], .long)
    }

    func kill(id: String, signal: UInt32, all: Bool) async throws {
        try await run(["kill"] + (all ? ["--all"] : []) + [id, String(signal)], .quick)
    }

    func delete(id: String, force: Bool) async throws {
        try await run(["delete"] + (force ? ["--force"] : []) + [id], .quick)
    }

    func pause(id: String) async throws { try await run(["pause", id], .quick) }
    func resume(id: String) async throws { try await run(["resume", id], .quick) }

    /// `runtime ps --format json`: the pids of every process in the container.
    func ps(id: String, scratch: String) async throws -> [Int32] {
        let out = try await runCapturing(["ps", "--format", "json", id], scratch: scratch)
        guard let pids = try? JSONDecoder().decode([Int32].self, from: Data(out)) else {
            throw RPCError(.internal, "\(Files.basename(binary)) ps printed something that is not a JSON list of pids: \(String(decoding: out.prefix(200), as: UTF8.self))")
        }
        return pids
    }

    /// `runtime update --resources FILE`: new LinuxResources (JSON) for a running container.
    func update(id: String, resourcesFile: String) async throws {
        try await run(["update", "--resources", resourcesFile, id], .quick)
    }

    /// `runtime events --stats`: one JSON stats record from the container's cgroup.
    func stats(id: String, scratch: String) async throws -> [UInt8] {
        try await runCapturing(["events", "--stats", id], scratch: scratch)
    }

    /// `runtime checkpoint` through CRIU into `imagePath`.
    func checkpoint(id: String, imagePath: String, workPath: String, leaveRunning: Bool) async throws {
        try await run(["checkpoint", "--image-path", imagePath, "--work-path", workPath]
                      + (leaveRunning ? ["--leave-running"] : []) + [id], .checkpoint)
    }

    /// `runtime restore --detach`: the container from a checkpoint, running.
    func restore(id: String, bundle: String, imagePath: String, workPath: String, pidFile: String,
                 stdio: [Int32], consoleSocket: String?) async throws {
        try await run(["restore", "--detach", "--image-path", imagePath, "--work-path", workPath,
                       "--bundle", bundle, "--pid-file", pidFile]
                      + (consoleSocket.map { ["--console-socket", $0] } ?? []) + [id], .checkpoint, stdio: stdio, cwd: bundle)
    }

    /// Runs the runtime with its stdout in a file under `scratch`, and returns it.
    private func runCapturing(_ args: [String], scratch: String) async throws -> [UInt8] {
        let path = "\(scratch)/\(args[0])-\(UInt32.random(in: 0...UInt32.max)).out"
        let out = try FD.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        defer { unlink(path) }
        try await run(args, .quick, stdio: [-1, out.raw, -1])
        out.close()
        return try Files.read(path)
    }

    private func run(_ args: [String], _ kind: Kind, stdio: [Int32] = [-1, -1, -1], cwd: String? = nil) async throws {
        var options = Spawn.Options()
        options.fds = stdio
        options.cwd = cwd
        let argv = [binary, "--root", root, "--log", logPath, "--log-format", "json"] + args
        let logOffset = Self.size(of: logPath)
        ShimLog.debug("exec \(argv.joined(separator: " "))")
        let code: Int32
        let limit = deadline(kind)
        do {
            code = try await reaper.run(binary, argv, options, deadline: limit)
        } catch let e as SysError {
            throw RPCError(.failedPrecondition, "cannot run the OCI runtime \(binary): \(e.message)")
        } catch is Reaper.DeadlinePassed {
            throw RPCError(.deadlineExceeded, "\(Files.basename(binary)) \(args[0]) \(args.last ?? "") did not finish within \(limit / 1_000_000_000) s and was killed")
        }
        guard code == 0 else {
            var why = lastError(after: logOffset) ?? "exit status \(code), and no error in \(logPath)\(Self.fullDisk(logPath))"
            // runc sometimes loses the errno of a failed write ("unable to store init state: %!w(<nil>)"): say what it meant.
            if !why.contains("No space left on device") { why += Self.fullDisk("\(root)/state.json") }
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

    /// "; its filesystem is full (No space left on device)" when the
    /// filesystem holding `path` has no room left: a runtime that could not
    /// write its log cannot say so itself.
    static func fullDisk(_ path: String) -> String {
        var s = statvfs()
        guard statvfs(Files.dirname(path), &s) == 0 else { return "" }
        if s.f_favail == 0 { return "; the filesystem holding \(Files.dirname(path)) has no inodes left (No space left on device)" }
        let free = UInt64(s.f_bavail) * UInt64(s.f_bsize)
        guard free < 64 << 10 else { return "" }
        return "; the filesystem holding \(Files.dirname(path)) is full, \(free) bytes left (No space left on device)"
    }

    static func size(of path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }
}
