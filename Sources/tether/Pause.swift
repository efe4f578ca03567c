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

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Freeze every process of a running task (cgroup freezer).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws { try guarded { _ = try global.client.pause(id) } }
}
