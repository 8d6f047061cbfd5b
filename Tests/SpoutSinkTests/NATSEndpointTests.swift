@testable import SpoutCore
@testable import SpoutNATS
import XCTest

/// What the NATS sink reads from its URL (`SinkURL`'s syntax): the servers with their
/// default port, the credentials, and a redacted form for logs.
final class NATSEndpointTests: XCTestCase {
    func testServersAndCredentials() throws {
        let plain = try NATSEndpoint("nats://h")
        XCTAssertEqual(plain.servers, ["nats://h:4222"])
        XCTAssertEqual(plain.credentials, .none)
        XCTAssertEqual(try NATSEndpoint("nats://h/").servers, ["nats://h:4222"], "a trailing / is harmless")

        let list = try NATSEndpoint("NATS://us%40er:p%3Ass@h1:4223, nats://[::1],h3:1")
        XCTAssertEqual(list.servers, ["nats://h1:4223", "nats://[::1]:4222", "nats://h3:1"], "in the order given")
        XCTAssertEqual(list.credentials, .user("us@er", password: "p:ss"))
        XCTAssertEqual(list.redacted, "nats://us@er:***@h1:4223,[::1]:4222,h3:1")

        let token = try NATSEndpoint("nats://s3cret@h:4222")
        XCTAssertEqual(token.credentials, .token("s3cret"))
        XCTAssertEqual(token.redacted, "nats://***@h:4222")
    }

    // issue 15: TLS
    func testTLSSchemes() throws {
        XCTAssertFalse(try NATSEndpoint("nats://h").secure)
        let secure = try NATSEndpoint("tls://u:s3cret@h1,h2:4333")
        XCTAssertTrue(secure.secure)
        XCTAssertEqual(secure.servers, ["nats://h1:4222", "nats://h2:4333"], "libnats gets nats:// URLs and the secure option")
        XCTAssertEqual(secure.hosts, ["h1", "h2"])
        XCTAssertEqual(secure.redacted, "tls://u:***@h1:4222,h2:4333")
        XCTAssertTrue(try NATSEndpoint("nats+tls://h").secure)
    }

    func testBadURLsAreRejectedWithoutTheirSecrets() {
        for (url, expected) in [
            ("nats://", "host"), ("nats://h:notaport", "port"), ("nats://h:70000", "port"), ("nats://h1,h2:1,", "host"),
            ("nats://a/b", "servers only"), ("nats://h?x=1", "query"), ("nats://:s3cret@h", "user name is empty"),
            ("nats://@h", "empty credentials"), ("nats://u:s3cret@h,redis://h2", "nats://"), ("redis://u:s3cret@h", "nats://"),
        ] {
            XCTAssertThrowsError(try NATSEndpoint(url), url) { error in
                guard case let SpoutError.invalidOption(message) = error else { return XCTFail("\(url): \(error)") }
                XCTAssertTrue(message.contains(expected), "\(url): \(message)")
                XCTAssertFalse(message.contains("s3cret"), "\(url): \(message)")
            }
        }
    }
}
