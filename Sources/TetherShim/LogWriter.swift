#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TetherRuntime
import TetherSys

/// The task's log file in the CRI format kubelet and conmon use: one record
/// per line, `<RFC3339Nano> <stdout|stderr> <F|P> <text>`. A chunk that ends
/// without a newline is written as a partial (P) record; the line is closed
/// by a full (F) record, an empty one if the stream ends first. The file is
/// rotated to PATH.1 when the next record would take it past `maxSize`.
final class LogWriter: Sendable {
    private struct State {
        var fd: FD
        var size: Int
    }

    let path: String
    let maxSize: Int
    private let state: Mutex<State>

    /// Opens (or creates) the log: never through a symlink, never anything
    /// but a regular file (a FIFO there is refused, not waited on).
    init(path: String, maxSize: UInt64) throws(SysError) {
        self.path = path
        self.maxSize = Int(clamping: maxSize)
        let fd = try Files.openRegular(path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o640)
        let st = try fd.status()
        state = Mutex(State(fd: fd, size: Int(st.st_size)))
    }

    func tap(_ stream: String) -> LogTap { LogTap(writer: self, stream: stream) }

    fileprivate func append(_ stream: String, full: Bool, _ text: ArraySlice<UInt8>) {
        let now = WallTime.now()
        var record = Array("\(RFC3339.format(seconds: now.seconds, nanos: now.nanos)) \(stream) \(full ? "F" : "P") ".utf8)
        record += text
        record.append(0x0A)
        state.withLock { s in
            if maxSize > 0 && s.size > 0 && s.size + record.count > maxSize { rotate(&s) }
            do {
                try s.fd.writeAll(record)
                s.size += record.count
            } catch {
                ShimLog.warn("log \(path): \(error); record dropped")
            }
        }
    }

    /// PATH becomes PATH.1 and a new PATH is made: created exclusively, so
    /// a link someone put there meanwhile is never written through.
    private func rotate(_ s: inout State) {
        if rename(path, path + ".1") != 0 { ShimLog.warn("log rotation of \(path): \(SysError.last("rename").message)") }
        do {
            s.fd = try Files.openRegular(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, mode: 0o640)
            s.size = 0
        } catch {
            ShimLog.warn("log rotation of \(path): \(error); writing on to \(path).1")
            s.size = 0
        }
    }
}

/// One stream's view of the log: remembers whether its last record was partial.
/// Used only by the relay thread that owns the stream.
final class LogTap: @unchecked Sendable {
    private let writer: LogWriter
    private let stream: String
    private var partial = false

    init(writer: LogWriter, stream: String) {
        self.writer = writer
        self.stream = stream
    }

    func write(_ bytes: [UInt8]) {
        var start = 0
        while let nl = bytes[start...].firstIndex(of: 0x0A) {
            writer.append(stream, full: true, bytes[start..<nl])
            start = nl + 1
        }
        partial = start < bytes.count
        if partial { writer.append(stream, full: false, bytes[start...]) }
    }

    /// End of stream: close a partial line with an empty full record.
    func close() {
        if partial { writer.append(stream, full: true, []) }
        partial = false
    }
}
