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

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Wait for a task to exit; print its exit status and exit with it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let exit = try global.client.wait(id)
            print(exit.status)
            throw ExitCode(Int32(truncatingIfNeeded: exit.status))
        }
    }
}
