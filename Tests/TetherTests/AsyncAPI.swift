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
    func wait(_ id: String) async throws -> Exit { try await call { try $0.wait(id) } }
    func delete(_ id: String) async throws -> Exit { try await call { try $0.delete(id) } }
    func closeIO(_ id: String, execID: String? = nil) async throws { try await call { try $0.closeIO(id, execID: execID) } }
    func resize(_ id: String, execID: String? = nil, width: UInt32, height: UInt32) async throws {
        try await call { try $0.resize(id, execID: execID, width: width, height: height) }
    }
    func exec(_ id: String, _ r: ExecRequest) async throws -> ProcessView { try await call { try $0.exec(id, r) } }
    func getExec(_ id: String, _ e: String) async throws -> ProcessView { try await call { try $0.getExec(id, e) } }
    func startExec(_ id: String, _ e: String) async throws -> ProcessView { try await call { try $0.startExec(id, e) } }
    func waitExec(_ id: String, _ e: String) async throws -> Exit { try await call { try $0.waitExec(id, e) } }
    func deleteExec(_ id: String, _ e: String) async throws -> Exit { try await call { try $0.deleteExec(id, e) } }
}

/// Blocking reads, off the pool.
func readAll(_ fd: FD) async throws -> String {
    try await offPool { String(decoding: try fd.readToEnd(), as: UTF8.self) }
}

func readLinesAsync(_ fd: FD, count: Int) async throws -> [String] {
    try await offPool { try readLines(fd, count: count) }
}

import TetherSys
