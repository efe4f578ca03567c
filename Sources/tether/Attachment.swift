#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherAPI
import TetherClient
import TetherRuntime
import TetherSys

/// The CLI's end of a process's stdio: the FIFOs the manager made in the
/// task's bundle. Output FIFOs are copied to our stdout and stderr until end
/// of file (the shim closes its end once the process's output is drained);
/// our stdin, when asked, goes to the stdin FIFO, and its end becomes CloseIO.
final class Attachment: @unchecked Sendable {
    private let out: FD?
    private let err: FD?
    private let io: IOView
    private let done = DispatchGroup()
    /// Set when the user typed the detach keys (ctrl-p ctrl-q) in a terminal session.
    let detached = DispatchSemaphore(value: 0)
    /// Set when our own stdout or stderr went away (`tether run … | head`):
    /// the copy stops reading, and the session ends instead of spinning.
    let outputClosed = DispatchSemaphore(value: 0)

    /// Opens the output FIFOs (non-blocking: the open never waits; poll does).
    /// One client at a time: two readers of one FIFO would each get part of
    /// the output, so the first holds a lock on it (flock, released when it
    /// goes away) and a second is refused.
    init(_ io: IOView) throws {
        self.io = io
        out = io.stdout.isEmpty ? nil : try FD.open(io.stdout, O_RDONLY | O_NONBLOCK)
        err = io.stderr.isEmpty ? nil : try FD.open(io.stderr, O_RDONLY | O_NONBLOCK)
        if let first = out ?? err, flock(first.raw, LOCK_EX | LOCK_NB) != 0 {
            if errno == EWOULDBLOCK {
                throw UsageError("another client is attached to this process's output (a 'tether run' or 'tether attach'): detach it first, with ctrl-p ctrl-q or by ending it")
            }
            throw SysError.last("flock", first.label)
        }
    }

    /// Starts copying output, and stdin when `stdin` is set. `closeIO` runs
    /// when our stdin reaches end of file (not in a terminal session).
    func start(stdin: Bool, closeIO: @escaping @Sendable () -> Void) throws {
        signal(SIGPIPE, SIG_IGN)
        for (src, dst) in [(out, Int32(1)), (err, Int32(2))] {
            guard let src else { continue }
            Self.enlargeIfPipe(dst)
            done.enter()
            try OSThread.start(dst == 1 ? "copy-stdout" : "copy-stderr") { [done, outputClosed] in
                if Self.copyOut(src, to: dst) == .sinkClosed { outputClosed.signal() }
                done.leave()
            }
        }
        guard stdin, !io.stdin.isEmpty else { return }
        // Non-blocking: the shim holds the read end while the process lives;
        // once it is gone (a process that exits at once), ENXIO, not a hang.
        let fifo: FD
        do { fifo = try FD.open(io.stdin, O_WRONLY | O_NONBLOCK) } catch {
            if error.errno == ENXIO { return }
            throw error
        }
        try fifo.setNonBlocking(false)
        let terminal = io.terminal
        try OSThread.start("copy-stdin") { [detached] in
            let detachedByKeys = Self.copyIn(to: fifo, watchDetachKeys: terminal)
            fifo.close()
            if detachedByKeys { detached.signal() } else if !terminal { closeIO() }
        }
    }

    /// Waits for the end of the output.
    func waitForOutput() { done.wait() }

    enum CopyEnd { case endOfFile, sinkClosed }

    /// Copies until end of file: with splice(2) where our output allows it
    /// (a pipe or a file: the bytes never enter this process), else through a
    /// buffer (a terminal). If our own output goes away (EPIPE, as when the
    /// reader of `tether run … | head` exits), stops at once: reading on and
    /// dropping would spin for as long as the process writes.
    private static func copyOut(_ src: FD, to dst: Int32) -> CopyEnd {
        var buf = [UInt8](repeating: 0, count: 65536)
        var useSplice = true
        while true {
            if useSplice {
                let n = src.splice(to: dst, max: 1 << 20)
                if n > 0 { continue }
                if n == 0 { return .endOfFile }
                if n == -Int(EPIPE) { return .sinkClosed }
                if n == -Int(EAGAIN) {
                    // Either no room in our output or nothing in the FIFO: wait for both.
                    if !waitFor(dst, POLLOUT) || !waitFor(src.raw, POLLIN) { return .endOfFile }
                    continue
                }
                // Anything else (a terminal, which splice cannot write): read and write.
                useSplice = false
                continue
            }
            let n = buf.withUnsafeMutableBytes { read(src.raw, $0.baseAddress!, $0.count) }
            if n == 0 { return .endOfFile }
            if n < 0 {
                if errno == EINTR { continue }
                guard errno == EAGAIN, waitFor(src.raw, POLLIN) else { return .endOfFile }
                continue
            }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(dst, $0.baseAddress! + off, n - off) }
                if w < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN, waitFor(dst, POLLOUT) { continue }
                    return .sinkClosed
                }
                off += w
            }
        }
    }

    /// When our output is a pipe, gives it 1 MiB (best effort), as the shim
    /// does for the container's: bulk output then wakes the reader a
    /// sixteenth as often.
    private static func enlargeIfPipe(_ fd: Int32) {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFIFO else { return }
        _ = try? FD.setPipeSize(fd, 1 << 20)
    }

    /// Blocks until `fd` is ready for `events` (or hung up); false on a poll error.
    private static func waitFor(_ fd: Int32, _ events: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(events), revents: 0)
        while poll(&p, 1, -1) < 0 {
            if errno != EINTR { return false }
        }
        return true
    }

    /// Copies our stdin to the FIFO until end of file (false) or, in a
    /// terminal, until ctrl-p ctrl-q (true), which is not passed on.
    private static func copyIn(to fifo: FD, watchDetachKeys: Bool) -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        var sawCtrlP = false
        while true {
            let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            var chunk = Array(buf[0..<n])
            if watchDetachKeys {
                // A ctrl-p held back from the last read goes first.
                if sawCtrlP { chunk.insert(0x10, at: 0) }
                for i in chunk.indices.dropFirst() where chunk[i - 1] == 0x10 && chunk[i] == 0x11 {
                    if i > 1 { try? fifo.writeAll(Array(chunk[0..<(i - 1)])) }
                    return true
                }
                // Hold back a trailing ctrl-p until we know what follows it.
                sawCtrlP = chunk.last == 0x10
                if sawCtrlP { chunk.removeLast() }
            }
            do { try fifo.writeAll(chunk) } catch { return false }
        }
    }
}
