/// Whether a sink's broker is in an outage (unreachable, or refusing writes), and since when:
/// the engine logs one warning when an outage begins and one line when it ends.
public struct OutageState: Sendable {
    /// When the current outage began; nil while the broker is fine.
    public var since: ContinuousClock.Instant? { began.map(StoredInstant.instant) }
    /// `since`, stored with a fixed layout (`StoredInstant`): the engine asks `isActive` per
    /// acknowledged event.
    private var began: Duration?
    /// Outages so far.
    public private(set) var count = 0

    public init() {}

    public var isActive: Bool { began != nil }

    /// A transient failure at `now`; true when it begins an outage (the one to warn about).
    public mutating func failed(at now: ContinuousClock.Instant) -> Bool {
        guard began == nil else { return false }
        began = StoredInstant.store(now)
        count += 1
        return true
    }

    /// The broker took events again at `now`; the outage's length when one ended.
    public mutating func recovered(at now: ContinuousClock.Instant) -> Duration? {
        guard let since else { return nil }
        began = nil
        return now - since
    }

    /// How long the current outage has lasted at `now` (zero when there is none).
    public func length(at now: ContinuousClock.Instant) -> Duration {
        since.map { now - $0 } ?? .zero
    }

    /// "12.3", the seconds of an outage as its log line gives them.
    public static func seconds(_ length: Duration) -> String {
        let tenths = Int((length.seconds * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}
