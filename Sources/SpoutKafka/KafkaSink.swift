import SpoutCore
import CoreMetrics
import CRdKafka

/// Publishes events to Kafka through librdkafka: topic = the event's topic, key = its key,
/// value = the payload bytes as stored, headers = the event's headers plus `id` and `type`
/// (with `--envelope cloudevents`: the CloudEvents Kafka binding's binary mode, `ce_*` headers).
///
/// The delivery engine holds the events, backs off and reports outages;
/// `KafkaAdapter` produces, reads delivery reports and classifies errors. Here: the
/// URL and the librdkafka properties spout sets, refuses or applies itself.
public final class KafkaSink: DeliveryEngine {
    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let brokers = try Self.bootstrapServers(url)
        let properties = try Self.properties(bootstrap: brokers, user: options.kafkaProperties, tls: options.tls)
        if let warning = Self.plaintextTLSWarning(user: options.kafkaProperties, tls: options.tls) { log.warning(warning) }
        let producer = try KafkaProducerHandle(properties: properties, cloudEvents: options.cloudEvents, log: log)
        let adapter = KafkaAdapter(producer: producer, messageTimeout: try Self.messageTimeout(options.kafkaProperties), log: log)
        // Producing again after a retriable error: 100 ms doubling to 10 s.
        try super.init(adapter: adapter, capacity: min(options.maxInFlightEvents, 1 << 16), backoff: RetryBackoff(ceiling: .seconds(10)),
                       log: log, metrics: metrics)
        log.debug("kafka sink: bootstrap \(brokers)")
    }

    // MARK: Configuration

    /// librdkafka's port where a broker names none.
    static let defaultPort = 9092

    /// `kafka://host[:port][,host[:port]]` → `host:port,host:port`. The syntax is `SinkURL`'s.
    package static func bootstrapServers(_ text: String) throws(SpoutError) -> String {
        let example = "kafka://host:9092[,host2:9092]"
        let url = try SinkURL(text, usage: example)
        func invalid(_ problem: String) -> SpoutError {
            .invalidOption("--sink \(url): \(problem) (expected \(example))")
        }
        guard url.scheme == "kafka" else { throw invalid("not a kafka:// URL") }
        if url.user != nil {
            throw invalid("put Kafka credentials in librdkafka properties, not in the URL "
                          + "(--kafka-property security.protocol=SASL_SSL --kafka-property sasl.mechanisms=PLAIN "
                          + "--kafka-property sasl.username=... --kafka-property sasl.password=...)")
        }
        // A trailing / is harmless.
        if !(url.path ?? "").isEmpty || !url.query.isEmpty {
            throw invalid("a Kafka URL names brokers only; topics come from --topic, settings from --kafka-property")
        }
        return url.servers.map { $0.address(defaultPort: defaultPort) }.joined(separator: ",")
    }

    /// librdkafka's names for its message timeout; the sink applies it itself.
    static let messageTimeoutNames: Set<String> = ["message.timeout.ms", "delivery.timeout.ms"]

    /// spout's defaults, then the user's properties verbatim (so any default can be overridden),
    /// except the message timeout, which stays 0 for librdkafka (see `messageTimeout(_:)`).
    package static func properties(bootstrap: String, user: [(name: String, value: String)],
                                   tls: SinkTLS = SinkTLS()) throws(SpoutError) -> [(name: String, value: String)] {
        for (name, value) in user {
            switch name {
            case "delivery.report.only.error" where value.lowercased() == "true":
                throw .invalidOption("--kafka-property delivery.report.only.error=true cannot be used: spout acknowledges events on their delivery reports")
            case "transactional.id":
                throw .invalidOption("--kafka-property transactional.id is not supported: spout uses the idempotent producer, not transactions")
            case "retries" where value.trimmingCharacters(in: .whitespaces) != "2147483647",
                 "message.send.max.retries" where value.trimmingCharacters(in: .whitespaces) != "2147483647":
                // A message librdkafka stops retrying is dropped while the later ones of its
                // partition are still written: produced again, it would land after them.
                throw .invalidOption("--kafka-property \(name) cannot be used: librdkafka must retry until the brokers answer, "
                                     + "or later events overtake the one it gave up on; spout retries transient errors itself, in order")
            default:
                break
            }
        }
        var properties: [(name: String, value: String)] = [
            ("bootstrap.servers", bootstrap),
            ("client.id", "spout"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            // Keys map to the partitions Java clients (Kafka Streams, Connect) pick.
            ("partitioner", "murmur2_random"),
            // No local timeout: a down broker makes events wait (the slot does not advance),
            // never fail; librdkafka keeps retrying in order.
            ("message.timeout.ms", "0"),
            // Idle connections closed by brokers are not trouble worth a warning.
            ("log.connection.close", "false"),
            // Nagle's algorithm can hold a small produce request back until the previous one is
            // acknowledged; at a steady trickle of events that is added latency for nothing.
            ("socket.nagle.disable", "true"),
            // librdkafka holds a message up to linger.ms (its default: 5 ms) to batch it with
            // the next ones. Outbox events mostly come one at a time, and a backlog batches
            // itself while requests are in flight: 1 ms keeps drains as fast and single events
            // 4 ms sooner.
            ("linger.ms", "1"),
        ]
        properties.append(contentsOf: tlsProperties(user: user, tls: tls))
        properties.append(contentsOf: user.filter { !messageTimeoutNames.contains($0.name) })
        // Without idempotence, retries reorder unless one request is in flight at a time.
        let idempotent = user.last { $0.name == "enable.idempotence" }.map { $0.value.lowercased() != "false" } ?? true
        if !idempotent, !user.contains(where: { $0.name == "max.in.flight.requests.per.connection" || $0.name == "max.in.flight" }) {
            properties.append(("max.in.flight.requests.per.connection", "1"))
        }
        return properties
    }

    // issue 15: Kafka over TLS
    /// The user's `security.protocol` (librdkafka's default: plaintext), lowercased.
    static func securityProtocol(_ user: [(name: String, value: String)]) -> String {
        user.last { $0.name == "security.protocol" }?.value.trimmingCharacters(in: .whitespaces).lowercased() ?? "plaintext"
    }

    static func usesTLS(_ user: [(name: String, value: String)]) -> Bool {
        ["ssl", "sasl_ssl"].contains(securityProtocol(user))
    }

    /// The common TLS options in librdkafka's names, for `security.protocol` ssl or sasl_ssl;
    /// they come before the user's properties, so an explicit --kafka-property wins. Host name
    /// verification is librdkafka's default since 2.0 (`ssl.endpoint.identification.algorithm=https`).
    package static func tlsProperties(user: [(name: String, value: String)], tls: SinkTLS) -> [(name: String, value: String)] {
        guard usesTLS(user) else { return [] }
        var properties: [(name: String, value: String)] = []
        if let ca = tls.caFile { properties.append(("ssl.ca.location", ca)) }
        if let certificate = tls.certFile { properties.append(("ssl.certificate.location", certificate)) }
        if let key = tls.keyFile { properties.append(("ssl.key.location", key)) }
        if tls.insecureSkipVerify {
            properties.append(("enable.ssl.certificate.verification", "false"))
            properties.append(("ssl.endpoint.identification.algorithm", "none"))
        }
        return properties
    }

    /// TLS options given to a sink that talks plain text: they would do nothing, silently.
    package static func plaintextTLSWarning(user: [(name: String, value: String)], tls: SinkTLS) -> String? {
        guard tls.isCustomized, !usesTLS(user) else { return nil }
        return "kafka: --sink-ca-file, --sink-cert-file, --sink-key-file and --sink-insecure-skip-verify apply only over TLS, "
            + "and this sink uses security.protocol=\(securityProtocol(user)): add --kafka-property security.protocol=ssl (or sasl_ssl)"
    }

    /// The user's `message.timeout.ms` (or its alias `delivery.timeout.ms`; the last one wins,
    /// as in librdkafka): how long the oldest event librdkafka holds may wait for its
    /// acknowledgement before the sink takes everything back and produces it again in order.
    /// nil (the default, or 0): never, librdkafka retries for as long as it takes.
    package static func messageTimeout(_ user: [(name: String, value: String)]) throws(SpoutError) -> Int? {
        guard let (name, value) = user.last(where: { messageTimeoutNames.contains($0.name) }) else { return nil }
        guard let milliseconds = Int(value.trimmingCharacters(in: .whitespaces)), (0...Int(Int32.max)).contains(milliseconds) else {
            throw .invalidOption("--kafka-property \(name)=\(value): expected milliseconds from 0 (no timeout) to 2147483647")
        }
        return milliseconds == 0 ? nil : milliseconds
    }
}
