#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import TetherAPI
import TetherRuntime

/// tetherd's API for the CLI, one method per endpoint (docs/api.md).
/// Errors the daemon reports come back as RuntimeError with its message.
public struct APIClient: Sendable {
    public let http: HTTPUnixClient
    public let namespace: String

    /// `timeout`: seconds every call may wait for its answer. Without it,
    /// each call has its own bound: 10 s for a question (version, list,
    /// state, pids, stats), 150 s for a change (create, start, delete, …;
    /// tetherd's own bounds on its shims are shorter), none for wait.
    public init(address: String, namespace: String, timeout: Int? = nil) {
        http = HTTPUnixClient(socketPath: address, timeout: timeout)
        self.namespace = namespace
    }

    /// The client's timeout if it has one, else the call's own bound.
    private func limit(_ bound: Bound) -> Int? {
        if let t = http.timeout { return t }
        return bound.seconds
    }

    /// How long a call may wait when no timeout was given.
    enum Bound {
        case question, change, unbounded
        var seconds: Int? {
            switch self {
            case .question: 10
            case .change: 150
            case .unbounded: nil
            }
        }
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

    public func version() throws -> VersionView { try call("GET", "/v1/version", bound: .question) }
    public func list() throws -> [TaskView] { try call("GET", try tasksPath(), bound: .question) }
    public func get(_ id: String) throws -> TaskView { try call("GET", try taskPath(id), bound: .question) }
    public func create(_ req: CreateTaskRequest) throws -> TaskView { try call("POST", try tasksPath(), req) }
    public func start(_ id: String) throws -> TaskView { try call("POST", "\(try taskPath(id))/start") }
    public func wait(_ id: String) throws -> ExitView { try call("POST", "\(try taskPath(id))/wait", bound: .unbounded) }
    public func delete(_ id: String) throws -> ExitView { try call("DELETE", try taskPath(id)) }

    public func kill(_ id: String, signal: String, all: Bool) throws {
        let _: Empty = try call("POST", "\(try taskPath(id))/kill", KillRequest(signal: .name(signal), all: all))
    }

    public func resize(_ id: String, execID: String? = nil, width: UInt32, height: UInt32) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/resize", ResizeRequest(width: width, height: height))
    }

    public func closeIO(_ id: String, execID: String? = nil) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/closeio")
    }

    public func pause(_ id: String) throws -> TaskView { try call("POST", "\(try taskPath(id))/pause") }
    public func resume(_ id: String) throws -> TaskView { try call("POST", "\(try taskPath(id))/resume") }
    public func pids(_ id: String) throws -> [ProcessEntry] { try call("GET", "\(try taskPath(id))/pids", bound: .question) }
    public func stats(_ id: String) throws -> TaskStats { try call("GET", "\(try taskPath(id))/stats", bound: .question) }

    /// The task's seccomp agent report, or (`profile`) the profile it learned, as JSON.
    public func seccomp(_ id: String, profile: Bool) throws -> Data {
        let path = "\(try taskPath(id))/seccomp" + (profile ? "?profile=true" : "")
        let r = try http.send("GET", path, body: nil, within: limit(.question))
        guard (200..<300).contains(r.status) else { throw Self.error(r) }
        return r.body
    }

    /// `resources` is OCI LinuxResources JSON.
    public func update(_ id: String, resources: Data) throws {
        let r = try http.send("POST", "\(try taskPath(id))/update", body: resources, within: limit(.change))
        guard (200..<300).contains(r.status) else { throw Self.error(r) }
    }

    public func checkpoint(_ id: String, path: String, exit: Bool) throws {
        let _: Empty = try call("POST", "\(try taskPath(id))/checkpoint", CheckpointRequest(path: path, exit: exit))
    }

    /// Events as they happen, filtered; calls `onEvent` for each until the
    /// stream ends. `onReady` runs once tetherd has the subscription in place.
    /// Every byte but ASCII letters and digits as %XX (a query value).
    static func percentEncoded(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%" + String(Unicode.Scalar(hex[Int(b >> 4)])) + String(Unicode.Scalar(hex[Int(b & 15)]))
            }
        }
        return out
    }

    public func events(namespace: String?, task: String?, topics: [String], onReady: () -> Void = {},
                       onEvent: (TaskEvent) -> Void) throws {
        var query: [String] = []
        if let namespace { try Identifier.validate(namespace, kind: "namespace"); query.append("namespace=\(namespace)") }
        if let task { try Identifier.validate(task, kind: "task ID"); query.append("task=\(task)") }
        for t in topics { query.append("topic=\(Self.percentEncoded(t))") }
        var ending: RuntimeError?
        do {
            var readySent = false
            try http.stream("/v1/events" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))) { line in
                if line.isEmpty {
                    if !readySent { readySent = true; onReady() }
                } else if let e = try? APIJSON.decoder.decode(TaskEvent.self, from: line) {
                    onEvent(e)
                } else if let e = try? APIJSON.decoder.decode(ErrorBody.self, from: line) {
                    // tetherd's last line when it drops a subscriber that fell behind.
                    ending = RuntimeError(RuntimeError.Code(rawValue: e.error.code) ?? .internal, e.error.message)
                }
            }
        } catch let e as HTTPUnixClient.StreamStatus {
            throw Self.error(HTTPUnixClient.Response(status: e.status, headers: [:], body: e.body))
        }
        if let ending { throw ending }
    }

    static func error(_ r: HTTPUnixClient.Response) -> RuntimeError {
        if let e = try? APIJSON.decoder.decode(ErrorBody.self, from: r.body) {
            return RuntimeError(RuntimeError.Code(rawValue: e.error.code) ?? .internal, e.error.message)
        }
        return RuntimeError(.internal, "tetherd answered \(r.status): \(String(decoding: r.body.prefix(300), as: UTF8.self))")
    }

    // MARK: execs

    public func exec(_ id: String, _ req: ExecRequest) throws -> ProcessView { try call("POST", "\(try taskPath(id))/execs", req) }
    public func getExec(_ id: String, _ execID: String) throws -> ProcessView { try call("GET", try processPath(id, execID), bound: .question) }
    public func startExec(_ id: String, _ execID: String) throws -> ProcessView { try call("POST", "\(try processPath(id, execID))/start") }
    public func waitExec(_ id: String, _ execID: String) throws -> ExitView { try call("POST", "\(try processPath(id, execID))/wait", bound: .unbounded) }
    public func deleteExec(_ id: String, _ execID: String) throws -> ExitView { try call("DELETE", try processPath(id, execID)) }

    public func killExec(_ id: String, _ execID: String, signal: String) throws {
        let _: Empty = try call("POST", "\(try processPath(id, execID))/kill", KillRequest(signal: .name(signal)))
    }

    private func processPath(_ id: String, _ execID: String?) throws -> String {
        guard let execID else { return try taskPath(id) }
        try Identifier.validate(execID, kind: "exec ID")
        return "\(try taskPath(id))/execs/\(execID)"
    }

    private struct Empty: Decodable {}

    private func call<T: Decodable>(_ method: String, _ path: String, _ body: (some Encodable)? = Optional<Int>.none,
                                    bound: Bound = .change) throws -> T {
        let data = try body.map { try APIJSON.encoder.encode($0) }
        let r = try http.send(method, path, body: data, within: limit(bound))
        guard (200..<300).contains(r.status) else { throw Self.error(r) }
        if T.self == Empty.self { return Empty() as! T }
        do {
            return try APIJSON.decoder.decode(T.self, from: r.body)
        } catch {
            throw RuntimeError(.internal, "cannot read tetherd's answer to \(method) \(path): \(error)")
        }
    }
}
