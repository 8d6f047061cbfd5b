import SpoutCore
import CRdKafka

/// `spout check` for a `kafka://` sink: the brokers answer a metadata request (with the
/// sink's librdkafka properties, so credentials and TLS are tried too), and the topic exists
/// when the template names one. Bounded by `timeoutMilliseconds`; nothing is produced.
public enum KafkaProbe {
    public static func check(url: String, options: SinkOptions, topic: TopicTemplate, timeoutMilliseconds: Int32 = 5_000) throws(SpoutError) -> [CheckResult] {
        let brokers = try KafkaSink.bootstrapServers(url)
        let properties = try KafkaSink.properties(bootstrap: brokers, user: options.kafkaProperties, tls: options.tls)
        guard let conf = rd_kafka_conf_new() else { return [.fail("sink", "librdkafka cannot allocate a configuration", fix: nil)] }
        var errorText = [CChar](repeating: 0, count: 512)
        func text(_ buffer: [CChar]) -> String { String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        for (name, value) in properties where rd_kafka_conf_set(conf, name, value, &errorText, errorText.count) != RD_KAFKA_CONF_OK {
            rd_kafka_conf_destroy(conf)
            throw .invalidOption("--kafka-property \(name): \(KafkaProducerHandle.redact(text(errorText), value: value, of: name))")
        }
        // librdkafka's own lines (connection refused, retries) would go to stderr: the checklist says it.
        rd_kafka_conf_set_log_cb(conf) { _, _, _, _ in }
        // issue 15: the errors librdkafka raised, served by rd_kafka_poll below: a TLS failure gets its fix.
        let errors = Unmanaged.passRetained(ProbeErrors())
        defer { errors.release() }
        rd_kafka_conf_set_opaque(conf, errors.toOpaque())
        rd_kafka_conf_set_error_cb(conf) { _, code, reason, opaque in
            guard let opaque else { return }
            Unmanaged<ProbeErrors>.fromOpaque(opaque).takeUnretainedValue().errors
                .append(KafkaProducerHandle.ClientError(code: rd_kafka_resp_err_t(rawValue: code), reason: reason.map { String(cString: $0) } ?? ""))
        }
        guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errorText, errorText.count) else {
            rd_kafka_conf_destroy(conf)
            var reason = text(errorText)
            for (name, value) in properties { reason = KafkaProducerHandle.redact(reason, value: value, of: name) }
            return [.fail("sink", "cannot start the Kafka client: \(reason)", fix: "fix the --kafka-property values")]
        }
        defer { rd_kafka_destroy(handle) }
        let named = topic.fixedTopic.flatMap { rd_kafka_topic_new(handle, $0, nil) }
        defer { if let named { rd_kafka_topic_destroy(named) } }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let code = rd_kafka_metadata(handle, 0, named, &metadata, Int32(timeoutMilliseconds))
        defer { if let metadata { rd_kafka_metadata_destroy(metadata) } }
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            func tlsFailure() -> (KafkaProducerHandle.ClientError, String)? {
                errors.takeUnretainedValue().errors.lazy.compactMap { error in KafkaAdapter.tlsFix(error).map { (error, $0) } }.first
            }
            rd_kafka_poll(handle, 0)
            // A connection that failed fast: librdkafka may report why a moment later.
            for _ in 0..<10 where code == RD_KAFKA_RESP_ERR__TRANSPORT && tlsFailure() == nil { rd_kafka_poll(handle, 100) }
            if let tls = tlsFailure() {
                return [.fail("sink", "Kafka at \(brokers): cannot connect over TLS: \(tls.0.reason)", fix: tls.1),
                        .skip("sink_write", because: "Kafka is not reachable")]
            }
            return [.fail("sink", "Kafka at \(brokers) did not answer a metadata request within \(timeoutMilliseconds / 1000) s: \(KafkaProducerHandle.describe(code))",
                          fix: "check the brokers in --sink, that they run and are reachable from here, and the security properties (--kafka-property)"),
                    .skip("sink_write", because: "Kafka is not reachable")]
        }
        let reachable = CheckResult.pass("sink", "Kafka at \(brokers): \(metadata.pointee.broker_cnt) broker\(metadata.pointee.broker_cnt == 1 ? "" : "s") in the cluster")
        guard let name = topic.fixedTopic else {
            return [reachable, .skip("sink_write", because: "the topics come from the rows (--topic \(topic)): each is checked when its first event is produced")]
        }
        guard metadata.pointee.topic_cnt > 0, let topics = metadata.pointee.topics else {
            return [reachable, .fail("sink_write", "Kafka returned no metadata for topic \(name)", fix: "create the topic \(name)")]
        }
        let found = topics[0]
        switch found.err {
        case RD_KAFKA_RESP_ERR_NO_ERROR:
            return [reachable, .pass("sink_write", "topic \(name) exists (\(found.partition_cnt) partition\(found.partition_cnt == 1 ? "" : "s"))")]
        case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
            return [reachable, .warn("sink_write", "topic \(name) has no leader yet (just created, or brokers down)")]
        case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
            return [reachable, .fail("sink_write", "not authorized for topic \(name)", fix: "grant this client WRITE and DESCRIBE on topic \(name) (kafka-acls --add --allow-principal … --producer --topic \(name))")]
        default:
            return [reachable, .fail("sink_write", "topic \(name): \(KafkaProducerHandle.describe(found.err))",
                                     fix: "create the topic (kafka-topics --create --topic \(name)), or enable auto.create.topics.enable on the brokers")]
        }
    }
}

/// The errors librdkafka reported while the probe waited (served on the probe's thread).
private final class ProbeErrors {
    var errors: [KafkaProducerHandle.ClientError] = []
}
