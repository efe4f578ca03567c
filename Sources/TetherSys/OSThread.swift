#if canImport(Glibc)
import Glibc
#endif
import CTether

/// A detached OS thread for a blocking loop (accept, read, waitpid, epoll):
/// blocking calls never run on the Swift concurrency pool.
public enum OSThread {
    private final class Box {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }

    /// Starts `body` on a new detached thread named `name` (at most 15
    /// characters show in /proc). A thread that cannot be made (EAGAIN: too
    /// many) is the caller's error to handle, never a crash.
    public static func start(_ name: String, _ body: @escaping @Sendable () -> Void) throws(SysError) {
        let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attr, 256 * 1024)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            _ = tether_set_thread_name(String(box.name.prefix(15)))
            box.body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SysError("pthread_create", errno: rc, name)
        }
    }
}
