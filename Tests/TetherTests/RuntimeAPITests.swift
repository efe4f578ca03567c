#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Synchronization
import Testing
import TetherManager
import TetherRuntime
import TetherSys

/// Records what it is told, to check when the runtime calls its monitor.
final class RecordingMonitor: TaskMonitor {
    let events = Mutex<[String]>([])
    func monitor(_ task: any RuntimeTask) throws { events.withLock { $0.append("monitor \(task.id)") } }
    func stop(_ task: any RuntimeTask) throws { events.withLock { $0.append("stop \(task.id)") } }
}

struct FailingMonitor: TaskMonitor {
    struct Failed: Error {}
    func monitor(_ task: any RuntimeTask) throws { throw Failed() }
    func stop(_ task: any RuntimeTask) throws { throw Failed() }
}

@Suite("task monitors")
struct MonitorTests {
    @Test("a multi monitor tells every monitor, even after one fails, then reports the failure")
    func multi() throws {
        let a = RecordingMonitor(), b = RecordingMonitor()
        let m = MultiTaskMonitor([a, FailingMonitor(), b])
        let task = SpecTask(spec: Data(), id: "fake")
        #expect(throws: FailingMonitor.Failed.self) { try m.monitor(task) }
        #expect(throws: FailingMonitor.Failed.self) { try m.stop(task) }
        #expect(a.events.withLock { $0 } == ["monitor fake", "stop fake"])
        #expect(b.events.withLock { $0 } == ["monitor fake", "stop fake"])
        try NoopTaskMonitor().monitor(task)
        try NoopTaskMonitor().stop(task)
    }
}

/// The Swift API, in process: ShimRuntime is containerd's Runtime with shims.
@Suite("the Swift runtime API", .serialized, .enabled(if: Prerequisites.runIntegration), .timeLimit(.minutes(2)))
struct RuntimeAPITests {
    @Test("create, start, state, wait and delete through Runtime; the monitor hears start and delete")
    func lifecycle() async throws {
        try Prerequisites.require()
        let dir = try makeTempDir()
        let layout = Layout(root: "\(dir)/root", state: "\(dir)/state")
        try Files.makeDirectories("\(layout.root)/rootfs")
        symlink(Prerequisites.rootfs, layout.defaultRootfs)
        let monitor = RecordingMonitor()
        let runtime = try await ShimRuntime.start(ManagerConfig(
            layout: layout, shimBinary: "\(Prerequisites.binDir)/tether-shim", monitor: monitor))

        let opts = try runtime.createOptions(namespace: "api", id: "t1", source: .embedded,
                                             process: .init(args: ["sh", "-c", "until [ -e /go ]; do sleep 0.01; done; exit 3"]), io: IO())
        let before = Date()
        let task = try await runtime.create(namespace: "api", id: "t1", opts)
        #expect(task.info.namespace == "api" && task.info.runtime == runtime.id)
        #expect(try await task.state().status == .created)
        await #expect(throws: RuntimeError.self) { try await runtime.create(namespace: "api", id: "t1", opts) }
        try await task.start()
        #expect(try await task.state().status == .running)
        #expect(try await runtime.tasks(namespace: "api").map(\.id) == ["t1"])
        #expect(try await runtime.get(namespace: "api", id: "t1").id == "t1")

        // The task exits once /go appears in its rootfs (the overlay, as the host sees it at the bundle).
        try Files.writeAtomically("\(layout.bundle("api", "t1"))/rootfs/go", [])
        let exit = try await task.wait()
        #expect(exit.status == 3)
        #expect(exit.timestamp >= before && exit.timestamp <= Date())
        let state = try await task.state()
        #expect(state.status == .stopped && state.exit == exit)
        await #expect(throws: RuntimeError.processAlreadyExited("t1")) { try await task.kill(signal: 9, all: false) }

        #expect(try await runtime.delete(task) == exit)
        #expect(monitor.events.withLock { $0 } == ["monitor t1", "stop t1"])
        await #expect(throws: RuntimeError.containerDoesNotExist(namespace: "api", id: "t1")) {
            try await runtime.get(namespace: "api", id: "t1")
        }
        #expect(try await runtime.tasks(namespace: "api").isEmpty)
        // Only the manager's own private mount of its tasks directory is left.
        #expect(Mounts.targets(under: dir) == [layout.tasksDir])
        Mounts.unmountTree(under: dir)
        try Files.removeTree(dir)
    }
}

@Suite("OOM monitor, cgroup v2 path", .timeLimit(.minutes(1)))
struct OOMv2Tests {
    /// A cgroup v2 layout in a temp dir: memory.events whose oom_kill count
    /// goes up, the way the kernel updates it (in place, so inotify sees it).
    @Test("an oom_kill increase in memory.events (a pure cgroup v2 host, emulated) is an OOM event")
    func v2() async throws {
        let root = try makeTempDir()
        defer { try? Files.removeTree(root) }
        try Files.makeDirectories("\(root)/tether/default/t")
        let events = "\(root)/tether/default/t/memory.events"
        func write(_ text: String) throws {
            let fd = try FD.open(events, O_WRONLY | O_CREAT | O_TRUNC)
            try fd.writeAll(Array(text.utf8))
        }
        try write("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
        let bus = EventBus()
        let stream = bus.subscribe()
        let monitor = try OOMMonitor(events: bus, logger: Logger(label: "test"), cgroupRoot: root)
        let spec = Data(#"{"linux": {"cgroupsPath": "/tether/default/t"}}"#.utf8)
        let task = SpecTask(spec: spec)
        try monitor.monitor(task)
        try write("low 0\nhigh 3\nmax 9\noom 1\noom_kill 1\n")  // a kill
        var it = stream.makeAsyncIterator()
        let first = await it.next()
        #expect(first?.topic == TaskEvent.Topic.oom && first?.event.containerID == "t")
        try monitor.stop(task)
    }
}

/// A RuntimeTask that does nothing but carry a spec, for monitor tests.
struct SpecTask: RuntimeTask {
    let spec: Data
    var id = "t"
    var info: TaskInfo { TaskInfo(id: id, runtime: "none", spec: spec, namespace: "default") }
    func state() async throws -> State { State(status: .running, pid: 0) }
    func start() async throws {}
    func kill(signal: UInt32, all: Bool) async throws {}
    func resizePty(_ size: ConsoleSize) async throws {}
    func closeIO() async throws {}
    func wait() async throws -> Exit { Exit(pid: 0, status: 0, timestamp: Date()) }
    func pause() async throws {}
    func resume() async throws {}
    func pids() async throws -> [UInt32] { [] }
    func exec(id: String, _ opts: ExecOpts) async throws -> any RuntimeProcess { self }
    func checkpoint(path: String, options: Data?) async throws {}
    func deleteProcess(id: String) async throws -> Exit { try await wait() }
    func update(resources: Data) async throws {}
    func process(id: String) async throws -> any RuntimeProcess { self }
}
