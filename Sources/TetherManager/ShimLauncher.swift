import Foundation
import TetherRuntime
import TetherSys

/// Starts tether-shim for a task, in a session of its own so it outlives the
/// manager, and waits until its socket listens. The shim tells us on a pipe
/// (its fd 3): "ready", or end of file if it died first, in which case the
/// last line of its log says why.
struct ShimLauncher: Sendable {
    let shimBinary: String
    let layout: Layout
    let debug: Bool

    /// How long a shim may take to listen.
    static let readyTimeoutMs: Int32 = 10_000

    func launch(_ record: TaskRecord) async throws -> Int32 {
        let log = try FD.open("\(record.bundle)/shim.log", O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
        let ready = try FD.pipe()
        var args = [shimBinary,
                    "--namespace", record.namespace, "--id", record.id, "--bundle", record.bundle,
                    "--runtime", record.runtime, "--runtime-root", layout.runtimeRoot(record.namespace),
                    "--exit-fifo", layout.exitFifo, "--instance", record.instance, "--ready-fd", "3"]
        if debug { args.append("--debug") }
        var options = Spawn.Options()
        options.fds = [-1, -1, log.raw, ready.write.raw]
        options.newSession = true
        options.cwd = record.bundle
        let pid = try Spawn.spawn(shimBinary, args, options)
        ready.write.close()
        log.close()
        let word = try await onThread("shim-ready") { try Self.readReady(ready.read) }
        guard word == "ready" else {
            throw RuntimeError(.internal, "tether-shim for \(record.namespace)/\(record.id) did not start: \(lastLogLine(record.bundle) ?? "no reason in its log")")
        }
        return pid
    }

    private static func readReady(_ fd: FD) throws -> String {
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, readyTimeoutMs)
        if n == 0 { return "timeout" }
        let bytes = try fd.read(upTo: 64)
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func lastLogLine(_ bundle: String) -> String? {
        guard let text = try? Files.readString("\(bundle)/shim.log") else { return nil }
        return text.split(separator: "\n").last.map(String.init)
    }
}
