@testable import SpoutCore
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
}
