#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TetherSys

/// containerd (Debian's 1.6, with ctr) of a test's own: its root, state,
/// sockets, runc roots and FIFOs all under /tmp/tt-XXXXXX, our build's
/// containerd-shim-tether-v1 first on its PATH, and a busybox image built
/// by scripts/make-oci-image imported. `finish()` stops it and fails the
/// test if a task, shim, mount, socket or runc container was left.
final class ContainerdInstance: @unchecked Sendable {
    static let binary = "/usr/bin/containerd"
    static let ctrBinary = "/usr/bin/ctr"
    static var available: Bool { Files.exists(binary) && Files.exists(ctrBinary) }
    static let image = "docker.io/library/busybox:latest"
    static let runtime = "io.containerd.tether.v1"

    let dir: String
    let cri: Bool
    let namespace: String
    var socket: String { "\(dir)/containerd.sock" }
    var state: String { "\(dir)/state" }
    private var program: StartedProgram?
    private let mountsBefore: [String]
    private let shimSocketsBefore: Set<String>

    init(cri: Bool = false) async throws {
        try #require(Self.available, "containerd is not installed: scripts/setup installs it")
        try Prerequisites.require()
        self.cri = cri
        namespace = cri ? "k8s.io" : "tt"
        dir = try makeTempDir()
        mountsBefore = TestDaemon.mountsOutside(dir)
        shimSocketsBefore = Set((try? Files.listDirectory("/run/tether/containerd-shims")) ?? [])
        try writeConfig()
        try await start()
        let image = "\(dir)/busybox.tar"
        let made = try await runProgram("/usr/bin/python3", [Self.scripts + "/make-oci-image", image])
        try #require(made.status == 0, "make-oci-image: \(made)")
        let imported = try await ctr("images", "import", image)
        try #require(imported.status == 0, "ctr images import: \(imported)")
    }

    static var scripts: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts").path
    }

    private func writeConfig() throws {
        var config = """
            version = 2
            root = "\(dir)/root"
            state = "\(state)"
            [grpc]
              address = "\(socket)"
            [ttrpc]
              address = "\(socket).ttrpc"
            [plugins."io.containerd.internal.v1.opt"]
              path = "\(dir)/opt"

            """
        if cri {
            // restrict_oom_score_adj: runc may not lower oom_score_adj in a
            // sandbox without CAP_SYS_RESOURCE (this one); harmless elsewhere.
            config += """
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "\(Self.image)"
                  stream_server_address = "127.0.0.1"
                  stream_server_port = "0"
                  enable_selinux = false
                  disable_apparmor = true
                  restrict_oom_score_adj = true
                  [plugins."io.containerd.grpc.v1.cri".containerd]
                    snapshotter = "overlayfs"
                    default_runtime_name = "runc"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                        Root = "\(dir)/runc-cri"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.tether]
                      runtime_type = "io.containerd.tether.v1"
                  [plugins."io.containerd.grpc.v1.cri".cni]
                    bin_dir = "\(dir)/cni/bin"
                    conf_dir = "\(dir)/cni/net.d"

                """
        } else {
            config += "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        }
        try Files.writeAtomically("\(dir)/config.toml", Array(config.utf8), mode: 0o600)
    }

    /// Starts containerd and waits (20 s at most) until it answers.
    func start() async throws {
        let path = "\(Prerequisites.binDir):" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
        unlink(socket)  // a containerd killed with SIGKILL leaves it
        unlink("\(socket).ttrpc")
        program = try StartedProgram(Self.binary, ["--config", "\(dir)/config.toml"], env: ["PATH": path])
        let up = await eventually(20) { Files.exists(self.socket) }
        try #require(up, "containerd did not start: \(program?.err.text ?? "")")
        let version = try await ctr("version")
        try #require(version.status == 0, "containerd does not answer: \(version)")
    }

    func stop() async throws {
        guard let p = program else { return }
        kill(p.pid, SIGTERM)
        _ = try await offPool { p.wait(timeout: 20) }
        program = nil
    }

    func kill9() async throws {
        guard let p = program else { return }
        kill(p.pid, SIGKILL)
        _ = try await offPool { p.wait(timeout: 20) }
        program = nil
    }

    var log: String { program?.err.text ?? "" }

    /// containerd's pid while it runs.
    var pid: Int32 { program?.pid ?? 0 }

    /// `ctr events`, subscribed: returns once an event of our own (a label
    /// on the test's namespace) has come through it.
    func events() async throws -> StartedProgram {
        let p = try StartedProgram(Self.ctrBinary, ["--address", socket, "events"])
        for n in 1...20 {
            _ = try await ctr("namespaces", "label", namespace, "probe=\(n)")
            if p.out.waitFor("probe", timeout: 0.5) { return p }
        }
        kill(p.pid, SIGKILL)
        _ = p.wait(timeout: 5)
        throw SysError("ctr events", errno: ETIMEDOUT, explanation: "no event came through ctr events in 10 s")
    }

    /// `ctr ARGS` against this containerd, in the test's namespace.
    func ctr(_ args: String..., timeout: TimeInterval = 60) async throws -> CLIResult {
        try await runProgram(Self.ctrBinary, ["--address", socket, "-n", namespace] + args, timeout: timeout)
    }

    /// `ctr run` on our image with Tether's runtime and FIFOs in the test's directory.
    func run(_ args: [String], timeout: TimeInterval = 60) async throws -> CLIResult {
        try await runProgram(Self.ctrBinary, ["--address", socket, "-n", namespace, "run", "--runtime", Self.runtime,
                                              "--fifo-dir", "\(dir)/fifo"] + args, timeout: timeout)
    }

    /// Processes of containerd-shim-tether-v1 serving this containerd.
    func shims() -> [Int32] {
        processes { $0.contains("containerd-shim-tether-v1") && $0.contains(self.socket) }
    }

    /// The shim serving task `id`.
    func shim(_ id: String) -> Int32? {
        processes { $0.contains("containerd-shim-tether-v1") && $0.contains(self.socket) && $0.contains("-id \(id) ") }.first
    }

    func bundle(_ id: String) -> String { "\(state)/io.containerd.runtime.v2.task/\(namespace)/\(id)" }

    /// runc containers the shims made (their root is beside containerd's state).
    func containers() -> [String] { (try? Files.listDirectory("\(state)/runc/\(namespace)")) ?? [] }

    /// Stops containerd and checks that nothing of a task is left.
    func finish() async throws {
        if program == nil { try await start() }
        for id in (try await ctr("tasks", "ls", "-q")).out.split(separator: "\n").map(String.init) where !id.isEmpty {
            Issue.record("the test left task \(id)")
            _ = try await ctr("tasks", "kill", "-s", "KILL", id)
            _ = try await ctr("tasks", "delete", "-f", id)
        }
        for id in (try await ctr("containers", "ls", "-q")).out.split(separator: "\n").map(String.init) where !id.isEmpty {
            _ = try await ctr("containers", "delete", id)
        }
        try await stop()
        for pid in shims() {
            Issue.record("containerd-shim-tether-v1 \(pid) still running")
            kill(pid, SIGKILL)
        }
        for c in containers() { Issue.record("runc container \(c) left behind") }
        for m in Mounts.targets(under: dir) { Issue.record("mount \(m) left behind") }
        let sockets = Set((try? Files.listDirectory("/run/tether/containerd-shims")) ?? []).subtracting(shimSocketsBefore)
        for s in sockets {
            Issue.record("shim socket \(s) left behind")
            unlink("/run/tether/containerd-shims/\(s)")
        }
        Mounts.unmountTree(under: dir)
        if TestDaemon.mountsOutside(dir) != mountsBefore { Issue.record("the mount table outside the test changed") }
        // containerd's cgroups for the namespace (v1 hierarchies), empty by now.
        for h in (try? Files.listDirectory("/sys/fs/cgroup")) ?? [] {
            _ = rmdir("/sys/fs/cgroup/\(h)/\(namespace)")
        }
        try Files.removeTree(dir)
    }
}

/// A containerd for the body; always finished.
func withContainerd(cri: Bool = false, _ body: (ContainerdInstance) async throws -> Void) async throws {
    let c = try await ContainerdInstance(cri: cri)
    do {
        try await body(c)
    } catch {
        try? await c.finish()
        throw error
    }
    try await c.finish()
}
