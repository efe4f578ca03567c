/// The one error type of the runtime API: a code a program can switch on and
/// a message a person can act on (what is wrong, and what to do).
public struct RuntimeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable, CaseIterable {
        // The errors of containerd's runtime package.
        case containerExists = "container_exists"
        case containerDoesNotExist = "container_does_not_exist"
        case runtimeDoesNotExist = "runtime_does_not_exist"
        case processAlreadyExited = "process_already_exited"
        // The rest, named after the gRPC codes the shim API carries.
        case invalidArgument = "invalid_argument"
        /// Something other than a task is missing (an API endpoint).
        case notFound = "not_found"
        case failedPrecondition = "failed_precondition"
        case notImplemented = "not_implemented"
        case unavailable = "unavailable"
        /// An answer did not come in time (a shim stopped or overloaded): the call failed, nothing else.
        case deadlineExceeded = "deadline_exceeded"
        /// A request larger than the limit.
        case tooLarge = "too_large"
        case `internal` = "internal"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    public static func containerExists(namespace: String, id: String) -> RuntimeError {
        RuntimeError(.containerExists, "task \"\(id)\" already exists in namespace \"\(namespace)\": pick another ID or delete it first")
    }

    public static func containerDoesNotExist(namespace: String, id: String) -> RuntimeError {
        RuntimeError(.containerDoesNotExist, "task \"\(id)\" not found in namespace \"\(namespace)\"")
    }

    public static func runtimeDoesNotExist(_ runtime: String) -> RuntimeError {
        RuntimeError(.runtimeDoesNotExist, "OCI runtime \"\(runtime)\" not found: install it (apt-get install runc) or give its path with tetherd --runtime PATH")
    }

    public static func processAlreadyExited(_ id: String) -> RuntimeError {
        RuntimeError(.processAlreadyExited, "process \"\(id)\" has already exited")
    }
}
