/// Settings of the broker sinks that are not part of their URL.
public struct SinkOptions: Sendable {
    public enum RedisIDs: String, Sendable, CaseIterable {
        /// `*`: Redis assigns time-based ids.
        case server
        /// Ids derived from the commit LSN and the event's position in its transaction.
        case lsn
    }

    /// librdkafka properties, passed through verbatim (`--kafka-property linger.ms=5`).
    public var kafkaProperties: [(name: String, value: String)] = []
    /// `XADD … MAXLEN ~ N` when set.
    public var redisMaxLength: Int?
    public var redisIDs: RedisIDs = .server
    /// Create a JetStream stream of this name covering the topics when none exists.
    public var natsCreateStream: String?
    // issue 13: CloudEvents envelope
    /// `--envelope cloudevents`: every sink wraps events in CloudEvents (nil: `none`, as they always were).
    public var cloudEvents: CloudEventEnvelope?
    // issue 14: AMQP sink
    /// The exchange events are published to, routing key = topic (`--amqp-exchange`).
    public var amqpExchange = "outbox"
    /// Declare it (a durable topic exchange) instead of only checking that it exists (`--amqp-declare`).
    public var amqpDeclare = false
    // issue 14: STOMP
    /// `--stomp-destination`: each SEND's destination, a template over the event.
    public var stompDestination = "/topic/{topic}"
    // issue 14: HTTP
    /// `--http-batch`: events per request (1: one event per request, more: a JSON array).
    public var httpBatch = 1
    /// `--http-timeout`: a request with no complete answer by then is retried.
    public var httpTimeout: Duration = .seconds(30)
    /// `--http-concurrency`: requests in flight at once, one per keep-alive connection.
    public var httpConcurrency = 4
    /// `--http-secret`: the Standard Webhooks signing secret (`whsec_…`); nil: unsigned.
    public var httpSecret: String?
    /// `--http-header 'Name: value'`: added to every request.
    public var httpHeaders: [(name: String, value: String)] = []
    // issue 15: TLS
    /// `--sink-ca-file`, `--sink-cert-file`, `--sink-key-file`, `--sink-insecure-skip-verify`: every TLS sink's.
    public var tls = SinkTLS()
    /// The relay's in-flight window; the delivery engine sizes its queue from it.
    public var maxInFlightEvents = 10_000

    public init() {}
}
