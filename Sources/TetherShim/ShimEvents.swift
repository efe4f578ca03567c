#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif
import SwiftProtobuf
import TTRPC
import TetherProto
import TetherSys

/// The task events a shim publishes itself when it serves containerd (under
/// tetherd the manager publishes them): containerd's topics and messages,
/// forwarded to containerd's event service over ttrpc at TTRPC_ADDRESS
/// (`containerd.services.events.ttrpc.v1.Events/Forward`).
///
/// Events go out one at a time, in the order they were published. One that
/// cannot be forwarded (containerd restarting) is tried again, backing off
/// to every 30 s: an exit is kept (on disk, in the exit journal) until
/// containerd has it, however long that takes; any other event is dropped
/// after 10 tries, with a log line.
final class ShimEvents: @unchecked Sendable {
    private struct Item {
        var topic: String
        var event: Google_Protobuf_Any
        var timestamp: WallTime
        /// The exit record this event carries: acknowledged once forwarded.
        var exitSeq: UInt64?
        var tries = 0
    }

    private let loop: EventLoop
    private let namespace: String
    private let client: LoopClient
    private let journal: ExitJournal
    private var queue: [Item] = []
    private var sending = false
    private var drained: [CheckedContinuation<Void, Never>] = []
    /// Exits of processes whose start event is not out yet: they follow it.
    private var held: [String: [Item]] = [:]
    private var starting: Set<String> = []

    static let service = "containerd.services.events.ttrpc.v1.Events"

    init(loop: EventLoop, address: String, namespace: String, journal: ExitJournal) {
        self.loop = loop
        self.namespace = namespace
        self.journal = journal
        client = LoopClient(loop: loop, path: address, metadata: [("containerd-namespace-ttrpc", namespace)])
        // Exits an earlier run of this shim recorded but never got out.
        for r in journal.pending() { queue.append(Self.exitItem(r)) }
        if !queue.isEmpty { loop.execute { [self] in sendNext() } }
    }

    /// Publishes `message` on `topic` (a containerd task topic).
    func publish(_ topic: String, _ message: some SwiftProtobuf.Message) {
        guard let any = try? Google_Protobuf_Any(message: message, typePrefix: "") else { return }
        enqueue(Item(topic: topic, event: Self.bare(any), timestamp: WallTime.now()))
    }

    /// A process's start is under way: its exit event waits for its start event.
    func starting(_ execID: String) { starting.insert(execID) }

    /// The start is over (published, or failed): the exit it held goes out.
    func startDone(_ execID: String) {
        starting.remove(execID)
        for item in held.removeValue(forKey: execID) ?? [] { enqueue(item) }
    }

    /// Publishes an exit from the journal's record (acknowledged there once forwarded).
    func exit(_ r: Tether_Shim_V1_ExitRecord) {
        let item = Self.exitItem(r)
        if starting.contains(r.execID) { held[r.execID, default: []].append(item) } else { enqueue(item) }
    }

    /// Waits until everything queued is out, or `timeoutNanos` passes.
    func drain(timeoutNanos: UInt64) async {
        if queue.isEmpty && held.isEmpty { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            drained.append(c)
            loop.after(timeoutNanos) { [self] in wakeDrained() }
        }
    }

    private func wakeDrained() {
        let all = drained
        drained = []
        for c in all { c.resume() }
    }

    private static func exitItem(_ r: Tether_Shim_V1_ExitRecord) -> Item {
        var e = Containerd_Events_TaskExit()
        e.containerID = r.id
        e.id = r.execID.isEmpty ? r.id : r.execID
        e.pid = r.pid
        e.exitStatus = r.exitStatus
        e.exitedAt = r.exitedAt
        let any = bare((try? Google_Protobuf_Any(message: e, typePrefix: "")) ?? Google_Protobuf_Any())
        return Item(topic: "/tasks/exit", event: any, timestamp: WallTime.now(), exitSeq: r.seq)
    }

    /// containerd names an event's type by its bare message name ("containerd.events.TaskExit").
    private static func bare(_ any: Google_Protobuf_Any) -> Google_Protobuf_Any {
        var a = any
        if a.typeURL.hasPrefix("/") { a.typeURL.removeFirst() }
        return a
    }

    private func enqueue(_ item: Item) {
        queue.append(item)
        sendNext()
    }

    private func sendNext() {
        guard !sending, let item = queue.first else {
            if queue.isEmpty && held.isEmpty { wakeDrained() }
            return
        }
        sending = true
        var envelope = Containerd_Events_ForwardRequest()
        envelope.envelope.timestamp = .init(seconds: item.timestamp.seconds, nanos: item.timestamp.nanos)
        envelope.envelope.namespace = namespace
        envelope.envelope.topic = item.topic
        envelope.envelope.event = item.event
        let req = envelope
        loop.task { [self] in
            do {
                let _: Google_Protobuf_Empty = try await client.call(Self.service, "Forward", req, timeoutNanos: 5_000_000_000)
                queue.removeFirst()
                if let seq = item.exitSeq { journal.ack(seq: seq) }
                sending = false
                sendNext()
            } catch {
                sending = false
                retry(error)
            }
        }
    }

    private func retry(_ error: any Error) {
        guard !queue.isEmpty else { return }
        queue[0].tries += 1
        let item = queue[0]
        if item.exitSeq == nil && item.tries >= 10 {
            ShimLog.warn("event \(item.topic) dropped after \(item.tries) tries: \(error)")
            queue.removeFirst()
            sendNext()
            return
        }
        let delay = min(UInt64(1) << UInt64(min(item.tries - 1, 5)), 30) * 1_000_000_000
        ShimLog.debug("event \(item.topic) not forwarded (\(error)); again in \(delay / 1_000_000_000) s")
        loop.after(delay) { [self] in sendNext() }
    }
}
