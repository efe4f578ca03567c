import Foundation
import TetherAPI
import TetherRuntime

/// tetherd's API for the CLI, one method per endpoint (docs/api.md).
/// Errors the daemon reports come back as RuntimeError with its message.
public struct APIClient: Sendable {
    public let http: HTTPUnixClient
    public let namespace: String

    public init(address: String, namespace: String) {
        http = HTTPUnixClient(socketPath: address)
        self.namespace = namespace
    }

    // Namespace and ID are checked here too, so that they can never change the request's path.
    private func tasksPath() throws -> String {
        try Identifier.validate(namespace, kind: "namespace")
        return "/v1/namespaces/\(namespace)/tasks"
    }

    private func taskPath(_ id: String) throws -> String {
        try Identifier.validate(id, kind: "task ID")
        return "\(try tasksPath())/\(id)"
    }

    public func version() throws -> VersionView { try call("GET", "/v1/version") }
    public func list() throws -> [TaskView] { try call("GET", try tasksPath()) }
    public func get(_ id: String) throws -> TaskView { try call("GET", try taskPath(id)) }
    public func create(_ req: CreateTaskRequest) throws -> TaskView { try call("POST", try tasksPath(), req) }
    public func start(_ id: String) throws -> TaskView { try call("POST", "\(try taskPath(id))/start") }
    public func wait(_ id: String) throws -> Exit { try call("POST", "\(try taskPath(id))/wait") }
    public func delete(_ id: String) throws -> Exit { try call("DELETE", try taskPath(id)) }

    public func kill(_ id: String, signal: String, all: Bool) throws {
        let _: Empty = try call("POST", "\(try taskPath(id))/kill", KillRequest(signal: .name(signal), all: all))
    }

    public func resize(_ id: String, execID: String? = nil, width: UInt32, height: UInt32) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/resize", ResizeRequest(width: width, height: height))
    }

    public func closeIO(_ id: String, execID: String? = nil) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/closeio")
    }

    // MARK: execs

    public func exec(_ id: String, _ req: ExecRequest) throws -> ProcessView { try call("POST", "\(try taskPath(id))/execs", req) }
    public func getExec(_ id: String, _ execID: String) throws -> ProcessView { try call("GET", try processPath(id, execID)) }
    public func startExec(_ id: String, _ execID: String) throws -> ProcessView { try call("POST", "\(try processPath(id, execID))/start") }
    public func waitExec(_ id: String, _ execID: String) throws -> Exit { try call("POST", "\(try processPath(id, execID))/wait") }
    public func deleteExec(_ id: String, _ execID: String) throws -> Exit { try call("DELETE", try processPath(id, execID)) }

    public func killExec(_ id: String, _ execID: String, signal: String) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/kill", KillRequest(signal: .name(signal)))
    }

    private func processPath(_ id: String, _ execID: String?) throws -> String {
        guard let execID else { return try taskPath(id) }
        try Identifier.validate(execID, kind: "exec ID")
        return "\(try taskPath(id))/execs/\(execID)"
    }

    private struct Empty: Decodable {}

    private func call<T: Decodable>(_ method: String, _ path: String, _ body: (some Encodable)? = Optional<Int>.none) throws -> T {
        let data = try body.map { try APIJSON.encoder.encode($0) }
        let r = try http.send(method, path, body: data)
        guard (200..<300).contains(r.status) else {
            if let e = try? APIJSON.decoder.decode(ErrorBody.self, from: r.body) {
                throw RuntimeError(RuntimeError.Code(rawValue: e.error.code) ?? .internal, e.error.message)
            }
            throw RuntimeError(.internal, "tetherd answered \(r.status): \(String(decoding: r.body.prefix(300), as: UTF8.self))")
        }
        if T.self == Empty.self { return Empty() as! T }
        do {
            return try APIJSON.decoder.decode(T.self, from: r.body)
        } catch {
            throw RuntimeError(.internal, "cannot read tetherd's answer to \(method) \(path): \(error)")
        }
    }
}
