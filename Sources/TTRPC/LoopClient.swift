#if canImport(Glibc)
import Glibc
#endif
import CTether
import SwiftProtobuf
import TetherProto
import TetherSys

/// A ttrpc client on an event loop, for a process that has nothing else to
/// run it on (the shim, calling containerd): it connects when first asked,
/// writes without blocking, matches answers to calls by stream id, and
/// fails a call that gets no answer in time. A connection that closes
/// fails the calls in flight; the next call connects again. Use it only on
/// the loop's thread.
public final class LoopClient: @unchecked Sendable {
    private let loop: EventLoop
    private let path: String
    /// Sent with every call (containerd wants its namespace this way).
    private let metadata: [(String, String)]
    private var fd: FD?
    private var source: EventLoop.Source?
    private var decoder = FrameDecoder()
    private var out: [UInt8] = []
    private var nextStream: UInt32 = 1
    private var pending: [UInt32: (timer: EventLoop.Timer, done: (Result<[UInt8], RPCError>) -> Void)] = [:]
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)

    public init(loop: EventLoop, path: String, metadata: [(String, String)] = []) {
        self.loop = loop
        self.path = path
        self.metadata = metadata
    }

    deinit { readBuffer.deallocate() }

    /// Calls service/method; the answer's payload, or an RPCError: the
    /// peer's own status, `.unavailable` when it cannot be reached or the
    /// connection closes, `.deadlineExceeded` after `timeoutNanos`.
    public func call<Resp: SwiftProtobuf.Message>(_ service: String, _ method: String, _ request: some SwiftProtobuf.Message,
                                                  as: Resp.Type = Resp.self, timeoutNanos: UInt64) async throws -> Resp {
        var r = Ttrpc_Request()
        r.service = service
        r.method = method
        r.payload = try request.serializedData()
        r.timeoutNano = Int64(clamping: timeoutNanos)
        r.metadata = metadata.map { k, v in
            var kv = Ttrpc_KeyValue()
            kv.key = k
            kv.value = v
            return kv
        }
        let payload: [UInt8] = try r.serializedBytes()
        let bytes = try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8], any Error>) in
            send(payload, timeoutNanos: timeoutNanos, what: "\(service)/\(method)") { result in c.resume(with: result) }
        }
        let response = try Ttrpc_Response(serializedBytes: bytes)
        if response.hasStatus && response.status.code != 0 { throw RPCError(status: response.status) }
        return try Resp(serializedBytes: response.payload)
    }

    private func send(_ payload: [UInt8], timeoutNanos: UInt64, what: String, done: @escaping (Result<[UInt8], RPCError>) -> Void) {
        do { try connectIfNeeded() } catch {
            done(.failure(RPCError(.unavailable, "\(path): \(error.message)")))
            return
        }
        let stream = nextStream
        nextStream &+= 2
        guard let frame = try? Frame(streamID: stream, type: .request, payload: payload).encoded() else {
            done(.failure(RPCError(.invalidArgument, "\(what): the request is larger than a ttrpc frame")))
            return
        }
        let timer = loop.after(timeoutNanos) { [self] in
            if let p = pending.removeValue(forKey: stream) {
                p.done(.failure(RPCError(.deadlineExceeded, "\(what): no answer from \(path) within \(timeoutNanos / 1_000_000_000) s")))
            }
        }
        pending[stream] = (timer, done)
        out += frame
        flush()
    }

    private func connectIfNeeded() throws(SysError) {
        guard fd == nil else { return }
        let c = try UnixSocket.connect(path, timeoutMs: 1000)
        try c.setNonBlocking()
        fd = c
        source = try loop.add(c.raw, events: UInt32(TETHER_EPOLLIN)) { [self] events in ready(events) }
    }

    private func ready(_ events: UInt32) {
        if events & UInt32(TETHER_EPOLLOUT) != 0 { flush() }
        guard let fd, events & (UInt32(TETHER_EPOLLIN) | UInt32(TETHER_EPOLLHUP) | UInt32(TETHER_EPOLLERR)) != 0 else { return }
        while true {
            let n = Glibc.read(fd.raw, readBuffer.baseAddress!, readBuffer.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            if n <= 0 {
                disconnect("\(path) closed the connection")
                return
            }
            decoder.append(UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
            while let event = decoder.next() {
                guard case .frame(let f) = event, let p = pending.removeValue(forKey: f.header.streamID) else { continue }
                loop.cancel(p.timer)
                p.done(.success(f.payload))
            }
        }
    }

    private func flush() {
        guard let fd else { return }
        while !out.isEmpty {
            let n = out.withUnsafeBytes { Glibc.write(fd.raw, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { break }
            if n <= 0 {
                disconnect("cannot write to \(path): \(SysError.last("write").message)")
                return
            }
            out.removeFirst(n)
        }
        if let source { try? loop.modify(source, events: UInt32(TETHER_EPOLLIN) | (out.isEmpty ? 0 : UInt32(TETHER_EPOLLOUT))) }
    }

    /// Drops the connection; every call in flight fails with `.unavailable`.
    public func disconnect(_ why: String = "closed") {
        if let source { loop.remove(source) }
        source = nil
        fd?.close()
        fd = nil
        out = []
        decoder = FrameDecoder()
        let calls = pending
        pending = [:]
        for (_, p) in calls {
            loop.cancel(p.timer)
            p.done(.failure(RPCError(.unavailable, why)))
        }
    }
}
