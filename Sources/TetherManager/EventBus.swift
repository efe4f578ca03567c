import Foundation
import Synchronization
import TetherRuntime

/// The manager's events, fanned out to every subscriber in one order: a
/// subscriber sees events published after it subscribed, in the order they
/// were published (no replay). Publishing never blocks and never waits for a
/// subscriber: each has a queue of at most `limit` events, and one that falls
/// further behind is dropped (its sequence ends with `.fellBehind`), the way
/// containerd's event exchange drops a slow subscriber.
public final class EventBus: Sendable {
    private struct State {
        var next: UInt64 = 0
        var subscribers: [UInt64: EventSubscription] = [:]
    }

    private let state = Mutex(State())
    private let log: @Sendable (TaskEvent) -> Void
    /// Events queued per subscriber at most.
    public let limit: Int

    public static let defaultLimit = 1024

    public init(limit: Int = EventBus.defaultLimit, log: @escaping @Sendable (TaskEvent) -> Void = { _ in }) {
        self.limit = max(1, limit)
        self.log = log
    }

    /// Stamps the event with the time it is published (so timestamps follow
    /// the order), and hands it to every subscriber.
    public func publish(_ event: TaskEvent) {
        // Under the lock: two publishers never reach subscribers in different orders.
        state.withLock { s in
            var e = event
            e.timestamp = Date()
            log(e)
            for (id, sub) in s.subscribers where !sub.offer(e) {
                s.subscribers.removeValue(forKey: id)
            }
        }
    }

    /// Ends every subscription (the daemon is stopping: long-lived event
    /// requests must not hold up its shutdown).
    public func finishAll() {
        let all = state.withLock { s in
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for sub in all { sub.end(.finished) }
    }

    /// Subscribers now.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Events from now on, until the subscription is cancelled, falls behind
    /// or the bus is finished.
    public func subscribe() -> EventSubscription {
        let sub = EventSubscription(limit: limit)
        let id = state.withLock { s in
            let id = s.next
            s.next += 1
            s.subscribers[id] = sub
            return id
        }
        sub.onEnd = { [weak self] in _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) } }
        return sub
    }
}

/// One subscriber's bounded queue. Iterate it once; it ends (nil) when the
/// bus finishes, the subscriber is cancelled, or it fell behind (`reason`).
public final class EventSubscription: AsyncSequence, Sendable {
    public typealias Element = TaskEvent

    public enum End: Sendable, Equatable {
        case finished
        /// More than `limit` events were waiting: the queue was dropped.
        case fellBehind(limit: Int)
    }

    private struct State {
        var queue: [TaskEvent] = []
        var head = 0
        var waiter: CheckedContinuation<TaskEvent?, Never>?
        var end: End?
        var onEnd: (@Sendable () -> Void)?
        var endWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    let limit: Int

    init(limit: Int) { self.limit = limit }

    var onEnd: (@Sendable () -> Void)? {
        get { state.withLock { $0.onEnd } }
        set { state.withLock { $0.onEnd = newValue } }
    }

    /// Why the sequence ended; nil while it runs.
    public var reason: End? { state.withLock { $0.end } }

    /// Queues an event (or hands it to a waiting reader); false when the
    /// subscription has ended, now or before, and should be forgotten.
    /// Called under the bus's lock: never calls back into the bus.
    func offer(_ e: TaskEvent) -> Bool {
        enum Outcome { case handed(CheckedContinuation<TaskEvent?, Never>), queued, gone, overflow }
        let outcome = state.withLock { s -> Outcome in
            if s.end != nil { return .gone }
            if let w = s.waiter {
                s.waiter = nil
                return .handed(w)
            }
            if s.queue.count - s.head >= limit { return .overflow }
            s.queue.append(e)
            return .queued
        }
        switch outcome {
        case .handed(let w):
            w.resume(returning: e)
            return true
        case .queued: return true
        case .gone: return false
        case .overflow:
            finish(.fellBehind(limit: limit), tellBus: false)
            return false
        }
    }

    /// Ends the sequence: a waiting reader gets nil, queued events are dropped.
    public func end(_ reason: End = .finished) { finish(reason, tellBus: true) }

    private func finish(_ reason: End, tellBus: Bool) {
        let (waiter, onEnd, endWaiters) = state.withLock { s in
            if s.end == nil { s.end = reason }
            s.queue = []
            s.head = 0
            defer { s.waiter = nil; s.onEnd = nil; s.endWaiters = [] }
            return (s.waiter, s.onEnd, s.endWaiters)
        }
        waiter?.resume(returning: nil)
        for w in endWaiters { w.resume() }
        if tellBus { onEnd?() }
    }

    /// Returns once the subscription has ended, for whatever reason.
    public func ended() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s in
                if s.end != nil { return true }
                s.endWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Cancels the subscription: the bus forgets it.
    public func cancel() { end(.finished) }

    func next() async -> TaskEvent? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<TaskEvent?, Never>) in
                let now: TaskEvent?? = state.withLock { s in
                    if s.head < s.queue.count {
                        let e = s.queue[s.head]
                        s.head += 1
                        if s.head == s.queue.count { s.queue.removeAll(keepingCapacity: true); s.head = 0 }
                        return .some(e)
                    }
                    if s.end != nil || Task.isCancelled { return .some(nil) }
                    s.waiter = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let w = state.withLock { s in
                defer { s.waiter = nil }
                return s.waiter
            }
            w?.resume(returning: nil)
        }
    }

    public struct Iterator: AsyncIteratorProtocol {
        let sub: EventSubscription
        public mutating func next() async -> TaskEvent? { await sub.next() }
    }

    public func makeAsyncIterator() -> Iterator { Iterator(sub: self) }
}
