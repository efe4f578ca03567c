#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import SwiftProtobuf
import TTRPC
import TetherOCI
import TetherProto

/// What the shim does with bytes from its ttrpc peer, short of acting on
/// them: frames, the request envelope, each request message its handlers
/// decode, and the checks they make before anything happens (task options,
/// an exec's process spec, Update's resources). For the fuzz targets
/// (scripts/fuzz) and their replay in the tests; never throws or traps on
/// any input.
public enum ShimFuzz {
    public static func ttrpc(_ data: [UInt8]) {
        var decoder = FrameDecoder()
        // Fed in two pieces, as a stream may cut it anywhere.
        let cut = data.isEmpty ? 0 : Int(data[0]) % (data.count + 1)
        decoder.append(data[..<cut])
        drain(&decoder)
        decoder.append(data[cut...])
        drain(&decoder)
        // The same bytes as one request payload, as if framed correctly.
        request(data)
    }

    private static func drain(_ decoder: inout FrameDecoder) {
        while let event = decoder.next() {
            if case .frame(let f) = event { request(f.payload) }
        }
    }

    static func request(_ payload: [UInt8]) {
        guard let r = try? Ttrpc_Request(serializedBytes: payload) else { return }
        let body = r.payload
        if let m = try? Containerd_Task_V2_CreateTaskRequest(serializedBytes: body) {
            _ = try? TaskOptions(m.options, shim: "fuzz")
        }
        if let m = try? Containerd_Task_V2_ExecProcessRequest(serializedBytes: body) {
            _ = try? JSONDecoder().decode(OCI.Process.self, from: Data(m.spec.value))
        }
        if let m = try? Containerd_Task_V2_UpdateTaskRequest(serializedBytes: body) {
            _ = try? OCI.LinuxResources.validated(Array(m.resources.value), source: "fuzz")
        }
        _ = try? Containerd_Task_V2_StartRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_StateRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_KillRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_WaitRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_DeleteRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_ResizePtyRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_CloseIORequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_CheckpointTaskRequest(serializedBytes: body)
        _ = try? Containerd_Task_V2_ShutdownRequest(serializedBytes: body)
        _ = try? Tether_Shim_V1_AckRequest(serializedBytes: body)
    }
}
