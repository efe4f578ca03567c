#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TetherRuntime

/// A spec that passed `SpecCheck.check`: the document itself, kept whole
/// for editing and writing back, and a typed view of the parts Tether uses.
public struct CheckedSpec: Sendable {
    public var json: JSONValue
    public var spec: OCI.Spec

    /// Sets process.terminal (the runtime needs it to agree with the IO).
    public mutating func setTerminal(_ on: Bool) {
        var process = json["process"] ?? .object([:])
        process["terminal"] = .bool(on)
        json["process"] = process
        spec.process?.terminal = on
    }

    /// Sets root.path.
    public mutating func setRootPath(_ path: String) {
        var root = json["root"] ?? .object([:])
        root["path"] = .string(path)
        json["root"] = root
        spec.root?.path = path
    }

    /// The document as JSON, keys sorted, numbers as they came.
    public var bytes: [UInt8] { SpecCheck.encode(json) }
}

/// The one check every OCI spec passes before a shim is started for it,
/// whether Tether generated it, read it from a bundle, or got it through
/// the API: JSON, an object, the types runc decodes it into (so no number
/// is out of its type's range), a command, a root, and resources in range.
/// Each failure is one line that names `source`.
public enum SpecCheck {
    /// At most this many bytes of spec (runc's own limit is far above any real one).
    public static let maxSize = 4 << 20

    public static func check(_ bytes: [UInt8], source: String) throws(RuntimeError) -> CheckedSpec {
        guard bytes.count <= maxSize else {
            throw RuntimeError(.invalidArgument, "\(source) is \(bytes.count) bytes; a spec may have at most \(maxSize)")
        }
        let json: JSONValue
        do { json = try JSONDecoder().decode(JSONValue.self, from: Data(bytes)) } catch {
            throw RuntimeError(.invalidArgument, "\(source) is not valid JSON (\(describeDecodingError(error))): fix it, or generate one with 'runc spec'")
        }
        guard json.isObject else {
            throw RuntimeError(.invalidArgument, "\(source) is not a JSON object: an OCI spec is one, see 'runc spec'")
        }
        let spec: OCI.Spec
        do { spec = try json.decode(OCI.Spec.self) } catch {
            throw RuntimeError(.invalidArgument, "\(source) is not an OCI spec: \(describeDecodingError(error, parsed: true))")
        }
        guard let process = spec.process, let args = process.args, !args.isEmpty else {
            throw RuntimeError(.invalidArgument, "\(source) has no process.args: name the command to run")
        }
        guard let root = spec.root, !root.path.isEmpty else {
            throw RuntimeError(.invalidArgument, "\(source) has no root.path: name the container's root filesystem")
        }
        if let r = json["linux"]?["resources"] {
            _ = try OCI.LinuxResources.validated(encode(r), source: "linux.resources of \(source)")
        }
        return CheckedSpec(json: json, spec: spec)
    }

    /// JSON with sorted keys (stable bytes for the same document).
    public static func encode(_ value: some Encodable) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain values cannot fail.
        return Array((try? e.encode(value)) ?? Data("{}".utf8))
    }
}
