import CNats
import Foundation
import SpoutCore
import XCTest

/// `spout check` against real servers: all pass on a ready setup and each sink, and each
/// check fails, with its fix, where a run would fail. Asserted on `--json` (status by name)
/// and the exit code; the text checklist in one test.
final class CheckTests: XCTestCase {
    struct Outcome {
        var status: Int32?
        var json: [String: Any]
        var stdout: String
        var stderr: String

        var checks: [[String: Any]] { json["checks"] as? [[String: Any]] ?? [] }

        func check(_ name: String) -> [String: Any]? { checks.first { $0["name"] as? String == name } }

        func status(_ name: String) -> String? { check(name)?["status"] as? String }

        func detail(_ name: String) -> String { check(name)?["detail"] as? String ?? "" }

        func fix(_ name: String) -> String { check(name)?["fix"] as? String ?? "" }
    }

    /// `spout check --json ARGUMENTS`, its output parsed.
    func check(_ arguments: [String], environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        let result = try SpoutProcess.run(["check", "--json"] + arguments, environment: environment, timeout: 90)
        let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        let json = try XCTUnwrap(object as? [String: Any], "one JSON object: \(result.stdout) \(result.stderr)", file: file, line: line)
        return Outcome(status: result.status, json: json, stdout: result.stdout, stderr: result.stderr)
    }

    func assertStatuses(_ outcome: Outcome, _ expected: [String: String], exit: Int32, file: StaticString = #filePath, line: UInt = #line) {
        for (name, status) in expected {
            XCTAssertEqual(outcome.status(name), status, "\(name): \(outcome.stdout)", file: file, line: line)
        }
        XCTAssertEqual(outcome.status, exit, outcome.stdout + outcome.stderr, file: file, line: line)
        XCTAssertEqual(outcome.json["ok"] as? Bool, exit == 0, file: file, line: line)
        for check in outcome.checks {
            XCTAssertEqual(Set(check.keys), ["name", "status", "detail", "fix"], "\(check)", file: file, line: line)
            XCTAssertTrue(["pass", "fail", "warn", "skip"].contains(check["status"] as? String ?? ""), "\(check)", file: file, line: line)
        }
        for check in outcome.checks where check["status"] as? String == "fail" {
            XCTAssertFalse((check["fix"] as? String ?? "").isEmpty, "every failure names its fix: \(check)", file: file, line: line)
        }
    }

    // MARK: Passing

    func testAReadySetupPassesWithJSONAndText() throws {
        let outbox = try OutboxFixture("chk")
        defer { outbox.tearDown() }
        let outcome = try check(outbox.arguments)
        let names = ["connection", "wal_level", "replication_slots", "wal_senders", "replication_role", "table", "table_select",
                     "columns", "publication", "slot", "sink"]
        XCTAssertEqual(outcome.checks.map { $0["name"] as? String ?? "" }, names)
        for check in outcome.checks {
            XCTAssertEqual(Set(check.keys), ["name", "status", "detail", "fix"], "\(check)")
            XCTAssertEqual(check["status"] as? String, "pass", "\(check)")
            XCTAssertTrue(check["fix"] is NSNull, "\(check)")
        }
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertEqual(outcome.json["ok"] as? Bool, true)
        XCTAssertTrue(outcome.detail("publication").contains("creates it"), outcome.detail("publication"))
        // Nothing was created.
        XCTAssertNil(try outbox.admin.value("SELECT 1 FROM pg_publication WHERE pubname = '\(outbox.publication)'"))
        XCTAssertNil(try outbox.admin.value("SELECT 1 FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"))

        // After spout setup: the publication and the slot exist, and the slot says what it holds.
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        let ready = try check(outbox.arguments)
        assertStatuses(ready, ["publication": "pass", "slot": "pass", "replication_slots": "pass"], exit: 0)
        XCTAssertTrue(ready.detail("slot").contains("plugin pgoutput"), ready.detail("slot"))
        XCTAssertTrue(ready.detail("slot").contains("two_phase off"), ready.detail("slot"))
        XCTAssertTrue(ready.detail("slot").contains("WAL"), ready.detail("slot"))

        // The same settings from SPOUT_* variables, printed as the checklist.
        let text = try SpoutProcess.run(["check"], environment: [
            "SPOUT_DATABASE_URL": outbox.url, "SPOUT_TABLE": "public.\(outbox.table)", "SPOUT_PUBLICATION": outbox.publication,
            "SPOUT_SLOT": outbox.slot,
        ])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("✓ wal_level"), text.stdout)
        XCTAssertTrue(text.stdout.contains("ready: 11 passed"), text.stdout)
    }

    func testEachSinkPasses() throws {
        let outbox = try OutboxFixture("chksink")
        defer { outbox.tearDown() }
        let redis = try RedisServer()
        let passed = try check(outbox.arguments + ["--sink", redis.url, "--topic", "orders"])
        assertStatuses(passed, ["sink": "pass", "sink_write": "pass"], exit: 0)
        XCTAssertTrue(passed.detail("sink").contains("Redis 7"), passed.detail("sink"))

        let nats = try NATSServer()
        try JetStreamTestClient(nats.url).addStream("CHECK", subjects: ["outbox.event.>"])
        assertStatuses(try check(outbox.arguments + ["--sink", nats.url]), ["sink": "pass", "sink_jetstream": "pass", "sink_write": "pass"], exit: 0)

        let kafka = try KafkaMockCluster()
        defer { kafka.stop() }
        let topic = try check(outbox.arguments + ["--sink", kafka.sinkURL, "--topic", "orders"])
        assertStatuses(topic, ["sink": "pass", "sink_write": "pass"], exit: 0)
        XCTAssertTrue(topic.detail("sink_write").contains("orders"), topic.detail("sink_write"))
        // Topics from the rows cannot be looked up before there are rows.
        assertStatuses(try check(outbox.arguments + ["--sink", kafka.sinkURL]), ["sink": "pass", "sink_write": "skip"], exit: 0)
    }

    /// AMQP: logged in and the exchange there; a missing exchange fails unless --amqp-declare;
    /// a wrong password fails naming the user, never the password.
    func testAMQP() throws {
        let outbox = try OutboxFixture("chkamqp")
        defer { outbox.tearDown() }
        let server = try RabbitMQServer("check-tests")
        defer { server.stop(remove: true) }
        try PikaClient(server.url).setUp(exchange: "chk_outbox", queue: "chk_events", keys: ["#"])
        let passed = try check(outbox.arguments + ["--sink", server.url, "--amqp-exchange", "chk_outbox"])
        assertStatuses(passed, ["sink": "pass", "sink_write": "pass"], exit: 0)
        let missing = try check(outbox.arguments + ["--sink", server.url, "--amqp-exchange", "chk_missing"])
        assertStatuses(missing, ["sink": "pass", "sink_write": "fail"], exit: 1)
        XCTAssertTrue(missing.fix("sink_write").contains("--amqp-declare"), missing.stdout)
        assertStatuses(try check(outbox.arguments + ["--sink", server.url, "--amqp-exchange", "chk_missing", "--amqp-declare"]),
                       ["sink": "pass", "sink_write": "pass"], exit: 0)
        let refused = try check(outbox.arguments + ["--sink", server.url(password: "wrong-pw"), "--amqp-exchange", "chk_outbox"])
        assertStatuses(refused, ["sink": "fail", "sink_write": "skip"], exit: 1)
        XCTAssertTrue(refused.detail("sink").contains("user \"spout\""), refused.stdout)
        XCTAssertFalse(refused.stdout.contains("wrong-pw") || refused.stdout.contains("spout-test-secret"), refused.stdout)
        let down = try check(outbox.arguments + ["--sink", "amqp://spout:pw@127.0.0.1:\(try freeLoopbackPort())/"])
        assertStatuses(down, ["sink": "fail", "sink_write": "skip"], exit: 1)
    }

    /// STOMP: the CONNECT accepted; a wrong password refused (the server's ERROR), never shown.
    func testSTOMP() throws {
        let outbox = try OutboxFixture("chkstomp")
        defer { outbox.tearDown() }
        let server = try RabbitMQServer("check-stomp-tests")
        defer { server.stop(remove: true) }
        assertStatuses(try check(outbox.arguments + ["--sink", server.stompURL]), ["sink": "pass", "sink_write": "pass"], exit: 0)
        let wrong = server.stompURL.replacingOccurrences(of: ":spout-test-secret@", with: ":wrong-pw@")
        let refused = try check(outbox.arguments + ["--sink", wrong])
        assertStatuses(refused, ["sink": "fail", "sink_write": "skip"], exit: 1)
        XCTAssertTrue(refused.detail("sink").contains("refused the CONNECT of spout"), refused.stdout)
        XCTAssertFalse(refused.stdout.contains("wrong-pw") || refused.stdout.contains("spout-test-secret"), refused.stdout)
        let down = try check(outbox.arguments + ["--sink", "stomp://spout:pw@127.0.0.1:\(try freeLoopbackPort())"])
        assertStatuses(down, ["sink": "fail", "sink_write": "skip"], exit: 1)
    }

    // MARK: PostgreSQL failing

    func testUnreachableDatabaseSkipsEveryOtherDatabaseCheck() throws {
        let port = try freeLoopbackPort()
        let started = Date()
        let outcome = try check(["--database-url", "postgresql://postgres:hunter2@127.0.0.1:\(port)/postgres"])
        assertStatuses(outcome, ["connection": "fail", "wal_level": "skip", "table": "skip", "slot": "skip", "sink": "pass"], exit: 1)
        XCTAssertEqual(outcome.json["ok"] as? Bool, false)
        XCTAssertEqual(outcome.detail("slot"), "no connection to PostgreSQL")
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertFalse(outcome.stdout.contains("hunter2"), outcome.stdout)
        XCTAssertFalse(outcome.stderr.contains("hunter2"), outcome.stderr)
    }

    func testWalLevelReplica() throws {
        let url = try TestDatabase.url("SPOUT_TEST_REPLICA_DATABASE_URL")
        let outcome = try check(["--database-url", url])
        assertStatuses(outcome, ["connection": "pass", "wal_level": "fail"], exit: 1)
        XCTAssertTrue(outcome.fix("wal_level").contains("ALTER SYSTEM SET wal_level = logical"), outcome.fix("wal_level"))
    }

    func testNoFreeReplicationSlot() throws {
        let server = try PrivateServer.start("chk-slots")
        defer { server.stop() }
        let admin = try server.connect()
        try admin.sql("ALTER SYSTEM SET max_replication_slots = 1")
        try server.restart(mode: "fast")
        let connection = try server.connect()
        try connection.sql(OutboxFixture.createTableSQL("outbox"))
        try connection.sql("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        let outcome = try check(["--database-url", server.url])
        assertStatuses(outcome, ["replication_slots": "fail", "wal_senders": "pass"], exit: 1)
        XCTAssertTrue(outcome.fix("replication_slots").contains("max_replication_slots"), outcome.fix("replication_slots"))
        // A slot that exists needs no free one.
        let own = try check(["--database-url", server.url, "--slot", "someone_else"])
        XCTAssertEqual(own.status("replication_slots"), "pass", own.stdout)
    }

    /// Two roles: one without REPLICATION, one without SELECT on the table.
    func testRoleWithoutReplicationOrSelect() throws {
        let outbox = try OutboxFixture("chkrole")
        defer { outbox.tearDown() }
        let plain = "plain_\(outbox.slot)", noSelect = "nosel_\(outbox.slot)"
        try outbox.admin.sql("CREATE ROLE \(plain) LOGIN; CREATE ROLE \(noSelect) LOGIN REPLICATION")
        try outbox.admin.sql("GRANT SELECT ON public.\(outbox.table) TO \(plain)")
        defer {
            _ = try? outbox.admin.sql("DROP OWNED BY \(plain), \(noSelect)")
            _ = try? outbox.admin.sql("DROP ROLE \(plain), \(noSelect)")
        }
        func arguments(as role: String) throws -> [String] {
            var components = try XCTUnwrap(URLComponents(string: outbox.url))
            components.user = role
            return ["--database-url", try XCTUnwrap(components.string), "--table", "public.\(outbox.table)",
                    "--publication", outbox.publication, "--slot", outbox.slot]
        }
        let withoutReplication = try check(try arguments(as: plain))
        assertStatuses(withoutReplication, ["replication_role": "fail", "table_select": "pass"], exit: 1)
        XCTAssertEqual(withoutReplication.fix("replication_role"), "ALTER ROLE \"\(plain)\" REPLICATION")
        // Not the table's owner: it cannot create the publication run would create.
        XCTAssertEqual(withoutReplication.status("publication"), "fail", withoutReplication.stdout)

        let withoutSelect = try check(try arguments(as: noSelect))
        assertStatuses(withoutSelect, ["replication_role": "pass", "table_select": "fail"], exit: 1)
        XCTAssertEqual(withoutSelect.fix("table_select"), "GRANT SELECT ON \"public\".\"\(outbox.table)\" TO \"\(noSelect)\"")
    }

    func testMissingTable() throws {
        let outbox = try OutboxFixture("chktable")
        defer { outbox.tearDown() }
        let outcome = try check(outbox.arguments.map { $0 == "public.\(outbox.table)" ? "public.no_such_\(outbox.table)" : $0 })
        assertStatuses(outcome, ["table": "fail", "table_select": "skip", "columns": "skip", "connection": "pass"], exit: 1)
        XCTAssertTrue(outcome.fix("table").contains("--table"), outcome.fix("table"))
    }

    func testMissingAndWrongTypeColumns() throws {
        let outbox = try OutboxFixture("chkcol")
        defer { outbox.tearDown() }
        let missing = try check(outbox.arguments + ["--payload-column", "body"])
        assertStatuses(missing, ["table": "pass", "columns": "fail"], exit: 1)
        XCTAssertTrue(missing.detail("columns").contains("body"), missing.detail("columns"))
        let placeholder = try check(outbox.arguments + ["--topic", "{region}.events"])
        assertStatuses(placeholder, ["columns": "fail"], exit: 1)

        try outbox.admin.sql("ALTER TABLE public.\(outbox.table) ADD COLUMN meta integer")
        let wrongType = try check(outbox.arguments + ["--headers-column", "meta"])
        assertStatuses(wrongType, ["columns": "fail"], exit: 1)
        XCTAssertTrue(wrongType.detail("columns").contains("integer"), wrongType.detail("columns"))
        XCTAssertTrue(wrongType.fix("columns").contains("--headers-column"), wrongType.fix("columns"))
    }

    func testPublicationMissingNotCoveringOrWithoutInserts() throws {
        let outbox = try OutboxFixture("chkpub")
        defer { outbox.tearDown() }
        let missing = try check(outbox.arguments + ["--no-create"])
        assertStatuses(missing, ["publication": "fail", "slot": "fail"], exit: 1)
        XCTAssertTrue(missing.fix("publication").contains("CREATE PUBLICATION \"\(outbox.publication)\" FOR TABLE \"public\".\"\(outbox.table)\""),
                      missing.fix("publication"))

        let other = "other_\(outbox.table)"
        try outbox.admin.sql("CREATE TABLE public.\(other) (id int)")
        defer { _ = try? outbox.admin.sql("DROP TABLE public.\(other)") }
        try outbox.admin.sql("CREATE PUBLICATION \(outbox.publication) FOR TABLE public.\(other)")
        let notCovering = try check(outbox.arguments)
        assertStatuses(notCovering, ["publication": "fail"], exit: 1)
        XCTAssertEqual(notCovering.fix("publication"),
                       "ALTER PUBLICATION \"\(outbox.publication)\" ADD TABLE \"public\".\"\(outbox.table)\", or name another with --publication")

        try outbox.admin.sql("DROP PUBLICATION \(outbox.publication)")
        try outbox.admin.sql("CREATE PUBLICATION \(outbox.publication) FOR TABLE public.\(outbox.table) WITH (publish = 'update, delete')")
        let noInserts = try check(outbox.arguments)
        assertStatuses(noInserts, ["publication": "fail"], exit: 1)
        XCTAssertEqual(noInserts.fix("publication"), "ALTER PUBLICATION \"\(outbox.publication)\" SET (publish = 'insert')")
    }

    func testSlotWithAnotherPlugin() throws {
        let outbox = try OutboxFixture("chkslot")
        defer { outbox.tearDown() }
        try outbox.admin.sql("SELECT pg_create_logical_replication_slot('\(outbox.slot)', 'test_decoding')")
        let outcome = try check(outbox.arguments)
        assertStatuses(outcome, ["slot": "fail", "replication_slots": "pass"], exit: 1)
        XCTAssertTrue(outcome.detail("slot").contains("test_decoding"), outcome.detail("slot"))
    }

    /// A slot another spout streams from: a warning naming the client (run waits as a
    /// standby), a failure with --no-standby.
    func testSlotInUse() throws {
        let outbox = try OutboxFixture("chkactive")
        defer { outbox.tearDown() }
        let running = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(running.stderr)") { try outbox.streamingWalsender != nil }
        let outcome = try check(outbox.arguments)
        assertStatuses(outcome, ["slot": "warn", "replication_slots": "pass"], exit: 0)
        XCTAssertTrue(outcome.detail("slot").contains("spout run host="), outcome.detail("slot"))
        XCTAssertTrue(outcome.detail("slot").contains("standby"), outcome.detail("slot"))
        assertStatuses(try check(outbox.arguments + ["--no-standby"]), ["slot": "fail"], exit: 1)
        running.signal(SIGTERM)
        XCTAssertEqual(running.waitForExit(), 0, running.stderr)
    }

    // MARK: Sinks failing

    func testUnreachableSinks() throws {
        let outbox = try OutboxFixture("chkdown")
        defer { outbox.tearDown() }
        for url in ["redis://127.0.0.1:\(try freeLoopbackPort())", "nats://127.0.0.1:\(try freeLoopbackPort())",
                    "kafka://127.0.0.1:\(try freeLoopbackPort())"] {
            let started = Date()
            let outcome = try check(outbox.arguments + ["--sink", url, "--topic", "orders"])
            assertStatuses(outcome, ["sink": "fail", "sink_write": "skip", "slot": "pass"], exit: 1)
            XCTAssertLessThan(Date().timeIntervalSince(started), 30, url)
        }
    }

    /// Servers that accept the connection and never answer: every check gives up within its
    /// timeout (PostgreSQL's 10 s connect_timeout, the sinks' 5 s) instead of hanging.
    func testSilentServersTimeOut() throws {
        let outbox = try OutboxFixture("chksilent")
        defer { outbox.tearDown() }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(listener, 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && getsockname(listener, $0, &length) == 0 && listen(listener, 64) == 0
            }
        }
        XCTAssertTrue(listening)
        let port = Int(UInt16(bigEndian: address.sin_port))
        var started = Date()
        let database = try check(["--database-url", "postgresql://postgres@127.0.0.1:\(port)/postgres"])
        assertStatuses(database, ["connection": "fail", "wal_level": "skip"], exit: 1)
        XCTAssertLessThan(Date().timeIntervalSince(started), 25)
        for url in ["redis://127.0.0.1:\(port)", "nats://127.0.0.1:\(port)", "kafka://127.0.0.1:\(port)"] {
            started = Date()
            let outcome = try check(outbox.arguments + ["--sink", url, "--topic", "orders"])
            assertStatuses(outcome, ["sink": "fail", "sink_write": "skip"], exit: 1)
            XCTAssertLessThan(Date().timeIntervalSince(started), 20, url)
        }
    }

    func testNATSWithoutAStreamForTheSubject() throws {
        let outbox = try OutboxFixture("chknats")
        defer { outbox.tearDown() }
        let nats = try NATSServer()
        try JetStreamTestClient(nats.url).addStream("OTHER", subjects: ["other.>"])
        let outcome = try check(outbox.arguments + ["--sink", nats.url, "--topic", "orders.created"])
        assertStatuses(outcome, ["sink": "pass", "sink_jetstream": "pass", "sink_write": "fail"], exit: 1)
        XCTAssertTrue(outcome.fix("sink_write").contains("--nats-create-stream"), outcome.fix("sink_write"))
        // spout run would create it.
        let creating = try check(outbox.arguments + ["--sink", nats.url, "--topic", "orders.created", "--nats-create-stream", "ORDERS"])
        assertStatuses(creating, ["sink_write": "pass"], exit: 0)
    }

    /// A NATS server without JetStream (no -js): connected, but nothing could be stored.
    func testNATSWithoutJetStream() throws {
        let outbox = try OutboxFixture("chknojs")
        defer { outbox.tearDown() }
        let port = try freeLoopbackPort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: NATSServer.executable)
        server.arguments = ["-a", "127.0.0.1", "-p", "\(port)"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        try eventually("nats-server listens on \(port)") {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(client) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
        }
        let outcome = try check(outbox.arguments + ["--sink", "nats://127.0.0.1:\(port)", "--topic", "orders"])
        assertStatuses(outcome, ["sink": "pass", "sink_jetstream": "fail", "sink_write": "skip"], exit: 1)
        XCTAssertTrue(outcome.fix("sink_jetstream").contains("-js"), outcome.fix("sink_jetstream"))
    }

    func testRedisACLDenyingXADD() throws {
        let outbox = try OutboxFixture("chkacl")
        defer { outbox.tearDown() }
        let redis = try RedisServer()
        try redis.client().command("ACL", "SETUSER", "reader", "on", ">r3ader-Pa55", "~*", "+@all", "-xadd")
        let outcome = try check(outbox.arguments + ["--sink", "redis://reader:r3ader-Pa55@127.0.0.1:\(redis.port)", "--topic", "orders"])
        assertStatuses(outcome, ["sink": "pass", "sink_write": "fail"], exit: 1)
        XCTAssertTrue(outcome.detail("sink_write").contains("XADD"), outcome.detail("sink_write"))
        XCTAssertEqual(outcome.fix("sink_write"), "ACL SETUSER reader +multi +xadd +exec ~orders")
        // --redis-ids lsn reads the stream too.
        try redis.client().command("ACL", "SETUSER", "appender", "on", ">app3nder-Pa55", "~*", "+ping", "+multi", "+exec", "+xadd", "+acl|dryrun")
        let appender = "redis://appender:app3nder-Pa55@127.0.0.1:\(redis.port)"
        assertStatuses(try check(outbox.arguments + ["--sink", appender, "--topic", "orders"]), ["sink_write": "pass"], exit: 0)
        let lsnIDs = try check(outbox.arguments + ["--sink", appender, "--topic", "orders", "--redis-ids", "lsn"])
        assertStatuses(lsnIDs, ["sink_write": "fail"], exit: 1)
        XCTAssertTrue(lsnIDs.detail("sink_write").contains("XINFO STREAM"), lsnIDs.detail("sink_write"))
        XCTAssertFalse(outcome.stdout.contains("r3ader-Pa55"), outcome.stdout)
        let wrongPassword = try check(outbox.arguments + ["--sink", "redis://reader:wrong@127.0.0.1:\(redis.port)", "--topic", "orders"])
        assertStatuses(wrongPassword, ["sink": "fail", "sink_write": "skip"], exit: 1)
    }

    func testUsageErrorsExitLikeRun() throws {
        let bad = try SpoutProcess.run(["check", "--max-in-flight", "0"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        let sink = try SpoutProcess.run(["check", "--sink", "carrier-pigeon://"])
        XCTAssertEqual(sink.status, 64, sink.stderr)
        XCTAssertEqual(try SpoutProcess.run(["check", "--no-such-flag"]).status, 64)
        // Every option run refuses before connecting, from any source.
        let poison = try SpoutProcess.run(["check"], environment: ["SPOUT_ON_POISON": "shrug"])
        XCTAssertEqual(poison.status, 64, poison.stderr)
        XCTAssertTrue(poison.stderr.contains("SPOUT_ON_POISON=shrug"), poison.stderr)
        XCTAssertEqual(try SpoutProcess.run(["check", "--shutdown-timeout", "-1"]).status, 64)
        XCTAssertEqual(try SpoutProcess.run(["check", "--check-config"]).status, 64)
    }
}
