@testable import SpoutCore
import Foundation
import XCTest

/// Passwords out of text bound for logs (DESIGN §4), and no trap on extreme option values.
final class RedactionTests: XCTestCase {
    private let secret = "S3ntinelPw"

    func testURLsLoseTheirCredentials() {
        let cases: [(String, String)] = [
            ("redis://:\(secret)@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user:\(secret)@h", "redis://user:***@h"),
            ("nats://\(secret)@h:4222", "nats://***@h:4222"),
            ("nats://u:\(secret)@h,h2", "nats://u:***@h,h2"),
            ("redis:/:\(secret)@h", "redis:/:***@h"),
            ("kafka://u:pa@ss\(secret)@h", "kafka://u:***@h"),
            ("stdout://", "stdout://"),
            ("nats://h:4222", "nats://h:4222"),
        ]
        for (url, expected) in cases { XCTAssertEqual(Redaction.url(url), expected, url) }
    }

    func testConnectionStringsLoseTheirPasswords() {
        let cases: [(String, String)] = [
            ("postgresql://spout:\(secret)@db/app", "postgresql://spout:***@db/app"),
            ("postgresql://spout@db/app", "postgresql://spout@db/app"),
            ("postgres://x:sek/\(secret)@host/db", "postgres://x:***@host/db"),
            ("postgres://x:\(secret)@[::1/db", "postgres://x:***@[::1/db"),
            ("postgresql://x@h/db?password=\(secret)&sslmode=require", "postgresql://x@h/db?password=***&sslmode=require"),
            ("postgresql://x:p?\(secret)@h/db", "postgresql://x:***@h/db"),
            ("host=h password=\(secret) dbname=d", "host=h password=*** dbname=d"),
            ("host=h password = '\(secret) \\' x' dbname=d", "host=h password = *** dbname=d"),
            ("host=h password='\(secret)", "host=h password=***"),
            ("host=h sslpassword=\(secret)", "host=h sslpassword=***"),
            // issue 15: the client key's passphrase in a URL with the other ssl parameters
            ("postgresql://x@h/db?sslmode=verify-full&sslpassword=\(secret)&sslkey=/k", "postgresql://x@h/db?sslmode=verify-full&sslpassword=***&sslkey=/k"),
            ("postgresql://h:5432/db?application_name=a@b", "postgresql://h:5432/db?application_name=a@b"),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(Redaction.conninfo(text), expected, text)
            XCTAssertFalse(Redaction.scrub("echo: \(text)", secrets: Redaction.secrets(in: text)).contains(secret), text)
        }
    }

    func testPropertiesAndFreeText() {
        XCTAssertEqual(Redaction.assignments("sasl.password:\(secret)").text, "sasl.password:***")
        XCTAssertEqual(Redaction.assignments("linger.ms=5 sasl.password=\(secret)").text, "linger.ms=5 sasl.password=***")
        XCTAssertEqual(Redaction.assignments("host:6379").text, "host:6379")
        // libpq quotes a decoded or partial password; the decoded form is a secret too.
        let secrets = Redaction.secrets(in: "postgres://x:\(secret)%41@h/db")
        XCTAssertEqual(Redaction.scrub("token \"\(secret)A\" and \"\(secret)%41\"", secrets: secrets), "token \"***\" and \"***\"")
        // Too short to scrub from free text without garbling it.
        XCTAssertEqual(Redaction.scrub("a bad value", secrets: ["a", "ba"]), "a bad value")
    }

    /// libpq refuses these before connecting, and its message echoes the input.
    func testConnectionErrorsNeverShowThePassword() {
        let port = 9
        for conninfo in ["postgres://x:\(secret)%zz@127.0.0.1:\(port)/db", "postgres://x:\(secret)%00@127.0.0.1:\(port)/db",
                         "postgres://x:\(secret)@[::1/db", "postgres://x:sek/\(secret)@127.0.0.1:\(port)/db",
                         "postgres://x:p?\(secret)@[::1/db", "host=127.0.0.1 port=\(port) password='\(secret)",
                         "postgresql://x@127.0.0.1:\(port)/db?password=\(secret)&y=%zz"] {
            XCTAssertThrowsError(try PostgresConnection(conninfo), conninfo) { error in
                XCTAssertFalse("\(error)".contains(secret), "\(error)")
                XCTAssertEqual((error as? SpoutError)?.exitCode, 64, "\(error)")
            }
            XCTAssertFalse(PostgresConnection.describe(conninfo).contains(secret), conninfo)
        }
    }

    /// Before the clamp, `2 * memoryLimit` trapped once the front buffer had drained.
    func testSpoolTakesAnyMemoryLimit() throws {
        for limit in [Int.min, -1, 0, 1 << 62, Int.max] {
            let spool = EventSpool(memoryLimit: limit)
            for round in 0..<3 {
                let event = OutboxEvent(id: "\(round)", topic: "t", key: nil, type: nil, payload: [1, 2, UInt8(round)], payloadFormat: .binary,
                                        headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))
                try spool.append(event)
                XCTAssertEqual(try spool.pop()?.event, event)
            }
        }
    }

    func testJSONObjectsEscapeEveryString() throws {
        let text = JSONWriter.object([("database", .string("we\"ird\\db\n")), ("pid", .integer(-42)), ("active", .bool(true)),
                                      ("wal", .null), ("big", .integer(Int64.min))])
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(object["database"] as? String, "we\"ird\\db\n")
        XCTAssertEqual(object["pid"] as? Int, -42)
        XCTAssertEqual(object["active"] as? Bool, true)
        XCTAssertTrue(object["wal"] is NSNull)
        XCTAssertTrue(text.hasSuffix("\"big\":-9223372036854775808}"), text)
    }
}
