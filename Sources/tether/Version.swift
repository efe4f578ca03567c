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

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the CLI's and tetherd's versions.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try guarded {
            print("tether \(TetherVersion.string)")
            let v = try global.client.version()
            print("tetherd \(v.version) (runtime \(v.runtime), root \(v.root), state \(v.state))")
        }
    }
}
