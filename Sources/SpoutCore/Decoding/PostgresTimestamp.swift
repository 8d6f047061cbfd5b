/// PostgreSQL timestamps on the wire: microseconds since 2000-01-01 00:00:00 UTC.
public struct PostgresTimestamp: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }

    /// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
    static let unixEpochOffset: Int64 = 946_684_800

    public init(unixMicroseconds: Int64) {
        let (difference, overflow) = unixMicroseconds.subtractingReportingOverflow(Self.unixEpochOffset * 1_000_000)
        rawValue = overflow ? Int64.min : difference
    }

    /// Saturates instead of trapping on a nonsense value from the wire.
    public var unixMicroseconds: Int64 {
        let (sum, overflow) = rawValue.addingReportingOverflow(Self.unixEpochOffset * 1_000_000)
        return overflow ? Int64.max : sum
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// ISO-8601 in UTC with microseconds: `2026-11-23T11:20:20.123456Z`.
    public var iso8601: String {
        var bytes: [UInt8] = []
        appendISO8601(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the ISO-8601 form without building a String (it is on every stdout line).
    public func appendISO8601(to output: inout [UInt8]) {
        var micros = unixMicroseconds
        var seconds = micros / 1_000_000
        micros %= 1_000_000
        if micros < 0 { micros += 1_000_000; seconds -= 1 }
        var days = seconds / 86_400
        var secondOfDay = seconds % 86_400
        if secondOfDay < 0 { secondOfDay += 86_400; days -= 1 }
        let (year, month, day) = Self.civilDate(daysSinceUnixEpoch: days)
        func digits(_ value: Int64, _ width: Int) {
            var value = value.magnitude
            var count = 1
            var probe = value
            while probe >= 10 { probe /= 10; count += 1 }
            for _ in count..<Swift.max(width, count) { output.append(UInt8(ascii: "0")) }
            let start = output.count
            output.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: count))
            var index = start + count - 1
            while index >= start {
                output[index] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
                index -= 1
            }
        }
        if year < 0 { output.append(UInt8(ascii: "-")) }
        digits(year, 4)
        output.append(UInt8(ascii: "-"))
        digits(month, 2)
        output.append(UInt8(ascii: "-"))
        digits(day, 2)
        output.append(UInt8(ascii: "T"))
        digits(secondOfDay / 3600, 2)
        output.append(UInt8(ascii: ":"))
        digits(secondOfDay % 3600 / 60, 2)
        output.append(UInt8(ascii: ":"))
        digits(secondOfDay % 60, 2)
        output.append(UInt8(ascii: "."))
        digits(micros, 6)
        output.append(UInt8(ascii: "Z"))
    }

    /// Proleptic Gregorian date of a day count (Howard Hinnant's `civil_from_days`).
    static func civilDate(daysSinceUnixEpoch: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = daysSinceUnixEpoch + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
