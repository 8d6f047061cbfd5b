/// Placeholder until the redis sink lands.
public final class RedisStreamSink: Sink {
    public init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        throw .invalidOption("the redis sink is not available in this build yet: use stdout://")
    }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {}
    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {}
    public var wakeupDescriptor: Int32? { nil }
    public func close() {}
}
