import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherAPI
import TetherClient
import TetherOCI
import TetherRuntime
import TetherSys

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a task's cpu, memory and pids from its cgroup.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "JSON instead of text.") var json = false
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let s = try global.client.stats(id)
            if json {
                print(String(decoding: try APIJSON.encoder.encode(s), as: UTF8.self))
                return
            }
            print("cpu:    \(Double(s.cpuUsageNanos) / 1e9) s (user \(Double(s.cpuUserNanos) / 1e9) s, kernel \(Double(s.cpuKernelNanos) / 1e9) s)")
            print("memory: \(s.memoryUsage) bytes (max \(s.memoryMaxUsage), limit \(s.memoryLimit))")
            print("pids:   \(s.pids) (limit \(s.pidsLimit == 0 ? "none" : String(s.pidsLimit)))")
        }
    }
}
