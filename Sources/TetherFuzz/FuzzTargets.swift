import Foundation
import TetherAPI
import TetherOCI
import TetherRuntime
import TetherSeccomp
import TetherShim

/// The two decoders that take input from other processes, as fuzz targets:
/// `ttrpc`, what a shim does with bytes from its peer (ShimFuzz), and
/// `api`, what tetherd does with a request body: each request type's JSON
/// and the checks it goes through before anything is made (IDs, signals,
/// sizes, resources, a whole spec, a seccomp profile, capabilities, user).
/// scripts/fuzz runs them under libFuzzer; the tests replay the corpus
/// (Tests/Fixtures/fuzz) and a bounded number of mutations of it.
public enum FuzzTargets {
    public static let all: [(String, @Sendable ([UInt8]) -> Void)] = [("ttrpc", { ttrpc($0) }), ("api", { api($0) })]

    public static func ttrpc(_ data: [UInt8]) { ShimFuzz.ttrpc(data) }

    public static func api(_ data: [UInt8]) {
        let body = Data(data)
        let d = APIJSON.decoder
        if let r = try? d.decode(CreateTaskRequest.self, from: body) {
            _ = try? Identifier.validate(r.id, kind: "task ID")
            _ = try? r.resources?.validate()
            if let spec = r.spec {
                let bytes = SpecCheck.encode(spec)
                _ = try? SpecCheck.check(bytes, source: "fuzz")
                if let s = (try? JSONDecoder().decode(OCI.Spec.self, from: Data(bytes)))?.linux?.seccomp {
                    _ = try? SeccompCheck.check(s, source: "fuzz")
                }
            }
            if case .object? = r.seccomp, let p = try? d.decode(SeccompProfile.self, from: try APIJSON.encoder.encode(r.seccomp)) {
                seccomp(p)
            }
            if let c = r.security {
                if let caps = try? c.capabilities(available: nil) { _ = caps }
                _ = try? c.ids()
            }
        }
        if let r = try? d.decode(ExecRequest.self, from: body), let id = r.execID { _ = try? Identifier.validate(id, kind: "exec ID") }
        if let r = try? d.decode(KillRequest.self, from: body), let s = r.signal { _ = try? Signals.parse(s.text) }
        _ = try? d.decode(ResizeRequest.self, from: body)
        _ = try? d.decode(CheckpointRequest.self, from: body)
        _ = try? OCI.LinuxResources.validated(data, source: "fuzz")
        if let p = try? d.decode(SeccompProfile.self, from: body) { seccomp(p) }
    }

    private static func seccomp(_ p: SeccompProfile) {
        let s = p.resolved(capabilities: Set(OCI.Capabilities.containerdDefault))
        _ = try? SeccompCheck.check(s, source: "fuzz")
    }
}
