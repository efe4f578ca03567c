/// Signal names and numbers on Linux, for kill and for exit statuses.
public enum Signals {
    /// Linux's standard signals by number (x86_64, arm64 and most others).
    public static let names: [Int32: String] = [
        1: "HUP", 2: "INT", 3: "QUIT", 4: "ILL", 5: "TRAP", 6: "ABRT", 7: "BUS", 8: "FPE",
        9: "KILL", 10: "USR1", 11: "SEGV", 12: "USR2", 13: "PIPE", 14: "ALRM", 15: "TERM",
        16: "STKFLT", 17: "CHLD", 18: "CONT", 19: "STOP", 20: "TSTP", 21: "TTIN", 22: "TTOU",
        23: "URG", 24: "XCPU", 25: "XFSZ", 26: "VTALRM", 27: "PROF", 28: "WINCH", 29: "IO",
        30: "PWR", 31: "SYS",
    ]
    public static let max: Int32 = 64  // SIGRTMAX

    /// Parses "TERM", "SIGTERM", "sigterm", "15", "RTMIN+3". Throws a clear error for anything else.
    public static func parse(_ text: String) throws(RuntimeError) -> Int32 {
        let t = text.uppercased()
        if let n = Int32(t) {
            guard n >= 1 && n <= max else {
                throw RuntimeError(.invalidArgument, "signal \(text) is out of range: use 1 to \(max) or a name such as TERM or KILL")
            }
            return n
        }
        let name = t.hasPrefix("SIG") ? String(t.dropFirst(3)) : t
        if let (n, _) = names.first(where: { $0.value == name }) { return n }
        if name == "IOT" { return 6 }
        if name == "POLL" { return 29 }
        if name.hasPrefix("RTMIN"), let n = offset(name.dropFirst(5), sign: "+"), n <= max - 34 { return 34 + n }
        if name.hasPrefix("RTMAX"), let n = offset(name.dropFirst(5), sign: "-"), max - n >= 34 { return max - n }
        throw RuntimeError(.invalidArgument, "unknown signal \"\(text)\": use a name such as TERM, KILL, HUP or a number from 1 to \(max)")
    }

    /// "TERM" for 15, "RTMIN+2" for 36, the number otherwise.
    public static func name(_ n: Int32) -> String {
        if let s = names[n] { return s }
        if n >= 34 && n <= max { return n == 34 ? "RTMIN" : "RTMIN+\(n - 34)" }
        return String(n)
    }

    /// "" is 0; "+3" (or "-3" for RTMAX) is 3.
    private static func offset(_ s: Substring, sign: Character) -> Int32? {
        if s.isEmpty { return 0 }
        guard s.first == sign, let v = Int32(s.dropFirst()), v >= 0 else { return nil }
        return v
    }
}
