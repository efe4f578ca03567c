import SwiftProtobuf
import TTRPC
import TetherProto

/// What CreateTaskRequest.options may carry, by type:
/// `tether.shim.v1.CreateOptions` (tetherd: the CRI log file),
/// `containerd.runc.v1.Options` (containerd's CRI plugin, ctr: the runtime
/// binary and its root; systemd cgroups are refused by name), and
/// `runtimeoptions.v1.Options` (a config path, which says nothing to us).
/// Any other type is a clear error naming it.
struct TaskOptions {
    var log: Tether_Shim_V1_CreateOptions?
    var runtime: RuntimeChoice?

    init(_ any: Google_Protobuf_Any, shim: String) throws {
        let type = any.typeURL.split(separator: "/").last.map(String.init) ?? ""
        switch type {
        case "":
            break
        case "tether.shim.v1.CreateOptions":
            let o = try Tether_Shim_V1_CreateOptions(serializedBytes: any.value)
            log = o.logPath.isEmpty ? nil : o
        case "containerd.runc.v1.Options":
            let o = try Containerd_Runc_V1_Options(serializedBytes: any.value)
            if o.systemdCgroup {
                throw RPCError(.invalidArgument, "containerd.runc.v1.Options asks for systemd cgroups (SystemdCgroup = true), which \(shim) does not drive: set SystemdCgroup = false for the tether runtime")
            }
            if !o.binaryName.isEmpty || !o.root.isEmpty {
                runtime = RuntimeChoice(binary: o.binaryName.isEmpty ? "runc" : o.binaryName,
                                        root: o.root.isEmpty ? "" : "\(o.root)")
            }
        case "runtimeoptions.v1.Options":
            break
        default:
            throw RPCError(.invalidArgument, "options of type \(any.typeURL) are not understood by \(shim): send tether.shim.v1.CreateOptions, containerd.runc.v1.Options or none")
        }
    }
}
