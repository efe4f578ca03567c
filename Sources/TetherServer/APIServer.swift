import Foundation
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import NIOCore
import TetherAPI
import TetherManager
import TetherOCI
import TetherRuntime
import TetherSeccomp
import TetherSys

/// A request's context: Hummingbird's basic one plus the connection, which
/// an event stream closes when its client stops reading.
public struct APIContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// tetherd's HTTP API (docs/api.md) over a unix socket: a thin layer that
/// turns requests into Runtime calls and RuntimeErrors into JSON errors.
public struct APIServer: Sendable {
    let runtime: ShimRuntime
    let logger: Logger

    /// The largest body a request may have (a create's spec included).
    static let maxBody = 4 << 20

    public init(runtime: ShimRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
    }

    public func router() -> Router<APIContext> {
        let router = Router(context: APIContext.self)
        router.add(middleware: ErrorShape(logger: logger))
        router.get("/v1/version") { _, _ in
            json(VersionView(version: TetherVersion.string, runtime: runtime.config.runtime,
                             root: runtime.layout.root, state: runtime.layout.state))
        }
        router.get("/v1/events") { req, c in events(req, c) }
        let tasks = router.group("/v1/namespaces/:ns/tasks")
        tasks.get { _, c in try await handle { try list(ns(c)) } }
        tasks.post { req, c in try await handle { try await create(ns(c), req) } }
        tasks.get(":id") { _, c in
            try await handle {
                // Only here: the security view decodes the whole spec.
                let t = try await task(c)
                var v = try await taskView(t)
                v.security = SecurityView(spec: t.info.spec)
                return json(v)
            }
        }
        tasks.post(":id/start") { _, c in
            try await handle {
                let t = try await task(c)
                try await t.start()
                return try await view(t)
            }
        }
        tasks.post(":id/pause") { _, c in
            try await handle {
                let t = try await task(c)
                try await t.pause()
                return try await view(t)
            }
        }
        tasks.post(":id/resume") { _, c in
            try await handle {
                let t = try await task(c)
                try await t.resume()
                return try await view(t)
            }
        }
        tasks.get(":id/pids") { _, c in
            try await handle { json(try await shimTask(c).processes().map { ProcessEntry(pid: $0.pid, execID: $0.execID) }) }
        }
        tasks.get(":id/stats") { _, c in try await handle { json(try await shimTask(c).stats()) } }
        tasks.get(":id/seccomp") { req, c in try await handle { try await seccompReport(c, profile: req.uri.queryParameters.get("profile") == "true") } }
        tasks.post(":id/update") { req, c in
            try await handle {
                let body = try await collect(req)
                _ = try OCI.LinuxResources.validated(Array(body), source: "the request body")
                try await task(c).update(resources: body)
                return Response(status: .noContent)
            }
        }
        tasks.post(":id/checkpoint") { req, c in
            try await handle {
                let body: CheckpointRequest = try await decode(req, default: nil)
                let options = try JSONSerialization.data(withJSONObject: ["exit": body.exit ?? false])
                try await task(c).checkpoint(path: body.path, options: options)
                return Response(status: .noContent)
            }
        }
        tasks.delete(":id") { _, c in try await handle { json(ExitView(try await runtime.delete(try await task(c)))) } }

        tasks.post(":id/execs") { req, c in try await handle { try await exec(c, req) } }
        tasks.get(":id/execs/:exec") { _, c in try await handle { json(try await processView(try await process(c))) } }
        tasks.post(":id/execs/:exec/start") { _, c in
            try await handle {
                let p = try await process(c)
                try await p.start()
                return json(try await processView(p))
            }
        }
        tasks.delete(":id/execs/:exec") { _, c in
            try await handle {
                let execID = try execID(c)
                return json(ExitView(try await task(c).deleteProcess(id: execID)))
            }
        }

        // What a task's init and an exec'd process both answer, registered once.
        typealias Resolve = @Sendable (APIContext) async throws -> (any RuntimeProcess, Bool)
        let routes: [(String, Resolve)] = [(":id", { c in (try await task(c), true) }),
                                           (":id/execs/:exec", { c in (try await process(c), false) })]
        for (prefix, resolve) in routes {
            tasks.post("\(prefix)/kill") { req, c in
                try await handle {
                    let body: KillRequest = try await decode(req, default: KillRequest())
                    let signal = try Signals.parse(body.signal?.text ?? "TERM")
                    let (p, isTask) = try await resolve(c)
                    try await p.kill(signal: UInt32(signal), all: isTask && (body.all ?? false))
                    return Response(status: .noContent)
                }
            }
            tasks.post("\(prefix)/wait") { _, c in
                try await handle {
                    let p = try await resolve(c).0
                    logger.debug("waiting for \(c.parameters.get("id") ?? "")\(c.parameters.get("exec").map { " exec \($0)" } ?? "")")
                    return json(ExitView(try await p.wait()))
                }
            }
            tasks.post("\(prefix)/resize") { req, c in
                try await handle {
                    let body: ResizeRequest = try await decode(req, default: nil)
                    guard (1...UInt32(UInt16.max)).contains(body.width), (1...UInt32(UInt16.max)).contains(body.height) else {
                        throw RuntimeError(.invalidArgument, "console size \(body.width)x\(body.height) is out of range: width and height are 1 to 65535")
                    }
                    try await resolve(c).0.resizePty(ConsoleSize(width: body.width, height: body.height))
                    return Response(status: .noContent)
                }
            }
            tasks.post("\(prefix)/closeio") { _, c in
                try await handle {
                    try await resolve(c).0.closeIO()
                    return Response(status: .noContent)
                }
            }
        }
        return router
    }

    // MARK: - handlers

    /// From the manager's own records: a listing answers at once, whatever
    /// the shims do (a stopped shim slows only calls about its own task).
    private func list(_ namespace: String) throws -> Response {
        json(try runtime.recordedTasks(namespace: namespace).map { t in taskView(t, t.recordedState()) })
    }

    private func create(_ namespace: String, _ req: Request) async throws -> Response {
        let body: CreateTaskRequest = try await decode(req, default: nil)
        try Identifier.validate(namespace, kind: "namespace")
        try Identifier.validate(body.id, kind: "task ID")
        let runtime = self.runtime
        let io = body.fifos.map { runtime.fifoIO(namespace: namespace, id: body.id, stdin: $0.stdin ?? false, terminal: $0.terminal ?? false) }
            ?? body.io?.io ?? IO()
        var opts: CreateOpts
        if let spec = body.spec {
            let bytes = Data(SpecCheck.encode(spec))
            if let s = (try? JSONDecoder().decode(OCI.Spec.self, from: bytes))?.linux?.seccomp {
                try SeccompCheck.check(s, source: "the request's spec (linux.seccomp)")
            }
            opts = CreateOpts(spec: bytes, io: io)
        } else {
            let source: RootfsSource = if let b = body.bundle { .bundle(b) } else if let r = body.rootfs { .directory(r) } else { .embedded }
            let process = body.args.map { SpecBuilder.Process(args: $0, env: body.env ?? [], cwd: body.cwd ?? "/") }
            let limits = body.resources ?? ResourceLimits()
            let seccomp = try seccompChoice(body.seccomp)
            let confinement = body.security ?? Confinement()
            if body.bundle != nil && (seccomp != .default || !confinement.isDefault) {
                throw RuntimeError(.invalidArgument, "seccomp and security are for generated specs: a bundle's config.json brings its own")
            }
            // A bundle's files are read off the threads that serve requests.
            opts = try await runtime.onDisk {
                try runtime.createOptions(namespace: namespace, id: body.id, source: source, process: process, io: io, resources: limits,
                                          seccomp: seccomp, confinement: confinement)
            }
        }
        if let checkpoint = body.checkpoint { opts.checkpoint = checkpoint }
        if let log = body.log {
            var o: [String: Any] = ["logPath": log.path]
            if let max = log.maxSize { o["logMaxSize"] = String(max) }
            opts.options = try JSONSerialization.data(withJSONObject: o)
        }
        let t = try await runtime.create(namespace: namespace, id: body.id, opts)
        return json(try await taskView(t), status: .created)
    }

    /// The request's `seccomp`: "default" (or none), "unconfined", or a profile.
    private func seccompChoice(_ v: JSONValue?) throws -> SeccompChoice {
        switch v {
        case nil, .string("default"): return .default
        case .string("unconfined"): return .unconfined
        case .object:
            do {
                let p = try APIJSON.decoder.decode(SeccompProfile.self, from: try APIJSON.encoder.encode(v))
                return .profile(p, source: "(from the request)")
            } catch {
                throw RuntimeError(.invalidArgument, "seccomp profile (from the request) is not a profile: \(describeDecodingError(error))")
            }
        default:
            throw RuntimeError(.invalidArgument, "seccomp must be \"default\", \"unconfined\" or a profile object")
        }
    }

    /// The task's seccomp agent report, or with `profile` the profile it
    /// learned: Tether's default plus every syscall the task made.
    private func seccompReport(_ c: APIContext, profile: Bool) async throws -> Response {
        let t = try await shimTask(c)
        let path = "\(t.bundle)/seccomp.json"
        let report: SeccompReport
        do {
            report = try await runtime.onDisk { try APIJSON.decoder.decode(SeccompReport.self, from: Data(try Files.readRegular(path, limit: 1 << 20))) }
        } catch {
            throw RuntimeError(.notFound, "task \"\(t.id)\" has no seccomp agent report: create it with --security-opt seccomp-audit or seccomp-learn")
        }
        guard profile else { return json(report) }
        var p = SeccompDefault.profile
        let used = report.syscalls.map(\.name).filter { !$0.hasPrefix("syscall ") }
        if !used.isEmpty { p.syscalls?.append(.init(names: used.sorted(), action: "SCMP_ACT_ALLOW")) }
        return json(p)
    }

    private func view(_ t: any RuntimeTask) async throws -> Response { json(try await taskView(t)) }

    private func exec(_ c: APIContext, _ req: Request) async throws -> Response {
        let body: ExecRequest = try await decode(req, default: nil)
        let t = try await task(c)
        let execID = body.execID ?? "exec-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        try Identifier.validate(execID, kind: "exec ID")
        let terminal = body.fifos?.terminal ?? body.io?.terminal ?? false
        let io = body.fifos.map { runtime.fifoIO(namespace: t.info.namespace, id: t.id, execID: execID, stdin: $0.stdin ?? false, terminal: terminal) }
            ?? body.io?.io ?? IO()
        let spec = try SpecBuilder.execProcess(taskSpec: t.info.spec, args: body.args, env: body.env ?? [], cwd: body.cwd, terminal: terminal)
        let p = try await t.exec(id: execID, ExecOpts(spec: spec, io: io))
        return json(try await processView(p), status: .created)
    }

    private func execID(_ c: APIContext) throws -> String {
        guard let execID = c.parameters.get("exec") else { throw RuntimeError(.invalidArgument, "no exec ID in the path") }
        try Identifier.validate(execID, kind: "exec ID")
        return execID
    }

    private func process(_ c: APIContext) async throws -> any RuntimeProcess {
        // Two statements, not one expression: Swift 6.3.1's optimizer crashed
        // (CoroSplit) on `try await task(c).process(id: try execID(c))`.
        let execID = try execID(c)
        let t = try await task(c)
        return try await t.process(id: execID)
    }

    private func processView(_ p: any RuntimeProcess) async throws -> ProcessView {
        let s = try await p.state()
        let taskID = (p as? ShimExec)?.taskID ?? ""
        return ProcessView(taskID: taskID, execID: p.id, pid: s.pid, status: s.status, exit: s.exit.map(ExitView.init),
                           io: IOView(stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, terminal: s.terminal))
    }

    private func taskView(_ t: any RuntimeTask) async throws -> TaskView {
        taskView(t, try await t.state())
    }

    private func taskView(_ t: any RuntimeTask, _ s: TetherRuntime.State) -> TaskView {
        let shim = t as? ShimTask
        return TaskView(namespace: t.info.namespace, id: t.id, pid: s.pid, status: s.status, exit: s.exit.map(ExitView.init),
                        exitReason: shim?.exitReason, io: IOView(stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, terminal: s.terminal),
                        runtime: t.info.runtime, bundle: shim?.bundle, shimPid: shim?.shimPid)
    }

    private func task(_ c: APIContext) async throws -> any RuntimeTask {
        guard let id = c.parameters.get("id") else { throw RuntimeError(.invalidArgument, "no task ID in the path") }
        return try await runtime.get(namespace: try ns(c), id: id)
    }

    private func shimTask(_ c: APIContext) async throws -> ShimTask {
        guard let t = try await task(c) as? ShimTask else { throw RuntimeError(.internal, "not a shim task") }
        return t
    }

    private func ns(_ c: APIContext) throws -> String {
        guard let ns = c.parameters.get("ns") else { throw RuntimeError(.invalidArgument, "no namespace in the path") }
        try Identifier.validate(ns, kind: "namespace")
        return ns
    }

    /// GET /v1/events: one JSON object per line, as events happen, until the
    /// client goes away. Filters: namespace, task, topic (repeatable).
    /// A client that falls more than `runtime.events.limit` events behind
    /// gets a final error line and is disconnected; whatever ends the stream
    /// (that, or tetherd stopping), a client that does not take the rest
    /// within `streamGrace` has its connection closed.
    private func events(_ req: Request, _ c: APIContext) -> Response {
        let q = req.uri.queryParameters
        let namespace = q.get("namespace")
        let task = q.get("task")
        let topics = Set(q.getAll("topic").map { String($0) })
        let sub = runtime.events.subscribe()
        let channel = c.channel
        let logger = self.logger
        var headers = HTTPFields()
        headers[.contentType] = "application/x-ndjson"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { sub.cancel() }
            let closer = Task {
                await sub.ended()
                if case .fellBehind(let limit) = sub.reason {
                    logger.warning("an event subscriber fell more than \(limit) events behind; disconnecting it")
                }
                try await Task.sleep(for: Self.streamGrace)
                logger.warning("closed the connection of an event subscriber that did not read its stream's end within \(Self.streamGrace)")
                channel.close(promise: nil)
            }
            defer { closer.cancel() }
            // An empty first line: the subscription is in place, later events will come.
            try await writer.write(ByteBuffer(bytes: [0x0A]))
            for await e in sub {
                if let namespace, e.namespace != namespace { continue }
                if let task, e.event.containerID != task { continue }
                if !topics.isEmpty && !topics.contains(e.topic) { continue }
                guard let data = try? APIJSON.encoder.encode(e) else { continue }
                try await writer.write(ByteBuffer(bytes: Array(data) + [0x0A]))
            }
            if case .fellBehind(let limit) = sub.reason {
                let body = ErrorBody(code: RuntimeError.Code.unavailable.rawValue,
                                     message: "this subscriber fell more than \(limit) events behind and was disconnected: read events as they come, then subscribe again")
                if let data = try? APIJSON.encoder.encode(body) {
                    try await writer.write(ByteBuffer(bytes: Array(data) + [0x0A]))
                }
            }
            try await writer.finish(nil)
        })
    }

    /// How long an ended event stream waits for its client before closing the connection.
    static let streamGrace = Duration.seconds(5)

    // MARK: - JSON in and out

    /// The body, at most `maxBody` bytes.
    private func collect(_ req: Request) async throws -> Data {
        do {
            return Data(try await req.body.collect(upTo: Self.maxBody).readableBytesView)
        } catch is NIOTooManyBytesError {
            throw RuntimeError.bodyTooLarge(Self.maxBody)
        }
    }

    private func decode<T: Decodable>(_ req: Request, default value: T?) async throws -> T {
        let body = try await collect(req)
        if body.isEmpty, let value { return value }
        do {
            return try APIJSON.decoder.decode(T.self, from: body)
        } catch {
            throw RuntimeError(.invalidArgument, "request body is not valid \(T.self) JSON: \(describeDecodingError(error))")
        }
    }

    /// Runs a handler; any error becomes `{"error": {...}}` with a status that fits.
    private func handle(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as RuntimeError {
            return errorResponse(FileLimit.unavailable(e.message) ?? e)
        } catch {
            logger.error("request failed: \(error)")
            return errorResponse(FileLimit.unavailable("\(error)") ?? RuntimeError(.internal, "\(error)"))
        }
    }
}

/// Running out of file descriptors is tetherd's own limit, not the
/// request's fault: 503, with what to do, and the API keeps answering what
/// it can.
enum FileLimit {
    static func unavailable(_ message: String) -> RuntimeError? {
        let emfile = String(cString: strerror(EMFILE)), enfile = String(cString: strerror(ENFILE))
        guard message.contains(emfile) || message.contains(enfile) else { return nil }
        var lim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
        return RuntimeError(.unavailable, "tetherd has run out of file descriptors (\(open) open, limit \(lim.rlim_cur)): \(message); raise its limit (LimitNOFILE= in its unit, or ulimit -n before starting it) or delete tasks it no longer needs")
    }
}

extension RuntimeError {
    static func bodyTooLarge(_ limit: Int) -> RuntimeError {
        RuntimeError(.tooLarge, "the request body is larger than \(limit) bytes, the most tetherd takes")
    }
}

/// Every answer that is not a handler's own, in the documented error shape:
/// an unknown route (404), a body over the limit (413), anything Hummingbird
/// itself throws.
struct ErrorShape: RouterMiddleware {
    typealias Context = APIContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as RuntimeError {
            return errorResponse(e)
        } catch is NIOTooManyBytesError {
            return errorResponse(.bodyTooLarge(APIServer.maxBody))
        } catch let e as HTTPResponseError {
            if e.status == .notFound {
                return errorResponse(RuntimeError(.notFound, "no such endpoint: \(request.method) \(request.uri.path) (docs/api.md lists them)"))
            }
            let error = RuntimeError(.invalidArgument, "\(e.status.code) \(e.status.reasonPhrase): \((e as? HTTPError)?.body ?? "the request was refused")")
            return json(ErrorBody(code: error.code.rawValue, message: error.message), status: e.status)
        } catch {
            logger.error("request failed: \(error)")
            return errorResponse(RuntimeError(.internal, "\(error)"))
        }
    }
}

func errorResponse(_ e: RuntimeError) -> Response {
    let status: HTTPResponse.Status = switch e.code {
    case .invalidArgument: .badRequest
    case .containerDoesNotExist, .notFound: .notFound
    case .containerExists, .processAlreadyExited, .failedPrecondition: .conflict
    case .runtimeDoesNotExist: .init(code: 424, reasonPhrase: "Failed Dependency")
    case .notImplemented: .notImplemented
    case .unavailable: .serviceUnavailable
    case .deadlineExceeded: .gatewayTimeout
    case .tooLarge: .contentTooLarge
    case .internal: .internalServerError
    }
    return json(ErrorBody(code: e.code.rawValue, message: e.message), status: status)
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? APIJSON.encoder.encode(value)) ?? Data("{}".utf8)
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: Array(data) + [0x0A])))
}
