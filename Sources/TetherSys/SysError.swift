#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failed system call: which call, on what, and the errno it returned.
///
/// The description reads like a shell's: `open /run/tether/x: No such file or directory`.
public struct SysError: Error, CustomStringConvertible, Sendable, Equatable {
    public let call: String
    public let errno: Int32
    public let subject: String?
    /// Replaces strerror's text when the errno alone would mislead
    /// ("a FIFO, not a regular file" rather than "Invalid argument").
    public let explanation: String?

    public init(_ call: String, errno: Int32, _ subject: String? = nil, explanation: String? = nil) {
        self.call = call
        self.errno = errno
        self.subject = subject
        self.explanation = explanation
    }

    /// A SysError from the calling thread's errno.
    public static func last(_ call: String, _ subject: String? = nil) -> SysError {
        SysError(call, errno: Glibc.errno, subject)
    }

    public var message: String { explanation ?? String(cString: strerror(errno)) }

    /// The same error about another subject (a temp file's error told about the file it stands for).
    public func about(_ subject: String) -> SysError {
        SysError(call, errno: errno, subject, explanation: explanation)
    }

    public var description: String {
        if let subject { return "\(call) \(subject): \(message)" }
        return "\(call): \(message)"
    }
}

/// Turns a CTether-style result (>= 0, or -errno) into a value or a SysError.
@inline(__always)
public func check<T: BinaryInteger>(_ result: T, _ call: String, _ subject: String? = nil) throws(SysError) -> T {
    if result < 0 { throw SysError(call, errno: Int32(truncatingIfNeeded: -Int64(result)), subject) }
    return result
}

/// Turns a libc-style result (-1 and errno) into a value or a SysError, retrying EINTR.
@inline(__always)
public func retrying<T: BinaryInteger>(_ call: String, _ subject: String? = nil, _ body: () -> T) throws(SysError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        if Glibc.errno == EINTR { continue }
        throw SysError.last(call, subject)
    }
}
