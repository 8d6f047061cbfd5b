/// Placeholder until the nats sink lands.
public final class NATSJetStreamSink: Sink {
    public init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        throw .invalidOption("the nats sink is not available in this build yet: use stdout://")
    }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {}
    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {}
    public var wakeupDescriptor: Int32? { nil }
    public func close() {}
}
