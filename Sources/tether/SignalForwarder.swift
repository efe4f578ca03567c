#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import Glibc
import TetherClient

/// Passes SIGINT, SIGTERM and SIGHUP on to the task while the CLI waits for
/// it, as `podman run` does; the task's exit then ends the CLI.
final class SignalForwarder: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []

    init(_ kill: @escaping @Sendable (Int32) -> Void) {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { kill(sig) }
            s.resume()
            sources.append(s)
        }
    }

    func stop() { for s in sources { s.cancel() } }
}
