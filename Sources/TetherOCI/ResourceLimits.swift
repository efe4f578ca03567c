#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TetherRuntime

/// The cgroup limits people ask for by flag (`--memory`, `--cpus`,
/// `--pids-limit`) or in the API's `resources`, each optional. One type for
/// create and update: `validate` range-checks every number, and
/// `linuxResources` turns them into OCI LinuxResources with one formula.
public struct ResourceLimits: Codable, Sendable, Equatable {
    /// Bytes.
    public var memory: Int64?
    /// CPUs as a fraction: 0.5 is half of one CPU (a quota over a 100 ms period).
    public var cpus: Double?
    public var pidsLimit: Int64?

    public init(memory: Int64? = nil, cpus: Double? = nil, pidsLimit: Int64? = nil) {
        self.memory = memory
        self.cpus = cpus
        self.pidsLimit = pidsLimit
    }

    public var isEmpty: Bool { self == ResourceLimits() }

    public static let memoryRange: ClosedRange<Int64> = (1 << 20)...(1 << 60)
    public static let cpusRange: ClosedRange<Double> = 0.01...10_000
    /// pid_max can be at most 2^22.
    public static let pidsRange: ClosedRange<Int64> = 1...(1 << 22)
    /// The CFS period the quota is written over (100 ms, as Docker and Podman use).
    public static let cpuPeriod: UInt64 = 100_000

    /// Throws one line naming the value and the range it must be in.
    public func validate() throws(RuntimeError) {
        if let m = memory, !Self.memoryRange.contains(m) {
            throw RuntimeError(.invalidArgument, "memory limit \(m) bytes is out of range: give 1M (1048576) to 1E (\(Self.memoryRange.upperBound)) bytes")
        }
        if let c = cpus, !(c.isFinite && Self.cpusRange.contains(c)) {
            throw RuntimeError(.invalidArgument, "cpus \(c) is out of range: give a number of CPUs from 0.01 to 10000, such as 0.5")
        }
        if let p = pidsLimit, !Self.pidsRange.contains(p) {
            throw RuntimeError(.invalidArgument, "pids limit \(p) is out of range: give 1 to \(Self.pidsRange.upperBound)")
        }
    }

    /// As OCI LinuxResources (validate first: the cpus formula assumes the range).
    public var linuxResources: OCI.LinuxResources {
        OCI.LinuxResources(memory: memory.map { OCI.LinuxResources.Memory(limit: $0) },
                       cpu: cpus.map { OCI.LinuxResources.CPU(quota: Int64(($0 * Double(Self.cpuPeriod)).rounded()), period: Self.cpuPeriod) },
                       pids: pidsLimit.map { OCI.LinuxResources.Pids(limit: $0) })
    }
}

extension OCI.LinuxResources {
    /// Checks a LinuxResources document (an update's body) and returns it
    /// typed: every field decodes into the integer type runc uses, and the
    /// CFS numbers are ones the kernel takes. Fields it does not name are
    /// left to the runtime.
    public static func validated(_ json: [UInt8], source: String) throws(RuntimeError) -> OCI.LinuxResources {
        let r: OCI.LinuxResources
        do {
            let value = try JSONDecoder().decode(JSONValue.self, from: Data(json))
            guard value.isObject else {
                throw RuntimeError(.invalidArgument, "\(source) is not a JSON object: give OCI LinuxResources, such as {\"memory\": {\"limit\": 67108864}}")
            }
            r = try value.decode(OCI.LinuxResources.self)
        } catch let e as RuntimeError {
            throw e
        } catch {
            throw RuntimeError(.invalidArgument, "\(source) is not OCI LinuxResources: \(describeDecodingError(error, parsed: true))")
        }
        if let p = r.cpu?.period, !(1_000...1_000_000).contains(p) {
            throw RuntimeError(.invalidArgument, "cpu.period \(p) is out of range: the kernel takes 1000 to 1000000 microseconds")
        }
        if let q = r.cpu?.quota, q != -1 && !(1_000...(Int64(1) << 40)).contains(q) {
            throw RuntimeError(.invalidArgument, "cpu.quota \(q) is out of range: give -1 (no limit) or 1000 to \(Int64(1) << 40) microseconds")
        }
        if let m = r.memory?.limit, m != -1 && !ResourceLimits.memoryRange.contains(m) {
            throw RuntimeError(.invalidArgument, "memory.limit \(m) is out of range: give -1 (no limit) or 1048576 to \(ResourceLimits.memoryRange.upperBound) bytes")
        }
        if let p = r.pids?.limit, p < -1 || p > ResourceLimits.pidsRange.upperBound {
            throw RuntimeError(.invalidArgument, "pids.limit \(p) is out of range: give -1 or 0 (no limit) or up to \(ResourceLimits.pidsRange.upperBound)")
        }
        return r
    }
}

/// One line for a JSON decoding error: what is missing or wrong, and where.
/// `parsed`: the text is known to be valid JSON (so a "corrupted data"
/// error without a path can only be a number its field cannot hold, which
/// is how Foundation reports one).
public func describeDecodingError(_ error: any Error, parsed: Bool = false) -> String {
    func path(_ c: DecodingError.Context) -> String {
        let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return p.isEmpty ? "the top level" : p
    }
    switch error {
    case DecodingError.keyNotFound(let key, let c):
        return "missing field \"\(key.stringValue)\" in \(path(c))"
    case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
        return "wrong type or a number out of range at \(path(c))"
    case DecodingError.dataCorrupted(let c):
        if !c.codingPath.isEmpty { return "bad value at \(path(c))" }
        return parsed ? "a number out of its field's range (too large, negative or fractional where a count is expected)" : "not valid JSON"
    default:
        return "\(error)"
    }
}
