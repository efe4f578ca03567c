import Foundation
import TetherAPI
import TetherClient
import TetherRuntime

/// The CLI's blocking API client, each call run off the concurrency pool.
/// Tests call these instead of writing `offPool { ... }` inside `#expect`:
/// a closure literal inside `#expect(try await ...)` was seen to run the
/// wrong closure later on (Swift 6.3.1, swift-testing), so none are written there.
struct AsyncAPI: Sendable {
    let client: APIClient

    /// Every call gives up after 60 s: a test must fail, never hang.
    init(_ d: TestDaemon) { client = APIClient(address: d.address, namespace: "default", timeout: 60) }

    private func call<T: Sendable>(_ body: @escaping @Sendable (APIClient) throws -> T) async throws -> T {
        let c = client
        return try await offPool { try body(c) }
    }

    func create(_ r: CreateTaskRequest) async throws -> TaskView { try await call { try $0.create(r) } }
    func start(_ id: String) async throws -> TaskView { try await call { try $0.start(id) } }
    func get(_ id: String) async throws -> TaskView { try await call { try $0.get(id) } }
    func wait(_ id: String) async throws -> ExitView { try await call { try $0.wait(id) } }
    func delete(_ id: String) async throws -> ExitView { try await call { try $0.delete(id) } }
    func closeIO(_ id: String, execID: String? = nil) async throws { try await call { try $0.closeIO(id, execID: execID) } }
    func resize(_ id: String, execID: String? = nil, width: UInt32, height: UInt32) async throws {
        try await call { try $0.resize(id, execID: execID, width: width, height: height) }
    }
    func exec(_ id: String, _ r: ExecRequest) async throws -> ProcessView { try await call { try $0.exec(id, r) } }
    func getExec(_ id: String, _ e: String) async throws -> ProcessView { try await call { try $0.getExec(id, e) } }
    func startExec(_ id: String, _ e: String) async throws -> ProcessView { try await call { try $0.startExec(id, e) } }
    func waitExec(_ id: String, _ e: String) async throws -> ExitView { try await call { try $0.waitExec(id, e) } }
    func deleteExec(_ id: String, _ e: String) async throws -> ExitView { try await call { try $0.deleteExec(id, e) } }
}

/// Reads `fd` to end of file, off the pool; fails after `seconds` without it.
func readAll(_ fd: FD, within seconds: UInt64 = 60) async throws -> String {
    try await offPool {
        let deadline = monotonicNanos() + seconds * 1_000_000_000
        var out: [UInt8] = []
        while true {
            try waitReadable(fd, until: deadline)
            let chunk = try fd.read(upTo: 65536)
            if chunk.isEmpty { return String(decoding: out, as: UTF8.self) }
            out += chunk
        }
    }
}

func readLinesAsync(_ fd: FD, count: Int) async throws -> [String] {
    try await offPool { try readLines(fd, count: count) }
}

/// Waits for `fd` to be readable (or at end of file) until `deadline` (monotonic ns).
func waitReadable(_ fd: FD, until deadline: UInt64) throws {
    while true {
        let now = monotonicNanos()
        guard now < deadline else { throw SysError("poll", errno: ETIMEDOUT, "\(fd): nothing to read before the deadline") }
        var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        let r = poll(&p, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
        if r > 0 { return }
        if r < 0 && errno != EINTR { throw SysError.last("poll") }
    }
}

import TetherSys
