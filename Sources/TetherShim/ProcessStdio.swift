#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TetherSys

/// The paths a process's stdio goes to, as the client named them.
struct IOPaths: Sendable, Equatable {
    var stdin = ""
    var stdout = ""
    var stderr = ""
    var terminal = false
}

/// One process's stdio: what the container gets, and the relay streams that
/// connect it to the IO paths the client named.
///
/// Without a terminal, each named stream gets a pipe: the container gets one
/// end as its fd 0, 1 or 2 (the runtime passes its own stdio through) and the
/// relay moves bytes between the other end and the path. With a terminal the
/// runtime sends the pty master over the console socket; the relay copies it
/// to stdout and stdin to it, and ResizePty sets its window size.
///
/// FIFOs are opened O_RDWR|O_NONBLOCK, which never blocks whether or not the
/// client has its end open yet, and leaves the shim holding both ends: a
/// client may go away and another come back without the container ever
/// seeing EPIPE, and stdin reaches end of file only by CloseIO.
/// Anything that is not a FIFO is taken as a file: appended to, or read.
final class ProcessStdio: Sendable {
    /// The container's ends, closed by the shim once the runtime has passed them on.
    let containerFDs: [FD?]
    let stdinStream: StdioRelay.StreamID?
    /// Every relay stream of this process, stdin's included.
    let streams: [StdioRelay.StreamID]
    /// The output streams (stdout, stderr).
    var outputStreams: [StdioRelay.StreamID] { streams.filter { $0 != stdinStream } }
    /// The pty master of a terminal process (our own dup, for ResizePty).
    let console: FD?

    private init(containerFDs: [FD?], stdinStream: StdioRelay.StreamID?, streams: [StdioRelay.StreamID], console: FD?) {
        self.containerFDs = containerFDs
        self.stdinStream = stdinStream
        self.streams = streams
        self.console = console
    }

    /// Files opened for a process before the runtime runs, so a bad path
    /// fails before anything starts.
    struct Opened: Sendable {
        let stdin: FD?
        let stdout: FD?
        let stderr: FD?
        let log: LogWriter?
    }

    static func openPaths(_ io: IOPaths, log: LogWriter?) throws(SysError) -> Opened {
        let stdin = io.stdin.isEmpty ? nil : try openInput(io.stdin)
        // Only the log wants the output: the stream still needs somewhere to go.
        let null = { () throws(SysError) -> FD? in log == nil ? nil : try FD.open("/dev/null", O_WRONLY) }
        let stdout = io.stdout.isEmpty ? try null() : try openOutput(io.stdout)
        let stderr = io.terminal ? nil : io.stderr.isEmpty ? try null() : try openOutput(io.stderr)
        return Opened(stdin: stdin, stdout: stdout, stderr: stderr, log: log)
    }

    /// Pipes for a process without a terminal. `onOutputDone` runs once every
    /// output stream has reached end of file (at once when there is none).
    static func pipes(_ files: Opened, relay: StdioRelay, onOutputDone: @escaping @Sendable () -> Void) throws(SysError) -> ProcessStdio {
        let inPipe = files.stdin == nil ? nil : try FD.pipe()
        let outPipe = files.stdout == nil ? nil : try FD.pipe()
        let errPipe = files.stderr == nil ? nil : try FD.pipe()
        for p in [outPipe, errPipe] { _ = try? p?.write.setPipeSize(outputPipeSize) }
        let remaining = Countdown([files.stdout, files.stderr].compactMap { $0 }.count, onOutputDone)
        var stdinStream: StdioRelay.StreamID? = nil
        var streams: [StdioRelay.StreamID] = []
        if let src = files.stdin, let inPipe {
            stdinStream = relay.add(from: src, to: inPipe.write)
            streams.append(stdinStream!)
        }
        if let dst = files.stdout, let outPipe {
            streams.append(relay.add(from: outPipe.read, to: dst, tap: files.log?.tap("stdout")) { remaining.tick() })
        }
        if let dst = files.stderr, let errPipe {
            streams.append(relay.add(from: errPipe.read, to: dst, tap: files.log?.tap("stderr")) { remaining.tick() })
        }
        return ProcessStdio(containerFDs: [inPipe?.read, outPipe?.write, errPipe?.write],
                            stdinStream: stdinStream, streams: streams, console: nil)
    }

    /// A terminal process: the pty master to stdout, stdin to the master.
    static func terminal(_ files: Opened, master: FD, relay: StdioRelay,
                         onOutputDone: @escaping @Sendable () -> Void) throws(SysError) -> ProcessStdio {
        let dup = { () throws(SysError) -> FD in FD(try check(fcntl(master.raw, F_DUPFD_CLOEXEC, 3), "dup", "pty master")) }
        // Both dups before any stream joins the relay: a failure leaves nothing registered.
        let toMaster = files.stdin == nil ? nil : try dup()
        let fromMaster = files.stdout == nil ? nil : try dup()
        var stdinStream: StdioRelay.StreamID? = nil
        var streams: [StdioRelay.StreamID] = []
        if let src = files.stdin, let toMaster {
            stdinStream = relay.add(from: src, to: toMaster)
            streams.append(stdinStream!)
        }
        if let dst = files.stdout, let fromMaster {
            streams.append(relay.add(from: fromMaster, to: dst, tap: files.log?.tap("stdout")) { onOutputDone() })
        } else {
            onOutputDone()
        }
        return ProcessStdio(containerFDs: [nil, nil, nil], stdinStream: stdinStream, streams: streams, console: master)
    }

    /// The raw fds for the runtime's stdio (-1 is /dev/null).
    var spawnFDs: [Int32] { containerFDs.map { $0?.raw ?? -1 } }

    /// Drops our copies of the container's ends, so end of file on the
    /// container's stdout means every process in it has closed it.
    func closeContainerEnds() { for fd in containerFDs { fd?.close() } }

    /// Stops relaying this process's streams and closes them.
    func remove(from relay: StdioRelay) {
        for id in streams { relay.remove(id) }
        console?.close()
    }

    /// Capacity of the container's stdout and stderr pipes and of output
    /// FIFOs: 1 MiB (Linux's default pipe-max-size) instead of 64 KiB, so
    /// bulk output wakes the relay and the client a sixteenth as often. The
    /// kernel allocates the pages only as data waits in them. Measured here:
    /// 1 GiB from a container through the shim and `tether run` to a reader,
    /// median of 15 interleaved runs, 0.44 s with 64 KiB FIFOs, 0.34 s with
    /// 1 MiB. Best effort: where the kernel refuses, a pipe keeps 64 KiB.
    static let outputPipeSize: Int32 = 1 << 20

    /// Opens an output path without ever blocking or following a symlink: O_RDWR|O_NONBLOCK on a
    /// FIFO holds both ends (no client is needed, and none can make the
    /// container see EPIPE), and the same call creates or appends to a
    /// regular file. A character device (/dev/null, a terminal) is written
    /// to as it is; anything else (a directory, a socket) is refused.
    static func openOutput(_ path: String) throws(SysError) -> FD {
        // O_NOCTTY: a terminal named here must never become the shim's own
        // (its hangup would SIGHUP the shim); O_NOFOLLOW: no symlink.
        let fd = try FD.open(path, O_RDWR | O_NONBLOCK | O_CREAT | O_APPEND | O_NOCTTY | O_NOFOLLOW, mode: 0o640)
        let st = try fd.status()
        switch st.st_mode & S_IFMT {
        case S_IFIFO: _ = try? fd.setPipeSize(outputPipeSize)
        case S_IFREG, S_IFCHR: try fd.setNonBlocking(false)
        default: throw SysError("open", errno: EINVAL, path, explanation: "\(Files.describe(st.st_mode)) cannot take a process's output")
        }
        return fd
    }

    /// Opens an input path without ever blocking or following a symlink. A
    /// regular file or a character device is read as it is (the relay reads it without epoll, which
    /// cannot watch them); a missing path is an error.
    static func openInput(_ path: String) throws(SysError) -> FD {
        let fd = try FD.open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW)
        let st = try fd.status()
        switch st.st_mode & S_IFMT {
        case S_IFIFO:
            // The same FIFO again, read-write: we hold a writer, so stdin ends only by CloseIO.
            return try FD.open("/proc/self/fd/\(fd.raw)", O_RDWR | O_NONBLOCK | O_NOCTTY).relabeled(path)
        case S_IFREG, S_IFCHR: try fd.setNonBlocking(false)
        default: throw SysError("open", errno: EINVAL, path, explanation: "\(Files.describe(st.st_mode)) cannot be a process's input")
        }
        return fd
    }
}

/// Calls `done` once `tick` has been called `count` times (at once for 0).
final class Countdown: Sendable {
    private let left: Mutex<Int>
    private let done: @Sendable () -> Void

    init(_ count: Int, _ done: @escaping @Sendable () -> Void) {
        left = Mutex(count)
        self.done = done
        if count == 0 { done() }
    }

    func tick() {
        if left.withLock({ $0 -= 1; return $0 == 0 }) { done() }
    }
}
