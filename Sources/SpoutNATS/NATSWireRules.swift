import SpoutCore
/// What the NATS protocol accepts in subjects and headers. libnats writes both verbatim into
/// the protocol stream, so a space in a subject or a line break in a header value would
/// corrupt the connection rather than fail one message.
enum NATSWireRules {
    /// A literal subject: `.`-separated non-empty tokens, no whitespace or control
    /// characters, no `*` or `>` token (those are wildcards, not publishable).
    static func subjectProblem(_ subject: String) -> String? {
        if subject.isEmpty { return "it is empty" }
        var tokenLength = 0
        var tokenIsWildcard = false
        for byte in subject.utf8 {
            switch byte {
            case UInt8(ascii: "."):
                if tokenLength == 0 { return "it has an empty token (a leading, trailing or doubled '.')" }
                if tokenIsWildcard { return "'*' and '>' tokens are wildcards, not subjects" }
                tokenLength = 0
                tokenIsWildcard = false
            case 0...0x20, 0x7F:
                return "it contains a space or control character"
            default:
                tokenLength += 1
                tokenIsWildcard = tokenLength == 1 && (byte == UInt8(ascii: "*") || byte == UInt8(ascii: ">"))
            }
        }
        if tokenLength == 0 { return "it has an empty token (a leading, trailing or doubled '.')" }
        if tokenIsWildcard { return "'*' and '>' tokens are wildcards, not subjects" }
        return nil
    }

    /// The stream subject suggested for a topic in error messages: `a.b.c` → `a.b.>`.
    static func suggestedStreamSubject(for subject: String) -> String {
        guard let lastDot = subject.lastIndex(of: ".") else { return subject }
        return subject[..<lastDot] + ".>"
    }

    /// A header name NATS can carry: printable ASCII without `:`; anything else becomes `_`.
    /// Returns the name itself (no copy) when it is already valid.
    static func headerName(_ name: String) -> String {
        guard name.utf8.contains(where: { !isNameByte($0) }) else { return name }
        var scalars = String.UnicodeScalarView()
        for scalar in name.unicodeScalars {
            scalars.append(scalar.isASCII && isNameByte(UInt8(scalar.value)) ? scalar : "_")
        }
        return String(scalars)
    }

    /// A header value NATS carries verbatim and consumers can print: every control character
    /// (C0 including tab, DEL, C1) becomes a space, a CR LF pair one space. Row content ends up
    /// here (event headers, key, type); a raw line break would end the header block, a NUL
    /// would cut the C string short, and an ESC would reach whatever terminal shows the header.
    /// Returns the value itself (no copy) when it has none.
    static func headerValue(_ value: String) -> String {
        // Every event's id, key and type pass here: scan the bytes in place when they are
        // contiguous. 0xC2 leads the UTF-8 of U+0080–U+00BF, which holds the C1 controls.
        let mayHaveControl = { (byte: UInt8) in byte < 0x20 || byte == 0x7F || byte == 0xC2 }
        let suspect = value.utf8.withContiguousStorageIfAvailable { $0.contains(where: mayHaveControl) }
            ?? value.utf8.contains(where: mayHaveControl)
        guard suspect, value.unicodeScalars.contains(where: isControl) else { return value }
        var scalars = String.UnicodeScalarView()
        var afterCR = false
        for scalar in value.unicodeScalars {
            defer { afterCR = scalar == "\r" }
            if scalar == "\n", afterCR { continue }
            scalars.append(isControl(scalar) ? " " : scalar)
        }
        return String(scalars)
    }

    /// Headers named `Nats-…` steer the server (`Nats-Expected-Stream`, `Nats-Rollup`, …);
    /// event headers never get to set them.
    static func isReservedHeader(_ name: String) -> Bool {
        name.utf8.count >= 5 && name.utf8.prefix(5).elementsEqual("nats-".utf8, by: { $0 | 0x20 == $1 | 0x20 })
    }

    /// Unicode's control characters (general category Cc): U+0000–U+001F, U+007F–U+009F.
    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        byte > 0x20 && byte < 0x7F && byte != UInt8(ascii: ":")
    }
}
