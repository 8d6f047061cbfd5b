import Foundation

/// Publishes rows read from the table (a snapshot, a backfill) through a sink with the
/// relay's rules: tickets in order, at most `maxInFlightEvents` events and
/// `maxInFlightBytes` bytes unacknowledged, and a way to wait until every event handed over
/// is acknowledged. Not the relay's hot path: it runs before streaming starts, or in `backfill`.
public final class AcknowledgedPublisher {
    private let sink: Sink
    private let maxInFlightEvents: Int
    private let maxInFlightBytes: Int
    private var nextTicket: UInt64 = 0
    /// Sizes of unacknowledged events by ticket.
    private var inFlight: [UInt64: Int] = [:]
    private var inFlightBytes = 0
    public private(set) var acknowledged = 0

    public init(sink: Sink, maxInFlightEvents: Int, maxInFlightBytes: Int) {
        self.sink = sink
        self.maxInFlightEvents = max(1, maxInFlightEvents)
        self.maxInFlightBytes = max(1, maxInFlightBytes)
    }

    public var outstanding: Int { inFlight.count }

    /// Hands `event` to the sink once the window has room (one event may exceed the byte limit).
    public func publish(_ event: OutboxEvent) throws(SpoutError) {
        while !inFlight.isEmpty, inFlight.count >= maxInFlightEvents || inFlightBytes + event.approximateSize > maxInFlightBytes {
            try waitForProgress()
        }
        let ticket = nextTicket
        nextTicket += 1
        inFlight[ticket] = event.approximateSize
        inFlightBytes += event.approximateSize
        do { try sink.send(event, ticket: ticket) } catch { throw .sink(error) }
        if inFlight.count % 256 == 0 { try pollSink() }
    }

    /// Returns once every event handed over is acknowledged; a failed one throws.
    public func waitForAll() throws(SpoutError) {
        while !inFlight.isEmpty { try waitForProgress() }
    }

    /// Keeps the sink going (acknowledgements, flushes) until `deadline`: `--rate`'s pause.
    public func idle(until deadline: ContinuousClock.Instant) throws(SpoutError) {
        let clock = ContinuousClock()
        while true {
            try pollSink()
            let left = deadline - clock.now
            guard left > .zero else { return }
            let milliseconds = Int32(min(100, max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)))
            if let descriptor = sink.wakeupDescriptor {
                var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                _ = Glibc.poll(&entry, 1, milliseconds)
            } else {
                usleep(UInt32(milliseconds) * 1000)
            }
        }
    }

    /// Polls the sink; when that finished nothing, waits (bounded) for its wakeup.
    private func waitForProgress() throws(SpoutError) {
        if try pollSink() > 0 { return }
        if let descriptor = sink.wakeupDescriptor {
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&entry, 1, 100)
        } else {
            // stdout: its poll writes; a reader that is slow leaves nothing to wait on but time.
            usleep(2_000)
        }
        try pollSink()
    }

    @discardableResult
    private func pollSink() throws(SpoutError) -> Int {
        var finished = 0
        var failure: SinkError?
        do {
            try sink.poll { completion in
                switch completion {
                case let .delivered(ticket):
                    if let size = inFlight.removeValue(forKey: ticket) {
                        inFlightBytes -= size
                        acknowledged += 1
                        finished += 1
                    }
                case let .failed(_, error):
                    if failure == nil { failure = error }
                }
            }
        } catch {
            throw .sink(error)
        }
        if let failure { throw .sink(failure) }
        return finished
    }
}
