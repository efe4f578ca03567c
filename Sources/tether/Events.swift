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

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print task events as they happen, one JSON object per line, until interrupted.",
        discussion: "All namespaces unless --ns narrows them. Topics: /tasks/create, /tasks/start, /tasks/exit, /tasks/delete, /tasks/oom, /tasks/exec-added, /tasks/exec-started, /tasks/paused, /tasks/resumed, /tasks/checkpointed, and Tether's own /tasks/seccomp.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this namespace.") var ns: String?
    @Option(help: "Only this task.") var task: String?
    @Option(help: "Only this topic (repeatable).") var topic: [String] = []

    func run() throws {
        try guarded {
            let encoder = APIJSON.encoder
            try global.client.events(namespace: ns, task: task, topics: topic) { e in
                // One write per event, unbuffered: a reader of a pipe sees each at once.
                if let data = try? encoder.encode(e) { try? FD.writeAll(to: 1, Array(data) + [0x0A]) }
            }
            printError("tether: tetherd ended the event stream (it is stopping)")
        }
    }
}
