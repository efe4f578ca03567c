import Foundation
import TetherRuntime
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
    /// every source but a bundle, which carries its own.
    public func createOptions(namespace: String, id: String, source: RootfsSource,
                              process: SpecBuilder.Process?, io: IO,
                              resources: SpecBuilder.Resources = .init()) throws(RuntimeError) -> CreateOpts {
        switch source {
        case .embedded:
            let lower = layout.defaultRootfs
            guard Files.exists("\(lower)/bin/sh") else {
                throw RuntimeError(.invalidArgument, "the embedded default rootfs is missing at \(lower): build it with scripts/make-rootfs \(lower) (scripts/setup does), or pass --rootfs DIR")
            }
            let scratch = layout.scratch(namespace, id)
            return CreateOpts(spec: try spec(namespace, id, process, terminal: io.terminal, resources: resources), rootfs: [
                Mount(type: "overlay", source: "overlay",
                      options: ["lowerdir=\(lower)", "upperdir=\(scratch)/upper", "workdir=\(scratch)/work"]),
            ], io: io)
        case .directory(let dir):
            guard Files.isDirectory(dir) else {
                throw RuntimeError(.invalidArgument, "rootfs \(dir) does not exist or is not a directory: pass --rootfs with a directory that holds the container's root filesystem")
            }
            guard dir.hasPrefix("/") else { throw RuntimeError(.invalidArgument, "rootfs \(dir) is not an absolute path") }
            return CreateOpts(spec: try spec(namespace, id, process, terminal: io.terminal, resources: resources),
                              rootfs: [Mount(type: "bind", source: dir, options: ["rbind", "rw"])], io: io)
        case .bundle(let dir):
            let config = "\(dir)/config.json"
            guard let bytes = try? Files.read(config) else {
                throw RuntimeError(.invalidArgument, "bundle \(dir) has no readable config.json: create one with 'runc spec' there")
            }
            var object = try SpecBuilder.validate(Data(bytes), source: config)
            var root = object["root"] as? [String: Any] ?? [:]
            let path = root["path"] as? String ?? "rootfs"
            let absolute = path.hasPrefix("/") ? path : "\(dir)/\(path)"
            guard Files.isDirectory(absolute) else {
                throw RuntimeError(.invalidArgument, "the rootfs \(absolute) named by \(config) does not exist")
            }
            root["path"] = absolute
            object["root"] = root
            // The runtime needs the spec and the IO to agree on the terminal.
            var process = object["process"] as? [String: Any] ?? [:]
            process["terminal"] = io.terminal
            object["process"] = process
            guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]) else {
                throw RuntimeError(.invalidArgument, "\(config) cannot be written back as JSON")
            }
            return CreateOpts(spec: data, io: io)
        }
    }

    private func spec(_ namespace: String, _ id: String, _ process: SpecBuilder.Process?, terminal: Bool,
                      resources: SpecBuilder.Resources) throws(RuntimeError) -> Data {
        guard var process, !process.args.isEmpty else {
            throw RuntimeError(.invalidArgument, "no command given: name one after --, as in: tether run ID -- sh -c 'echo hi'")
        }
        process.terminal = terminal
        return SpecBuilder.specJSON(namespace: namespace, id: id, process: process, cgroupParent: layout.cgroupParent, resources: resources)
    }
}
