import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherAPI
import TetherClient
import TetherOCI
import TetherRuntime
import TetherSys

/// What foreground `run`, `exec` and `attach` share: relay the process's
/// stdio, forward signals or window sizes, and wait for its exit or for
/// the user to detach.
struct Session {
    /// `outputClosed`: our stdout or stderr went away (the reader of a
    /// pipeline exited); the process may still be running.
    enum Outcome { case exited(ExitView), detached, outputClosed }

    let attachment: Attachment
    let tty: Bool
    let stdin: Bool

    /// Runs until the process exits (and its output is drained) or the user
    /// detaches. `start` starts the process (nil when attaching to a running one).
    func run(resize: @escaping @Sendable (UInt16, UInt16) -> Void, kill: @escaping @Sendable (Int32) -> Void,
             closeIO: @escaping @Sendable () -> Void, start: (() throws -> Void)?, wait: @escaping @Sendable () throws -> ExitView) throws -> Outcome {
        let raw = tty ? RawTerminal.enter() : nil
        defer { raw?.restore() }
        let winch = tty ? WindowSizeForwarder(resize: resize) : nil
        defer { winch?.stop() }
        try start?()
        try attachment.start(stdin: stdin, closeIO: closeIO)
        let forwarder = tty ? nil : SignalForwarder(kill)
        defer { forwarder?.stop() }

        let result = Box<Result<Outcome, any Error>>()
        let finished = DispatchSemaphore(value: 0)
        try OSThread.start("wait") {
            result.set(Result { .exited(try wait()) })
            finished.signal()
        }
        let attachment = self.attachment
        try OSThread.start("detach-keys") {
            attachment.detached.wait()
            result.set(.success(.detached))
            finished.signal()
        }
        try OSThread.start("output-closed") {
            attachment.outputClosed.wait()
            result.set(.success(.outputClosed))
            finished.signal()
        }
        finished.wait()
        let outcome = try result.get()!.get()
        if case .exited = outcome { attachment.waitForOutput() }
        return outcome
    }
}

/// A value set once by one thread and read by another.
final class Box<T>: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)  // a stable address
    private var value: T?
    init() { pthread_mutex_init(lock, nil) }
    deinit { pthread_mutex_destroy(lock); lock.deallocate() }
    func set(_ v: T) { pthread_mutex_lock(lock); if value == nil { value = v }; pthread_mutex_unlock(lock) }
    func get() -> T? { pthread_mutex_lock(lock); defer { pthread_mutex_unlock(lock) }; return value }
}
