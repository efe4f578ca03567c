import CTether
import Foundation
import Logging
import NIOCore
import SwiftProtobuf
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
        guard !found.isEmpty else {
            await stopOrphans()
            return
        }
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
        await stopOrphans()
    }

    /// Shims and containers of this manager that no record describes any
    /// more (someone removed STATE/tasks/NS/ID while the task ran): nothing
    /// could reach them, so they are stopped, and each stays listed as a
    /// stopped task with the reason until deleted. Found by the shims'
    /// command lines (their --bundle under our tasks directory) and by the
    /// runtime's own state (its --root under ours).
    func stopOrphans() async {
        var orphans: [TaskKey: Int32?] = [:]
        let prefix = layout.tasksDir + "/"
        for entry in (try? Files.listDirectory("/proc")) ?? [] {
            guard let pid = Int32(entry), let s = Self.shim(pid), s.bundle.hasPrefix(prefix), Identifier.isValid(s.namespace),
                  Identifier.isValid(s.id), s.bundle == layout.bundle(s.namespace, s.id) else { continue }
            let key = TaskKey(namespace: s.namespace, id: s.id)
            if task(forKey: key) == nil { orphans[key] = pid }
        }
        let runcDir = "\(layout.state)/runc"
        for ns in (try? Files.listDirectory(runcDir)) ?? [] where Identifier.isValid(ns) {
            for id in (try? Files.listDirectory("\(runcDir)/\(ns)")) ?? [] where Identifier.isValid(id) {
                let key = TaskKey(namespace: ns, id: id)
                if task(forKey: key) == nil && orphans[key] == nil { orphans[key] = .some(nil) }
            }
        }
        for (key, pid) in orphans {
            let bundle = layout.bundle(key.namespace, key.id)
            logger.error("a task's shim or container runs without its state directory; stopping it",
                         metadata: ["namespace": "\(key.namespace)", "id": "\(key.id)", "shim": "\(pid.map { "\($0)" } ?? "none")"])
            await stopUnreachable(key.namespace, key.id, shim: pid,
                                  reason: "its state directory \(bundle) was removed while it ran; tetherd stopped its container and shim when it started, as nothing could reach them")
        }
    }

    private func reloadTask(_ namespace: String, _ id: String) async {
        let path = layout.record(namespace, id)
        let record: TaskRecord
        do {
            record = try TaskRecord.load(path)
        } catch let e as SysError where e.errno == ENOENT {
            // The manager died between making the bundle and writing the
            // record: nothing was started, and nothing is kept.
            logger.warning("removing a bundle whose create never wrote its record", metadata: ["namespace": "\(namespace)", "id": "\(id)"])
            let scratch = layout.scratch(namespace, id)
            let r = TaskRecord(namespace: namespace, id: id, instance: "", runtime: Spawn.lookPath(config.runtime) ?? config.runtime,
                               bundle: layout.bundle(namespace, id), io: IO(), rootfs: [],
                               scratch: Files.exists(scratch) ? scratch : nil, phase: .creating, createdAt: Date())
            let spec = (try? Files.read("\(r.bundle)/config.json")).map { Data($0) } ?? Data()
            await teardown.run(r, spec: spec, removeFiles: true)
            return
        } catch {
            await reloadUnreadable(namespace, id, path: path, error: error)
            return
        }
        let spec = (try? Files.read("\(record.bundle)/config.json")).map { Data($0) } ?? Data()
        let task = ShimTask(runtime: self, record: record, spec: spec)
        insert(task)

        if record.phase == .creating {
            // The manager died mid-create: finish nothing, remove everything.
            // The shim is the recorded one, or (if the manager died before it
            // recorded it) the one whose pid file names it.
            logger.warning("removing a task that was half created when the manager stopped", metadata: ["namespace": "\(namespace)", "id": "\(id)"])
            if let pid = findShim(record) {
                // Shutdown(now) first: the shim kills the runtime calls it has
                // in flight, which a SIGKILL of the shim alone would orphan.
                if let client = try? await ShimClient.connect("\(record.bundle)/shim.sock", group: group) {
                    var req = Containerd_Task_V2_ShutdownRequest()
                    req.id = id
                    req.now = true
                    _ = try? await client.task("Shutdown", req, as: Google_Protobuf_Empty.self, timeout: Self.shimAnswerTimeout)
                    client.close()
                }
                await killShim(pid)
            }
            task.shimExited(code: nil)
            await teardown.run(record, spec: spec, removeFiles: true)
            remove(task)
            return
        }

        let alive = isOurShim(record) && watcher.watch(record.shimPid) { [weak task] code in task?.shimExited(code: code) }
        guard alive, let client = try? await ShimClient.connect("\(record.bundle)/shim.sock", group: group) else {
            logger.warning("the shim of a task is gone", metadata: ["namespace": "\(namespace)", "id": "\(id)"])
            if alive { await killShim(record.shimPid) }  // alive but not listening: it cannot serve the task
            task.shimExited(code: nil)
            await task.cleanUpAfterDeadShim().value
            return
        }
        task.attach(client)
        if record.phase == .running || record.phase == .paused { try? monitor.monitor(task) }
        if await catchUp(task, client) { return }
        // A shim that does not answer is slow (stopped, overloaded), not dead:
        // its exits wait on disk, and it is asked again until it answers or
        // its pidfd says it died. The task is listed from its record meanwhile.
        logger.warning("the shim of a task does not answer; it keeps its task and is asked again",
                       metadata: ["namespace": "\(namespace)", "id": "\(id)", "shim": "\(record.shimPid)"])
        Task { [self] in
            var delay: UInt64 = 500_000_000
            while !task.shimIsGone {
                try? await Task.sleep(nanoseconds: delay)
                if task.shimIsGone { return }
                if await catchUp(task, client) { return }
                delay = min(delay * 2, 30_000_000_000)
            }
        }
    }

    /// Fetches the exits the shim kept for us and drops exec records it never
    /// heard of. False when the shim did not answer in time.
    private func catchUp(_ task: ShimTask, _ client: ShimClient) async -> Bool {
        do {
            let pending = try await client.call("tether.shim.v1.Exits", "Pending", Tether_Shim_V1_PendingRequest(),
                                                as: Tether_Shim_V1_PendingResponse.self, timeout: Self.shimAnswerTimeout)
            let instance = task.record.instance
            for r in pending.records where r.instance == instance { task.apply(r) }
            try await task.reconcileExecs(timeout: Self.shimAnswerTimeout)
            return true
        } catch {
            logger.debug("no answer from the shim of \(task.info.namespace)/\(task.id): \(error)")
            return false
        }
    }

    /// The live shim of a record: the recorded pid if it is still that shim,
    /// else the pid in the shim's own pid file if that is a shim for this task.
    private func findShim(_ r: TaskRecord) -> Int32? {
        if isOurShim(r) { return r.shimPid }
        guard let text = try? Files.readString("\(r.bundle)/shim.pid"), let pid = Int32(text.filter(\.isNumber)),
              Self.isShim(pid: pid, namespace: r.namespace, id: r.id) else { return nil }
        return pid
    }

    /// SIGKILLs a shim through its pidfd and waits until it is gone.
    private func killShim(_ pid: Int32) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let once = ResumeOnce(c)
            if watcher.watch(pid, onExit: { _ in once.resume(()) }) {
                if !watcher.signal(pid, SIGKILL) { once.resume(()) }
            } else {
                once.resume(())
            }
        }
    }

    /// Is the recorded shim pid still that shim: a tether-shim for this task,
    /// started when we recorded (not a process that took its pid since)?
    func isOurShim(_ r: TaskRecord) -> Bool {
        guard r.shimPid > 0, Self.isShim(pid: r.shimPid, namespace: r.namespace, id: r.id) else { return false }
        return r.shimStartTime == 0 || Proc.startTime(r.shimPid) == r.shimStartTime
    }

    /// Is `pid` a tether-shim serving namespace/id?
    static func isShim(pid: Int32, namespace: String, id: String) -> Bool {
        guard let s = shim(pid) else { return false }
        return s.id == id && s.namespace == namespace
    }

    /// What a tether-shim process serves, from its command line; nil for
    /// anything else. Only root's processes count: another host user can
    /// start a process with any name and arguments, and must not make
    /// tetherd take it for a shim (and stop it, or list a task for it).
    static func shim(_ pid: Int32) -> (namespace: String, id: String, bundle: String)? {
        guard Proc.owner(pid) == 0, let args = Proc.arguments(pid), let first = args.first, first.hasSuffix("tether-shim") else { return nil }
        func value(_ flag: String) -> String? { args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } }
        guard let ns = value("--namespace"), let id = value("--id") else { return nil }
        return (ns, id, value("--bundle") ?? "")
    }

    /// A task whose task.json cannot be read is handled as dead: its shim
    /// (found by its pid file and command line) is stopped, its container
    /// deleted, its mounts removed, and it stays listed as stopped with a
    /// reason until deleted. The unreadable file is kept beside it.
    private func reloadUnreadable(_ namespace: String, _ id: String, path: String, error: any Error) async {
        logger.error("task record is unreadable; handling the task as dead", metadata: ["path": "\(path)", "error": "\(error)"])
        rename(path, path + ".unreadable")
        let bundle = layout.bundle(namespace, id)
        var shim: Int32?
        if let text = try? Files.readString("\(bundle)/shim.pid"), let pid = Int32(text.filter(\.isNumber)),
           Self.isShim(pid: pid, namespace: namespace, id: id) {
            shim = pid
        }
        await stopUnreachable(namespace, id, shim: shim, reason: "its state file \(path) was unreadable (\(error)); the task was stopped")
    }

    /// Stops a task tetherd cannot serve (its shim, its container, its
    /// mounts) and lists it as stopped with `reason` until it is deleted.
    private func stopUnreachable(_ namespace: String, _ id: String, shim: Int32?, reason: String) async {
        let bundle = layout.bundle(namespace, id)
        let scratch = layout.scratch(namespace, id)
        var record = TaskRecord(namespace: namespace, id: id, instance: "", runtime: Spawn.lookPath(config.runtime) ?? config.runtime,
                                bundle: bundle, io: IO(), rootfs: [], scratch: Files.exists(scratch) ? scratch : nil,
                                phase: .stopped, createdAt: Date())
        if let shim { await killShim(shim) }
        // The spec may be gone with the directory: the task's own cgroup is known by name.
        let spec = (try? Files.read("\(bundle)/config.json")).map { Data($0) }
            ?? Data(#"{"linux": {"cgroupsPath": "\#(layout.cgroup(namespace, id))"}}"#.utf8)
        await teardown.run(record, spec: spec, removeFiles: false)
        record.exit = Exit(pid: 0, status: 137, timestamp: Date())
        record.exitReason = reason
        try? Files.makeDirectories(bundle)
        try? record.save()
        let task = ShimTask(runtime: self, record: record, spec: Data())
        task.shimExited(code: nil)  // no shim: its cleanup just ran, and finds the exit recorded
        insert(task)
    }
}
