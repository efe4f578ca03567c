#if canImport(Glibc)
import Glibc
#endif
import CTether
import SwiftProtobuf
import Synchronization
import TetherProto
import TetherSys

/// Exit records: written to disk before anyone hears of the exit, pushed to
/// the manager's exit pipe, and kept until the manager acknowledges them.
///
///   exits/00000000000000000001.json   one ExitRecord each (protobuf JSON)
///
/// The pipe is a FIFO the manager owns and keeps open for reading. A reporter
/// thread opens it per batch with O_NONBLOCK: ENXIO means no manager is
/// listening, and the records simply wait on disk until a manager calls
/// Exits.Pending. Each record is one write of one line, under PIPE_BUF, so
/// records from many shims never interleave in the shared pipe.
final class ExitJournal: Sendable {
    typealias Record = Tether_Shim_V1_ExitRecord

    private struct State {
        var nextSeq: UInt64 = 1
        var pending: [UInt64: Record] = [:]
        var sentUpTo: UInt64 = 0
    }

    private let dir: String
    private let fifoPath: String
    private let namespace: String
    private let taskID: String
    private let instance: String
    private let state = Mutex(State())
    private let wake: FD

    init(dir: String, fifoPath: String, namespace: String, taskID: String, instance: String) throws(SysError) {
        self.dir = dir
        self.fifoPath = fifoPath
        self.namespace = namespace
        self.taskID = taskID
        self.instance = instance
        wake = FD(try check(tether_eventfd(0), "eventfd"))
        try Files.makeDirectories(dir)
        let loaded = Self.load(dir)
        state.withLock { s in
            for r in loaded { s.pending[r.seq] = r }
            s.nextSeq = (loaded.map(\.seq).max() ?? 0) + 1
        }
        OSThread.start("exit-reporter") { [self] in reporterLoop() }
        if !loaded.isEmpty { poke() }
    }

    /// Records an exit durably, then hands it to the reporter.
    @discardableResult
    func record(pid: Int32, execID: String, code: Int32, at: WallTime) -> Record {
        let r = state.withLock { s -> Record in
            var r = Record()
            r.seq = s.nextSeq
            r.namespace = namespace
            r.id = taskID
            r.execID = execID
            r.pid = UInt32(bitPattern: pid)
            r.exitStatus = UInt32(bitPattern: code)
            r.exitedAt = .init(seconds: at.seconds, nanos: at.nanos)
            r.instance = instance
            s.nextSeq += 1
            s.pending[r.seq] = r
            return r
        }
        do {
            try Files.writeAtomically(path(r.seq), Array(try r.jsonString().utf8) + [0x0A])
        } catch {
            ShimLog.error("exit record \(r.seq) (pid \(pid), status \(code)) not saved: \(error); it lives in memory only")
        }
        ShimLog.info("exit: pid \(pid) exec \"\(execID)\" status \(code), record \(r.seq)")
        poke()
        return r
    }

    /// Records the manager has not acknowledged, oldest first.
    func pending() -> [Record] {
        state.withLock { $0.pending.values.sorted { $0.seq < $1.seq } }
    }

    /// The manager has stored every record up to `seq`: forget them.
    func ack(upTo seq: UInt64) {
        let done = state.withLock { s -> [UInt64] in
            let done = s.pending.keys.filter { $0 <= seq }
            for k in done { s.pending.removeValue(forKey: k) }
            return done
        }
        for k in done { unlink(path(k)) }
    }

    private func path(_ seq: UInt64) -> String {
        let digits = String(seq)
        return "\(dir)/\(String(repeating: "0", count: max(0, 20 - digits.count)))\(digits).json"
    }

    private static func load(_ dir: String) -> [Record] {
        var out: [Record] = []
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        for name in (try? Files.listDirectory(dir)) ?? [] where name.hasSuffix(".json") {
            let p = "\(dir)/\(name)"
            do {
                out.append(try Record(jsonUTF8Bytes: try Files.read(p), options: options))
            } catch {
                ShimLog.error("exit record \(p) is unreadable (\(error)); left in place")
            }
        }
        return out
    }

    private func poke() {
        var one: UInt64 = 1
        _ = Glibc.write(wake.raw, &one, 8)
    }

    // MARK: - the reporter thread

    private func reporterLoop() {
        while true {
            var v: UInt64 = 0
            let n = Glibc.read(wake.raw, &v, 8)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return }
            sendUnsent()
        }
    }

    private func sendUnsent() {
        guard !fifoPath.isEmpty else { return }
        let todo = state.withLock { s in s.pending.values.filter { $0.seq > s.sentUpTo }.sorted { $0.seq < $1.seq } }
        guard !todo.isEmpty else { return }
        let fd: FD
        do {
            fd = try FD.open(fifoPath, O_WRONLY | O_NONBLOCK)
        } catch {
            ShimLog.debug("exit pipe \(fifoPath): \(error.message); records wait for Exits.Pending")
            return
        }
        try? fd.setNonBlocking(false)  // a slow manager may block this thread, never the reaper
        for r in todo {
            guard let line = try? r.jsonString() else { continue }
            do {
                try fd.writeAll(Array(line.utf8) + [0x0A])
            } catch {
                ShimLog.warn("exit pipe \(fifoPath): \(error.message); record \(r.seq) waits for Exits.Pending")
                return
            }
            state.withLock { $0.sentUpTo = max($0.sentUpTo, r.seq) }
        }
    }
}
