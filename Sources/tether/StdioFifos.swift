import Foundation
import TetherRuntime
import TetherClient
import TetherSys

/// The CLI's end of a task's stdio: FIFOs in a private directory, read by
/// two threads that copy them to our stdout and stderr until end of file,
/// which comes when the shim has relayed the last byte and closed its end.
final class StdioFifos: @unchecked Sendable {
    let dir: String
    private let out: FD
    private let err: FD
    private let done = DispatchGroup()

    init(root: String, name: String) throws {
        try Files.makeDirectories(root)
        let unique = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        dir = "\(root)/\(name)-\(unique)"
        try Files.makeDirectories(dir)
        do {
            try Files.makeFifo("\(dir)/stdout")
            try Files.makeFifo("\(dir)/stderr")
            // Non-blocking, so the open never waits for the shim; poll waits instead.
            out = try FD.open("\(dir)/stdout", O_RDONLY | O_NONBLOCK)
            err = try FD.open("\(dir)/stderr", O_RDONLY | O_NONBLOCK)
        } catch {
            try? Files.removeTree(dir)
            throw error
        }
    }

    var io: IO { IO(stdout: "\(dir)/stdout", stderr: "\(dir)/stderr") }

    func startCopying() {
        signal(SIGPIPE, SIG_IGN)
        for (src, dst) in [(out, Int32(1)), (err, Int32(2))] {
            done.enter()
            Thread.detachNewThread { [done] in
                Self.copy(src, to: dst)
                done.leave()
            }
        }
    }

    func waitForOutput() { done.wait() }

    func remove() { try? Files.removeTree(dir) }

    /// Copies until end of file. If our own output goes away (EPIPE), keeps
    /// reading and dropping, so the task never blocks on a full pipe.
    private static func copy(_ src: FD, to dst: Int32) {
        var buf = [UInt8](repeating: 0, count: 65536)
        var sinkOpen = true
        while true {
            var p = pollfd(fd: src.raw, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, -1) < 0 { if errno == EINTR { continue } else { return } }
            let n = buf.withUnsafeMutableBytes { read(src.raw, $0.baseAddress!, $0.count) }
            if n == 0 { return }
            if n < 0 { if errno == EAGAIN || errno == EINTR { continue } else { return } }
            var off = 0
            while sinkOpen && off < n {
                let w = buf.withUnsafeBytes { write(dst, $0.baseAddress! + off, n - off) }
                if w < 0 { if errno == EINTR { continue }; sinkOpen = false; break }
                off += w
            }
        }
    }
}

/// Passes SIGINT, SIGTERM and SIGHUP on to the task while the CLI waits for
/// it, as `podman run` does; the task's exit then ends the CLI.
final class SignalForwarder: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []

    init(api: APIClient, id: String) {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { try? api.kill(id, signal: String(sig), all: false) }
            s.resume()
            sources.append(s)
        }
    }

    func stop() { for s in sources { s.cancel() } }
}
