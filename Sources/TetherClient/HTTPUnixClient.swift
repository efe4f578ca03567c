import Foundation
import TetherSys

/// A minimal HTTP/1.1 client over a unix socket, one request per connection:
/// all the CLI needs to talk to tetherd, and quick to start.
public struct HTTPUnixClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
    }

    public enum Failure: Error, CustomStringConvertible {
        case unreachable(String, SysError)
        case broken(String)

        public var description: String {
            switch self {
            case .unreachable(let path, let e):
                "cannot reach tetherd at \(path) (\(e.message)): start it with 'tetherd &' (scripts/run does), or point --address or TETHER_ADDRESS at its socket"
            case .broken(let why): "tetherd's answer was cut short: \(why)"
            }
        }
    }

    public func send(_ method: String, _ path: String, body: Data? = nil) throws -> Response {
        let fd: FD
        do { fd = try UnixSocket.connect(socketPath) } catch { throw Failure.unreachable(socketPath, error) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: tetherd\r\nConnection: close\r\nAccept: application/json\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        do {
            try fd.writeAll(Array(head.utf8) + Array(body ?? Data()))
            return try Self.parse(try fd.readToEnd(limit: 64 << 20))
        } catch let e as SysError {
            throw Failure.broken(e.description)
        }
    }

    static func parse(_ bytes: [UInt8]) throws -> Response {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = bytes.firstRange(of: sep) else { throw Failure.broken("no complete header in \(bytes.count) bytes") }
        let lines = String(decoding: bytes[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Failure.broken("bad status line \(lines.first ?? "")") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
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
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw Failure.broken("bad chunk size") }
            i = crlf.upperBound
            if size == 0 { return out }
            guard i + size <= b.count else { throw Failure.broken("short chunk") }
            out += b[i..<(i + size)]
            i += size + 2
        }
    }
}
