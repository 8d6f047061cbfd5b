import Foundation
import SpoutCore
import XCTest

/// Errors that tell the truth and do what they say, logs that row content cannot forge, and
/// events that used to be dropped with a warning.
final class HonestErrorTests: XCTestCase {
    /// A poison row: the printed command skips exactly its transaction. Before: the message
    /// said "fix the row" (the WAL holds the insert, so that changes nothing) and the printed
    /// LSN, given to --start-lsn, still included the bad transaction.
    func testPoisonRowAdviceSkipsExactlyThatTransaction() throws {
        let outbox = try OutboxFixture("poison")
        defer { outbox.tearDown() }
        let arguments = ["run", "--topic", "{tenant_id}.events"] + outbox.arguments
        try outbox.admin.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '1', 'Good', '{\"n\": 1}', 't1')")
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        try outbox.admin.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '2', 'Good', '{\"n\": 2}', 't1')")
        try outbox.admin.sql("""
            BEGIN;
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '3', 'SameTx', '{"n": 3}', 't1');
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '4', 'Poison', '{"n": 4}', NULL);
            COMMIT;
            """)
        try outbox.admin.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '5', 'Good', '{\"n\": 5}', 't1')")
        let end = try outbox.currentLSN()

        let first = try SpoutProcess(arguments)
        let line = first.waitForFailure(timeout: 30, "the poison row stops spout")
        XCTAssertTrue(line.contains("changing the row now changes nothing"), line)
        XCTAssertEqual(first.events.compactMap { $0["key"] as? String }, ["2"], "the transaction before it is delivered")
        let range = try XCTUnwrap(line.range(of: #"--start-lsn [0-9A-F]+/[0-9A-F]+"#, options: .regularExpression), line)
        let skip = String(line[range]).split(separator: " ")[1]

        let second = try SpoutProcess(arguments + ["--start-lsn", String(skip), "--end-lsn", end.description])
        XCTAssertEqual(second.waitForExit(timeout: 30), 0, second.stderr)
        XCTAssertEqual(second.events.compactMap { $0["key"] as? String }, ["5"], "only the poison row's transaction is skipped")
    }

    /// Row content never forges a log line or reaches a terminal raw.
    func testRowContentIsEscapedInLogsAndPrettyOutput() throws {
        let outbox = try OutboxFixture("escape", extraColumns: ", ext_id text")
        defer { outbox.tearDown() }
        let forged = "x\nspout: stopped: forged\u{1B}]0;pwned\u{07}\u{1B}[2J"
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        func insertForgedRow() throws {
            try outbox.admin.sql("""
                INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, headers, ext_id)
                VALUES ('t', \(SQL.literal("k\u{1B}[31m")), 'E', '{"a": "\\u001b"}', \(SQL.literal("{\"h\": \"v\\u001b[1m\"}")), \(SQL.literal(forged)))
                """)
        }
        try insertForgedRow()

        let tail = try SpoutProcess(["tail", "--format", "pretty", "--id-column", "ext_id"] + outbox.arguments)
        try eventually("tail streams: \(tail.stderr)") { tail.stderr.contains("spout: tailing ") }
        try insertForgedRow()
        try eventually("the event is printed") { tail.stdout.contains("id=x\\nspout: stopped: forged") }
        tail.signal(SIGTERM)
        XCTAssertEqual(tail.waitForExit(), 0, tail.stderr)
        XCTAssertFalse(tail.stdout.contains("\u{1B}"), "no raw ESC on the terminal: \(tail.stdout.debugDescription)")
        XCTAssertTrue(tail.stdout.contains("key=k\\u{1B}[31m"), tail.stdout)

        // The same id in an error line (the row inserted before, through the slot): one line, escaped. The topic placeholder is null.
        let run = try SpoutProcess(["run", "--id-column", "ext_id", "--topic", "{tenant_id}"] + outbox.arguments)
        let line = run.waitForFailure(timeout: 30, "the row cannot be mapped")
        XCTAssertTrue(line.contains("x\\nspout: stopped: forged\\u{1B}]0;pwned\\u{7}"), line)
        XCTAssertFalse(run.stderr.contains("\u{1B}"), run.stderr.debugDescription)
        XCTAssertFalse(run.stderr.split(separator: "\n").contains { $0.hasPrefix("spout: stopped: forged") }, run.stderr)
    }

    /// The mapping is checked against the table's columns at startup, not at the first event.
    func testMappingIsCheckedAgainstTheTableAtStartup() throws {
        let outbox = try OutboxFixture("columns")
        defer { outbox.tearDown() }
        for (flag, value, column) in [("--topic", "{region}.events", "region"), ("--id-column", "event_id", "event_id"),
                                      ("--payload-column", "body", "body")] {
            let result = try SpoutProcess.run(["run", flag, value] + outbox.arguments)
            XCTAssertEqual(result.status, 64, result.stderr)
            XCTAssertTrue(result.stderr.contains("has no column \"\(column)\""), result.stderr)
            XCTAssertNil(try outbox.confirmedFlush, "refused before any slot was created")
        }
    }

    /// An --end-lsn older than what the slot holds cannot be replayed: refused, not "reached".
    func testEndBeforeTheSlotIsRefused() throws {
        let outbox = try OutboxFixture("endlsn")
        defer { outbox.tearDown() }
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        let result = try SpoutProcess.run(["run", "--end-lsn", "0/1"] + outbox.arguments)
        XCTAssertEqual(result.status, 64, result.stderr)
        XCTAssertTrue(result.stderr.contains("--end-lsn 0/1 is before what slot"), result.stderr)
    }

    /// pg_logical_emit_message(false, …) is an event, delivered even when its transaction
    /// rolls back (it is in the WAL at once), and the slot moves past it once acknowledged.
    /// Before: dropped with a warning.
    func testNonTransactionalMessageIsDelivered() throws {
        let outbox = try OutboxFixture("nontx")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        let lsn = try XCTUnwrap(try outbox.admin.lsn("""
            SELECT pg_logical_emit_message(false, 'outbox', '{"id": "hb-1", "aggregate_type": "heartbeat", "payload": {"seq": 7}}')
            """))
        try outbox.admin.sql("""
            BEGIN;
            SELECT pg_logical_emit_message(false, 'outbox', '{"id": "hb-2", "aggregate_type": "heartbeat", "payload": {"seq": 8}}');
            ROLLBACK;
            """)
        try outbox.insert(outbox.admin, rows: 1)
        try eventually("three events, got \(spout.events.count)") { spout.events.count == 3 }
        let events = spout.events
        XCTAssertEqual(events.prefix(2).compactMap { $0["id"] as? String }, ["hb-1", "hb-2"])
        XCTAssertEqual(events.first?["lsn"] as? String, lsn.description, "a non-transactional message carries its own LSN")
        XCTAssertEqual(events.first?["topic"] as? String, "outbox.event.heartbeat")
        try eventually("the slot moves past the messages") { try XCTUnwrap(try outbox.confirmedFlush) > lsn }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertFalse(spout.stderr.contains("ignoring"), spout.stderr)
    }

    /// A non-transactional message inside a big transaction arrives (and is acknowledged)
    /// before that transaction, whose commit record may start right where the message record
    /// ends. Confirming the message must not skip the transaction after a crash.
    func testNonTransactionalMessageInsideATransactionSurvivesACrash() throws {
        let outbox = try OutboxFixture("nontxcrash")
        defer { outbox.tearDown() }
        // Nobody reads stdout: the transaction's 3000 lines fill the pipe and stay unacknowledged.
        let stuck = try SpoutProcess(["run"] + outbox.arguments, stdoutPipe: true)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        try outbox.admin.sql("BEGIN")
        try outbox.insert(outbox.admin, rows: 3000, aggregate: "big", payload: { "{\"n\": \($0), \"pad\": \"\(String(repeating: "x", count: 100))\"}" })
        let message = try XCTUnwrap(try outbox.admin.lsn("""
            SELECT pg_logical_emit_message(false, 'outbox', '{"id": "inside", "aggregate_type": "heartbeat", "payload": 1}')
            """))
        try outbox.admin.sql("COMMIT")
        try eventually("the message is acknowledged and confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= message }
        stuck.signal(SIGKILL)
        _ = stuck.waitForExit()

        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("the transaction arrives after the restart: \(spout.events.count)") {
            spout.events.filter { $0["topic"] as? String == "outbox.event.big" }.count == 3000
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertFalse(spout.events.contains { $0["id"] as? String == "inside" }, "the confirmed message is not sent again")
    }

    /// The first SIGTERM says what spout waits for.
    func testStoppingSaysWhatItWaitsFor() throws {
        let outbox = try OutboxFixture("stopping")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--shutdown-timeout", "7"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertTrue(spout.stderr.contains("stopping: waiting up to 7 s for 0 acknowledgements"), spout.stderr)
    }

    /// Bytes that are not valid in the client encoding (an SQL_ASCII database) stop the
    /// walsender; spout names the transaction and how to skip it.
    func testInvalidBytesFromAnSQLASCIIDatabaseNameTheTransaction() throws {
        let admin = try TestDatabase.connect()
        let database = TestDatabase.uniqueName("ascii")
        try admin.sql("CREATE DATABASE \(database) ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        defer {
            _ = try? admin.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '\(database)'")
            _ = try? admin.sql("DROP DATABASE \(database)")
        }
        let url = try TestDatabase.url(database: database)
        let db = try PostgresConnection(url)
        try db.sql("CREATE TABLE outbox (id bigserial PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload text)")
        let arguments = ["run", "--database-url", url]
        let setup = try SpoutProcess.run(["setup", "--database-url", url])
        XCTAssertEqual(setup.status, 0, setup.stderr)
        try db.sql("SET client_encoding = 'SQL_ASCII'")
        try db.sql("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('t', '1', 'E', E'caf\\xe9 \\xff')")
        let spout = try SpoutProcess(arguments)
        let line = spout.waitForFailure(timeout: 30, "invalid bytes stop spout")
        XCTAssertTrue(line.contains("in the transaction that commits at"), line)
        XCTAssertTrue(line.contains("--start-lsn"), line)
    }
}
