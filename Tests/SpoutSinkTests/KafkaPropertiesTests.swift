import CRdKafka
@testable import SpoutCore
@testable import SpoutKafka
import XCTest

/// The librdkafka configuration spout hands over: its defaults first, then the user's
/// properties verbatim, so librdkafka applies the user's value last.
final class KafkaPropertiesTests: XCTestCase {
    private func value(_ name: String, in properties: [(name: String, value: String)]) -> String? {
        properties.last { $0.name == name }?.value
    }

    func testDefaults() throws {
        let properties = try KafkaSink.properties(bootstrap: "b:9092", user: [])
        XCTAssertEqual(value("bootstrap.servers", in: properties), "b:9092")
        XCTAssertEqual(value("acks", in: properties), "all")
        XCTAssertEqual(value("enable.idempotence", in: properties), "true")
        XCTAssertEqual(value("message.timeout.ms", in: properties), "0")
        XCTAssertEqual(value("linger.ms", in: properties), "1", "not librdkafka's 5 ms")
        XCTAssertEqual(value("socket.nagle.disable", in: properties), "true")
        XCTAssertNil(value("max.in.flight.requests.per.connection", in: properties), "idempotence keeps order with 5 in flight")
    }

    func testUserPropertiesComeLastAndWin() throws {
        let properties = try KafkaSink.properties(bootstrap: "b:9092", user: [("linger.ms", "20"), ("enable.idempotence", "false")])
        XCTAssertEqual(value("linger.ms", in: properties), "20")
        XCTAssertEqual(value("max.in.flight.requests.per.connection", in: properties), "1",
                       "without idempotence, one request in flight keeps retries in order")
        XCTAssertThrowsError(try KafkaSink.properties(bootstrap: "b:9092", user: [("transactional.id", "x")]))
    }

    /// librdkafka never times a message out itself (it would drop it and still write the later
    /// ones of its partition); the user's message.timeout.ms is the sink's own.
    func testMessageTimeoutIsTheSinksOwn() throws {
        let user = [("message.timeout.ms", "800"), ("linger.ms", "5")]
        let properties = try KafkaSink.properties(bootstrap: "b:9092", user: user)
        XCTAssertEqual(properties.filter { $0.name == "message.timeout.ms" }.map(\.value), ["0"])
        XCTAssertEqual(value("linger.ms", in: properties), "5")
        XCTAssertEqual(try KafkaSink.messageTimeout(user), 800)
        XCTAssertEqual(try KafkaSink.messageTimeout([("message.timeout.ms", "800"), ("delivery.timeout.ms", "300")]), 300, "the alias, last one wins")
        XCTAssertFalse(try KafkaSink.properties(bootstrap: "b:9092", user: [("delivery.timeout.ms", "300")]).contains { $0.name == "delivery.timeout.ms" })
        XCTAssertNil(try KafkaSink.messageTimeout([]))
        XCTAssertNil(try KafkaSink.messageTimeout([("message.timeout.ms", "0")]), "0 is no timeout")
        XCTAssertThrowsError(try KafkaSink.messageTimeout([("message.timeout.ms", "soon")]))
        XCTAssertThrowsError(try KafkaSink.messageTimeout([("delivery.timeout.ms", "-1")]))
    }

    // issue 15: Kafka over TLS
    /// The common TLS options become librdkafka's ssl.* properties over ssl and sasl_ssl; an
    /// explicit --kafka-property wins; hostname verification stays librdkafka's default (https).
    func testTLSOptionsMapOntoLibrdkafka() throws {
        let tls = SinkTLS(caFile: "/etc/spout/ca.pem", certFile: "/etc/spout/client.pem", keyFile: "/etc/spout/client.key")
        for protocolName in ["ssl", "SASL_SSL"] {
            let properties = try KafkaSink.properties(bootstrap: "b:9093", user: [("security.protocol", protocolName)], tls: tls)
            XCTAssertEqual(value("ssl.ca.location", in: properties), "/etc/spout/ca.pem", protocolName)
            XCTAssertEqual(value("ssl.certificate.location", in: properties), "/etc/spout/client.pem", protocolName)
            XCTAssertEqual(value("ssl.key.location", in: properties), "/etc/spout/client.key", protocolName)
            XCTAssertNil(value("enable.ssl.certificate.verification", in: properties), "verification stays on")
            XCTAssertNil(value("ssl.endpoint.identification.algorithm", in: properties), "librdkafka 2.0's default is https")
        }
        let explicit = try KafkaSink.properties(bootstrap: "b:9093", user: [("security.protocol", "ssl"), ("ssl.ca.location", "/other/ca.pem")], tls: tls)
        XCTAssertEqual(value("ssl.ca.location", in: explicit), "/other/ca.pem", "an explicit --kafka-property wins")

        let insecure = try KafkaSink.properties(bootstrap: "b:9093", user: [("security.protocol", "ssl")], tls: SinkTLS(insecureSkipVerify: true))
        XCTAssertEqual(value("enable.ssl.certificate.verification", in: insecure), "false")
        XCTAssertEqual(value("ssl.endpoint.identification.algorithm", in: insecure), "none")
        XCTAssertNil(value("ssl.ca.location", in: insecure))

        for user in [[], [("security.protocol", "plaintext")], [("security.protocol", "sasl_plaintext")]] {
            let plain = try KafkaSink.properties(bootstrap: "b:9092", user: user, tls: tls)
            XCTAssertFalse(plain.contains { $0.name.hasPrefix("ssl.") }, "no ssl.* without TLS: \(user)")
        }
    }

    /// TLS options on a plain-text sink would do nothing: a warning names the property to set.
    func testTLSOptionsWithoutTLSWarn() {
        let tls = SinkTLS(caFile: "/etc/spout/ca.pem")
        let warning = KafkaSink.plaintextTLSWarning(user: [], tls: tls)
        XCTAssertTrue(warning?.contains("--kafka-property security.protocol=ssl") == true, warning ?? "no warning")
        XCTAssertTrue(warning?.contains("security.protocol=plaintext") == true, warning ?? "no warning")
        XCTAssertNil(KafkaSink.plaintextTLSWarning(user: [("security.protocol", "SSL")], tls: tls))
        XCTAssertNil(KafkaSink.plaintextTLSWarning(user: [], tls: SinkTLS()), "no TLS options, nothing to say")
    }

    /// librdkafka's TLS failures get the option that fixes them.
    func testTLSFailuresNameTheFix() {
        func fix(_ reason: String, _ code: rd_kafka_resp_err_t = RD_KAFKA_RESP_ERR__SSL) -> String {
            KafkaAdapter.tlsFix(KafkaProducerHandle.ClientError(code: code, reason: reason)) ?? "nil"
        }
        XCTAssertTrue(fix("ssl://h:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
                          + "broker certificate could not be verified").contains("--sink-ca-file"))
        XCTAssertTrue(fix("ssl://h:9093/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
                          RD_KAFKA_RESP_ERR__TRANSPORT).contains("does not speak TLS"))
        XCTAssertTrue(fix("ssl://h:9093/bootstrap: Disconnected (after 0ms in state SSL_HANDSHAKE)", RD_KAFKA_RESP_ERR__TRANSPORT)
            .contains("does not speak TLS"))
        XCTAssertEqual(fix("ssl://h:9093/1: Disconnected (after 5000ms in state UP)", RD_KAFKA_RESP_ERR__TRANSPORT), "nil", "an outage")
        XCTAssertTrue(fix("SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: certificate has expired").contains("expired"))
        XCTAssertTrue(fix("SSL handshake failed: ssl/tls alert certificate required: client SSL authentication might be required")
            .contains("--sink-cert-file"))
        XCTAssertEqual(fix("Connect to ipv4#127.0.0.1:9 failed: Connection refused", RD_KAFKA_RESP_ERR__TRANSPORT), "nil")
    }

    /// Retries librdkafka gives up on drop a message while later ones are still written.
    func testFiniteRetriesAreRefused() throws {
        XCTAssertThrowsError(try KafkaSink.properties(bootstrap: "b:9092", user: [("retries", "3")]))
        XCTAssertThrowsError(try KafkaSink.properties(bootstrap: "b:9092", user: [("message.send.max.retries", "0")]))
        XCTAssertNoThrow(try KafkaSink.properties(bootstrap: "b:9092", user: [("retries", "2147483647")]))
    }

    /// The URL names brokers only, with `SinkURL`'s syntax; librdkafka gets `host:port,…`.
    func testBootstrapServers() throws {
        XCTAssertEqual(try KafkaSink.bootstrapServers("kafka://h1:9093,h2/"), "h1:9093,h2:9092")
        XCTAssertEqual(try KafkaSink.bootstrapServers("kafka://[::1]:19092"), "[::1]:19092")
        for (url, expected) in [
            ("kafka://u:s3cret@h", "librdkafka properties"), ("kafka://h/topic", "brokers only"), ("kafka://h?acks=1", "brokers only"),
            ("kafka://h,,x", "host"), ("kafka://h:0", "port"), ("nats://h", "kafka://"),
        ] {
            XCTAssertThrowsError(try KafkaSink.bootstrapServers(url), url) { error in
                guard case let SpoutError.invalidOption(message) = error else { return XCTFail("\(url): \(error)") }
                XCTAssertTrue(message.contains(expected), "\(url): \(message)")
                XCTAssertFalse(message.contains("s3cret"), "\(url): \(message)")
            }
        }
    }
}
