#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SwiftProtobuf
import TetherProto
import TetherSys

/// The manager's end of the exit pipe: a FIFO every shim writes its exit
/// records to, one JSON line each. The manager holds it open read-write, so
/// it never sees end of file between shims, and a shim's open fails with
/// ENXIO exactly when no manager is listening. One thread reads it; if
/// that thread ever has to stop, it says so through `onFatal`, never in
/// silence.
final class ExitPipe: Sendable {
    typealias Record = Tether_Shim_V1_ExitRecord

    private let fd: FD

    init(path: String, onRecord: @escaping @Sendable (Record) -> Void, onError: @escaping @Sendable (String) -> Void,
         onFatal: @escaping @Sendable (String) -> Void) throws {
        try Self.ensureFifo(path, onError)
        fd = try FD.open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        var st = stat()
        guard fstat(fd.raw, &st) == 0, st.st_mode & S_IFMT == S_IFIFO else {
            fd.close()
            throw SysError("open", errno: EINVAL, path, explanation: "not a FIFO (something replaced it as it was opened)")
        }
        try OSThread.start("exit-pipe") { [fd] in Self.loop(fd, onRecord, onError, onFatal) }
    }

    /// A FIFO at `path`: anything else there (a regular file restored from a
    /// backup, a symlink) would end the reader at once or read someone
    /// else's file, so it is replaced, with a log line.
    private static func ensureFifo(_ path: String, _ log: @Sendable (String) -> Void) throws {
        var st = stat()
        if lstat(path, &st) == 0 && st.st_mode & S_IFMT != S_IFIFO {
            log("\(path) was not a FIFO (mode \(String(st.st_mode & S_IFMT, radix: 8))): replaced with one")
            guard unlink(path) == 0 else { throw SysError.last("unlink", path) }
        }
        try Files.makeFifo(path)
    }

    private static func loop(_ fd: FD, _ onRecord: @Sendable (Record) -> Void, _ onError: @Sendable (String) -> Void,
                             _ onFatal: @Sendable (String) -> Void) {
        var pending: [UInt8] = []
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        while true {
            let chunk: [UInt8]
            do { chunk = try fd.read(upTo: 65536) } catch {
                return onFatal("the exit pipe \(fd) failed: \(error)")
            }
            guard !chunk.isEmpty else { return onFatal("the exit pipe \(fd) reached end of file") }
            pending += chunk
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<nl])
                pending.removeFirst(nl + 1)
                do {
                    onRecord(try Record(jsonUTF8Bytes: line, options: options))
                } catch {
                    onError("unreadable exit record on \(fd): \(error): \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
            }
            // A line with no end in sight is not a record: don't hold it for ever.
            if pending.count > 1 << 20 {
                onError("exit pipe \(fd): over 1 MiB without a newline: dropped")
                pending = []
            }
        }
    }
}
