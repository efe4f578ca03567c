import TetherProto

/// A failed call: a gRPC status code and a message, as ttrpc carries them.
public struct RPCError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Int32, Sendable {
        case ok = 0
        case cancelled = 1
        case unknown = 2
        case invalidArgument = 3
        case deadlineExceeded = 4
        case notFound = 5
        case alreadyExists = 6
        case permissionDenied = 7
        case resourceExhausted = 8
        case failedPrecondition = 9
        case aborted = 10
        case outOfRange = 11
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public init(status: Ttrpc_Status) {
        code = Code(rawValue: status.code) ?? .unknown
        message = status.message
    }

    public var status: Ttrpc_Status {
        var s = Ttrpc_Status()
        s.code = code.rawValue
        s.message = message
        return s
    }

    public var description: String { message }
}
