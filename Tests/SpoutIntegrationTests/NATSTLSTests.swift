// issue 15: TLS
import Foundation
import SpoutCore
@testable import SpoutNATS
import XCTest

/// The NATS sink over TLS (`tls://`) against nats-server with the test certificates
/// (scripts/tls-certs): events flow and survive a server restart, `spout check` passes, and
/// every certificate problem stops spout at start with the problem in plain words.
final class NATSTLSTests: XCTestCase {
    /// A server that requires client certificates: spout with --sink-ca-file and its client
    /// certificate passes `spout check`, delivers every event once in order, and a server
    /// restart (SIGKILL, then the same port and store) loses nothing.
    func testEventsFlowOverTLSWithClientCertificateAndSurviveARestart() throws {
        let certificates = try TestCertificates.shared()
        let server = try NATSServer(extraArguments: NATSServer.tlsArguments(certificates, verifyClients: true))
        let client = try JetStreamTestClient(server.tlsURL, tls: certificates)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try OutboxFixture("natstls")
        defer { outbox.tearDown() }
        let tls = ["--sink-ca-file", certificates.ca, "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey]

        let check = try SpoutProcess.run(["check", "--sink", server.tlsURL] + tls + outbox.arguments, timeout: 90)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("connected to NATS at \(server.tlsURL)"), check.stdout)

        let spout = try SpoutProcess(["run", "--sink", server.tlsURL] + tls + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        eventually("events flowing over TLS") { client.count("OUTBOX") >= 300 }
        server.pause()
        server.kill()
        let marker = try OutboxFixture.Marker(outbox)
        try server.start()
        let restarted = try JetStreamTestClient(server.tlsURL, tls: certificates)
        writer.waitForMore(50)
        try writer.stop()
        let total = writer.ids.count + marker.ids.count
        let written = try outbox.currentLSN()
        eventually(timeout: 90, "\(total) events after the restart, got \(restarted.count("OUTBOX"))") { restarted.count("OUTBOX") >= UInt64(total) }
        try eventually("the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try restarted.messages("OUTBOX")
        assertStoredOnceInOrder(messages.filter { $0.header(NATSJetStreamSink.keyHeader) != "marker" }, ids: writer.ids)
        XCTAssertEqual(Set(messages.filter { $0.header(NATSJetStreamSink.keyHeader) == "marker" }.compactMap { $0.header("Nats-Msg-Id") }),
                       Set(marker.ids))
        XCTAssertTrue(spout.stderr.contains("is back after"), spout.stderr)
    }

    /// Wrong CA, wrong host, no client certificate, a TLS server named by nats:// and tls://
    /// to a plain server: each stops `spout run` at start (and fails `spout check`) with the
    /// problem and its fix, never showing the password.
    func testCertificateProblemsStopSpoutAtStartWithTheReason() throws {
        let certificates = try TestCertificates.shared()
        let verifying = try NATSServer(extraArguments: NATSServer.tlsArguments(certificates, verifyClients: true))
        let wrongHost = try NATSServer(extraArguments: NATSServer.tlsArguments(certificates, certificate: "wronghost"))
        let plain = try NATSServer()
        let outbox = try OutboxFixture("natstlsbad")
        defer { outbox.tearDown() }
        let password = "tls-test-secret-pw"
        func withLogin(_ url: String) -> String { url.replacingOccurrences(of: "://", with: "://spout:\(password)@") }
        let client = ["--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey]
        let cases: [(String, [String], [String])] = [
            ("wrong CA", ["--sink", withLogin(verifying.tlsURL), "--sink-ca-file", certificates.otherCA] + client,
             ["signed by a CA spout does not trust", "--sink-ca-file"]),
            ("wrong host", ["--sink", withLogin(wrongHost.tlsURL), "--sink-ca-file", certificates.ca],
             ["not valid for this host name", "connect by a name the certificate lists"]),
            ("no client certificate", ["--sink", withLogin(verifying.tlsURL), "--sink-ca-file", certificates.ca],
             ["requires a client certificate", "--sink-cert-file"]),
            ("nats:// to a TLS server", ["--sink", withLogin(verifying.url)], ["requires TLS", "tls://"]),
            ("tls:// to a plain server", ["--sink", withLogin(plain.tlsURL), "--sink-ca-file", certificates.ca],
             ["does not speak TLS on this port"]),
        ]
        for (name, arguments, words) in cases {
            let run = try SpoutProcess.run(["run"] + arguments + outbox.arguments, timeout: 60)
            XCTAssertNotEqual(run.status, 0, "\(name): spout stops: \(run.stderr)")
            for word in words { XCTAssertTrue(run.stderr.contains(word), "\(name): \"\(word)\" in \(run.stderr)") }
            XCTAssertFalse(run.stderr.contains(password) || run.stdout.contains(password), "\(name): the password is never shown")
            let check = try SpoutProcess.run(["check"] + arguments + outbox.arguments, timeout: 90)
            XCTAssertNotEqual(check.status, 0, "\(name): check fails: \(check.stdout)")
            XCTAssertTrue(check.stdout.contains(words[0]), "\(name): \(check.stdout)")
            XCTAssertFalse(check.stdout.contains(password) || check.stderr.contains(password), "\(name): the password is never shown")
        }
        // --sink-insecure-skip-verify: encrypted, not verified, so the wrong host is accepted.
        let insecure = try SpoutProcess.run(["check", "--sink", wrongHost.tlsURL, "--sink-insecure-skip-verify"] + outbox.arguments, timeout: 90)
        XCTAssertTrue(insecure.stdout.contains("connected to NATS at \(wrongHost.tlsURL)"), insecure.stdout + insecure.stderr)
    }
}
