import Foundation
import NIOCore
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherRuntime
import TetherSys

/// Calls to the task's shim, and its answers' errors as the runtime API's.
extension ShimTask {
    func rpc<Resp: SwiftProtobuf.Message>(_ method: String, _ request: some SwiftProtobuf.Message,
                                          as: Resp.Type = Resp.self, timeout: TimeAmount) async throws -> Resp {
        guard let client = state.withLock({ $0.link.client }) else {
            throw RuntimeError(.unavailable, "task \"\(id)\" has no shim connection")
        }
        do {
            return try await client.task(method, request, as: Resp.self, timeout: timeout)
        } catch {
            throw Self.mapError(error, namespace: info.namespace, id: id, method: method)
        }
    }

    /// The shim's gRPC codes as the runtime API's errors.
    static func mapError(_ error: any Error, namespace: String, id: String, method: String = "") -> any Error {
        guard let e = error as? RPCError else {
            if let r = error as? RuntimeError { return r }
            if let s = error as? SysError { return RuntimeError(.internal, s.description) }
            return error
        }
        switch e.code {
        case .notFound:
            if e.message.contains("already finished") { return RuntimeError.processAlreadyExited(id) }
            return RuntimeError(.containerDoesNotExist, e.message)
        case .alreadyExists: return RuntimeError(.containerExists, e.message)
        case .invalidArgument: return RuntimeError(.invalidArgument, e.message)
        case .failedPrecondition: return RuntimeError(.failedPrecondition, e.message)
        case .unimplemented: return RuntimeError(.notImplemented, e.message)
        case .unavailable:
            return RuntimeError(.unavailable, "the shim of task \"\(namespace)/\(id)\" is not answering\(method.isEmpty ? "" : " (\(method))"): \(e.message)")
        case .deadlineExceeded where e.message.contains("did not finish within"):
            // The shim answered: the runtime it ran is what hung.
            return RuntimeError(.deadlineExceeded, e.message)
        case .deadlineExceeded:
            return RuntimeError(.deadlineExceeded, "the shim of task \"\(namespace)/\(id)\" did not answer\(method.isEmpty ? "" : " \(method)") in time: it is alive but stopped or overloaded (\(e.message)); nothing was changed, try again")
        default: return RuntimeError(.internal, e.message)
        }
    }
}
