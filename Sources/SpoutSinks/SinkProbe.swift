import SpoutAMQP
import SpoutCore
import SpoutKafka
import SpoutNATS
import SpoutRedis
import SpoutSTOMP
import SpoutHTTP // issue 14: HTTP

extension SinkRegistry {
    /// `spout check`'s lines for the sink: reachable and writable, each broker asked its own
    /// way (see `KafkaProbe`, `RedisProbe`, `NATSProbe`, `AMQPProbe`, `STOMPProbe`). A malformed URL or option throws,
    /// as `makeSink` would.
    public static func check(_ url: String, options: SinkOptions = SinkOptions(), topic: TopicTemplate) throws(SpoutError) -> [CheckResult] {
        try validate(url, options: options)
        guard let schemeEnd = url.range(of: "://") else { return [] }
        switch url[..<schemeEnd.lowerBound].lowercased() {
        case "kafka": return try KafkaProbe.check(url: url, options: options, topic: topic)
        case "redis", "rediss": return try RedisProbe.check(url: url, options: options, topic: topic)
        case "nats", "tls", "nats+tls": return try NATSProbe.check(url: url, options: options, topic: topic)
        case "amqp", "amqps": return try AMQPProbe.check(url: url, options: options)
        case "stomp", "stomp+ssl", "stomp+tls", "stomps": return try STOMPProbe.check(url: url, options: options)
        case "http", "https": return try HTTPProbe.check(url: url, options: options) // issue 14: HTTP
        default: return [.pass("sink", "stdout:// (always writable)")]
        }
    }
}
