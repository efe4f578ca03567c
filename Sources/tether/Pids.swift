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

struct Pids: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every process in a task's container, with the exec ID of exec'd ones.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let list = try global.client.pids(id)
            print("PID".padded(to: 10) + "EXEC")
            for p in list { print(String(p.pid).padded(to: 10) + (p.execID ?? "-")) }
        }
    }
}
