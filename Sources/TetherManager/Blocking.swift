import TetherSys

/// Runs blocking work (a read with a timeout, waitpid, file IO in bulk) on a
/// thread of its own and awaits its result, so it never occupies one of the
/// Swift concurrency pool's few threads.
func onThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        do {
            try OSThread.start(name) {
                do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
            }
        } catch {
            c.resume(throwing: error)  // no thread to be had: an error for this call alone
        }
    }
}
