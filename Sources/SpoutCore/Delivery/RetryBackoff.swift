/// The one retry policy of every sink: exponential backoff from `first`, doubling up to
/// `ceiling`, each delay drawn from its upper half ("equal jitter"), so sinks that lost the
/// same broker do not come back in step. Failures in a row raise it; a delivery resets it.
public struct RetryBackoff: Sendable {
    public var first: Duration
    public var ceiling: Duration
    /// Failed attempts in a row.
    public private(set) var attempts = 0

    public init(first: Duration = .milliseconds(100), ceiling: Duration = .seconds(5)) {
        self.first = first
        self.ceiling = max(ceiling, first)
    }

    /// The delay before the next attempt, counting one more failure.
    public mutating func next(using random: inout some RandomNumberGenerator) -> Duration {
        attempts += 1
        var delay = first
        for _ in 1..<min(attempts, 32) where delay < ceiling { delay *= 2 }
        delay = min(delay, ceiling)
        return delay * Double.random(in: 0.5...1.0, using: &random)
    }

    public mutating func reset() { attempts = 0 }
}
