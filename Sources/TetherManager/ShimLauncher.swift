import Foundation
import TetherRuntime
import TetherSys

/// Starts tether-shim for a task, in a session of its own so it outlives the
/// manager, and waits until its socket listens. The shim tells us on a pipe
/// (its fd 3): "ready", or end of file if it died first, in which case the
/// last line of its log says why. A shim whose "ready" finds nobody at the
/// other end (this manager died meanwhile) exits: nobody would know of it.
struct ShimLauncher: Sendable {
    let shimBinary: String
    let layout: Layout
    let debug: Bool
    let runtimeTimeout: Int64
    /// How long a shim may take to listen.
    let readyTimeoutMs: Int32

    /// A shim started and not yet known to be ready.
    struct Started: Sendable {
        let pid: Int32
        let startTime: UInt64
        let ready: FD
    }

    /// Starts the shim. Record its pid before waiting for it.
    func spawn(_ record: TaskRecord) throws -> Started {
        let log = try FD.open("\(record.bundle)/shim.log", O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, mode: 0o600)
        let ready = try FD.pipe()
        var args = [shimBinary,
                    "--namespace", record.namespace, "--id", record.id, "--bundle", record.bundle,
                    "--runtime", record.runtime, "--runtime-root", layout.runtimeRoot(record.namespace),
                    "--runtime-timeout", String(runtimeTimeout),
                    "--exit-fifo", layout.exitFifo, "--instance", record.instance, "--ready-fd", "3"]
        if debug { args.append("--debug") }
        var options = Spawn.Options()
        options.fds = [-1, -1, log.raw, ready.write.raw]
        options.newSession = true
        options.cwd = record.bundle
        let pid = try Spawn.spawn(shimBinary, args, options)
        ready.write.close()
        log.close()
        return Started(pid: pid, startTime: Proc.startTime(pid) ?? 0, ready: ready.read)
    }

    /// Waits (off the concurrency pool) for the shim to say it listens.
    func waitReady(_ shim: Started, _ record: TaskRecord) async throws {
        let timeout = readyTimeoutMs
        let word = try await onThread("shim-ready") { try Self.readReady(shim.ready, timeoutMs: timeout) }
        shim.ready.close()
        guard word == "ready" else {
            let why = word == "timeout" ? "it did not listen within \(readyTimeoutMs / 1000) s" : lastLogLine(record.bundle) ?? "no reason in its log"
            throw RuntimeError(.internal, "tether-shim for \(record.namespace)/\(record.id) did not start: \(why)")
        }
    }

    private static func readReady(_ fd: FD, timeoutMs: Int32) throws -> String {
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        var n: Int32
        repeat { n = poll(&p, 1, timeoutMs) } while n < 0 && errno == EINTR
        if n == 0 { return "timeout" }
        let bytes = try fd.read(upTo: 64)
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func lastLogLine(_ bundle: String) -> String? {
        guard let text = try? Files.readString("\(bundle)/shim.log") else { return nil }
        return text.split(separator: "\n").last.map(String.init)
    }
}
