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
    /// The relay's in-flight window; sinks size their own queues from it.
    public var maxInFlightEvents = 10_000

    public init() {}
}

/// Sinks are named by URL: `stdout://`, `kafka://host:9092[,host:9092]`,
/// `redis://[:password@]host:6379[/db]`, `nats://host:4222`.
public enum SinkURL {
    public static func makeSink(_ url: String, options: SinkOptions = SinkOptions(), log: Log = Log()) throws(SpoutError) -> Sink {
        guard let schemeEnd = url.range(of: "://") else {
            throw .invalidOption("--sink \(redacted(url)) is not a sink URL: use stdout://, kafka://host:9092, redis://host:6379 or nats://host:4222")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "stdout":
            // stdout:// takes no host or settings: anything after it is a typo, not ignored.
            guard url[schemeEnd.upperBound...].isEmpty else {
                throw .invalidOption("--sink \(redacted(url)): stdout:// takes nothing after it; write just stdout://")
            }
            return StdoutSink()
        case "kafka":
            return try KafkaSink(url: url, options: options, log: log)
        case "redis":
            return try RedisStreamSink(url: url, options: options, log: log)
        case "nats":
            return try NATSJetStreamSink(url: url, options: options, log: log)
        default:
            throw .invalidOption("--sink \(redacted(url)) names an unknown sink \"\(scheme)://\": use stdout://, kafka://host:9092, redis://host:6379 or nats://host:4222")
        }
    }

    /// Checks a sink URL and its options as `makeSink` would, without connecting to anything
    /// (`spout run --check-config`).
    public static func validate(_ url: String, options: SinkOptions = SinkOptions()) throws(SpoutError) {
        guard let schemeEnd = url.range(of: "://") else { _ = try makeSink(url, options: options); return }
        switch url[..<schemeEnd.lowerBound].lowercased() {
        case "kafka":
            let properties = options.kafkaProperties.map { (name: $0.0, value: $0.1) }
            _ = try KafkaSink.properties(bootstrap: try KafkaSink.bootstrapServers(url), user: properties)
            _ = try KafkaSink.messageTimeout(properties)
        case "redis": _ = try RedisURL(parsing: url)
        case "nats": _ = try NATSEndpoint(url)
        default: _ = try makeSink(url, options: options)
        }
    }

    /// The URL without a password or token (`redis://:secret@host` → `redis://:***@host`).
    public static func redacted(_ url: String) -> String { Redaction.url(url) }
}
