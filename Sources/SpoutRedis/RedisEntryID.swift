import SpoutCore
/// A stream entry id, `<milliseconds>-<sequence>`, ordered as Redis orders them.
struct RedisEntryID: Comparable, CustomStringConvertible {
    var high: UInt64
    var low: UInt64

    init(lsn: UInt64, position: UInt32) {
        high = lsn
        low = UInt64(position)
    }

    init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let high = UInt64(parts[0]), let low = UInt64(parts[1]) else { return nil }
        self.high = high
        self.low = low
    }

    static func < (lhs: Self, rhs: Self) -> Bool { (lhs.high, lhs.low) < (rhs.high, rhs.low) }

    var description: String { "\(high)-\(low)" }
}
