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

struct Checkpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Checkpoint a running task into a directory through CRIU; restore with 'tether create --checkpoint DIR'.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Stop the task once checkpointed (by default it keeps running).") var exit = false
    @Argument(help: "The task ID.") var id: String
    @Argument(help: "The directory for the checkpoint images.") var path: String

    func run() throws { try guarded { try global.client.checkpoint(id, path: absolute(path), exit: exit) } }
}
