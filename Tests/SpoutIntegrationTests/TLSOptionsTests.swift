import Foundation
import XCTest

/// The sinks' common TLS options (issue 15) as `spout run --check-config` and a start see them:
/// every problem with the files is an error at once, naming the option; the report shows the
/// paths, never the contents; the insecure switch and unused options are warned about.
final class TLSOptionsTests: XCTestCase {
    func testOptionErrorsNameTheOption() throws {
        let certificates = try TestCertificates.shared()
        let missing = "/nonexistent/ca.pem"
        let garbage = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-pem-\(getpid()).txt")
        try Data("hello\n".utf8).write(to: garbage)
        defer { try? FileManager.default.removeItem(at: garbage) }
        let https = "https://127.0.0.1:9/hooks"
        let cases: [([String], [String: String], String)] = [
            (["--sink-ca-file", missing], [:], "--sink-ca-file \(missing) is not a file"),
            ([], ["SPOUT_SINK_CA_FILE": missing], "SPOUT_SINK_CA_FILE=\(missing) is not a file"),
            (["--sink-cert-file", certificates.client], [:], "--sink-cert-file: needs --sink-key-file"),
            (["--sink-key-file", certificates.clientKey], [:], "--sink-key-file: needs --sink-cert-file"),
            (["--sink-ca-file", garbage.path], [:], "--sink-ca-file \(garbage.path): no CA certificate could be read"),
            (["--sink-cert-file", certificates.client, "--sink-key-file", certificates.serverKey], [:], "is not the private key of --sink-cert-file"),
        ]
        for (options, environment, expected) in cases {
            let result = try SpoutProcess.run(["run", "--check-config", "--sink", https] + options, environment: environment)
            XCTAssertEqual(result.status, 64, "\(options) \(environment): \(result.stderr)")
            XCTAssertTrue(result.stderr.contains(expected), "\(options) \(environment): \(result.stderr)")
            let key = try String(contentsOfFile: certificates.clientKey, encoding: .utf8)
            XCTAssertFalse(result.stderr.contains(String(key.split(separator: "\n")[1])), "no key material")
        }
    }

    func testReportShowsPathsAndWarnings() throws {
        let certificates = try TestCertificates.shared()
        let report = try SpoutProcess.run(["run", "--check-config", "--sink", "https://127.0.0.1:9/hooks", "--sink-ca-file", certificates.ca,
                                           "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey])
        XCTAssertEqual(report.status, 0, report.stderr)
        for line in ["sink-ca-file = \(certificates.ca)", "sink-cert-file = \(certificates.client)", "sink-key-file = \(certificates.clientKey)",
                     "sink-insecure-skip-verify = false"] {
            XCTAssertTrue(report.stdout.contains(line), report.stdout)
        }
        // A start with the insecure switch and a plain sink: both warnings.
        let outbox = try OutboxFixture("tlsunused")
        defer { outbox.tearDown() }
        let run = try SpoutProcess(["run", "--sink", "stdout://", "--sink-insecure-skip-verify"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        XCTAssertTrue(run.stderr.contains("NOT verified") && run.stderr.contains("the --sink-* TLS options are unused"), run.stderr)
        run.signal(SIGTERM)
        XCTAssertEqual(run.waitForExit(), 0, run.stderr)
    }
}
