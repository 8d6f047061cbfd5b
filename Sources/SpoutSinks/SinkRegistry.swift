import SpoutAMQP
import SpoutCore
import SpoutKafka
import SpoutNATS
import SpoutRedis
import SpoutSTOMP
import SpoutHTTP // issue 14: HTTP

/// Every sink by its URL scheme: the one place that knows them all, so SpoutCore and each
/// broker's target stay apart.
public enum SinkRegistry {
    public static func makeSink(_ url: String, options: SinkOptions = SinkOptions(), log: Log = Log()) throws(SpoutError) -> Sink {
        guard let schemeEnd = url.range(of: "://") else {
            throw .invalidOption("--sink \(SinkURL.redacted(url)) is not a sink URL: use stdout://, kafka://host:9092, redis://host:6379, nats://host:4222, amqp://user:password@host:5672/vhost, stomp://user:password@host:61613 or http://host:8080/path")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        switch scheme {
        case "stdout":
            // stdout:// takes no host or settings: anything after it is a typo, not ignored.
            guard url[schemeEnd.upperBound...].isEmpty else {
                throw .invalidOption("--sink \(SinkURL.redacted(url)): stdout:// takes nothing after it; write just stdout://")
            }
            return StdoutSink(cloudEvents: options.cloudEvents)
        case "kafka":
            return try KafkaSink(url: url, options: options, log: log)
        case "redis", "rediss":
            return try RedisStreamSink(url: url, options: options, log: log)
        case "nats", "tls", "nats+tls": // issue 15: tls:// is NATS over TLS
            return try NATSJetStreamSink(url: url, options: options, log: log)
        case "amqp", "amqps":
            return try AMQPSink(url: url, options: options, log: log)
        case "stomp", "stomp+ssl", "stomp+tls", "stomps":
            return try STOMPSink(url: url, options: options, log: log)
        case "http", "https": // issue 14: HTTP
            return try HTTPSink(url: url, options: options, log: log)
        default:
            throw .invalidOption("--sink \(SinkURL.redacted(url)) names an unknown sink \"\(scheme)://\": use stdout://, kafka://host:9092, redis://host:6379, nats://host:4222, amqp://user:password@host:5672/vhost, stomp://user:password@host:61613 or http://host:8080/path")
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
        case "redis", "rediss": try RedisStreamSink.validate(url: url, options: options)
        case "nats", "tls", "nats+tls": try NATSJetStreamSink.validate(url: url, options: options)
        case "amqp", "amqps": try AMQPSink.validate(url: url, options: options)
        case "stomp", "stomp+ssl", "stomp+tls", "stomps": try STOMPSink.validate(url: url, options: options)
        case "http", "https": try HTTPSink.validate(url: url, options: options) // issue 14: HTTP
        default: _ = try makeSink(url, options: options)
        }
    }
}
