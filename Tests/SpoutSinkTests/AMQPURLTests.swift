import XCTest
@testable import SpoutAMQP
@testable import SpoutCore

/// What the AMQP sink reads from its URL (`AMQPURL`), and the messages of URLs it refuses.
final class AMQPURLTests: XCTestCase {
    private func refusal(_ url: String) -> String {
        do {
            _ = try AMQPURL(parsing: url)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    func testParts() throws {
        let full = try AMQPURL(parsing: "amqp://us%40er:p%3As%2Fs@rabbit.local:5673/prod%2Forders")
        XCTAssertEqual(full.host, "rabbit.local")
        XCTAssertEqual(full.port, 5673)
        XCTAssertEqual(full.user, "us@er")
        XCTAssertEqual(full.password, "p:s/s")
        XCTAssertEqual(full.vhost, "prod/orders", "the vhost is percent-decoded")
        XCTAssertEqual(full.address, "rabbit.local:5673")
        XCTAssertFalse(full.described.contains("p:s/s"))

        let defaults = try AMQPURL(parsing: "AMQP://127.0.0.1")
        XCTAssertEqual(defaults.port, 5672)
        XCTAssertEqual(defaults.user, "guest", "RabbitMQ's default account")
        XCTAssertEqual(defaults.password, "guest")
        XCTAssertEqual(defaults.vhost, "/", "no path: the default vhost")
        XCTAssertEqual(try AMQPURL(parsing: "amqp://u:p@h/").vhost, "/", "an empty path: the default vhost")
        XCTAssertEqual(try AMQPURL(parsing: "amqp://u:p@h/%2F").vhost, "/")
        XCTAssertEqual(try AMQPURL(parsing: "amqp://u:p@h/staging").vhost, "staging")
        // issue 15: TLS
        let secure = try AMQPURL(parsing: "amqps://u:p@rabbit.local/")
        XCTAssertTrue(secure.tls)
        XCTAssertEqual(secure.port, 5671, "AMQPS' default port")
        XCTAssertFalse(defaults.tls)
        XCTAssertEqual(try AMQPURL(parsing: "amqps://u:p@h:5999").port, 5999)
        XCTAssertEqual(try AMQPURL(parsing: "amqp://u:@[::1]:5672").address, "[::1]:5672", "an empty password is the broker's to refuse")
    }

    func testRefusals() {
        XCTAssertTrue(refusal("amqps://u:secret@h?x=1").contains("query parameters are not supported"))
        XCTAssertFalse(refusal("amqps://u:secret@h?x=1").contains("secret"), "no password in the message")
        XCTAssertTrue(refusal("http://u:p@h").contains("not an amqp:// or amqps:// URL"))
        XCTAssertTrue(refusal("amqp://user@h").contains("the user has no password"))
        XCTAssertTrue(refusal("amqp://:pw@h").contains("the user name is empty"))
        XCTAssertTrue(refusal("amqp://u:p@a,b").contains("name one broker"))
        XCTAssertTrue(refusal("amqp://u:p@h/a/b").contains("write it as %2F"))
        XCTAssertTrue(refusal("amqp://u:p@h/%zz").contains("malformed %-escape"))
        XCTAssertTrue(refusal("amqp://u:p@h?heartbeat=5").contains("query parameters are not supported"))
        XCTAssertTrue(refusal("amqp://u:p@h:99999").contains("not a number from 1 to 65535"))
    }
}
