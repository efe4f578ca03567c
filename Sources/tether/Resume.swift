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

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Thaw a paused task.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws { try guarded { _ = try global.client.resume(id) } }
}
