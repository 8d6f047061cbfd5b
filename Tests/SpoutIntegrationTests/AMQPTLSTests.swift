// issue 15: TLS
import Foundation
import SpoutAMQP
import SpoutCore
import XCTest

/// The AMQP sink over TLS (`amqps://`) against RabbitMQ's TLS listener with the test
/// certificates (scripts/tls-certs; client certificates required), consumed with pika on the
/// plain listener: events flow and survive a broker restart, `spout check` passes, and every
/// certificate problem stops spout at start with the problem in plain words.
final class AMQPTLSTests: XCTestCase {
    nonisolated(unsafe) static var server: RabbitMQServer?
    nonisolated(unsafe) static var startFailure = ""

    override class func setUp() {
        super.setUp()
        do {
            server = try RabbitMQServer("amqp-tls-tests", tls: try TestCertificates.shared(), verifyPeer: true)
        } catch { startFailure = "\(error)" }
    }

    override class func tearDown() {
        server?.stop(remove: true)
        server = nil
        super.tearDown()
    }

    private func broker() throws -> (RabbitMQServer, PikaClient) {
        guard let server = Self.server else { throw XCTSkipFailure("scripts/rabbitmq-start amqp-tls-tests did not start RabbitMQ: \(Self.startFailure)") }
        return (server, try PikaClient(server.url))
    }

    /// With --sink-ca-file and a client certificate: `spout check` passes, every event arrives
    /// in order per key, and a broker restart (a clean stop, then the same ports) loses nothing.
    func testEventsFlowOverTLSWithClientCertificateAndSurviveARestart() throws {
        let (server, client) = try broker()
        let certificates = try TestCertificates.shared()
        let exchange = TestDatabase.uniqueName("ex"), queue = TestDatabase.uniqueName("q")
        try client.setUp(exchange: exchange, queue: queue, keys: ["outbox.event.#"])
        let outbox = try OutboxFixture("amqptls")
        defer { outbox.tearDown() }
        let arguments = ["--sink", server.amqpsURL, "--amqp-exchange", exchange, "--sink-ca-file", certificates.ca,
                         "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey] + outbox.arguments

        let check = try SpoutProcess.run(["check"] + arguments, timeout: 90)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("logged in to the AMQP broker at spout@127.0.0.1:\(server.amqpsPort)"), check.stdout)

        let spout = try SpoutProcess(["run"] + arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        eventually(timeout: 60, "events flowing over TLS") { client.count(queue) >= 300 }
        server.stop()
        let markerIDs = try outbox.insert(try TestDatabase.connect(), rows: 10, key: { _ in "marker" }, payload: { "{\"seq\": \($0)}" })
        try server.start()
        let restarted = try PikaClient(server.url)
        writer.waitForMore(50)
        try writer.stop()
        let total = writer.ids.count + markerIDs.count
        let written = try outbox.currentLSN()
        eventually(timeout: 90, "\(total) messages after the restart, got \(restarted.count(queue))") { restarted.count(queue) >= total }
        try eventually(timeout: 60, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        var idsByKey = writer.idsByKey
        idsByKey["marker"] = markerIDs
        assertEveryEventInOrderPerKey(try restarted.drain(queue), idsByKey: idsByKey)
        XCTAssertEqual(spout.stderr.components(separatedBy: "accepts events again").count - 1, 1, spout.stderr)
    }

    /// Wrong CA, wrong host (a broker with a certificate for another name, reached at
    /// 127.0.0.1), no client certificate, and amqps:// to the plain port: each stops `spout run`
    /// at start (and fails `spout check`) with the problem and its fix, never showing the password.
    func testCertificateProblemsStopSpoutAtStartWithTheReason() throws {
        let (server, _) = try broker()
        let certificates = try TestCertificates.shared()
        let wrongHost = try RabbitMQServer("amqp-tls-wronghost", tls: certificates, serverCertificate: "wronghost")
        defer { wrongHost.remove() }
        let outbox = try OutboxFixture("amqptlsbad")
        defer { outbox.tearDown() }
        let password = "spout-test-secret"
        let client = ["--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey]
        let plainAsTLS = server.url.replacingOccurrences(of: "amqp://", with: "amqps://")
        let cases: [(String, [String], [String])] = [
            ("wrong CA", ["--sink", server.amqpsURL, "--sink-ca-file", certificates.otherCA] + client,
             ["signed by a CA spout does not trust", "--sink-ca-file"]),
            ("wrong host", ["--sink", wrongHost.amqpsURL, "--sink-ca-file", certificates.ca],
             ["not valid for this host name", "connect by a name the certificate lists"]),
            ("no client certificate", ["--sink", server.amqpsURL, "--sink-ca-file", certificates.ca],
             ["requires a client certificate", "--sink-cert-file"]),
            ("amqps:// to the plain port", ["--sink", plainAsTLS, "--sink-ca-file", certificates.ca],
             ["does not speak TLS on this port"]),
        ]
        for (name, arguments, words) in cases {
            let all = arguments + ["--amqp-declare"] + outbox.arguments
            let run = try SpoutProcess.run(["run"] + all, timeout: 60)
            XCTAssertNotEqual(run.status, 0, "\(name): spout stops: \(run.stderr)")
            for word in words { XCTAssertTrue(run.stderr.contains(word), "\(name): \"\(word)\" in \(run.stderr)") }
            XCTAssertTrue(run.stderr.contains("127.0.0.1:"), "\(name): the server is named: \(run.stderr)")
            XCTAssertFalse(run.stderr.contains(password) || run.stdout.contains(password), "\(name): the password is never shown")
            let check = try SpoutProcess.run(["check"] + all, timeout: 90)
            XCTAssertNotEqual(check.status, 0, "\(name): check fails: \(check.stdout)")
            XCTAssertTrue(check.stdout.contains(words[0]), "\(name): \(check.stdout)")
            XCTAssertFalse(check.stdout.contains(password) || check.stderr.contains(password), "\(name): the password is never shown")
        }
        // --sink-insecure-skip-verify: encrypted, not verified, so the wrong host is accepted.
        let insecure = try SpoutProcess.run(["check", "--sink", wrongHost.amqpsURL, "--sink-insecure-skip-verify", "--amqp-declare"] + outbox.arguments,
                                            timeout: 90)
        XCTAssertTrue(insecure.stdout.contains("logged in to the AMQP broker at spout@127.0.0.1:\(wrongHost.amqpsPort)"), insecure.stdout + insecure.stderr)
    }
}
