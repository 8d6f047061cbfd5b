/// A small validating JSON reader for what the mapping needs: the members of one object,
/// each value either a decoded string or the raw bytes of any other value. Values are
/// passed on as they were written (payloads stay byte-for-byte), never re-encoded.
struct JSONScanner {
    enum Value: Equatable {
        case string(String)
        /// A number, object, array, `true` or `false`: its raw text.
        case raw(ArraySlice<UInt8>)
        case null
    }

    struct Failure: Error, Equatable {
        var offset: Int
        var reason: String
    }

    private let bytes: ArraySlice<UInt8>
    private var index: Int

    private init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        index = bytes.startIndex
    }

    /// The members of a JSON object, in order.
    static func objectMembers(_ bytes: ArraySlice<UInt8>) throws(Failure) -> [(key: String, value: Value)] {
        var scanner = JSONScanner(bytes)
        scanner.skipWhitespace()
        guard scanner.peek == UInt8(ascii: "{") else { throw scanner.failure("expected a JSON object") }
        scanner.index += 1
        var members: [(key: String, value: Value)] = []
        scanner.skipWhitespace()
        if scanner.peek == UInt8(ascii: "}") {
            scanner.index += 1
        } else {
            while true {
                scanner.skipWhitespace()
                guard scanner.peek == UInt8(ascii: "\"") else { throw scanner.failure("expected a member name") }
                let key = try scanner.readString()
                scanner.skipWhitespace()
                guard scanner.peek == UInt8(ascii: ":") else { throw scanner.failure("expected ':'") }
                scanner.index += 1
                scanner.skipWhitespace()
                let value: Value
                switch scanner.peek {
                case UInt8(ascii: "\""): value = .string(try scanner.readString())
                case UInt8(ascii: "n"): try scanner.skipValue(); value = .null
                default:
                    let start = scanner.index
                    try scanner.skipValue()
                    value = .raw(bytes[start..<scanner.index])
                }
                members.append((key, value))
                scanner.skipWhitespace()
                guard let next = scanner.peek else { throw scanner.failure("unterminated object") }
                scanner.index += 1
                if next == UInt8(ascii: "}") { break }
                guard next == UInt8(ascii: ",") else { throw scanner.failure("expected ',' or '}'") }
            }
        }
        scanner.skipWhitespace()
        guard scanner.index == bytes.endIndex else { throw scanner.failure("trailing characters after the object") }
        return members
    }

    /// Checks that `bytes` is one JSON value.
    static func validate(_ bytes: ArraySlice<UInt8>) throws(Failure) {
        var scanner = JSONScanner(bytes)
        scanner.skipWhitespace()
        try scanner.skipValue()
        scanner.skipWhitespace()
        guard scanner.index == bytes.endIndex else { throw scanner.failure("trailing characters") }
    }

    /// Removes the whitespace outside strings (a `json` column keeps the newlines it was
    /// written with; one event per line needs it on one line).
    static func compact(_ bytes: ArraySlice<UInt8>, into output: inout [UInt8]) {
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                output.append(byte)
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
            } else if !isWhitespace(byte) {
                output.append(byte)
                if byte == UInt8(ascii: "\"") { inString = true }
            }
        }
    }

    private var peek: UInt8? { index < bytes.endIndex ? bytes[index] : nil }

    private func failure(_ reason: String) -> Failure {
        Failure(offset: index - bytes.startIndex, reason: reason)
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    private mutating func skipWhitespace() {
        while let byte = peek, Self.isWhitespace(byte) { index += 1 }
    }

    private mutating func skipValue(depth: Int = 0) throws(Failure) {
        guard depth < 512 else { throw failure("nested too deeply") }
        guard let byte = peek else { throw failure("expected a value") }
        switch byte {
        case UInt8(ascii: "\""): _ = try readString()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let close = byte == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            index += 1
            skipWhitespace()
            if peek == close { index += 1; return }
            while true {
                skipWhitespace()
                if close == UInt8(ascii: "}") {
                    guard peek == UInt8(ascii: "\"") else { throw failure("expected a member name") }
                    _ = try readString()
                    skipWhitespace()
                    guard peek == UInt8(ascii: ":") else { throw failure("expected ':'") }
                    index += 1
                    skipWhitespace()
                }
                try skipValue(depth: depth + 1)
                skipWhitespace()
                guard let next = peek else { throw failure("unterminated \(close == UInt8(ascii: "}") ? "object" : "array")") }
                index += 1
                if next == close { return }
                guard next == UInt8(ascii: ",") else { throw failure("expected ',' or '\(Character(UnicodeScalar(close)))'") }
            }
        case UInt8(ascii: "t"): try expectLiteral("true")
        case UInt8(ascii: "f"): try expectLiteral("false")
        case UInt8(ascii: "n"): try expectLiteral("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try skipNumber()
        default: throw failure("unexpected character")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(Failure) {
        let count = literal.utf8CodeUnitCount
        guard bytes.endIndex - index >= count else { throw failure("invalid literal") }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] {
            throw failure("invalid literal")
        }
        index += count
    }

    private mutating func skipNumber() throws(Failure) {
        let start = index
        if peek == UInt8(ascii: "-") { index += 1 }
        func digits(_ scanner: inout JSONScanner) -> Int {
            var count = 0
            while let byte = scanner.peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { scanner.index += 1; count += 1 }
            return count
        }
        guard digits(&self) > 0 else { throw failure("invalid number") }
        if peek == UInt8(ascii: ".") {
            index += 1
            guard digits(&self) > 0 else { throw failure("invalid number") }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            index += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { index += 1 }
            guard digits(&self) > 0 else { throw failure("invalid number") }
        }
        if bytes[start] == UInt8(ascii: "0") || (bytes[start] == UInt8(ascii: "-") && start + 1 < index && bytes[start + 1] == UInt8(ascii: "0")) {
            let zero = bytes[start] == UInt8(ascii: "-") ? start + 1 : start
            if zero + 1 < index, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[zero + 1]) {
                throw failure("invalid number (leading zero)")
            }
        }
    }

    /// Reads a string at `index` (which must be at the opening quote) and decodes escapes.
    private mutating func readString() throws(Failure) -> String {
        index += 1
        let start = index
        var needsDecoding = false
        while true {
            guard let byte = peek else { throw failure("unterminated string") }
            if byte == UInt8(ascii: "\"") { break }
            if byte < 0x20 { throw failure("control character in string") }
            if byte == UInt8(ascii: "\\") { needsDecoding = true; index += 1 }
            index += 1
        }
        let raw = bytes[start..<index]
        index += 1
        if !needsDecoding { return String(decoding: raw, as: UTF8.self) }
        var scalars = String.UnicodeScalarView()
        var utf8: [UInt8] = []
        var position = raw.startIndex
        func flush() {
            if !utf8.isEmpty { scalars.append(contentsOf: String(decoding: utf8, as: UTF8.self).unicodeScalars); utf8.removeAll() }
        }
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.endIndex else { return nil }
            var value: UInt32 = 0
            for byte in raw[at..<at + 4] {
                // Digits only: `UInt32(_:radix:)` would also take a sign ("\u+041").
                guard let digit = Character(UnicodeScalar(byte)).hexDigitValue, byte < 0x80 else { return nil }
                value = value << 4 | UInt32(digit)
            }
            return value
        }
        while position < raw.endIndex {
            let byte = raw[position]
            guard byte == UInt8(ascii: "\\") else { utf8.append(byte); position += 1; continue }
            // Offsets count from the start of the scanned bytes and point at the backslash.
            let escapeOffset = position - bytes.startIndex
            guard position + 1 < raw.endIndex else { throw Failure(offset: escapeOffset, reason: "invalid escape") }
            let escape = raw[position + 1]
            position += 2
            switch escape {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
            case UInt8(ascii: "b"): utf8.append(0x08)
            case UInt8(ascii: "f"): utf8.append(0x0C)
            case UInt8(ascii: "n"): utf8.append(0x0A)
            case UInt8(ascii: "r"): utf8.append(0x0D)
            case UInt8(ascii: "t"): utf8.append(0x09)
            case UInt8(ascii: "u"):
                guard var code = hex4(position) else { throw Failure(offset: escapeOffset, reason: "invalid \\u escape") }
                position += 4
                if (0xD800..<0xDC00).contains(code), position + 1 < raw.endIndex, raw[position] == UInt8(ascii: "\\"),
                   raw[position + 1] == UInt8(ascii: "u"), let low = hex4(position + 2), (0xDC00..<0xE000).contains(low) {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    position += 6
                }
                flush()
                scalars.append(Unicode.Scalar(code) ?? "\u{FFFD}")
            default: throw Failure(offset: escapeOffset, reason: "invalid escape")
            }
        }
        flush()
        return String(scalars)
    }
}
