import Foundation
import SpoutCore
import XCTest

/// The HTTP sink over TLS (issue 15), through the `spout` executable against
/// Tests/python/webhook_receiver.py serving HTTPS (Python's ssl module) with the throwaway
/// certificates of scripts/tls-certs: events flow with a client certificate; an unknown CA, a
/// wrong host, an expired certificate and a missing client certificate each stop spout at
/// start with a line naming the problem and its fix; a receiver restart loses nothing.
final class HTTPSTests: XCTestCase {
    typealias Receiver = HTTPSinkTests.Receiver

    private func https(_ receiver: Receiver, host: String = "127.0.0.1") -> String { "https://\(host):\(receiver.port)/hooks" }

    private func serving(_ certificate: String, _ key: String, clientCA: String? = nil, port: Int? = nil) throws -> Receiver {
        try Receiver(["--tls-cert", certificate, "--tls-key", key] + (clientCA.map { ["--tls-client-ca", $0] } ?? []), port: port)
    }

    /// A receiver that requires a client certificate: 300 events over 2 TLS connections, each
    /// acknowledged, each key in order; nothing of the key files in the log.
    func testEventsFlowWithClientCertificate() throws {
        let certificates = try TestCertificates.shared()
        let receiver = try serving(certificates.server, certificates.serverKey, clientCA: certificates.ca)
        defer { receiver.stop() }
        let outbox = try OutboxFixture("https")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", https(receiver), "--http-concurrency", "2", "--sink-ca-file", certificates.ca,
                                      "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 30, rows: 10)
        try confirmAll(spout, outbox)
        XCTAssertEqual(receiver.acknowledged.count, 300)
        assertAllInOrder(receiver.acknowledged, writer)
        let key = try String(contentsOfFile: certificates.clientKey, encoding: .utf8)
        let secretLine = try XCTUnwrap(key.split(separator: "\n").dropFirst().first)
        XCTAssertFalse(spout.stderr.contains(secretLine), "no key material in the log")
    }

    /// Each certificate problem stops `spout run` at start (exit non-zero) with the server, the
    /// problem in plain words and the option that fixes it; `spout check` says the same.
    func testCertificateProblemsStopSpoutAtStart() throws {
        let certificates = try TestCertificates.shared()
        let outbox = try OutboxFixture("httpsbad")
        defer { outbox.tearDown() }
        let cases: [(String, Receiver, [String], String, String)] = [
            ("an unknown CA", try serving(certificates.server, certificates.serverKey), ["--sink-ca-file", certificates.otherCA],
             "signed by a CA spout does not trust", "--sink-ca-file"),
            ("a wrong host", try serving(certificates.wrongHost, certificates.wrongHostKey), ["--sink-ca-file", certificates.ca],
             "not valid for this host name", "connect by a name the certificate lists"),
            ("an expired certificate", try serving(certificates.expired, certificates.expiredKey), ["--sink-ca-file", certificates.ca],
             "has expired", "renew it"),
        ]
        for (problem, receiver, options, words, fix) in cases {
            defer { receiver.stop() }
            let run = try SpoutProcess.run(["run", "--sink", https(receiver)] + options + outbox.arguments, timeout: 60)
            XCTAssertNotEqual(run.status, 0, problem)
            XCTAssertTrue(run.stderr.contains("127.0.0.1:\(receiver.port)") && run.stderr.contains(words) && run.stderr.contains(fix),
                          "\(problem): \(run.stderr)")
            let check = try SpoutProcess.run(["check", "--sink", https(receiver)] + options + outbox.arguments, timeout: 60)
            XCTAssertEqual(check.status, 1, problem)
            XCTAssertTrue((check.stdout + check.stderr).contains(words), "\(problem): \(check.stdout)\(check.stderr)")
            XCTAssertTrue(receiver.requests.isEmpty, "\(problem): no request was sent")
        }
    }

    /// A receiver that requires a client certificate, and spout without one: a TLS 1.3 server
    /// says so only after the handshake; spout still stops before delivering anything and says
    /// which options fix it. Nothing is confirmed.
    func testMissingClientCertificateStopsSpout() throws {
        let certificates = try TestCertificates.shared()
        let receiver = try serving(certificates.server, certificates.serverKey, clientCA: certificates.ca)
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpsnocert")
        defer { outbox.tearDown() }
        // The slot first, then the event: it is waiting when spout starts.
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 1, rows: 1)
        let spout = try SpoutProcess(["run", "--sink", https(receiver, host: "localhost"), "--sink-ca-file", certificates.ca] + outbox.arguments)
        let status = spout.waitForExit(timeout: 60)
        XCTAssertNotNil(status)
        XCTAssertNotEqual(status, 0, spout.stderr)
        XCTAssertTrue(spout.stderr.contains("client certificate") && spout.stderr.contains("--sink-cert-file"), spout.stderr)
        XCTAssertTrue(receiver.acknowledged.isEmpty)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try XCTUnwrap(writer.transactions.first).after, "the event is not confirmed")
    }

    /// The receiver killed mid-stream and started again on the same port, with TLS: every event
    /// is acknowledged, in order per key, and only then confirmed.
    func testReceiverRestartUnderTLSLosesNothing() throws {
        let certificates = try TestCertificates.shared()
        var receiver = try serving(certificates.server, certificates.serverKey)
        let port = receiver.port
        let outbox = try OutboxFixture("httpsrestart")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", https(receiver, host: "localhost"), "--sink-ca-file", certificates.ca] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 2_000)
        try eventually("some events acknowledged") { receiver.acknowledged.count >= 50 }
        receiver.stop()
        var acknowledged = receiver.acknowledged
        writer.waitForMore(10)
        try eventually("the outage warning") { spout.stderr.contains("HTTP receiver at https://localhost:\(port)/hooks") }
        receiver = try serving(certificates.server, certificates.serverKey, port: port)
        defer { receiver.stop() }
        try writer.stop()
        try confirmAll(spout, outbox)
        acknowledged += receiver.acknowledged
        assertAllInOrder(acknowledged, writer) // both receivers' acknowledgements, in the order they came
    }

    /// --sink-insecure-skip-verify: an unknown CA is accepted, with a warning at start; `spout
    /// check` passes over https with the right CA.
    func testInsecureSkipVerifyWarnsAndCheckPasses() throws {
        let certificates = try TestCertificates.shared()
        let receiver = try serving(certificates.wrongHost, certificates.wrongHostKey)
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpsinsecure")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", https(receiver), "--sink-insecure-skip-verify"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 5, rows: 2)
        try confirmAll(spout, outbox)
        XCTAssertTrue(spout.stderr.contains("NOT verified"), spout.stderr)
        XCTAssertEqual(Set(receiver.acknowledged).intersection(writer.ids).count, 10)

        let good = try serving(certificates.server, certificates.serverKey)
        defer { good.stop() }
        let check = try SpoutProcess.run(["check", "--sink", https(good), "--sink-ca-file", certificates.ca] + outbox.arguments)
        XCTAssertTrue((check.stdout + check.stderr).contains("answered OPTIONS with 204"), check.stdout + check.stderr)
    }
}
