import Foundation
import SwiftProtobuf
import TetherProto
import TetherSys

/// The manager's end of the exit pipe: a FIFO every shim writes its exit
/// records to, one JSON line each. The manager holds it open read-write, so
/// it never sees end of file between shims, and a shim's open fails with
/// ENXIO exactly when no manager is listening. One thread reads it.
final class ExitPipe: Sendable {
    typealias Record = Tether_Shim_V1_ExitRecord

    private let fd: FD

    init(path: String, onRecord: @escaping @Sendable (Record) -> Void, onError: @escaping @Sendable (String) -> Void) throws {
        try Files.makeFifo(path)
        fd = try FD.open(path, O_RDWR)
        try OSThread.start("exit-pipe") { [fd] in Self.loop(fd, onRecord, onError) }
    }

    private static func loop(_ fd: FD, _ onRecord: @Sendable (Record) -> Void, _ onError: @Sendable (String) -> Void) {
        var pending: [UInt8] = []
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        while true {
            guard let chunk = try? fd.read(upTo: 65536), !chunk.isEmpty else { return }
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
        }
    }
}
