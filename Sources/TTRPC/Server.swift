#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import Synchronization
import TetherProto
import CTether
import TetherSys

/// A ttrpc server: one thread accepts, one thread per connection reads frames,
/// and every request runs as a Swift task so a slow call (Wait) never holds up
/// the others on the same connection. Peers must have our uid (SO_PEERCRED).
public final class TTRPCServer: Sendable {
    public typealias Method = @Sendable ([UInt8]) async throws -> [UInt8]

    private let methods: [String: Method]
    private let afterReply: [String: @Sendable () -> Void]
    private let log: @Sendable (String) -> Void
    private let name: String

    /// Collects the methods a server answers, typed by their messages.
    public struct Registry {
        var methods: [String: Method] = [:]
        var afterReply: [String: @Sendable () -> Void] = [:]
        public init() {}

        /// Runs `hook` each time a reply to service/method has been written
        /// (e.g. to exit once Shutdown has been answered).
        public mutating func afterReply(_ service: String, _ method: String, _ hook: @escaping @Sendable () -> Void) {
            afterReply["\(service)/\(method)"] = hook
        }

        public mutating func add<Req: SwiftProtobuf.Message, Resp: SwiftProtobuf.Message>(
            _ service: String, _ method: String, _ body: @escaping @Sendable (Req) async throws -> Resp
        ) {
            methods["\(service)/\(method)"] = { bytes in
                let request: Req
                do { request = try Req(serializedBytes: bytes) } catch {
                    throw RPCError(.invalidArgument, "\(service)/\(method): malformed \(Req.protoMessageName): \(error)")
                }
                return try await body(request).serializedBytes()
            }
        }
    }

    /// `name` appears in errors ("… is not implemented by NAME").
    public init(name: String, registry: Registry, log: @escaping @Sendable (String) -> Void) {
        self.name = name
        methods = registry.methods
        afterReply = registry.afterReply
        self.log = log
    }

    /// Accepts connections on `listener` on a thread of its own until the process exits.
    public func serve(_ listener: FD) {
        OSThread.start("ttrpc-accept") { [self] in acceptLoop(listener) }
    }

    private func acceptLoop(_ listener: FD) {
        let uid = geteuid()
        while true {
            let c = tether_accept(listener.raw)
            if c < 0 {
                let e = -c
                if e == ECONNABORTED || e == EINTR { continue }
                if e == EBADF || e == EINVAL { return }
                log("ttrpc: accept: \(String(cString: strerror(e)))")
                usleep(10_000)  // EMFILE and friends: back off instead of spinning
                continue
            }
            let conn = FD(c)
            guard let peer = try? UnixSocket.peer(conn), peer.uid == uid else {
                log("ttrpc: refused a connection from a peer that is not uid \(uid)")
                continue
            }
            OSThread.start("ttrpc-conn") { [self] in serveConnection(Connection(conn)) }
        }
    }

    private func serveConnection(_ conn: Connection) {
        var decoder = FrameDecoder()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { b in Glibc.read(conn.fd.raw, b.baseAddress!, b.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            decoder.append(buf[0..<n])
            while let event = decoder.next() {
                switch event {
                case .frame(let frame): dispatch(frame, on: conn)
                case .oversized(let h):
                    conn.respond(h.streamID, error: RPCError(.resourceExhausted, FrameError.tooLarge(streamID: h.streamID, length: h.length).description))
                }
            }
        }
        conn.shutdown()
    }

    private func dispatch(_ frame: Frame, on conn: Connection) {
        let stream = frame.header.streamID
        guard frame.header.type == MessageType.request.rawValue else {
            log("ttrpc: ignored a frame of type \(frame.header.type) on stream \(stream)")
            return
        }
        let request: Ttrpc_Request
        do { request = try Ttrpc_Request(serializedBytes: frame.payload) } catch {
            conn.respond(stream, error: RPCError(.invalidArgument, "malformed ttrpc request: \(error)"))
            return
        }
        let key = "\(request.service)/\(request.method)"
        guard let method = methods[key] else {
            conn.respond(stream, error: RPCError(.unimplemented, "\(key) is not implemented by \(name)"))
            return
        }
        let payload = [UInt8](request.payload)
        let after = afterReply[key]
        Task {
            do {
                conn.respond(stream, payload: try await method(payload))
            } catch let e as RPCError {
                conn.respond(stream, error: e)
            } catch {
                conn.respond(stream, error: RPCError(.internal, "\(error)"))
            }
            after?()
        }
    }
}

/// One accepted connection: reads happen on its thread, writes from any task
/// under a lock so frames never interleave.
final class Connection: Sendable {
    let fd: FD
    private let writeLock = Mutex(())

    init(_ fd: FD) { self.fd = fd }

    func respond(_ stream: UInt32, payload: [UInt8]) {
        var r = Ttrpc_Response()
        r.payload = .init(payload)
        send(stream, r)
    }

    func respond(_ stream: UInt32, error: RPCError) {
        var r = Ttrpc_Response()
        r.status = error.status
        send(stream, r)
    }

    private func send(_ stream: UInt32, _ response: Ttrpc_Response) {
        guard let bytes: [UInt8] = try? response.serializedBytes(),
              let frame = try? Frame(streamID: stream, type: .response, payload: bytes).encoded() else { return }
        writeLock.withLock { _ in try? fd.writeAll(frame) }  // a vanished peer is not our error
    }

    func shutdown() { Glibc.shutdown(fd.raw, Int32(SHUT_RDWR)) }
}
