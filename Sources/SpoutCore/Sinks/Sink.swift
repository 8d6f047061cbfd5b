/// A destination for events. The relay hands events over in commit order, each with a
/// ticket; the sink reports the outcome of every ticket exactly once, from `poll`.
///
/// Sinks are driven from the relay's thread only: `send` and `poll` are never called
/// concurrently. A sink whose deliveries finish on other threads (broker callbacks) signals
/// `wakeup` so the relay stops waiting and calls `poll`.
public protocol Sink: AnyObject {
    /// Accepts one event. Must not block for long: the relay bounds what is in flight.
    func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError)

    /// Whether the sink needs an event's commit LSN (`OutboxEvent.lsn`), which PostgreSQL
    /// sends only after the transaction's last row. A sink that does not gets each event as
    /// soon as it is decoded, with `lsn` zero, so its work overlaps the server's. One that
    /// does gets a transaction's events after its Commit, from the relay's spool.
    var needsCommitLSN: Bool { get }

    /// Writes an event that waits in the spool for its commit. The default keeps the whole
    /// event; a sink may write it already rendered, so `sendSpooled` is little more than a copy.
    func spool(_ event: OutboxEvent, into record: inout [UInt8])

    /// Accepts a spooled event, now that its commit LSN is known. The bytes are those
    /// `spool(_:into:)` wrote, valid only during the call.
    func sendSpooled(_ record: UnsafeRawBufferPointer, lsn: LSN, ticket: UInt64) throws(SinkError)

    /// Makes progress (flushes, reads acknowledgements) and reports each finished ticket.
    func poll(_ report: (SinkCompletion) -> Void) throws(SinkError)

    /// A descriptor that becomes readable when `poll` has something to report, if the sink
    /// completes deliveries asynchronously.
    var wakeupDescriptor: Int32? { get }

    /// Flushes what it can and releases resources.
    func close()
}

extension Sink {
    public var needsCommitLSN: Bool { true }

    public func spool(_ event: OutboxEvent, into record: inout [UInt8]) {
        SpooledEvent.encode(event, into: &record)
    }

    public func sendSpooled(_ record: UnsafeRawBufferPointer, lsn: LSN, ticket: UInt64) throws(SinkError) {
        try send(SpooledEvent.event(record, lsn: lsn), ticket: ticket)
    }
}

extension SpooledEvent {
    /// The event in a record `encode` wrote, for a sink's `sendSpooled`.
    static func event(_ record: UnsafeRawBufferPointer, lsn: LSN) throws(SinkError) -> OutboxEvent {
        guard let event = decode(record, lsn: lsn) else {
            throw SinkError(.permanent, "the event spool is damaged (a record of \(record.count) bytes does not decode)")
        }
        return event
    }
}

public enum SinkCompletion: Sendable {
    case delivered(ticket: UInt64)
    case failed(ticket: UInt64, SinkError)
}

/// A delivery failure. Transient failures are retried by the sink itself; what reaches the
/// relay is permanent for that event.
public struct SinkError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case transient, permanent }
    public var kind: Kind
    public var message: String
    public var eventID: String?
    public var topic: String?

    public init(_ kind: Kind, _ message: String, eventID: String? = nil, topic: String? = nil) {
        self.kind = kind
        self.message = message
        self.eventID = eventID
        self.topic = topic
    }

    public var description: String {
        var text = "sink failed"
        if let eventID { text += " on event \"\(eventID)\"" }
        if let topic { text += " for topic \"\(topic)\"" }
        return text + ": " + message
    }
}
