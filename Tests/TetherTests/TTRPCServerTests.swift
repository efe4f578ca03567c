#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SwiftProtobuf
import Testing
import TTRPC
import TetherProto
import TetherSys
import CTether

/// A real TTRPCServer on a socket, fed well-formed and malformed frames.
@Suite("ttrpc server", .timeLimit(.minutes(1)))
struct TTRPCServerTests {
    let dir: String
    let path: String

    init() throws {
        signal(SIGPIPE, SIG_IGN)
        dir = try makeTempDir()
        path = "\(dir)/s.sock"
        var r = TTRPCServer.Registry()
        r.add("test.Echo", "Echo") { (req: Containerd_Task_V2_StateRequest) async throws -> Containerd_Task_V2_StateResponse in
            var out = Containerd_Task_V2_StateResponse()
            out.id = req.id
            return out
        }
        r.add("test.Echo", "Fail") { (_: Containerd_Task_V2_StateRequest) async throws -> Containerd_Task_V2_StateResponse in
            throw RPCError(.notFound, "no such thing")
        }
        // A server on an event loop of its own, as in the shim (there, the main thread's).
        let loop = try EventLoop()
        let server = TTRPCServer(name: "test", registry: r, loop: loop, log: { _ in })
        let listener = try UnixSocket.listen(path)
        loop.execute { try? server.serve(listener) }
        try loop.runOnNewThread("test-loop")
    }

    func echo(_ c: TTRPCBlockingClient, _ id: String) throws -> String {
        var req = Containerd_Task_V2_StateRequest()
        req.id = id
        return try c.call("test.Echo", "Echo", req, as: Containerd_Task_V2_StateResponse.self).id
    }

    // The blocking client runs on a thread of its own (offPool): a test must
    // never hold a concurrency pool thread while it waits for an answer.
    @Test("a call gets its answer; errors carry their code and message")
    func roundTrip() async throws { try await offPool { try roundTripBody() } }

    func roundTripBody() throws {
        let c = try TTRPCBlockingClient(socketPath: path)
        #expect(try echo(c, "abc") == "abc")
        #expect(throws: RPCError(.notFound, "no such thing")) {
            try c.call("test.Echo", "Fail", Containerd_Task_V2_StateRequest(), as: Containerd_Task_V2_StateResponse.self)
        }
        #expect(throws: RPCError(.unimplemented, "test.Echo/Nope is not implemented by test")) {
            try c.call("test.Echo", "Nope", Containerd_Task_V2_StateRequest(), as: Containerd_Task_V2_StateResponse.self)
        }
        try removeTree()
    }

    @Test("malformed frames get an error answer and the connection keeps working")
    func malformedFrames() async throws { try await offPool { try malformedFramesBody() } }

    func malformedFramesBody() throws {
        let fd = try UnixSocket.connect(path)
        // 1. Not a ttrpc Request at all.
        try fd.writeAll(try Frame(streamID: 1, type: .request, payload: [0xFF, 0xFF, 0xFF]).encoded())
        #expect(try readStatus(fd, stream: 1).code == RPCError.Code.invalidArgument.rawValue)
        // 2. A Request whose payload is not the method's message.
        var bad = Ttrpc_Request()
        bad.service = "test.Echo"
        bad.method = "Echo"
        bad.payload = Data([0x0A, 0xFF])  // field 1, length 255, then nothing
        try fd.writeAll(try Frame(streamID: 3, type: .request, payload: try bad.serializedBytes()).encoded())
        #expect(try readStatus(fd, stream: 3).code == RPCError.Code.invalidArgument.rawValue)
        // 3. A frame over 4 MiB: skipped, answered with RESOURCE_EXHAUSTED.
        let huge = FrameHeader.maxPayload + 1
        try fd.writeAll(FrameHeader(length: UInt32(huge), streamID: 5, type: 1).encoded())
        try fd.writeAll([UInt8](repeating: 0, count: huge))
        #expect(try readStatus(fd, stream: 5).code == RPCError.Code.resourceExhausted.rawValue)
        // 4. A frame of an unknown type is ignored; a good call after it is answered.
        try fd.writeAll(try Frame(header: FrameHeader(length: 1, streamID: 7, type: 9), payload: [0]).encoded())
        var ok = Ttrpc_Request()
        ok.service = "test.Echo"
        ok.method = "Echo"
        var req = Containerd_Task_V2_StateRequest()
        req.id = "still-alive"
        ok.payload = try req.serializedData()
        try fd.writeAll(try Frame(streamID: 9, type: .request, payload: try ok.serializedBytes()).encoded())
        let (stream, response) = try readResponse(fd)
        #expect(stream == 9)
        #expect(try Containerd_Task_V2_StateResponse(serializedBytes: response.payload).id == "still-alive")
        // 5. A connection that dies mid-frame does not take the server down.
        try fd.writeAll([0, 0, 1, 0, 0, 0, 0, 11, 1])
        fd.close()
        let c = try TTRPCBlockingClient(socketPath: path)
        #expect(try echo(c, "after") == "after")
        try removeTree()
    }

    @Test("a peer of another uid is refused (SO_PEERCRED): its connection closes unanswered",
          .enabled(if: Prerequisites.isRoot || inCI, "this test connects as another uid: run it as root"))
    func otherUidRefused() async throws {
        try #require(Prerequisites.isRoot, "this test connects as another uid: run it as root")
        try await offPool { try otherUidBody() }
    }

    func otherUidBody() throws {
        defer { try? removeTree() }
        // Let uid 65534 reach the socket at all: the refusal must be the server's.
        _ = try check(chmod(dir, 0o755) == 0 ? 0 : -errno, "chmod", dir)
        _ = try check(chmod(path, 0o777) == 0 ? 0 : -errno, "chmod", path)
        let c = try TTRPCBlockingClient(socketPath: path)
        #expect(try echo(c, "our-uid") == "our-uid")  // our own uid is served
        // This thread alone becomes uid 65534 (the saved uid stays 0, to come back).
        _ = try check(tether_thread_setresuid(65534, 65534, 0), "setresuid")
        let stranger = Result { () throws(SysError) -> FD in try UnixSocket.connect(path) }
        _ = try check(tether_thread_setresuid(0, 0, 0), "setresuid")
        let fd = try stranger.get()
        var req = Ttrpc_Request()
        req.service = "test.Echo"
        req.method = "Echo"
        // The server may already have closed (EPIPE): what matters is that no answer comes.
        _ = try? fd.writeAll(try Frame(streamID: 1, type: .request, payload: try req.serializedBytes()).encoded())
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 5000) == 1, "no answer and no close within 5 s")
        let answer = (try? fd.read(upTo: 4096)) ?? []  // end of file, or ECONNRESET
        #expect(answer.isEmpty, "the server answered a peer of another uid")
        fd.close()
    }

    private func readStatus(_ fd: FD, stream: UInt32) throws -> Ttrpc_Status {
        let (s, r) = try readResponse(fd)
        #expect(s == stream)
        return r.status
    }

    private func readResponse(_ fd: FD) throws -> (UInt32, Ttrpc_Response) {
        var d = FrameDecoder()
        while true {
            if case .frame(let f)? = d.next() {
                return (f.header.streamID, try Ttrpc_Response(serializedBytes: f.payload))
            }
            let chunk = try fd.read(upTo: 4096)
            if chunk.isEmpty { throw FrameError.truncated }
            d.append(chunk)
        }
    }

    private func removeTree() throws { try Files.removeTree(dir) }
}

func makeTempDir() throws -> String {
    var template = Array("/tmp/tt-XXXXXX".utf8CString)
    guard mkdtemp(&template) != nil else { throw SysError.last("mkdtemp") }
    return String(cString: template)
}

/// Runs blocking test code on a thread of its own and awaits it.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        do {
            try OSThread.start("test") {
                do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
            }
        } catch {
            c.resume(throwing: error)
        }
    }
}
