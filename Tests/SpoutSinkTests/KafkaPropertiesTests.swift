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
