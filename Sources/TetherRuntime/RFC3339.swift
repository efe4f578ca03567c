#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// RFC 3339 times in UTC with nanoseconds ("2026-11-29T01:46:02.123456789Z"),
/// the form containerd, Go and the k8s log format use.
public enum RFC3339 {
    public static func format(seconds: Int64, nanos: Int32) -> String {
        var t = time_t(seconds)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(nanos, 9))Z"
    }

    public static func format(_ date: Date) -> String {
        // Years 1 to 9999: anything outside (a corrupt record) is shown at the bound, never a trap.
        let t = min(max(date.timeIntervalSince1970, -62_135_596_800), 253_402_300_799)
        var s = Int64(t.rounded(.down))
        var n = Int32(((t - Double(s)) * 1e9).rounded())
        if n >= 1_000_000_000 { s += 1; n -= 1_000_000_000 }
        return format(seconds: s, nanos: n)
    }

    /// Parses "YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)".
    public static func parse(_ s: String) -> Date? {
        let b = Array(s.utf8)
        guard b.count >= 20 else { return nil }
        func num(_ i: Int, _ n: Int) -> Int32? {
            guard i + n <= b.count else { return nil }
            var v: Int32 = 0
            for c in b[i..<(i + n)] {
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v * 10 + Int32(c - 0x30)
            }
            return v
        }
        guard let y = num(0, 4), b[4] == 0x2D, let mo = num(5, 2), b[7] == 0x2D, let d = num(8, 2),
              b[10] == 0x54 || b[10] == 0x74 || b[10] == 0x20,
              let h = num(11, 2), b[13] == 0x3A, let mi = num(14, 2), b[16] == 0x3A, let se = num(17, 2) else { return nil }
        var i = 19
        var frac = 0.0
        if i < b.count && b[i] == 0x2E {
            i += 1
            var scale = 0.1
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 {
                frac += Double(b[i] - 0x30) * scale
                scale /= 10
                i += 1
            }
        }
        var offset: Int32 = 0
        guard i < b.count else { return nil }
        if b[i] == 0x5A || b[i] == 0x7A {
            i += 1
        } else if b[i] == 0x2B || b[i] == 0x2D, let oh = num(i + 1, 2), b.count > i + 3, b[i + 3] == 0x3A, let om = num(i + 4, 2) {
            offset = (oh * 3600 + om * 60) * (b[i] == 0x2D ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        var tm = Glibc.tm()
        tm.tm_year = y - 1900
        tm.tm_mon = mo - 1
        tm.tm_mday = d
        tm.tm_hour = h
        tm.tm_min = mi
        tm.tm_sec = se
        let secs = Int64(timegm(&tm)) - Int64(offset)
        return Date(timeIntervalSince1970: Double(secs) + frac)
    }
}

extension JSONEncoder.DateEncodingStrategy {
    /// RFC 3339 with nanoseconds, as containerd and Go print timestamps.
    public static let rfc3339 = JSONEncoder.DateEncodingStrategy.custom { date, encoder in
        var c = encoder.singleValueContainer()
        try c.encode(RFC3339.format(date))
    }
}

extension JSONDecoder.DateDecodingStrategy {
    /// RFC 3339 with any fraction of a second, or none.
    public static let rfc3339 = JSONDecoder.DateDecodingStrategy.custom { decoder in
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let d = RFC3339.parse(s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an RFC 3339 time: \(s)")
        }
        return d
    }
}
