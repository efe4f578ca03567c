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

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a created task.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let t = try global.client.start(id)
            print("\(t.id) \(t.pid)")
        }
    }
}
