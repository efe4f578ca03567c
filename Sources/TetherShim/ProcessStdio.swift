#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TetherSys

/// One process's stdio: the fds the container gets as 0, 1 and 2, and the
/// relay streams that connect them to the IO paths the client named.
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

    private init(containerFDs: [FD?], stdinStream: StdioRelay.StreamID?, streams: [StdioRelay.StreamID]) {
        self.containerFDs = containerFDs
        self.stdinStream = stdinStream
        self.streams = streams
    }

    /// Opens the paths and starts relaying. `onOutputDone` runs once every
    /// output stream has reached end of file (immediately when there is none).
    static func open(stdin: String, stdout: String, stderr: String, relay: StdioRelay,
                     onOutputDone: @escaping @Sendable () -> Void) throws(SysError) -> ProcessStdio {
        // Open every path before starting any stream, so a bad path leaves nothing running.
        let inFile = stdin.isEmpty ? nil : try openInput(stdin)
        let outFile = stdout.isEmpty ? nil : try openOutput(stdout)
        let errFile = stderr.isEmpty ? nil : try openOutput(stderr)
        let inPipe = inFile == nil ? nil : try FD.pipe()
        let outPipe = outFile == nil ? nil : try FD.pipe()
        let errPipe = errFile == nil ? nil : try FD.pipe()

        let outputs = [outFile, errFile].compactMap { $0 }.count
        let remaining = Countdown(outputs, onOutputDone)
        var stdinStream: StdioRelay.StreamID? = nil
        var streams: [StdioRelay.StreamID] = []
        if let inFile, let inPipe {
            stdinStream = relay.add(from: inFile, to: inPipe.write)
            streams.append(stdinStream!)
        }
        if let outFile, let outPipe { streams.append(relay.add(from: outPipe.read, to: outFile) { remaining.tick() }) }
        if let errFile, let errPipe { streams.append(relay.add(from: errPipe.read, to: errFile) { remaining.tick() }) }
        return ProcessStdio(containerFDs: [inPipe?.read, outPipe?.write, errPipe?.write], stdinStream: stdinStream, streams: streams)
    }

    /// The raw fds for the runtime's stdio (-1 is /dev/null).
    var spawnFDs: [Int32] { containerFDs.map { $0?.raw ?? -1 } }

    /// Drops our copies of the container's ends, so end of file on the
    /// container's stdout means every process in it has closed it.
    func closeContainerEnds() { for fd in containerFDs { fd?.close() } }

    static func openOutput(_ path: String) throws(SysError) -> FD {
        if isFifo(path) { return try FD.open(path, O_RDWR | O_NONBLOCK) }
        return try FD.open(path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o640)
    }

    static func openInput(_ path: String) throws(SysError) -> FD {
        if isFifo(path) { return try FD.open(path, O_RDWR | O_NONBLOCK) }
        return try FD.open(path, O_RDONLY)
    }

    static func isFifo(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFIFO
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
