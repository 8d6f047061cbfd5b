import Foundation
import XCTest

/// A private RabbitMQ (AMQP and its STOMP plugin) started by scripts/rabbitmq-start NAME: its
/// own ports, data and port mapper. `stop()` then `start()` is a broker restart on the same
/// ports with its durable queues and persistent messages; `stop(remove: true)` deletes them.
/// Given `tls` it also has TLS listeners (AMQPS and STOMP over TLS) with `serverCertificate`
/// (server, or wronghost for "wrong host"), requiring a client certificate if `verifyPeer`.
final class RabbitMQServer: @unchecked Sendable {
    let name: String
    /// The AMQP URL (user spout) and port.
    private(set) var url = ""
    private(set) var port = 0
    private(set) var stompURL = ""
    private(set) var stompPort = 0
    /// The TLS listeners' URLs and ports (empty and 0 without `tls`).
    private(set) var amqpsURL = ""
    private(set) var amqpsPort = 0
    private(set) var stompsURL = ""
    private(set) var stompsPort = 0
    let tls: TestCertificates?
    let verifyPeer: Bool
    let serverCertificate: String
    /// The server's process, for SIGSTOP/SIGCONT.
    private(set) var pid: Int32 = 0

    init(_ name: String, tls: TestCertificates? = nil, verifyPeer: Bool = false,
         serverCertificate: String = "server") throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/lib/rabbitmq/bin/rabbitmq-server") else {
            throw XCTSkipFailure("rabbitmq-server is not installed (scripts/install-deps installs it)")
        }
        self.name = name
        self.tls = tls
        self.verifyPeer = verifyPeer
        self.serverCertificate = serverCertificate
        // A leftover of an interrupted run (kept ports and data) would hold old messages.
        _ = try? PrivateServer.script("rabbitmq-stop", [name, "--remove"])
        try start()
    }

    /// `scripts/rabbitmq-start NAME` (waits until it accepts connections), then reads its env file.
    func start() throws {
        // With TLS, the script's settings go through env(1) (PrivateServer.script takes no environment).
        var command: [String] = []
        if let tls {
            command = ["/usr/bin/env", "RABBITMQ_TLS_DIR=\(tls.directory.path)", "RABBITMQ_TLS_CERT=\(serverCertificate)",
                       "RABBITMQ_TLS_VERIFY=\(verifyPeer ? "peer" : "none")"]
        }
        try PrivateServer.run(command + [PrivateServer.repository.appendingPathComponent("scripts/rabbitmq-start").path, name])
        let envFile = repositoryRoot.appendingPathComponent(".run/rabbitmq-\(name).env")
        var values: [String: String] = [:]
        for line in try String(contentsOf: envFile, encoding: .utf8).split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            values[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        url = try XCTUnwrap(values["SPOUT_TEST_AMQP_URL"], "SPOUT_TEST_AMQP_URL in \(envFile.path)")
        port = try XCTUnwrap(values["RABBITMQ_AMQP_PORT"].flatMap { Int($0) })
        stompURL = try XCTUnwrap(values["SPOUT_TEST_STOMP_URL"], "SPOUT_TEST_STOMP_URL in \(envFile.path)")
        stompPort = try XCTUnwrap(values["RABBITMQ_STOMP_PORT"].flatMap { Int($0) })
        pid = try XCTUnwrap(values["RABBITMQ_PID"].flatMap { Int32($0) })
        if tls != nil {
            amqpsURL = try XCTUnwrap(values["SPOUT_TEST_AMQPS_URL"], "SPOUT_TEST_AMQPS_URL in \(envFile.path)")
            amqpsPort = try XCTUnwrap(values["RABBITMQ_AMQPS_PORT"].flatMap { Int($0) })
            stompsURL = try XCTUnwrap(values["SPOUT_TEST_STOMPS_URL"], "SPOUT_TEST_STOMPS_URL in \(envFile.path)")
            stompsPort = try XCTUnwrap(values["RABBITMQ_STOMPS_PORT"].flatMap { Int($0) })
        }
    }

    /// SIGSTOP: the server answers nothing, not even heart-beats, until `resume()`.
    func pause() { if pid > 0 { kill(pid, SIGSTOP) } }

    func resume() { if pid > 0 { kill(pid, SIGCONT) } }

    /// `scripts/rabbitmq-stop NAME`: a clean broker shutdown (it closes client connections with
    /// 320 CONNECTION_FORCED); durable queues and persistent messages survive unless `remove`.
    func stop(remove: Bool = false) {
        _ = try? PrivateServer.script("rabbitmq-stop", [name] + (remove ? ["--remove"] : []))
    }

    func remove() { stop(remove: true) }

    /// The AMQP URL with another password: the same user, refused.
    func url(password: String) -> String {
        url.replacingOccurrences(of: ":spout-test-secret@", with: ":\(password)@")
    }
}
