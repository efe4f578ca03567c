#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import TetherSys

/// A minimal HTTP/1.1 client over a unix socket, one request per connection:
/// all the CLI needs to talk to tetherd, and quick to start.
public struct HTTPUnixClient: Sendable {
    public let socketPath: String
    /// How long one request may wait for its answer, in seconds; nil waits as long as it takes.
    public let timeout: Int?

    public init(socketPath: String, timeout: Int? = nil) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
    }

    public enum Failure: Error, CustomStringConvertible {
        case unreachable(String, SysError)
        case broken(String)
        case noAnswer(String, Int)

        public var description: String {
            switch self {
            case .unreachable(let path, let e):
                "cannot reach tetherd at \(path) (\(e.message)): start it with 'tetherd &' (scripts/run does), or point --address or TETHER_ADDRESS at its socket"
            case .broken(let why): "tetherd's answer was cut short: \(why)"
            case .noAnswer(let path, let seconds):
                "tetherd at \(path) did not answer within \(seconds) s: it is stopped or overloaded (is its process in state T? see its log)"
            }
        }
    }

    /// A connection with this client's timeout on connect, reads and writes.
    private func connect(timeout: Int?) throws -> FD {
        do { return try UnixSocket.connect(socketPath, timeoutMs: Int32(clamping: (timeout ?? 0) * 1000)) } catch {
            if error.errno == EAGAIN, let timeout { throw Failure.noAnswer(socketPath, timeout) }
            throw Failure.unreachable(socketPath, error)
        }
    }

    /// One request and its whole answer, within the client's timeout.
    public func send(_ method: String, _ path: String, body: Data? = nil) throws -> Response {
        try send(method, path, body: body, within: timeout)
    }

    /// One request and its whole answer, within `limit` seconds (nil: no limit).
    public func send(_ method: String, _ path: String, body: Data?, within limit: Int?) throws -> Response {
        let fd = try connect(timeout: limit)
        var head = "\(method) \(path) HTTP/1.1\r\nHost: tetherd\r\nConnection: close\r\nAccept: application/json\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        do {
            try fd.writeAll(Array(head.utf8) + Array(body ?? Data()))
            return try Self.parse(try fd.readToEnd(limit: 64 << 20))
        } catch let e as SysError {
            if e.errno == EAGAIN, let limit { throw Failure.noAnswer(socketPath, limit) }
            throw Failure.broken(e.description)
        }
    }

    /// A request whose answer is a stream of lines (chunked or not): calls
    /// `onLine` for each line as it arrives, until the server ends it.
    /// Throws if the status is not 2xx (with the body for the error).
    ///
    /// The stream ends when tetherd ends it (a chunked answer's last chunk);
    /// a connection that closes without it (tetherd died) is an error.
    public func stream(_ path: String, onLine: (Data) -> Void) throws {
        let fd = try connect(timeout: nil)
        let head = "GET \(path) HTTP/1.1\r\nHost: tetherd\r\nAccept: application/x-ndjson\r\n\r\n"
        try fd.writeAll(Array(head.utf8))
        var buffer: [UInt8] = []
        var headerEnd: Range<Int>?
        while headerEnd == nil {
            let chunk = try fd.read(upTo: 65536)
            if chunk.isEmpty { throw Failure.broken("no complete header") }
            buffer += chunk
            headerEnd = buffer.firstRange(of: [13, 10, 13, 10])
        }
        let head0 = try Self.parseHead(Array(buffer[..<headerEnd!.lowerBound]))
        guard (200..<300).contains(head0.status) else {
            throw StreamStatus(status: head0.status, body: Data(buffer[headerEnd!.upperBound...]) + Data((try? fd.readToEnd()) ?? []))
        }
        let chunked = head0.headers["transfer-encoding"]?.lowercased() == "chunked"
        var raw = Array(buffer[headerEnd!.upperBound...])
        var body: [UInt8] = []
        while true {
            if chunked {
                // Take whole chunks out of raw; a 0-size chunk ends the stream.
                while let crlf = raw.firstRange(of: [13, 10]) {
                    let sizeText = String(decoding: raw[..<crlf.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
                    guard let size = Int(sizeText.trimmingSpaces, radix: 16) else { throw Failure.broken("bad chunk size") }
                    if size == 0 { emit(&body, onLine); return }
                    guard raw.count >= crlf.upperBound + size + 2 else { break }
                    body += raw[crlf.upperBound..<(crlf.upperBound + size)]
                    raw.removeFirst(crlf.upperBound + size + 2)
                }
            } else {
                body += raw
                raw = []
            }
            emit(&body, onLine)
            let more = try fd.read(upTo: 65536)
            if more.isEmpty {
                emit(&body, onLine)
                if chunked { throw Failure.broken("the event stream ended without its last chunk: tetherd stopped or died") }
                return
            }
            raw += more
        }
    }

    private func emit(_ body: inout [UInt8], _ onLine: (Data) -> Void) {
        while let nl = body.firstIndex(of: 0x0A) {
            onLine(Data(body[..<nl]))
            body.removeFirst(nl + 1)
        }
    }

    public struct StreamStatus: Error {
        public let status: Int
        public let body: Data
    }

    /// The status line and headers (the bytes before the blank line).
    static func parseHead(_ bytes: [UInt8]) throws -> Response {
        let lines = String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Failure.broken("bad status line \(lines.first ?? "")") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingSpaces
        }
        return Response(status: status, headers: headers, body: Data())
    }

    static func parse(_ bytes: [UInt8]) throws -> Response {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = bytes.firstRange(of: sep) else { throw Failure.broken("no complete header in \(bytes.count) bytes") }
        let head = try parseHead(Array(bytes[..<end.lowerBound]))
        let (status, headers) = (head.status, head.headers)
        var body = Array(bytes[end.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            body = try dechunk(body)
        } else if let n = headers["content-length"].flatMap(Int.init) {
            guard body.count >= n else { throw Failure.broken("body has \(body.count) of \(n) bytes") }
            body = Array(body[..<n])
        }
        return Response(status: status, headers: headers, body: Data(body))
    }

    static func dechunk(_ b: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while true {
            guard let crlf = b[i...].firstRange(of: [13, 10]) else { throw Failure.broken("bad chunk header") }
            let sizeText = String(decoding: b[i..<crlf.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingSpaces, radix: 16) else { throw Failure.broken("bad chunk size") }
            i = crlf.upperBound
            if size == 0 { return out }
            guard i + size <= b.count else { throw Failure.broken("short chunk") }
            out += b[i..<(i + size)]
            i += size + 2
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    var trimmingSpaces: String {
        let isSpace = { (c: Character) in c == " " || c == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
