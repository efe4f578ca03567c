import CTether
import Foundation
import Logging
import NIOCore
import TetherProto
import TetherRuntime
import TetherSys

/// A restarted manager picks up the tasks the last one left: each record on
/// disk becomes a task again, reconnected to its shim, with the exits it
/// missed fetched from the shim (Exits.Pending). Reload runs in parallel,
/// a bounded number at a time, and never waits on a shim for long: one that
/// does not answer in time is handled as dead.
extension ShimRuntime {
    static let reloadConcurrency = 16
    static let shimAnswerTimeout: TimeAmount = .seconds(2)

    func reload() async {
        var found: [(String, String)] = []
        for ns in (try? Files.listDirectory(layout.tasksDir)) ?? [] where Identifier.isValid(ns) {
            for id in (try? Files.listDirectory("\(layout.tasksDir)/\(ns)")) ?? [] where Identifier.isValid(id) {
                found.append((ns, id))
            }
        }
        guard !found.isEmpty else { return }
        let start = monotonicNanos()
        await withTaskGroup(of: Void.self) { group in
            var next = found.makeIterator()
            for _ in 0..<Self.reloadConcurrency {
                guard let (ns, id) = next.next() else { break }
                group.addTask { [self] in await reloadTask(ns, id) }
            }
            while await group.next() != nil {
                if let (ns, id) = next.next() { group.addTask { [self] in await reloadTask(ns, id) } }
            }
        }
        logger.info("reloaded tasks", metadata: ["count": "\(found.count)", "ms": "\((monotonicNanos() - start) / 1_000_000)"])
    }

    private func reloadTask(_ namespace: String, _ id: String) async {
        let path = layout.record(namespace, id)
        let record: TaskRecord
        do {
            record = try TaskRecord.load(path)
        } catch {
            await reloadUnreadable(namespace, id, path: path, error: error)
            return
        }
        let spec = (try? Files.read("\(record.bundle)/config.json")).map { Data($0) } ?? Data()
        let task = ShimTask(runtime: self, record: record, spec: spec)
        insert(task)
        let alive = isOurShim(record) && watcher.watch(record.shimPid) { [weak task] code in task?.shimExited(code: code) }

        if record.phase == .creating {
            // The manager died mid-create: finish nothing, remove everything.
            logger.warning("removing a task that was half created when the manager stopped", metadata: ["namespace": "\(namespace)", "id": "\(id)"])
            if alive, let client = try? await ShimClient.connect("\(record.bundle)/shim.sock", group: group) { task.attach(client) }
            if !alive { task.shimExited(code: nil) }
            await task.stopShim(now: true)
            _ = await runRuntime(record.runtime, ["--root", layout.runtimeRoot(namespace), "delete", "--force", id])
            try? removeBundle(record.bundle)
            if let s = record.scratch { try? Files.removeTree(s) }
            remove(task)
            return
        }

        guard alive, let client = try? await ShimClient.connect("\(record.bundle)/shim.sock", group: group) else {
            logger.warning("the shim of a task is gone", metadata: ["namespace": "\(namespace)", "id": "\(id)"])
            task.shimExited(code: nil)
            await task.cleanUpAfterDeadShim().value
            return
        }
        task.attach(client)
        do {
            let pending = try await client.call("tether.shim.v1.Exits", "Pending", Tether_Shim_V1_PendingRequest(),
                                                as: Tether_Shim_V1_PendingResponse.self, timeout: Self.shimAnswerTimeout)
            for r in pending.records where r.instance == record.instance { task.apply(r) }
            try await task.reconcileExecs(timeout: Self.shimAnswerTimeout)
        } catch {
            logger.warning("the shim of a task does not answer; handling it as dead",
                           metadata: ["namespace": "\(namespace)", "id": "\(id)", "error": "\(error)"])
            watcher.signal(record.shimPid, SIGKILL)
            await task.cleanUpAfterDeadShim().value
            return
        }
        if record.phase == .running { try? monitor.monitor(task) }
    }

    /// Is the recorded shim pid still that shim: a tether-shim for this task,
    /// started when we recorded (not a process that took its pid since)?
    func isOurShim(_ r: TaskRecord) -> Bool {
        guard r.shimPid > 0, Self.isShim(pid: r.shimPid, namespace: r.namespace, id: r.id) else { return false }
        return r.shimStartTime == 0 || Proc.startTime(r.shimPid) == r.shimStartTime
    }

    /// Is `pid` a tether-shim serving namespace/id?
    static func isShim(pid: Int32, namespace: String, id: String) -> Bool {
        guard let args = Proc.arguments(pid), let first = args.first, first.hasSuffix("tether-shim") else { return false }
        func value(_ flag: String) -> String? { args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } }
        return value("--id") == id && value("--namespace") == namespace
    }

    /// A task whose task.json cannot be read is handled as dead: its shim
    /// (found by its pid file and command line) is stopped, its container
    /// deleted, its mounts removed, and it stays listed as stopped with a
    /// reason until deleted. The unreadable file is kept beside it.
    private func reloadUnreadable(_ namespace: String, _ id: String, path: String, error: any Error) async {
        let reason = "its state file \(path) was unreadable (\(error)); the task was stopped"
        logger.error("task record is unreadable; handling the task as dead", metadata: ["path": "\(path)", "error": "\(error)"])
        rename(path, path + ".unreadable")
        let bundle = layout.bundle(namespace, id)
        let scratch = layout.scratch(namespace, id)
        var record = TaskRecord(namespace: namespace, id: id, instance: "", runtime: Spawn.lookPath(config.runtime) ?? config.runtime,
                                bundle: bundle, io: IO(), rootfs: [], scratch: Files.exists(scratch) ? scratch : nil,
                                phase: .stopped, createdAt: Date())
        if let text = try? Files.readString("\(bundle)/shim.pid"), let pid = Int32(text.filter(\.isNumber)),
           Self.isShim(pid: pid, namespace: namespace, id: id) {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                if watcher.watch(pid, onExit: { _ in c.resume() }) {
                    watcher.signal(pid, SIGKILL)
                } else {
                    c.resume()
                }
            }
        }
        _ = await runRuntime(record.runtime, ["--root", layout.runtimeRoot(namespace), "delete", "--force", id])
        for m in Files.mounts(under: bundle) { _ = tether_umount(m, Int32(MNT_DETACH)) }
        record.exit = Exit(pid: 0, status: 137, timestamp: Date())
        record.exitReason = reason
        try? record.save()
        let task = ShimTask(runtime: self, record: record, spec: Data())
        task.shimExited(code: nil)  // no shim: its cleanup just ran, and finds the exit recorded
        insert(task)
    }
}
