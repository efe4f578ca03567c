import CTether

/// A point in wall-clock time with nanoseconds, as exit records carry it.
public struct WallTime: Sendable, Equatable, Comparable, Codable, CustomStringConvertible {
    public var seconds: Int64
    public var nanos: Int32

    public init(seconds: Int64, nanos: Int32) {
        self.seconds = seconds
        self.nanos = nanos
    }

    public static func now() -> WallTime {
        var s: Int64 = 0
        var n: Int32 = 0
        tether_realtime(&s, &n)
        return WallTime(seconds: s, nanos: n)
    }

    public static func < (a: WallTime, b: WallTime) -> Bool {
        (a.seconds, a.nanos) < (b.seconds, b.nanos)
    }

    public var description: String { "\(seconds).\(String(nanos + 1_000_000_000).dropFirst())" }
}

/// CLOCK_MONOTONIC in nanoseconds: for timeouts and measurements.
public func monotonicNanos() -> UInt64 { tether_monotonic_ns() }
