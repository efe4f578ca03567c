import Foundation
import TetherOCI
import TetherRuntime
import TetherSeccomp
import TetherSys

/// Where a new task's root filesystem comes from, and how that becomes the
/// CreateOpts (spec and rootfs mounts) a shim gets. This is the manager's
/// small stand-in for containerd's images and snapshots.
public enum RootfsSource: Sendable, Equatable {
    /// The embedded busybox rootfs under <root>/rootfs/busybox, with a
    /// writable overlay layer of the task's own (like a container image).
    case embedded
    /// A directory used as the rootfs itself, writable (like podman --rootfs).
    case directory(String)
    /// An OCI bundle: its config.json and the root.path it names.
    case bundle(String)
}

extension ShimRuntime {
    /// The CreateOpts for a task in namespace/id. `process` is required for
    /// every source but a bundle, which carries its own. Reads the bundle's
    /// files: call it off the threads that serve requests.
    public func createOptions(namespace: String, id: String, source: RootfsSource,
                              process: SpecBuilder.Process?, io: IO,
                              resources: ResourceLimits = .init(), seccomp: SeccompChoice = .default,
                              confinement: Confinement = .init()) throws(RuntimeError) -> CreateOpts {
        try resources.validate()
        switch source {
        case .embedded:
            let lower = layout.defaultRootfs
            guard Files.exists("\(lower)/bin/sh") else {
                throw RuntimeError(.invalidArgument, "the embedded default rootfs is missing at \(lower): build it with scripts/make-rootfs \(lower) (scripts/setup does), or pass --rootfs DIR")
            }
            let scratch = layout.scratch(namespace, id)
            return CreateOpts(spec: try spec(namespace, id, process, terminal: io.terminal, resources: resources, seccomp: seccomp, confinement: confinement), rootfs: [
                Mount(type: "overlay", source: "overlay",
                      options: ["lowerdir=\(lower)", "upperdir=\(scratch)/upper", "workdir=\(scratch)/work"]),
            ], io: io)
        case .directory(let dir):
            guard dir.hasPrefix("/") else { throw RuntimeError(.invalidArgument, "rootfs \(dir) is not an absolute path") }
            let real = try layout.checkRootfs(dir, what: "rootfs \(dir)")
            return CreateOpts(spec: try spec(namespace, id, process, terminal: io.terminal, resources: resources, seccomp: seccomp, confinement: confinement),
                              rootfs: [Mount(type: "bind", source: real, options: ["rbind", "rw"])], io: io)
        case .bundle(let dir):
            let config = "\(dir)/config.json"
            let bytes: [UInt8]
            do { bytes = try Files.readRegular(config, limit: SpecCheck.maxSize) } catch {
                if error.errno == ENOENT || error.errno == ENOTDIR {
                    throw RuntimeError(.invalidArgument, "bundle \(dir) has no readable config.json: create one with 'runc spec' there")
                }
                throw RuntimeError(.invalidArgument, "bundle \(dir): cannot read config.json: \(error)")
            }
            var checked = try SpecCheck.check(bytes, source: config)
            // A bundle's own filter is used as it is, once libseccomp has checked it.
            if let s = checked.spec.linux?.seccomp { try SeccompCheck.check(s, source: "\(config) (linux.seccomp)") }
            let path = checked.spec.root?.path ?? "rootfs"
            // A relative root.path is the bundle's; the shim's bundle is elsewhere.
            checked.setRootPath(path.hasPrefix("/") ? path : "\(dir)/\(path)")
            return CreateOpts(spec: Data(checked.bytes), io: io)
        }
    }

    private func spec(_ namespace: String, _ id: String, _ process: SpecBuilder.Process?, terminal: Bool,
                      resources: ResourceLimits, seccomp: SeccompChoice, confinement: Confinement) throws(RuntimeError) -> Data {
        guard var process, !process.args.isEmpty else {
            throw RuntimeError(.invalidArgument, "no command given: name one after --, as in: tether run ID -- sh -c 'echo hi'")
        }
        process.terminal = terminal
        if let (uid, gid) = try confinement.ids() {
            process.uid = uid
            process.gid = gid
        }
        let privileged = confinement.privileged == true
        let caps = try confinement.capabilities(available: Self.boundingSet)
        var spec = SpecBuilder.spec(namespace: namespace, id: id, process: process, cgroupParent: layout.cgroupParent, resources: resources,
                                    capabilities: caps, privileged: privileged, readOnly: confinement.readOnly == true)
        // Privileged: the host's devices too, as `ctr run --privileged` and Docker give them.
        if privileged { spec.linux?.devices = Self.hostDevices() }
        // Privileged means no filter, unless a profile is asked for (as in Docker).
        spec.linux?.seccomp = try (privileged && seccomp == .default ? .unconfined : seccomp).section(capabilities: Set(caps))
        if let mode = confinement.seccompAgent {
            guard mode == "audit" || mode == "learn" else {
                throw RuntimeError(.invalidArgument, "seccomp agent mode \(mode): use audit or learn")
            }
            guard let s = spec.linux?.seccomp else {
                throw RuntimeError(.invalidArgument, "seccomp-\(mode) needs a seccomp profile, and this task has none (unconfined or privileged)")
            }
            spec.linux?.seccomp = SeccompCheck.notifying(s, listenerPath: "\(layout.bundle(namespace, id))/seccomp.sock", metadata: "tether:\(mode)")
        }
        return Data(SpecCheck.encode(spec))
    }
}

extension ShimRuntime {
    /// Every character and block device under the host's /dev, for a
    /// privileged task; not the ones runc makes itself (null, zero, tty, …)
    /// nor the per-container trees (pts, shm, mqueue) and symlinks.
    static func hostDevices(_ dir: String = "/dev") -> [OCI.Device] {
        let own: Set<String> = ["null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"]
        let skipDirs: Set<String> = ["pts", "shm", "mqueue", "fd", ".lxc", ".lxd-mounts", ".udev"]
        var out: [OCI.Device] = []
        for name in ((try? Files.listDirectory(dir)) ?? []).sorted() {
            let path = "\(dir)/\(name)"
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR where !skipDirs.contains(name):
                out += hostDevices(path)
            case S_IFCHR where !(dir == "/dev" && own.contains(name)), S_IFBLK:
                out.append(OCI.Device(path: path, type: st.st_mode & S_IFMT == S_IFCHR ? "c" : "b",
                                      major: Int64((st.st_rdev >> 8) & 0xfff | (st.st_rdev >> 32) & ~0xfff),
                                      minor: Int64(st.st_rdev & 0xff | (st.st_rdev >> 12) & ~0xff),
                                      fileMode: UInt32(st.st_mode & 0o7777), uid: st.st_uid, gid: st.st_gid))
            default:
                continue
            }
        }
        return out
    }

    /// tetherd's own capability bounding set: what a container can be given at most.
    static let boundingSet: Set<String>? = {
        guard let status = try? Files.readString("/proc/self/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapBnd:") }) else { return nil }
        return Confinement.fromMask(String(line.dropFirst("CapBnd:".count)))
    }()
}

extension Layout {
    /// Checks a directory someone names as a container's root filesystem and
    /// returns its real path (symlinks resolved). Refused: a path that is
    /// not a directory, the host's `/`, a directory that holds Tether's own
    /// state or root directory, and, unless it is mounted read-only, one
    /// inside them (where a container would write into Tether's state or
    /// the shared default rootfs).
    func checkRootfs(_ path: String, what: String, readonly: Bool = false) throws(RuntimeError) -> String {
        let real: String
        do { real = try Files.realPath(path) } catch {
            throw RuntimeError(.invalidArgument, "\(what) does not exist or is not a directory: give a directory that holds the container's root filesystem")
        }
        guard Files.isDirectory(real) else {
            throw RuntimeError(.invalidArgument, "\(what) does not exist or is not a directory: give a directory that holds the container's root filesystem")
        }
        if real == "/" {
            throw RuntimeError(.invalidArgument, "\(what) is the host's own root directory: give a directory that holds only the container's files")
        }
        for (name, dir) in [("state", state), ("root", root)] {
            let ours = (try? Files.realPath(dir)) ?? dir
            if Files.isWithin(ours, real) {
                throw RuntimeError(.invalidArgument, "\(what) contains Tether's \(name) directory \(dir): give a directory that holds only the container's files")
            }
            if !readonly && Files.isWithin(real, ours) {
                throw RuntimeError(.invalidArgument, "\(what) lies inside Tether's \(name) directory \(dir): give a directory of your own")
            }
        }
        return real
    }
}
