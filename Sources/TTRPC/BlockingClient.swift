#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import TetherProto
import TetherSys

/// A ttrpc client for one thread: each call writes a request and reads frames
/// until its answer. For tools and tests; the manager uses its NIO client.
public final class TTRPCBlockingClient {
    private let fd: FD
    private var nextStream: UInt32 = 1
    private var decoder = FrameDecoder()

    /// `timeout`: how long a call may wait for its answer (SO_RCVTIMEO); nil waits as long as it takes.
    public init(socketPath: String, timeout: Int? = nil) throws(SysError) {
        fd = try UnixSocket.connect(socketPath)
        if let timeout {
            var tv = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    public func close() { fd.close() }

    /// Calls service/method. Throws RPCError for an error status, SysError or
    /// FrameError for a broken connection.
    public func call<Resp: SwiftProtobuf.Message>(
        _ service: String, _ method: String, _ request: some SwiftProtobuf.Message, as: Resp.Type = Resp.self
    ) throws -> Resp {
        let stream = nextStream
        nextStream &+= 2
        var r = Ttrpc_Request()
        r.service = service
        r.method = method
        r.payload = try request.serializedBytes()
        try fd.writeAll(Frame(streamID: stream, type: .request, payload: try r.serializedBytes()).encoded())
        while true {
            let response = try readResponse()
            guard response.header.streamID == stream else { continue }
            let decoded = try Ttrpc_Response(serializedBytes: response.payload)
            if decoded.hasStatus && decoded.status.code != 0 { throw RPCError(status: decoded.status) }
            return try Resp(serializedBytes: decoded.payload)
        }
    }

    private func readResponse() throws -> Frame {
        while true {
            if let event = decoder.next() {
                switch event {
                case .frame(let f): return f
                case .oversized(let h): throw FrameError.tooLarge(streamID: h.streamID, length: h.length)
                }
            }
            let chunk = try fd.read(upTo: 65536)
            if chunk.isEmpty { throw FrameError.truncated }
            decoder.append(chunk)
        }
    }
}
