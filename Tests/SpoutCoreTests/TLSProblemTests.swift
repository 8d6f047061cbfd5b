@testable import SpoutCore
import XCTest

// issue 15: PostgreSQL over TLS
/// libpq's TLS failures (its words, PostgreSQL 15's libpq with OpenSSL 3, as
/// PostgresTLSTests sees them from a real server) get the problem in plain words and the fix.
final class TLSProblemTests: XCTestCase {
    private func fix(_ message: String) -> String { TLSProblem(libpqMessage: message)?.description ?? "nil" }

    func testEachLibpqFailureGetsItsFix() {
        let server = "connection to server at \"127.0.0.1\", port 5432 failed: "
        let cases: [(message: String, words: [String])] = [
            ("SSL error: certificate verify failed", ["not signed by a CA spout trusts", "expired", "sslrootcert="]),
            ("server certificate for \"localhost\" (and 1 other name) does not match host name \"wrong.invalid\"",
             ["not valid for this host name", "a name the certificate lists", "sslmode=verify-ca"]),
            ("FATAL:  connection requires a valid client certificate", ["requires a client certificate", "sslcert=", "sslkey="]),
            ("FATAL:  certificate authentication failed for user \"spout\"", ["refused our client certificate", "sslcert="]),
            ("SSL error: tlsv1 alert unknown ca", ["refused our client certificate", "ssl_ca_file"]),
            ("root certificate file \"/root/.postgresql/root.crt\" does not exist; Either provide the file or change sslmode",
             ["needs the CA", "sslrootcert="]),
            ("server does not support SSL, but SSL was required", ["does not speak TLS on this port", "sslmode"]),
            ("FATAL:  no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption",
             ["only encrypted connections", "sslmode=verify-full"]),
            ("FATAL:  no pg_hba.conf entry for host \"127.0.0.1\", user \"x\", database \"postgres\", SSL encryption",
             ["no line for this user and database over TLS", "hostssl"]),
            ("could not open certificate file \"/nope/client.crt\": No such file or directory", ["sslcert=", "0600"]),
        ]
        for (message, words) in cases {
            let text = fix(server + message)
            for word in words { XCTAssertTrue(text.contains(word), "\(message): \(word) missing in \(text)") }
        }
    }

    func testOtherFailuresAreLeftAlone() {
        XCTAssertNil(TLSProblem(libpqMessage: "connection to server at \"127.0.0.1\", port 9 failed: Connection refused"))
        XCTAssertNil(TLSProblem(libpqMessage: "FATAL:  password authentication failed for user \"spout\""))
        XCTAssertNil(TLSProblem(libpqMessage: "FATAL:  no pg_hba.conf entry for host \"ssl.example.com\", user \"x\", database \"y\", GSS encryption"))
    }
}
