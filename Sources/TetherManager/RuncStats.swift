import Foundation
import TetherRuntime

/// The JSON of `runc events --stats`.
enum RuncStats {
    struct Events: Decodable {
        struct Data: Decodable {
            struct CPU: Decodable {
                struct Usage: Decodable { let total: UInt64?; let user: UInt64?; let kernel: UInt64? }
                let usage: Usage?
            }
            struct Memory: Decodable {
                struct Usage: Decodable { let usage: UInt64?; let max: UInt64?; let limit: UInt64? }
                let usage: Usage?
            }
            struct Pids: Decodable { let current: UInt64?; let limit: UInt64? }
            let cpu: CPU?
            let memory: Memory?
            let pids: Pids?
        }
        let data: Data?
    }

    static func decode(_ raw: Data) throws -> TaskStats {
        guard let e = try? JSONDecoder().decode(Events.self, from: raw), let d = e.data else {
            throw RuntimeError(.internal, "the runtime's stats are not runc's events JSON: \(String(decoding: raw.prefix(200), as: UTF8.self))")
        }
        return TaskStats(cpuUsageNanos: d.cpu?.usage?.total ?? 0, cpuUserNanos: d.cpu?.usage?.user ?? 0,
                         cpuKernelNanos: d.cpu?.usage?.kernel ?? 0, memoryUsage: d.memory?.usage?.usage ?? 0,
                         memoryMaxUsage: d.memory?.usage?.max ?? 0, memoryLimit: d.memory?.usage?.limit ?? 0,
                         pids: d.pids?.current ?? 0, pidsLimit: d.pids?.limit ?? 0)
    }
}
