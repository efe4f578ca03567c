#if canImport(Glibc)
import Glibc
#endif
import TetherRuntime
import TetherSys

/// The shim's log: one line per event on stderr, which the manager points at
/// shim.log in the task's state directory. Debug lines only with --debug.
public enum ShimLog {
    nonisolated(unsafe) static var debugEnabled = false

    public static func info(_ message: @autoclosure () -> String) { write("info", message()) }
    public static func warn(_ message: @autoclosure () -> String) { write("warn", message()) }
    public static func error(_ message: @autoclosure () -> String) { write("error", message()) }
    public static func debug(_ message: @autoclosure () -> String) {
        if debugEnabled { write("debug", message()) }
    }

    private static func write(_ level: String, _ message: String) {
        let now = WallTime.now()
        let line = "\(RFC3339.format(seconds: now.seconds, nanos: now.nanos)) \(level) tether-shim[\(getpid())]: \(message)\n"
        line.utf8CString.withUnsafeBufferPointer { b in
            _ = Glibc.write(2, b.baseAddress!, b.count - 1)  // one write: lines never interleave
        }
    }
}
