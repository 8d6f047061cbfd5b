/// How the delivery types store a `ContinuousClock.Instant`: as the `Duration` since a fixed
/// instant. `ContinuousClock.Instant` is a resilient standard-library type, so a struct that
/// holds one has no fixed layout: every copy, comparison with nil and destruction of it goes
/// through runtime value witnesses, per event for the queue's entries. A `Duration` is a plain
/// frozen value; converting back and forth is exact.
enum StoredInstant {
    /// Any fixed instant does.
    static let epoch = ContinuousClock.now

    @inline(__always)
    static func store(_ instant: ContinuousClock.Instant) -> Duration { instant - epoch }

    @inline(__always)
    static func instant(_ stored: Duration) -> ContinuousClock.Instant { epoch + stored }
}
