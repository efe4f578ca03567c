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
import TetherRuntime
import TetherSys

@main
struct Tether: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether",
        abstract: "Run and manage tasks through tetherd (each task under its own tether-shim).",
        version: TetherVersion.string,
        subcommands: [Run.self, Create.self, Start.self, Exec.self, Attach.self, List.self, StateCommand.self, Kill.self, Wait.self, Delete.self,
                      Pause.self, Resume.self, Pids.self, Update.self, Checkpoint.self, Stats.self, Events.self, SeccompCommand.self, Debug.self, Version.self])

    /// Global options may come before the verb, as with ctr and podman
    /// (`tether -n ns ls`): they are moved after it for the parser.
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        var globals: [String] = []
        while let first = args.first, first.hasPrefix("-") {
            let name = first.split(separator: "=", maxSplits: 1)[0]
            guard ["--address", "--namespace", "-n"].contains(name) else { break }
            globals.append(args.removeFirst())
            if !first.contains("="), !args.isEmpty { globals.append(args.removeFirst()) }
        }
        if !globals.isEmpty && !args.isEmpty { args.insert(contentsOf: globals, at: 1) }
        else { args = globals + args }
        main(args)
    }
}

/// A mistake in how the CLI was called, reported in one line.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// --address and --namespace, for every verb.
struct GlobalOptions: ParsableArguments {
    @Option(help: "tetherd's socket (env TETHER_ADDRESS).")
    var address = ProcessInfo.processInfo.environment["TETHER_ADDRESS"] ?? "/run/tether/tetherd.sock"

    @Option(name: [.short, .long], help: "The namespace (env TETHER_NAMESPACE).")
    var namespace = ProcessInfo.processInfo.environment["TETHER_NAMESPACE"] ?? defaultNamespace

    var client: APIClient { APIClient(address: address, namespace: namespace) }
}

/// Runs a verb's body; any error becomes one line on stderr and exit status 1.
func guarded(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch {
        printError("tether: \(error)")
        throw ExitCode.failure
    }
}

func printError(_ line: String) {
    try? FD.writeAll(to: 2, Array((line + "\n").utf8))
}

extension String {
    /// Left-aligned in a column of `width` characters (never cut).
    func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

/// "3" for an exit status, "3 (SIGQUIT)"-style names for deaths by signal.
func describeStatus(_ status: UInt32) -> String {
    guard status > 128 && status <= 128 + UInt32(Signals.max) else { return String(status) }
    return "\(status) (SIG\(Signals.name(Int32(status - 128))))"
}
