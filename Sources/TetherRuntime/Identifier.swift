/// containerd's identifier rules, for task IDs, exec IDs and namespaces:
/// letters and digits, joined by single '.', '_' or '-', at most 76 characters
/// (`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`). A valid identifier is always
/// a safe single path component.
public enum Identifier {
    public static let maxLength = 76

    public static func isValid(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard !b.isEmpty, b.count <= maxLength else { return false }
        var previousWasSeparator = true  // the first byte must be alphanumeric
        for c in b {
            if isAlnum(c) {
                previousWasSeparator = false
            } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-") {
                if previousWasSeparator { return false }
                previousWasSeparator = true
            } else {
                return false
            }
        }
        return !previousWasSeparator
    }

    /// Throws an invalidArgument error that names `kind` ("task ID", "namespace", "exec ID").
    public static func validate(_ s: String, kind: String = "task ID") throws(RuntimeError) {
        guard isValid(s) else {
            let shown = s.count > 100 ? String(s.prefix(100)) + "…" : s
            let why = s.utf8.count > maxLength
                ? "it is \(s.utf8.count) characters long, the limit is \(maxLength)"
                : "use letters and digits, joined by single '.', '_' or '-'"
            throw RuntimeError(.invalidArgument, "invalid \(kind) \"\(shown)\": \(why)")
        }
    }

    private static func isAlnum(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
    }
}
