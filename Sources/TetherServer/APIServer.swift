import Foundation
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import NIOCore
import TetherAPI
import TetherManager
import TetherRuntime

/// tetherd's HTTP API (docs/api.md) over a unix socket: a thin layer that
/// turns requests into Runtime calls and RuntimeErrors into JSON errors.
public struct APIServer: Sendable {
    let runtime: ShimRuntime
    let logger: Logger

    public init(runtime: ShimRuntime, logger: Logger) {
        self.runtime = runtime
        self.logger = logger
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.get("/v1/version") { _, _ in
            json(VersionView(version: TetherVersion.string, runtime: runtime.config.runtime,
                             root: runtime.layout.root, state: runtime.layout.state))
        }
        router.get("/v1/events") { req, _ in events(req) }
        let tasks = router.group("/v1/namespaces/:ns/tasks")
        tasks.get { _, c in try await handle { try await list(ns(c)) } }
        tasks.post { req, c in try await handle { try await create(ns(c), req) } }
        tasks.get(":id") { _, c in try await handle { try await view(try await task(c)) } }
        tasks.post(":id/start") { _, c in
            try await handle {
                let t = try await task(c)
                try await t.start()
                return try await view(t)
            }
        }
        tasks.post(":id/kill") { req, c in
            try await handle {
                let body: KillRequest = try await decode(req, default: KillRequest())
                let signal = try Signals.parse(body.signal?.text ?? "TERM")
                try await task(c).kill(signal: UInt32(signal), all: body.all ?? false)
                return Response(status: .noContent)
            }
        }
        tasks.post(":id/wait") { _, c in try await handle { json(try await task(c).wait()) } }
        tasks.post(":id/resize") { req, c in
            try await handle {
                let body: ResizeRequest = try await decode(req, default: nil)
                try await task(c).resizePty(ConsoleSize(width: body.width, height: body.height))
                return Response(status: .noContent)
            }
        }
        tasks.post(":id/closeio") { _, c in
            try await handle {
                try await task(c).closeIO()
                return Response(status: .noContent)
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
            try await handle {
                guard let t = try await task(c) as? ShimTask else { throw RuntimeError(.internal, "not a shim task") }
                return json(try await t.processes().map { ProcessEntry(pid: $0.pid, execID: $0.execID) })
            }
        }
        tasks.get(":id/stats") { _, c in
            try await handle {
                guard let t = try await task(c) as? ShimTask else { throw RuntimeError(.internal, "not a shim task") }
                return json(try await t.stats())
            }
        }
        tasks.post(":id/update") { req, c in
            try await handle {
                let body = Data(try await req.body.collect(upTo: 1 << 20).readableBytesView)
                guard (try? JSONSerialization.jsonObject(with: body)) is [String: Any] else {
                    throw RuntimeError(.invalidArgument, "the body is not OCI LinuxResources JSON (an object such as {\"memory\": {\"limit\": 67108864}})")
                }
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

        tasks.post(":id/execs") { req, c in try await handle { try await exec(c, req) } }
        tasks.get(":id/execs/:exec") { _, c in try await handle { json(try await processView(try await process(c))) } }
        tasks.post(":id/execs/:exec/start") { _, c in
            try await handle {
                let p = try await process(c)
                try await p.start()
                return json(try await processView(p))
            }
        }
        tasks.post(":id/execs/:exec/kill") { req, c in
            try await handle {
                let body: KillRequest = try await decode(req, default: KillRequest())
                let signal = try Signals.parse(body.signal?.text ?? "TERM")
                try await process(c).kill(signal: UInt32(signal), all: false)
                return Response(status: .noContent)
            }
        }
        tasks.post(":id/execs/:exec/wait") { _, c in try await handle { json(try await process(c).wait()) } }
        tasks.post(":id/execs/:exec/resize") { req, c in
            try await handle {
                let body: ResizeRequest = try await decode(req, default: nil)
                try await process(c).resizePty(ConsoleSize(width: body.width, height: body.height))
                return Response(status: .noContent)
            }
        }
        tasks.post(":id/execs/:exec/closeio") { _, c in
            try await handle {
                try await process(c).closeIO()
                return Response(status: .noContent)
            }
        }
        tasks.delete(":id/execs/:exec") { _, c in
            try await handle {
                guard let execID = c.parameters.get("exec") else { throw RuntimeError(.invalidArgument, "no exec ID in the path") }
                return json(try await task(c).deleteProcess(id: execID))
            }
        }
        tasks.delete(":id") { _, c in
            try await handle {
                let t = try await task(c)
                return json(try await runtime.delete(t))
            }
        }
        return router
    }

    // MARK: - handlers

    private func list(_ namespace: String) async throws -> Response {
        var out: [TaskView] = []
        for t in try await runtime.tasks(namespace: namespace) {
            // A task deleted while we list is simply left out.
            if let v = try? await taskView(t) { out.append(v) }
        }
        return json(out)
    }

    private func create(_ namespace: String, _ req: Request) async throws -> Response {
        let body: CreateTaskRequest = try await decode(req, default: nil)
        try Identifier.validate(namespace, kind: "namespace")
        try Identifier.validate(body.id, kind: "task ID")
        let io = body.fifos.map { runtime.fifoIO(namespace: namespace, id: body.id, stdin: $0.stdin ?? false, terminal: $0.terminal ?? false) }
            ?? body.io ?? IO()
        var opts: CreateOpts
        if let spec = body.spec {
            opts = CreateOpts(spec: try APIJSON.encoder.encode(spec), io: io)
        } else {
            let source: RootfsSource = if let b = body.bundle { .bundle(b) } else if let r = body.rootfs { .directory(r) } else { .embedded }
            let process = body.args.map { SpecBuilder.Process(args: $0, env: body.env ?? [], cwd: body.cwd ?? "/") }
            let r = body.resources ?? ResourcesRequest()
            opts = try runtime.createOptions(namespace: namespace, id: body.id, source: source, process: process, io: io,
                                             resources: SpecBuilder.Resources(memoryLimit: r.memory, cpus: r.cpus, pidsLimit: r.pidsLimit))
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

    private func view(_ t: any RuntimeTask) async throws -> Response { json(try await taskView(t)) }

    private func exec(_ c: BasicRequestContext, _ req: Request) async throws -> Response {
        let body: ExecRequest = try await decode(req, default: nil)
        let t = try await task(c)
        let execID = body.execID ?? "exec-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        try Identifier.validate(execID, kind: "exec ID")
        let terminal = body.fifos?.terminal ?? body.io?.terminal ?? false
        let io = body.fifos.map { runtime.fifoIO(namespace: t.info.namespace, id: t.id, execID: execID, stdin: $0.stdin ?? false, terminal: terminal) }
            ?? body.io ?? IO()
        let spec = try SpecBuilder.execProcess(taskSpec: t.info.spec, args: body.args, env: body.env ?? [], cwd: body.cwd, terminal: terminal)
        let p = try await t.exec(id: execID, ExecOpts(spec: spec, io: io))
        return json(try await processView(p), status: .created)
    }

    private func process(_ c: BasicRequestContext) async throws -> any RuntimeProcess {
        guard let execID = c.parameters.get("exec") else { throw RuntimeError(.invalidArgument, "no exec ID in the path") }
        try Identifier.validate(execID, kind: "exec ID")
        return try await task(c).process(id: execID)
    }

    private func processView(_ p: any RuntimeProcess) async throws -> ProcessView {
        let s = try await p.state()
        let taskID = (p as? ShimExec)?.taskID ?? ""
        return ProcessView(taskID: taskID, execID: p.id, pid: s.pid, status: s.status, exit: s.exit,
                           io: IO(stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, terminal: s.terminal))
    }

    private func taskView(_ t: any RuntimeTask) async throws -> TaskView {
        let s = try await t.state()
        let shim = t as? ShimTask
        return TaskView(namespace: t.info.namespace, id: t.id, pid: s.pid, status: s.status, exit: s.exit,
                        exitReason: shim?.exitReason, io: IO(stdin: s.stdin, stdout: s.stdout, stderr: s.stderr, terminal: s.terminal),
                        runtime: t.info.runtime, bundle: shim?.bundle, shimPid: shim?.shimPid)
    }

    private func task(_ c: BasicRequestContext) async throws -> any RuntimeTask {
        guard let id = c.parameters.get("id") else { throw RuntimeError(.invalidArgument, "no task ID in the path") }
        return try await runtime.get(namespace: try ns(c), id: id)
    }

    private func ns(_ c: BasicRequestContext) throws -> String {
        guard let ns = c.parameters.get("ns") else { throw RuntimeError(.invalidArgument, "no namespace in the path") }
        try Identifier.validate(ns, kind: "namespace")
        return ns
    }

    /// GET /v1/events: one JSON object per line, as events happen, until the
    /// client goes away. Filters: namespace, task, topic (repeatable).
    private func events(_ req: Request) -> Response {
        let q = req.uri.queryParameters
        let namespace = q.get("namespace")
        let task = q.get("task")
        let topics = Set(q.getAll("topic").map { String($0) })
        let stream = runtime.events.subscribe()
        var headers = HTTPFields()
        headers[.contentType] = "application/x-ndjson"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            // An empty first line: the subscription is in place, later events will come.
            try await writer.write(ByteBuffer(bytes: [0x0A]))
            // Ends at a graceful shutdown too: an open stream must not keep tetherd alive.
            for await e in stream.cancelOnGracefulShutdown() {
                if let namespace, e.namespace != namespace { continue }
                if let task, e.event.containerID != task { continue }
                if !topics.isEmpty && !topics.contains(e.topic) { continue }
                guard let data = try? APIJSON.encoder.encode(e) else { continue }
                try await writer.write(ByteBuffer(bytes: Array(data) + [0x0A]))
            }
            try await writer.finish(nil)
        })
    }

    // MARK: - JSON in and out

    private func decode<T: Decodable>(_ req: Request, default value: T?) async throws -> T {
        let buffer = try await req.body.collect(upTo: 4 << 20)
        if buffer.readableBytes == 0, let value { return value }
        do {
            return try APIJSON.decoder.decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw RuntimeError(.invalidArgument, "request body is not valid \(T.self) JSON: \(describe(error))")
        }
    }

    /// Runs a handler; any error becomes `{"error": {...}}` with a status that fits.
    private func handle(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as RuntimeError {
            return errorResponse(e)
        } catch {
            logger.error("request failed: \(error)")
            return errorResponse(RuntimeError(.internal, "\(error)"))
        }
    }

    private func errorResponse(_ e: RuntimeError) -> Response {
        let status: HTTPResponse.Status = switch e.code {
        case .invalidArgument: .badRequest
        case .containerDoesNotExist: .notFound
        case .containerExists, .processAlreadyExited, .failedPrecondition: .conflict
        case .runtimeDoesNotExist: .init(code: 424, reasonPhrase: "Failed Dependency")
        case .notImplemented: .notImplemented
        case .unavailable: .serviceUnavailable
        case .internal: .internalServerError
        }
        return json(ErrorBody(code: e.code.rawValue, message: e.message), status: status)
    }
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? APIJSON.encoder.encode(value)) ?? Data("{}".utf8)
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: Array(data) + [0x0A])))
}

private func describe(_ error: any Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, _): "missing field \"\(key.stringValue)\""
    case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
        "wrong type at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))"
    case DecodingError.dataCorrupted(let ctx): ctx.debugDescription
    default: "\(error)"
    }
}
