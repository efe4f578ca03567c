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

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change a task's cgroup limits while it runs.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var resources: ResourceOptions
    @Option(help: "OCI LinuxResources JSON from a file ('-' for stdin), instead of the flags.") var resourcesFile: String?
    @Argument(help: "The task ID.") var id: String

    func run() throws {
        try guarded {
            let data: Data
            if let file = resourcesFile {
                data = Data(file == "-" ? try FD(dup(0), label: "stdin").readToEnd(limit: 1 << 20) : try Files.readRegular(file, limit: 1 << 20))
            } else if let d = try resources.linuxResources() {
                data = d
            } else {
                throw UsageError("nothing to update: give --memory, --cpus, --pids-limit or --resources-file")
            }
            try global.client.update(id, resources: data)
        }
    }
}
