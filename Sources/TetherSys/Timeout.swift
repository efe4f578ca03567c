import Synchronization

/// Waits for an event or a timeout, whichever comes first. `register` gets
/// a callback to call when the event happens (from any thread, any number of
/// times). Returns true if the event came first.
///
/// Unlike a task group racing the event against a sleep, nothing is left
/// waiting for an event that never comes: a group would wait for all its
/// children, and a continuation cannot be cancelled.
public func waitForEvent(timeoutNanos: UInt64, _ register: (@escaping @Sendable () -> Void) -> Void) async -> Bool {
    await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
        let once = ResumeOnce(c)
        register { once.resume(true) }
        Task {
            try? await Task.sleep(nanoseconds: timeoutNanos)
            once.resume(false)
        }
    }
}

/// A continuation that is resumed by the first caller only.
public final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, Never>?>

    public init(_ c: CheckedContinuation<T, Never>) { continuation = Mutex(c) }

    public func resume(_ value: T) {
        continuation.withLock { c in
            c?.resume(returning: value)
            c = nil
        }
    }
}
