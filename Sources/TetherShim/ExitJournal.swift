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
/// The pipe is a FIFO the manager owns and keeps open for reading. The
/// journal opens it per batch with O_NONBLOCK: ENXIO means no manager is
/// listening, and the records simply wait on disk until a manager calls
/// Exits.Pending. Each record is one write of one line, under PIPE_BUF, so
/// records from many shims never interleave in the shared pipe; a full pipe
/// (a slow manager) is waited on through the shim's event loop, never by
/// blocking it.
final class ExitJournal: @unchecked Sendable {
    typealias Record = Tether_Shim_V1_ExitRecord

    private let loop: EventLoop
    private let dir: String
    private let fifoPath: String
    private let namespace: String
    private let taskID: String
    private let instance: String
    private var nextSeq: UInt64 = 1
    private var pendingRecords: [UInt64: Record] = [:]
    private var sentUpTo: UInt64 = 0
    /// Records on disk whose sending waits for their process's output.
    private var heldBack: Set<UInt64> = []
    /// The pipe while a batch waits for room in it.
    private var sending: (fd: FD, source: EventLoop.Source)?

    init(loop: EventLoop, dir: String, fifoPath: String, namespace: String, taskID: String, instance: String) throws(SysError) {
        self.loop = loop
        self.dir = dir
        self.fifoPath = fifoPath
        self.namespace = namespace
        self.taskID = taskID
        self.instance = instance
        try Files.makeDirectories(dir)
        let loaded = Self.load(dir)
        for r in loaded { pendingRecords[r.seq] = r }
        nextSeq = (loaded.map(\.seq).max() ?? 0) + 1
        if !loaded.isEmpty { loop.execute { [self] in sendUnsent() } }
    }

    /// Records an exit durably, then sends it to the manager; with `held`,
    /// only once `release` is called (the process's output is drained).
    /// Records go out in order: a held one holds back those after it.
    @discardableResult
    func record(pid: Int32, execID: String, code: Int32, at: WallTime, held: Bool = false) -> Record {
        var r = Record()
        r.seq = nextSeq
        r.namespace = namespace
        r.id = taskID
        r.execID = execID
        r.pid = UInt32(bitPattern: pid)
        r.exitStatus = UInt32(bitPattern: code)
        r.exitedAt = .init(seconds: at.seconds, nanos: at.nanos)
        r.instance = instance
        nextSeq += 1
        pendingRecords[r.seq] = r
        if held { heldBack.insert(r.seq) }
        do {
            try Files.writeAtomically(path(r.seq), Array(try r.jsonString().utf8) + [0x0A])
        } catch {
            ShimLog.error("exit record \(r.seq) (pid \(pid), status \(code)) not saved: \(error); it lives in memory only")
        }
        ShimLog.info("exit: pid \(pid) exec \"\(execID)\" status \(code), record \(r.seq)")
        sendUnsent()
        return r
    }

    /// Sends a held record (and those it held back).
    func release(_ seq: UInt64) {
        if heldBack.remove(seq) != nil { sendUnsent() }
    }

    /// Records the manager has not acknowledged, oldest first.
    func pending() -> [Record] {
        pendingRecords.values.sorted { $0.seq < $1.seq }
    }

    /// One record has reached whoever needed it (containerd): forget it.
    func ack(seq: UInt64) {
        if pendingRecords.removeValue(forKey: seq) != nil { unlink(path(seq)) }
    }

    /// The manager has stored every record up to `seq`: forget them.
    func ack(upTo seq: UInt64) {
        for k in pendingRecords.keys where k <= seq {
            pendingRecords.removeValue(forKey: k)
            unlink(path(k))
        }
    }

    private func path(_ seq: UInt64) -> String {
        let digits = String(seq)
        return "\(dir)/\(String(repeating: "0", count: max(0, 20 - digits.count)))\(digits).json"
    }

    /// The records in `dir`, oldest first (for a reader without a journal: `delete`).
    static func records(in dir: String) -> [Record] { load(dir).sorted { $0.seq < $1.seq } }

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

    // MARK: - sending

    /// Writes the records not yet sent, one line each, without ever blocking.
    private func sendUnsent() {
        guard !fifoPath.isEmpty, sending == nil else { return }
        let fd: FD
        do {
            fd = try FD.open(fifoPath, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        } catch {
            ShimLog.debug("exit pipe \(fifoPath): \(error.message); records wait for Exits.Pending")
            return
        }
        var st = stat()
        guard fstat(fd.raw, &st) == 0, st.st_mode & S_IFMT == S_IFIFO else {
            fd.close()
            ShimLog.warn("exit pipe \(fifoPath) is not a FIFO; records wait for Exits.Pending")
            return
        }
        write(on: fd)
    }

    private func write(on fd: FD) {
        for r in pendingRecords.values.filter({ $0.seq > sentUpTo }).sorted(by: { $0.seq < $1.seq }) {
            if heldBack.contains(r.seq) { return }
            guard let line = try? r.jsonString() else { continue }
            let bytes = Array(line.utf8) + [0x0A]
            // Under PIPE_BUF: the kernel writes it whole or not at all.
            let n = bytes.withUnsafeBytes { Glibc.write(fd.raw, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EAGAIN {
                // The manager is slow: wait for room, through the loop.
                if sending == nil, let source = try? loop.add(fd.raw, events: UInt32(TETHER_EPOLLOUT), { [self] _ in
                    guard let s = sending else { return }
                    loop.remove(s.source)
                    sending = nil
                    write(on: s.fd)
                }) {
                    sending = (fd, source)
                }
                return
            }
            if n < 0 {
                ShimLog.warn("exit pipe \(fifoPath): \(SysError.last("write").message); record \(r.seq) waits for Exits.Pending")
                return
            }
            sentUpTo = max(sentUpTo, r.seq)
        }
    }
}
