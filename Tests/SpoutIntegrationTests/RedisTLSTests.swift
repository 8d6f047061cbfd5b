import Foundation
import SpoutCore
import XCTest

/// The Redis sink over TLS (`rediss://`, issue 15) against real `redis-server` processes with
/// the throwaway certificates of scripts/tls-certs (TLSSupport.swift): events flow, a client
/// certificate is presented, each certificate problem stops spout at start with its words and
/// fix, a restart under TLS loses nothing, and `spout check` speaks TLS too. The servers keep a
/// plain port for the tests' own look at Redis.
final class RedisTLSTests: XCTestCase {
    static let password = "tls-S3cret-Pa55"

    /// rediss:// with --sink-ca-file and a password: every event once, per-key order, the
    /// slot confirmed, and neither the password nor a warning in the log.
    func testEventsFlowOverTLS() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer(password: Self.password, tls: .good(certificates))
        let outbox = try OutboxFixture("redis_tls")
        defer { outbox.tearDown() }
        // By name: the certificate lists localhost (and 127.0.0.1, which the other tests use).
        let spout = try SpoutProcess(["run", "--sink", redis.tlsURL(host: "localhost"), "--sink-ca-file", certificates.ca, "--log-level", "debug"]
                                     + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try TestDatabase.connect()
        var expected = Set<String>()
        var sequence = 0
        for rows in [1, 50, 3, 200, 1, 17, 500, 9] {
            let base = sequence
            expected.formUnion(try outbox.insert(writer, rows: rows, key: { "k\((base + $0) % 7)" }, payload: { "{\"seq\": \(base + $0)}" }))
            sequence += rows
        }
        let written = try outbox.currentLSN()
        let client = try redis.client()
        try eventually("\(sequence) entries over TLS, got \((try? client.totalLength("outbox.event.*")) ?? -1)") {
            try client.totalLength("outbox.event.*") >= sequence
        }
        try eventually("confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let entries = try client.entries("outbox.event.order")
        XCTAssertEqual(entries.count, sequence, "every event exactly once")
        XCTAssertEqual(Set(entries.compactMap { $0.fields["id"] }), expected)
        try assertKeyOrder(entries)
        XCTAssertTrue(spout.stderr.contains("connected to Redis at localhost:\(redis.tlsPort)"), spout.stderr)
        XCTAssertFalse(spout.stderr.contains(Self.password), spout.stderr)
        XCTAssertFalse(spout.stderr.contains("warning"), spout.stderr)
    }

    /// `--tls-auth-clients yes`: without a client certificate spout stops at start, saying so;
    /// with --sink-cert-file and --sink-key-file events flow.
    func testClientCertificate() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer(password: Self.password, tls: .good(certificates, requireClientCertificate: true))
        let outbox = try OutboxFixture("redis_tls_client")
        defer { outbox.tearDown() }

        let refused = try SpoutProcess.run(["run", "--sink", redis.tlsURL(), "--sink-ca-file", certificates.ca] + outbox.arguments, timeout: 30)
        assertStopsAtStart(refused, redis, words: "requires a client certificate", fix: "--sink-cert-file")

        let spout = try SpoutProcess(["run", "--sink", redis.tlsURL(), "--sink-ca-file", certificates.ca,
                                      "--sink-cert-file", certificates.client, "--sink-key-file", certificates.clientKey] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let ids = try outbox.insert(try TestDatabase.connect(), rows: 25)
        let client = try redis.client()
        try eventually("25 entries") { try client.entries("outbox.event.order").count >= 25 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(try client.entries("outbox.event.order").compactMap { $0.fields["id"] }, ids)
    }

    /// An unknown CA, a certificate for another host, an expired certificate, and a plain port
    /// named by rediss://: each stops spout at start with one error naming the server, the
    /// problem and its fix, and never the password.
    func testCertificateProblemsStopAtStart() throws {
        let certificates = try TestCertificates.shared()
        let outbox = try OutboxFixture("redis_tls_bad")
        defer { outbox.tearDown() }
        let good = try RedisServer(password: Self.password, tls: .good(certificates))
        let wrongHost = try RedisServer(password: Self.password, tls: RedisServer.TLS(certificate: certificates.wrongHost, key: certificates.wrongHostKey, ca: certificates.ca))
        let expired = try RedisServer(password: Self.password, tls: RedisServer.TLS(certificate: certificates.expired, key: certificates.expiredKey, ca: certificates.ca))
        let plainPort = "rediss://:\(Self.password)@127.0.0.1:\(good.port)"
        for (url, ca, server, words, fix) in [
            (good.tlsURL(), certificates.otherCA, good.tlsPort, "signed by a CA spout does not trust", "--sink-ca-file"),
            (wrongHost.tlsURL(), certificates.ca, wrongHost.tlsPort, "not valid for this host name", "connect by a name the certificate lists"),
            (expired.tlsURL(), certificates.ca, expired.tlsPort, "has expired", "renew it"),
            (plainPort, certificates.ca, good.port, "does not speak TLS on this port", "TLS port"),
        ] {
            let result = try SpoutProcess.run(["run", "--sink", url, "--sink-ca-file", ca] + outbox.arguments, timeout: 30)
            assertStopsAtStart(result, port: server, words: words, fix: fix)
        }
        // The system's CAs (no --sink-ca-file) do not know the test CA either.
        let result = try SpoutProcess.run(["run", "--sink", good.tlsURL()] + outbox.arguments, timeout: 30)
        assertStopsAtStart(result, port: good.tlsPort, words: "signed by a CA spout does not trust", fix: "--sink-ca-file")
    }

    /// redis-server SIGKILLed with a batch in flight over TLS, then restarted on the same
    /// ports and directory: nothing is lost, per-key order holds, one warning for the outage.
    func testRestartUnderTLSLosesNothing() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer(tls: .good(certificates))
        let outbox = try OutboxFixture("redis_tls_restart")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.tlsURL(), "--sink-ca-file", certificates.ca] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writing = HalfHeldWriter(outbox, transactions: 200)
        defer { writing.releaseSecondHalf() }
        try redis.killWithBatchInFlight(writing, firstHalf: 500, port: redis.tlsPort)
        try redis.start()
        let client = try redis.client()
        try eventually("writer finished") { writing.isFinished }
        let expected = writing.written.value
        XCTAssertEqual(expected.count, 1000)
        try eventually(timeout: 60, "every event in Redis after the restart") {
            try Set(client.entries("outbox.event.order").compactMap { $0.fields["id"] }).isSuperset(of: expected)
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        // At least once: first appearances keep every key's order.
        try assertKeyOrder(try client.entries("outbox.event.order"))
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings.count, 1, "one warning per outage:\n\(spout.stderr)")
        XCTAssertTrue(warnings.first?.contains("127.0.0.1:\(redis.tlsPort)") ?? false, spout.stderr)
    }

    /// Redis restarted with an expired certificate after spout connected: an outage, retried,
    /// its certificate problem in a warning; restarted again with a good one, everything arrives.
    func testBadCertificateAfterARestartIsAnOutage() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer(tls: .good(certificates))
        let outbox = try OutboxFixture("redis_tls_renewed")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.tlsURL(), "--sink-ca-file", certificates.ca] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        var ids = try outbox.insert(writer, rows: 10)
        var client = try redis.client()
        try eventually("10 entries") { try client.entries("outbox.event.order").count >= 10 }

        redis.kill()
        redis.tls = RedisServer.TLS(certificate: certificates.expired, key: certificates.expiredKey, ca: certificates.ca)
        try redis.start()
        ids += try outbox.insert(writer, rows: 10)
        try eventually(timeout: 30, "a warning about the expired certificate") {
            spout.stderr.contains("warning: cannot connect to Redis at 127.0.0.1:\(redis.tlsPort): TLS handshake with 127.0.0.1:\(redis.tlsPort) failed: the server's certificate has expired")
        }
        XCTAssertTrue(spout.process.isRunning, spout.stderr)

        redis.kill()
        redis.tls = .good(certificates)
        try redis.start()
        client = try redis.client()
        try eventually(timeout: 30, "20 entries after the renewal") { try client.entries("outbox.event.order").count >= 20 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(Set(try client.entries("outbox.event.order").compactMap { $0.fields["id"] }), Set(ids))
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings.count, 2, "the outage, then its certificate problem once:\n\(spout.stderr)")
    }

    /// `spout check` over rediss:// passes; with the wrong CA its sink check fails, saying why.
    func testCheckOverTLS() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer(password: Self.password, tls: .good(certificates))
        let outbox = try OutboxFixture("redis_tls_check")
        defer { outbox.tearDown() }
        for (ca, passes) in [(certificates.ca, true), (certificates.otherCA, false)] {
            let result = try SpoutProcess.run(["check", "--json", "--sink", redis.tlsURL(), "--sink-ca-file", ca, "--topic", "orders"]
                                              + outbox.arguments, timeout: 90)
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], result.stdout + result.stderr)
            let checks = json["checks"] as? [[String: Any]] ?? []
            func check(_ name: String) -> [String: Any] { checks.first { $0["name"] as? String == name } ?? [:] }
            let sink = check("sink")
            let detail = sink["detail"] as? String ?? ""
            if passes {
                XCTAssertEqual(result.status, 0, result.stdout + result.stderr)
                XCTAssertEqual(sink["status"] as? String, "pass", detail)
                XCTAssertEqual(check("sink_write")["status"] as? String, "pass", result.stdout)
                XCTAssertTrue(detail.contains("Redis 7"), detail)
            } else {
                XCTAssertNotEqual(result.status, 0, result.stdout)
                XCTAssertEqual(sink["status"] as? String, "fail", detail)
                XCTAssertTrue(detail.contains("127.0.0.1:\(redis.tlsPort)"), detail)
                XCTAssertTrue(detail.contains("signed by a CA spout does not trust"), detail)
                XCTAssertTrue(detail.contains("--sink-ca-file"), detail)
                XCTAssertEqual(check("sink_write")["status"] as? String, "skip", result.stdout)
            }
            XCTAssertFalse(result.stdout.contains(Self.password) || result.stderr.contains(Self.password), result.stdout + result.stderr)
        }
    }

    /// A plain redis:// URL with TLS options: they are unused, spout says so once, and events flow.
    func testTLSOptionsOnAPlainURLWarn() throws {
        let certificates = try TestCertificates.shared()
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_tls_plain")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--sink-ca-file", certificates.ca] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let ids = try outbox.insert(try TestDatabase.connect(), rows: 3)
        let client = try redis.client()
        try eventually("3 entries") { try client.entries("outbox.event.order").count >= 3 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(try client.entries("outbox.event.order").compactMap { $0.fields["id"] }, ids)
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings.count, 1, spout.stderr)
        XCTAssertTrue(warnings.first?.contains("TLS options are unused") ?? false, spout.stderr)
    }

    // MARK: Helpers

    private func assertStopsAtStart(_ result: (status: Int32?, stdout: String, stderr: String), _ redis: RedisServer,
                                    words: String, fix: String, file: StaticString = #filePath, line: UInt = #line) {
        assertStopsAtStart(result, port: redis.tlsPort, words: words, fix: fix, file: file, line: line)
    }

    /// A non-zero exit with one error line naming the server, the problem and the fix, and no password.
    private func assertStopsAtStart(_ result: (status: Int32?, stdout: String, stderr: String), port: Int32,
                                    words: String, fix: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotNil(result.status, "spout stops by itself: \(result.stderr)", file: file, line: line)
        XCTAssertNotEqual(result.status, 0, result.stderr, file: file, line: line)
        let errors = result.stderr.split(separator: "\n").filter { $0.contains("error") }
        XCTAssertEqual(errors.count, 1, result.stderr, file: file, line: line)
        let error = String(errors.first ?? "")
        XCTAssertTrue(error.contains("Redis at 127.0.0.1:\(port)"), error, file: file, line: line)
        XCTAssertTrue(error.contains(words), error, file: file, line: line)
        XCTAssertTrue(error.contains(fix), error, file: file, line: line)
        XCTAssertFalse(result.stderr.contains(Self.password), result.stderr, file: file, line: line)
        XCTAssertFalse(result.stderr.contains("warning"), "a certificate problem at start is no outage: \(result.stderr)", file: file, line: line)
    }

    /// Within each key, the first appearance of each event comes in `seq` order.
    private func assertKeyOrder(_ entries: [StreamEntry], file: StaticString = #filePath, line: UInt = #line) throws {
        var firstSeen = Set<String>()
        var lastSequence: [String: Int] = [:]
        for entry in entries {
            guard let id = entry.fields["id"], firstSeen.insert(id).inserted, let key = entry.fields["key"] else { continue }
            let payload = try JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any]
            let seq = try XCTUnwrap(payload?["seq"] as? Int, file: file, line: line)
            XCTAssertGreaterThan(seq, lastSequence[key] ?? -1, "order of key \(key)", file: file, line: line)
            lastSequence[key] = seq
        }
    }
}
