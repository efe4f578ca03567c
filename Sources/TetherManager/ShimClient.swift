import Foundation
import NIOCore
import NIOPosix
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherSys

/// A ttrpc client for one shim, on NIO: many calls in flight on one
/// connection, matched to their answers by stream id. When the connection
/// closes, every pending call fails with `.unavailable`.
public final class ShimClient: Sendable {
    let channel: any Channel
    private let handler: ClientHandler

    private init(channel: any Channel, handler: ClientHandler) {
        self.channel = channel
        self.handler = handler
    }

    /// Connects to the shim's socket. The connect itself is a plain blocking
    /// one (it cannot block on a unix socket) so long paths work the same way
    /// as in the shim; NIO then takes the connected fd.
    public static func connect(_ path: String, group: any EventLoopGroup) async throws -> ShimClient {
        // Bounded: a stopped shim whose backlog is full must not hold us up.
        let fd = try UnixSocket.connect(path, timeoutMs: 2000)
        let handler = ClientHandler()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) }
            }
            .withConnectedSocket(fd.take())
            .get()
        return ShimClient(channel: channel, handler: handler)
    }

    /// Completes when the connection is gone (the shim exited or closed it).

    public func close() { channel.close(promise: nil) }

    /// Calls service/method and decodes the answer. Fails with RPCError: the
    /// shim's own error status, `.unavailable` when the connection closes,
    /// `.deadlineExceeded` after `timeout` seconds.
    public func call<Resp: SwiftProtobuf.Message>(
        _ service: String, _ method: String, _ request: some SwiftProtobuf.Message,
        as: Resp.Type = Resp.self, timeout: TimeAmount = .seconds(30)
    ) async throws -> Resp {
        var r = Ttrpc_Request()
        r.service = service
        r.method = method
        r.payload = try request.serializedBytes()
        r.timeoutNano = timeout.nanoseconds
        let payload: [UInt8] = try r.serializedBytes()
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: Ttrpc_Response.self)
        let handler = self.handler
        let channel = self.channel
        loop.execute {
            handler.send(payload, promise: promise, channel: channel, timeout: timeout, what: "\(service)/\(method)")
        }
        let response = try await promise.futureResult.get()
        if response.hasStatus && response.status.code != 0 { throw RPCError(status: response.status) }
        return try Resp(serializedBytes: response.payload)
    }

    /// The task service's methods.
    public func task<Resp: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                                  as: Resp.Type = Resp.self, timeout: TimeAmount = .seconds(30)) async throws -> Resp {
        try await call("containerd.task.v2.Task", method, request, as: Resp.self, timeout: timeout)
    }
}

/// Pending calls by stream id, frames in. Its state is touched only on its
/// channel's event loop (calls hop there with `execute`), hence unchecked.
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var decoder = FrameDecoder()
    private var pending: [UInt32: (promise: EventLoopPromise<Ttrpc_Response>, timer: Scheduled<Void>?)] = [:]
    private var nextStream: UInt32 = 1
    private var closed = false

    func send(_ payload: [UInt8], promise: EventLoopPromise<Ttrpc_Response>, channel: any Channel,
              timeout: TimeAmount, what: String) {
        guard !closed else {
            promise.fail(RPCError(.unavailable, "the shim's connection is closed"))
            return
        }
        let stream = nextStream
        nextStream &+= 2
        let frame: [UInt8]
        do { frame = try Frame(streamID: stream, type: .request, payload: payload).encoded() } catch {
            promise.fail(RPCError(.invalidArgument, "\(error)"))
            return
        }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { [self] in
            if let p = pending.removeValue(forKey: stream) {
                p.promise.fail(RPCError(.deadlineExceeded, "\(what): the shim did not answer within \(timeout.nanoseconds / 1_000_000_000) s"))
            }
        }
        pending[stream] = (promise, timer)
        var buf = channel.allocator.buffer(capacity: frame.count)
        buf.writeBytes(frame)
        channel.writeAndFlush(buf).whenFailure { [self] error in
            if let p = pending.removeValue(forKey: stream) {
                p.timer?.cancel()
                p.promise.fail(RPCError(.unavailable, "cannot write to the shim: \(error)"))
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        if let bytes = buf.readBytes(length: buf.readableBytes) { decoder.append(bytes) }
        while let event = decoder.next() {
            switch event {
            case .frame(let f):
                guard let p = pending.removeValue(forKey: f.header.streamID) else { continue }
                p.timer?.cancel()
                do { p.promise.succeed(try Ttrpc_Response(serializedBytes: f.payload)) } catch {
                    p.promise.fail(RPCError(.internal, "malformed ttrpc response: \(error)"))
                }
            case .oversized(let h):
                if let p = pending.removeValue(forKey: h.streamID) {
                    p.timer?.cancel()
                    p.promise.fail(RPCError(.resourceExhausted, FrameError.tooLarge(streamID: h.streamID, length: h.length).description))
                }
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        let all = pending
        pending.removeAll()
        for (_, p) in all {
            p.timer?.cancel()
            p.promise.fail(RPCError(.unavailable, "the shim closed its connection"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
