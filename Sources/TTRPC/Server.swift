#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import TetherProto
import CTether
import TetherSys

/// A ttrpc server on an event loop: the listener and every connection are
/// sources on the loop, each request runs as a task on the same loop (so a
/// slow call, Wait, never holds up the others), and replies are queued and
/// written without blocking: a peer that stops reading costs its own
/// connection, never the server. Peers must have our uid (SO_PEERCRED).
public final class TTRPCServer: @unchecked Sendable {
    public typealias Method = @Sendable ([UInt8]) async throws -> [UInt8]

    /// Most reply bytes one connection may have waiting (a peer that never
    /// reads): past it, the connection is closed.
    public static let maxQueued = 16 << 20

    private let methods: [String: Method]
    private let afterReply: [String: @Sendable () -> Void]
    private let log: @Sendable (String) -> Void
    private let name: String
    private let loop: EventLoop
    private var listenerSource: EventLoop.Source?
    private var connections: [ObjectIdentifier: Connection] = [:]

    /// Collects the methods a server answers, typed by their messages.
    public struct Registry {
        var methods: [String: Method] = [:]
        var afterReply: [String: @Sendable () -> Void] = [:]
        public init() {}

        /// Runs `hook` each time a reply to service/method has been queued
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
    public init(name: String, registry: Registry, loop: EventLoop, log: @escaping @Sendable (String) -> Void) {
        self.name = name
        methods = registry.methods
        afterReply = registry.afterReply
        self.loop = loop
        self.log = log
    }

    /// Accepts connections on `listener` (which it takes) on the loop. Call on the loop's thread.
    public func serve(_ listener: FD) throws(SysError) {
        try listener.setNonBlocking()
        listenerSource = try loop.add(listener.raw, events: UInt32(TETHER_EPOLLIN)) { [self] _ in accept(listener) }
    }

    /// Ready connections are accepted; an error other than "none left" is
    /// logged and accepting resumes a little later (EMFILE and friends).
    private func accept(_ listener: FD) {
        let uid = geteuid()
        while true {
            let c = tether_accept(listener.raw)
            if c < 0 {
                let e = -c
                if e == EAGAIN || e == ECONNABORTED { return }
                log("ttrpc: accept: \(String(cString: strerror(e))); accepting again in 100 ms")
                if let s = listenerSource { loop.remove(s) }
                listenerSource = nil
                loop.after(100_000_000) { [self] in try? serve(listener) }
                return
            }
            let fd = FD(c, label: "a ttrpc connection")
            guard let peer = try? UnixSocket.peer(fd), peer.uid == uid else {
                log("ttrpc: refused a connection from a peer that is not uid \(uid)")
                continue
            }
            do {
                let conn = try Connection(fd, server: self)
                connections[ObjectIdentifier(conn)] = conn
            } catch {
                log("ttrpc: cannot serve a connection: \(error)")
            }
        }
    }

    fileprivate func closed(_ conn: Connection) { connections.removeValue(forKey: ObjectIdentifier(conn)) }

    fileprivate func dispatch(_ frame: Frame, on conn: Connection) {
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
        loop.task {
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

    fileprivate var logger: @Sendable (String) -> Void { log }
    fileprivate var eventLoop: EventLoop { loop }
}

/// One accepted connection, on the server's loop: frames in, replies out
/// through a queue that is written as the socket takes it.
private final class Connection: @unchecked Sendable {
    private let fd: FD
    private unowned let server: TTRPCServer
    private var source: EventLoop.Source?
    private var decoder = FrameDecoder()
    private var queued: [UInt8] = []
    private var sent = 0
    private var isClosed = false
    // One buffer for every connection: they are all read on the one loop thread.
    nonisolated(unsafe) private static let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)

    init(_ fd: FD, server: TTRPCServer) throws(SysError) {
        self.fd = fd
        self.server = server
        try fd.setNonBlocking()
        source = try server.eventLoop.add(fd.raw, events: UInt32(TETHER_EPOLLIN)) { [self] events in ready(events) }
    }

    private func ready(_ events: UInt32) {
        if events & UInt32(TETHER_EPOLLOUT) != 0 { flush() }
        if events & (UInt32(TETHER_EPOLLIN) | UInt32(TETHER_EPOLLHUP) | UInt32(TETHER_EPOLLERR)) != 0 { read() }
    }

    /// Reads what is there (at most 1 MiB a turn, so one peer cannot
    /// monopolize the loop) and dispatches every whole frame.
    private func read() {
        var budget = 1 << 20
        while budget > 0 && !isClosed {
            let n = Glibc.read(fd.raw, Self.readBuffer.baseAddress!, Self.readBuffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }
                close()
                return
            }
            if n == 0 { close(); return }
            budget -= n
            decoder.append(UnsafeRawBufferPointer(rebasing: Self.readBuffer[0..<n]))
            while let event = decoder.next() {
                switch event {
                case .frame(let frame): server.dispatch(frame, on: self)
                case .oversized(let h):
                    respond(h.streamID, error: RPCError(.resourceExhausted, FrameError.tooLarge(streamID: h.streamID, length: h.length).description))
                }
            }
        }
    }

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
        guard !isClosed, let bytes: [UInt8] = try? response.serializedBytes(),
              let frame = try? Frame(streamID: stream, type: .response, payload: bytes).encoded() else { return }
        if queued.count - sent + frame.count > TTRPCServer.maxQueued {
            server.logger("ttrpc: a peer left \(queued.count - sent) bytes of replies unread; closing its connection")
            close()
            return
        }
        queued += frame
        flush()
    }

    /// Writes what the socket takes now; waits for room (EPOLLOUT) for the rest.
    private func flush() {
        while sent < queued.count {
            let n = queued.withUnsafeBytes { Glibc.write(fd.raw, $0.baseAddress! + sent, $0.count - sent) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                close()  // the peer went away: its answers go nowhere
                return
            }
            sent += n
        }
        if sent == queued.count {
            queued.removeAll(keepingCapacity: queued.count <= 65536)
            sent = 0
        } else if sent > 1 << 20 {
            queued.removeFirst(sent)
            sent = 0
        }
        if let source {
            try? server.eventLoop.modify(source, events: UInt32(TETHER_EPOLLIN) | (sent < queued.count ? UInt32(TETHER_EPOLLOUT) : 0))
        }
    }

    private func close() {
        guard !isClosed else { return }
        isClosed = true
        if let source { server.eventLoop.remove(source) }
        source = nil
        fd.close()
        queued = []
        server.closed(self)
    }
}
