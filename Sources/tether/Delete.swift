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

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a task that has exited (or was never started); print its exit.", aliases: ["rm"])
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let exit = try global.client.delete(id)
            print("\(id): pid \(exit.pid) exited with status \(describeStatus(exit.status)) at \(RFC3339.format(exit.timestamp))")
        }
    }
}
