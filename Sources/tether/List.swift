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

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the namespace's tasks.", aliases: ["ls"])
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Print IDs only.") var quiet = false

    func run() throws {
        try guarded {
            let tasks = try global.client.list()
            if quiet {
                for t in tasks { print(t.id) }
                return
            }
            var rows = [["ID", "PID", "STATUS", "EXIT"]]
            for t in tasks {
                rows.append([t.id, String(t.pid), t.status.rawValue, t.exit.map { describeStatus($0.status) } ?? "-"])
            }
            let widths = (0..<4).map { c in rows.map { $0[c].count }.max() ?? 0 }
            for r in rows {
                print(r.enumerated().map { i, v in i == 3 ? v : v.padded(to: widths[i] + 3) }.joined())
            }
        }
    }
}
