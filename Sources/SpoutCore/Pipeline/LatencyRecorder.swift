import Foundation
import Histogram

/// Commit → sink acknowledgement latency, in microseconds, in an HDR histogram. The commit
/// time is PostgreSQL's commit timestamp; the acknowledgement time is taken once per sink
/// poll, not per event.
public struct LatencyRecorder: Sendable {
    private var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)

    public init() {}

    mutating func record(committedAt: PostgresTimestamp, acknowledgedAt nowMicros: Int64) {
        _ = histogram.record(UInt64(Swift.max(0, Self.age(of: committedAt, at: nowMicros))))
    }

    /// Microseconds from `committedAt` to `nowMicros`, saturating: the commit time comes from
    /// the wire.
    static func age(of committedAt: PostgresTimestamp, at nowMicros: Int64) -> Int64 {
        let (age, overflow) = nowMicros.subtractingReportingOverflow(committedAt.unixMicroseconds)
        return overflow ? (committedAt.unixMicroseconds < 0 ? Int64.max : Int64.min) : age
    }

    public var count: UInt64 { histogram.totalCount }

    public func percentile(_ value: Double) -> UInt64 { histogram.valueAtPercentile(value) }

    public var max: UInt64 { histogram.max }

    /// `count=N p50=… p99=… p99.9=… max=…` in microseconds.
    public var summary: String {
        "count=\(count) p50=\(percentile(50))us p99=\(percentile(99))us p99.9=\(percentile(99.9))us max=\(max)us"
    }

    /// Wall-clock microseconds since the Unix epoch.
    static func nowMicros() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
    }
}
