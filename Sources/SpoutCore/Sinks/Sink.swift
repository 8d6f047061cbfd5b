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
    /// does gets a transaction's events after its Commit (the relay keeps them meanwhile;
    /// a sink that is also `PreCommitEncoding` encodes them as they are decoded).
    var needsCommitLSN: Bool { get }

    /// Makes progress (flushes, reads acknowledgements) and reports each finished ticket.
    func poll(_ report: (SinkCompletion) -> Void) throws(SinkError)

    /// A descriptor that becomes readable when `poll` has something to report, if the sink
    /// completes deliveries asynchronously.
    var wakeupDescriptor: Int32? { get }

    /// All descriptors to wait on (issue 14: several sinks; default: `wakeupDescriptor`).
    var wakeupDescriptors: [Int32] { get }

    /// Who holds the unacknowledged events, for the stop's log (issue 14: several sinks; default nil).
    var pendingSummary: String? { get }

    /// The sink's name in metrics (the `sink` dimension): stdout, redis, nats, kafka.
    var metricsName: String { get }

    /// Flushes what it can and releases resources.
    func close()

    /// What to do with an event it refuses for good (`--on-poison`), and how often to retry
    /// one it refuses for now (`--max-retries`, nil: for ever), told once before any event. By
    /// default a refusal fails the event and stops the relay (`stop`).
    func adopt(_ policy: PoisonPolicy, maxRetries: Int?)
}

extension Sink {
    public var needsCommitLSN: Bool { true }

    // issue 14: several sinks
    /// Every descriptor the relay waits on for this sink: a composite (`RoutedSink`) has one
    /// per member; `wakeupDescriptor` is non-nil only when all of them have one.
    public var wakeupDescriptors: [Int32] { wakeupDescriptor.map { [$0] } ?? [] }

    /// Which part of the sink holds what is unacknowledged (a composite names the member with
    /// the oldest event), for the stop's log line; nil: nothing to add.
    public var pendingSummary: String? { nil }

    public func adopt(_ policy: PoisonPolicy, maxRetries: Int?) {}

    public var metricsName: String {
        // For a sink that does not say its own: the broker its type is named after
        // (NATSJetStreamSink → nats), else the type's name.
        let type = String(describing: Swift.type(of: self)).lowercased()
        for name in ["stdout", "redis", "nats", "kafka", "amqp", "stomp", "http"] where type.hasPrefix(name) { return name }
        return type.hasSuffix("sink") ? String(type.dropLast(4)) : type
    }
}

/// A sink that needs the commit LSN but can do most of its encoding without it: the relay
/// has it encode each event as soon as it is decoded, while the server is still sending the
/// transaction, and keeps the sink's bytes (in memory or its spool file) instead of the event.
/// After the Commit it hands them back with the LSN, so what is left is little more than a
/// copy. Optional: a sink without it gets the event itself, with its `lsn`, from `send`.
///
/// The bytes are the sink's own; the relay only frames and keeps them, in commit order, on
/// the relay's thread like every other call.
public protocol PreCommitEncoding: Sink {
    /// Appends `event`'s encoding, without its commit LSN (`lsn` is zero), to `record`.
    func encode(_ event: OutboxEvent, into record: inout [UInt8])

    /// Accepts an event `encode` wrote, now that its transaction's commit LSN is known, like
    /// `send`. The bytes are valid only during the call.
    func send(encoded record: UnsafeRawBufferPointer, commitLSN: LSN, ticket: UInt64) throws(SinkError)
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
