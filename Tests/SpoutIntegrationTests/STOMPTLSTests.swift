import Foundation
import SpoutCore
import XCTest

/// The STOMP sink over TLS (`stomp+ssl://`, issue 15) against RabbitMQ's STOMP-over-TLS
/// listener with the throwaway certificates of scripts/tls-certs, a client certificate
/// required (one server for the class). Messages are read back over the plain STOMP port.
/// The TLS transport is `TCPSocket`'s, shared with HTTP: the wrong-host and expired cases are
/// HTTPSTests'; here what a broker adds: its client-certificate check, a restart, the probe.
final class STOMPTLSTests: XCTestCase {
    nonisolated(unsafe) private static var shared: RabbitMQServer?
    nonisolated(unsafe) private static var startError: Error?

    override class func setUp() {
        super.setUp()
        do { shared = try RabbitMQServer("stomp-tls-tests", tls: try TestCertificates.shared(), verifyPeer: true) } catch { startError = error }
    }

    override class func tearDown() {
        shared?.remove()
        shared = nil
        super.tearDown()
    }

    private func server() throws -> RabbitMQServer {
        _ = try STOMPConsumer.pythonPath
        if let startError = Self.startError { throw startError }
        return try XCTUnwrap(Self.shared)
    }

    /// stomp+ssl:// with the URL's user and password (stomps:// in the env file: the same scheme).
    private func url(_ server: RabbitMQServer, host: String = "127.0.0.1") -> String {
        "stomp+ssl://" + server.stompsURL.drop { $0 != ":" }.dropFirst(3).replacingOccurrences(of: "@127.0.0.1:", with: "@\(host):")
    }

    private func clientCertificate(_ certificates: TestCertificates) -> [String] {
        ["--sink-ca-file", certificates.ca, "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey]
    }

    /// Events flow over TLS with a client certificate; RabbitMQ restarted mid-stream (TLS
    /// again): every event arrives, in commit order, and the slot never passes an event the
    /// broker did not have.
    func testEventsFlowAndBrokerRestartLosesNothing() throws {
        let server = try server()
        let certificates = try TestCertificates.shared()
        let queue = TestDatabase.uniqueName("q")
        try STOMPConsumer.declare(server, queue: queue)
        let outbox = try OutboxFixture("stomptls")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", url(server, host: "localhost"), "--stomp-destination", "/queue/\(queue)"]
                                     + clientCertificate(certificates) + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        try writer.waitUntilConfirmed(50, outbox)
        server.stop()
        eventually(timeout: 60, "spout notices the broker is gone") { spout.stderr.contains("STOMP server at") }
        let marker = try OutboxFixture.Marker(outbox)
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), marker.before, "confirmed past an event the broker never had")
        XCTAssertTrue(spout.process.isRunning, "a restart is an outage, not a stop: \(spout.stderr)")
        try server.start()
        writer.waitForMore(50)
        try writer.stop()
        let written = try outbox.currentLSN()
        try eventually(timeout: 120, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let messages = try STOMPConsumer.drain(server, queue: queue, distinct: writer.ids.count + marker.ids.count)
        assertAllArrivedInOrder(messages, writer: writer)
        XCTAssertEqual(Set(messages.compactMap(\.id)).intersection(marker.ids).count, marker.ids.count, "the events written during the outage")
        XCTAssertTrue(spout.stderr.contains("accepts events again"), spout.stderr)
    }

    /// No client certificate, and a CA that did not sign the server's: each stops spout at start
    /// with the server, the problem and the option; the password never appears. `spout check`
    /// says the same, and passes with the right files.
    func testCertificateProblemsStopSpoutAtStart() throws {
        let server = try server()
        let certificates = try TestCertificates.shared()
        let outbox = try OutboxFixture("stomptlsbad")
        defer { outbox.tearDown() }
        let password = try XCTUnwrap(server.stompsURL.split(separator: ":").dropFirst(2).first?.split(separator: "@").first).description
        let cases: [(String, [String], String, String)] = [
            ("no client certificate", ["--sink-ca-file", certificates.ca], "client certificate", "--sink-cert-file"),
            ("an unknown CA", ["--sink-ca-file", certificates.otherCA, "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey],
             "signed by a CA spout does not trust", "--sink-ca-file"),
        ]
        for (problem, options, words, fix) in cases {
            let run = try SpoutProcess.run(["run", "--sink", url(server)] + options + outbox.arguments, timeout: 60)
            XCTAssertNotEqual(run.status, 0, problem)
            XCTAssertTrue(run.stderr.contains("127.0.0.1:\(server.stompsPort)") && run.stderr.contains(words) && run.stderr.contains(fix),
                          "\(problem): \(run.stderr)")
            XCTAssertFalse(run.stderr.contains(password), "\(problem): the password is not shown")
            let check = try SpoutProcess.run(["check", "--sink", url(server)] + options + outbox.arguments, timeout: 60)
            XCTAssertEqual(check.status, 1, problem)
            XCTAssertTrue((check.stdout + check.stderr).contains(words), "\(problem): \(check.stdout)\(check.stderr)")
        }
        let check = try SpoutProcess.run(["check", "--sink", url(server)] + clientCertificate(certificates) + outbox.arguments, timeout: 60)
        XCTAssertTrue(check.stdout.contains("the STOMP server accepted the CONNECT"), check.stdout + check.stderr)
    }
}
