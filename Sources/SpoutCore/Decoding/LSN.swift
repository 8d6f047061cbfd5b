/// A position in PostgreSQL's write-ahead log, printed as `X/X` (high/low 32 bits in hex),
/// the way PostgreSQL prints `pg_lsn`.
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }

    public static let zero = LSN(0)

    /// `bytes` further on, saturating at the end of the LSN space.
    public func advanced(by bytes: UInt64) -> LSN {
        let (sum, overflow) = rawValue.addingReportingOverflow(bytes)
        return LSN(overflow ? .max : sum)
    }

    /// Parses `X/X` as PostgreSQL prints it (`16/B374D848`); `nil` when malformed.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        // Hex digits only: `UInt32(_:radix:)` alone would also accept a sign ("+1/0", "-0/0").
        guard parts.count == 2,
              parts.allSatisfy({ (1...8).contains($0.count) && $0.unicodeScalars.allSatisfy(\.properties.isASCIIHexDigit) }),
              let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16)
        else { return nil }
        rawValue = UInt64(high) << 32 | UInt64(low)
    }

    public var description: String {
        var bytes: [UInt8] = []
        appendText(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends `X/X` (upper-case hex, as PostgreSQL prints it) without building a String.
    public func appendText(to output: inout [UInt8]) {
        func appendHex(_ value: UInt32) {
            let digits = Swift.max(1, (32 - value.leadingZeroBitCount + 3) / 4)
            for index in stride(from: digits - 1, through: 0, by: -1) {
                let nibble = UInt8(truncatingIfNeeded: value >> UInt32(index * 4)) & 0xF
                output.append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "A") + nibble - 10)
            }
        }
        appendHex(UInt32(truncatingIfNeeded: rawValue >> 32))
        output.append(UInt8(ascii: "/"))
        appendHex(UInt32(truncatingIfNeeded: rawValue))
    }

    public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.rawValue < rhs.rawValue }
}
