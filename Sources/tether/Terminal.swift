#if canImport(FoundationEssentials)
import FoundationEssentials
import Dispatch
#else
import Foundation
#endif
import CTether
import Glibc
import TetherSys

/// The local terminal in raw mode for a `-t` session, restored on every way
/// out: normal return, error, and SIGTERM/SIGHUP/SIGINT to the CLI.
final class RawTerminal: @unchecked Sendable {
    nonisolated(unsafe) private static var saved: termios?

    /// Puts stdin in raw mode if it is a terminal; returns nil otherwise.
    static func enter() -> RawTerminal? {
        guard isatty(0) == 1 else { return nil }
        var t = termios()
        guard tcgetattr(0, &t) == 0 else { return nil }
        saved = t
        var raw = t
        cfmakeraw(&raw)
        tcsetattr(0, TCSANOW, &raw)
        for sig in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
            signal(sig) { s in
                RawTerminal.restoreNow()
                signal(s, SIG_DFL)
                raise(s)
            }
        }
        return RawTerminal()
    }

    static func restoreNow() {
        if var t = saved { tcsetattr(0, TCSANOW, &t) }
    }

    func restore() {
        Self.restoreNow()
        Self.saved = nil
    }

    /// The local window size (rows, columns), if stdin or stdout is a terminal.
    static func size() -> (rows: UInt16, cols: UInt16)? {
        var rows: UInt16 = 0, cols: UInt16 = 0
        for fd in [Int32(0), 1] where tether_get_winsize(fd, &rows, &cols) == 0 && rows > 0 { return (rows, cols) }
        return nil
    }
}

/// Resizes the remote pty whenever ours changes (SIGWINCH), and once now.
final class WindowSizeForwarder: @unchecked Sendable {
    private let source: any DispatchSourceSignal

    init(resize: @escaping @Sendable (UInt16, UInt16) -> Void) {
        signal(SIGWINCH, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
        source.setEventHandler { if let s = RawTerminal.size() { resize(s.rows, s.cols) } }
        source.resume()
        if let s = RawTerminal.size() { resize(s.rows, s.cols) }
    }

    func stop() { source.cancel() }
}
