import Foundation
import Synchronization
import TetherRuntime

/// The manager's events, fanned out to every subscriber in one order: a
/// subscriber sees events published after it subscribed, in the order they
/// were published (no replay). Publishing never blocks: each subscriber has
/// its own unbounded stream, dropped when it stops listening.
public final class EventBus: Sendable {
    private struct State {
        var next: UInt64 = 0
        var subscribers: [UInt64: AsyncStream<TaskEvent>.Continuation] = [:]
    }

    private let state = Mutex(State())
    private let log: @Sendable (TaskEvent) -> Void

    public init(log: @escaping @Sendable (TaskEvent) -> Void = { _ in }) { self.log = log }

    /// Stamps the event with the time it is published (so timestamps follow
    /// the order), and hands it to every subscriber.
    public func publish(_ event: TaskEvent) {
        // Under the lock: two publishers never reach subscribers in different orders.
        state.withLock { s in
            var e = event
            e.timestamp = Date()
            log(e)
            for c in s.subscribers.values { c.yield(e) }
        }
    }

    /// Ends every subscriber's stream (the daemon is stopping: long-lived
    /// event requests must not hold up its graceful shutdown).
    public func finishAll() {
        let all = state.withLock { s in
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for c in all { c.finish() }
    }

    /// Events from now on, until the stream is dropped.
    public func subscribe() -> AsyncStream<TaskEvent> {
        let (stream, continuation) = AsyncStream<TaskEvent>.makeStream()
        let id = state.withLock { s in
            let id = s.next
            s.next += 1
            s.subscribers[id] = continuation
            return id
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }
}
