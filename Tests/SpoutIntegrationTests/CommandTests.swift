import Foundation
import SpoutCore
import XCTest

/// The commands users touch: tail, setup, replay, and the errors of a misconfigured setup.
final class CommandTests: XCTestCase {
    func testTailPrintsEventsAndLeavesNoSlotBehind() throws {
        let outbox = try OutboxFixture("tail")
        defer { outbox.tearDown() }
        // No publication exists: tail creates a temporary one and drops it on exit.
        let tail = try SpoutProcess(["tail", "--format", "json"] + outbox.arguments)
        let tailSlot = "spout_tail_\(tail.process.processIdentifier)"
        try eventually("temporary slot") {
            try outbox.admin.value("SELECT temporary FROM pg_replication_slots WHERE slot_name = '\(tailSlot)'") == "t"
        }
        let ids = try outbox.insert(outbox.admin, rows: 3)
        try eventually("3 events") { tail.lines.count == 3 }
        XCTAssertEqual(tail.events.compactMap { $0["id"] as? String }, ids)
        tail.signal(SIGINT)
        XCTAssertEqual(tail.waitForExit(), 0, tail.stderr)
        // PostgreSQL drops a temporary slot when its walsender exits, just after spout does.
        try eventually(timeout: 10, "temporary slot dropped") {
            try outbox.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'spout_tail_%'") == "0"
        }
        XCTAssertEqual(try outbox.admin.value("SELECT count(*) FROM pg_publication WHERE pubname LIKE 'spout_tail_%'"), "0")

        // With an existing publication, tail uses it and leaves it; SIGKILL still drops the slot.
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let killed = try SpoutProcess(["tail", "--format", "pretty"] + outbox.arguments)
        try eventually("tail slot") {
            try outbox.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'spout_tail_%'") == "1"
        }
        try outbox.insert(outbox.admin, rows: 1, key: { _ in "pretty-key" })
        try eventually("pretty line") { killed.stdout.contains("key=pretty-key") && killed.stdout.contains("outbox.event.order") }
        killed.signal(SIGKILL)
        killed.waitForExit()
        try eventually("slot gone after SIGKILL") {
            try outbox.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'spout_tail_%'") == "0"
        }
        XCTAssertEqual(try outbox.admin.value("SELECT count(*) FROM pg_publication WHERE pubname = '\(outbox.publication)'"), "1")
    }

    func testSetupIsIdempotentAndPrintShowsItsSQL() throws {
        let outbox = try OutboxFixture("setup")
        defer { outbox.tearDown() }
        let first = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stderr.contains("created publication"), first.stderr)
        XCTAssertTrue(first.stderr.contains("created replication slot"), first.stderr)
        let confirmed = try outbox.confirmedFlush
        let second = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("exists"), second.stderr)
        XCTAssertFalse(second.stderr.contains("created"), second.stderr)
        XCTAssertEqual(try outbox.confirmedFlush, confirmed, "the slot was not recreated")
        XCTAssertEqual(try outbox.admin.value("SELECT pubinsert::text || pubupdate::text || pubdelete::text FROM pg_publication WHERE pubname = '\(outbox.publication)'"), "truefalsefalse")

        // --print shows SQL that does the same, idempotently, and touches nothing itself.
        let printed = try SpoutProcess.run(["setup", "--print"] + outbox.arguments)
        XCTAssertEqual(printed.status, 0)
        XCTAssertTrue(printed.stdout.contains("CREATE PUBLICATION \"\(outbox.publication)\" FOR TABLE \"public\".\"\(outbox.table)\" WITH (publish = 'insert', publish_via_partition_root = true)"), printed.stdout)
        XCTAssertTrue(printed.stdout.contains("pg_create_logical_replication_slot('\(outbox.slot)', 'pgoutput')"))
        outbox.tearDown()
        let fresh = try OutboxFixture("print")
        defer { fresh.tearDown() }
        let sql = try SpoutProcess.run(["setup", "--print"] + fresh.arguments).stdout
        XCTAssertEqual(try fresh.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(fresh.slot)'"), "0")
        // As a user would: psql -f, twice.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("setup-\(fresh.slot).sql")
        try sql.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        for _ in 0..<2 {
            let psql = Process()
            psql.executableURL = URL(fileURLWithPath: "/usr/bin/psql")
            psql.arguments = ["-q", "-v", "ON_ERROR_STOP=1", "-f", file.path, fresh.url]
            psql.standardOutput = FileHandle.nullDevice
            try psql.run()
            psql.waitUntilExit()
            XCTAssertEqual(psql.terminationStatus, 0)
        }
        XCTAssertEqual(try fresh.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(fresh.slot)'"), "1")
        XCTAssertEqual(try fresh.admin.value("SELECT count(*) FROM pg_publication_tables WHERE pubname = '\(fresh.publication)' AND tablename = '\(fresh.table)'"), "1")
    }

    func testStatusShowsTheSlot() throws {
        let outbox = try OutboxFixture("status")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let status = try SpoutProcess.run(["status", "--json"] + outbox.arguments)
        XCTAssertEqual(status.status, 0, status.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(object["slot"] as? String, outbox.slot)
        XCTAssertEqual(object["active"] as? Bool, false)
        XCTAssertEqual(object["confirmed_flush_lsn"] as? String, try outbox.confirmedFlush?.description)
        XCTAssertNotNil(object["wal_held_bytes"] as? Int)
    }

    /// Flags win over SPOUT_* variables, which win over the config file.
    func testConfigFileEnvironmentAndFlagPrecedence() throws {
        let outbox = try OutboxFixture("config")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("spout-\(outbox.slot).conf")
        try "# settings\ndatabase-url = \"\(outbox.url)\"\nslot = no_such_slot\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }

        let fromFile = try SpoutProcess.run(["status", "--config", file.path])
        XCTAssertEqual(fromFile.status, 1)
        XCTAssertTrue(fromFile.stderr.contains("\"no_such_slot\" does not exist"), fromFile.stderr)
        let fromEnvironment = try SpoutProcess.run(["status", "--config", file.path], environment: ["SPOUT_SLOT": outbox.slot])
        XCTAssertEqual(fromEnvironment.status, 0, fromEnvironment.stderr)
        XCTAssertTrue(fromEnvironment.stdout.contains(outbox.slot))
        let fromFlag = try SpoutProcess.run(["status", "--slot", "flag_slot"], environment: ["SPOUT_SLOT": outbox.slot, "SPOUT_CONFIG": file.path])
        XCTAssertTrue(fromFlag.stderr.contains("\"flag_slot\" does not exist"), fromFlag.stderr)

        try "database-url\n".write(to: file, atomically: true, encoding: .utf8)
        let malformed = try SpoutProcess.run(["status", "--config", file.path])
        XCTAssertEqual(malformed.status, 64)
        XCTAssertTrue(malformed.stderr.contains(":1: expected name = value"), malformed.stderr)
    }

    /// --start-lsn skips what committed before it; --end-lsn stops (exit 0) after delivering
    /// and confirming everything up to it; a start before the slot is refused.
    func testReplayBetweenStartAndEnd() throws {
        let outbox = try OutboxFixture("replay")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let slotStart = try XCTUnwrap(try outbox.confirmedFlush)
        var ids: [[String]] = []
        var after: [LSN] = []
        for transaction in 0..<4 {
            ids.append(try outbox.insert(outbox.admin, rows: 2, key: { "r\(transaction)-\($0)" }))
            after.append(try outbox.currentLSN())
        }
        // Transactions 1 and 2 only.
        let replay = try SpoutProcess.run(["run", "--start-lsn", after[0].description, "--end-lsn", after[2].description] + outbox.arguments)
        XCTAssertEqual(replay.status, 0, replay.stderr)
        let replayed = replay.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["id"] as? String
        }
        XCTAssertEqual(replayed, ids[1] + ids[2])
        let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
        XCTAssertGreaterThan(confirmed, after[1])
        XCTAssertLessThanOrEqual(confirmed, after[2])

        // The slot has moved on: a start before it is refused with what it still holds.
        let refused = try SpoutProcess.run(["run", "--start-lsn", slotStart.description] + outbox.arguments)
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("confirmed_flush_lsn \(confirmed)"), refused.stderr)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)

        // Resume delivers the rest.
        let rest = try SpoutProcess.run(["run", "--end-lsn", after[3].description] + outbox.arguments)
        XCTAssertEqual(rest.status, 0, rest.stderr)
        XCTAssertEqual(rest.stdout.split(separator: "\n").count, 2)
        XCTAssertTrue(rest.stdout.contains(ids[3][0]))
    }
}

/// Each misconfiguration gives one clear line on stderr and a non-zero exit.
final class ErrorMessageTests: XCTestCase {
    private func assertOneLineError(_ arguments: [String], environment: [String: String] = [:], contains expected: [String],
                                    file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let result = try SpoutProcess.run(arguments, environment: environment, timeout: 30)
        XCTAssertNotNil(result.status, "spout did not exit", file: file, line: line)
        XCTAssertNotEqual(result.status, 0, file: file, line: line)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "exactly one line on stderr: \(result.stderr)", file: file, line: line)
        for text in expected {
            XCTAssertTrue(result.stderr.contains(text), "stderr lacks \"\(text)\": \(result.stderr)", file: file, line: line)
        }
        XCTAssertTrue(result.stdout.isEmpty, file: file, line: line)
        return result.stderr
    }

    func testUnreachableServer() throws {
        // A port nothing listens on.
        let port = try freeLoopbackPort()
        _ = try assertOneLineError(["run", "--database-url", "postgresql://postgres@127.0.0.1:\(port)/postgres"],
                                   contains: ["cannot connect to PostgreSQL at postgres@127.0.0.1:\(port)/postgres", "Connection refused"])
    }

    func testWrongPasswordNeverShowsThePassword() throws {
        let admin = try TestDatabase.connect()
        try admin.sql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'spout_pw') THEN CREATE ROLE spout_pw LOGIN REPLICATION PASSWORD 'the-right-one'; END IF; END $$")
        let base = try XCTUnwrap(URLComponents(string: try TestDatabase.url()))
        let host = try XCTUnwrap(base.host), port = try XCTUnwrap(base.port)
        let secret = "hunter2-Wrong"
        let stderr = try assertOneLineError(["run", "--database-url", "postgresql://spout_pw:\(secret)@\(host):\(port)/postgres"],
                                            contains: ["password authentication failed for user \"spout_pw\""])
        XCTAssertFalse(stderr.contains(secret))
        // Key/value DSN through the environment: same.
        let dsn = try assertOneLineError(["status"], environment: ["SPOUT_DATABASE_URL": "host=\(host) port=\(port) user=spout_pw password=\(secret) dbname=postgres"],
                                         contains: ["password authentication failed", "spout_pw@\(host):\(port)/postgres"])
        XCTAssertFalse(dsn.contains(secret))
    }

    func testWalLevelNotLogical() throws {
        let url = try TestDatabase.url("SPOUT_TEST_REPLICA_DATABASE_URL")
        _ = try assertOneLineError(["run", "--database-url", url], contains: ["wal_level is \"replica\"", "wal_level = logical"])
    }

    func testMissingTable() throws {
        _ = try assertOneLineError(["run", "--database-url", try TestDatabase.url(), "--table", "public.no_such_outbox"],
                                   contains: ["table public.no_such_outbox does not exist", "--table"])
    }

    func testMissingPublicationWithNoCreate() throws {
        let outbox = try OutboxFixture("nocreate")
        defer { outbox.tearDown() }
        _ = try assertOneLineError(["run", "--no-create"] + outbox.arguments,
                                   contains: ["publication \"\(outbox.publication)\" does not exist", "spout setup"])
        XCTAssertEqual(try outbox.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"), "0")
    }

    func testSlotAlreadyActive() throws {
        let outbox = try OutboxFixture("active")
        defer { outbox.tearDown() }
        let first = try SpoutProcess(["run"] + outbox.arguments)
        // Creating the slot makes it active for a moment too: wait for the walsender streaming it.
        var streamer: String?
        try eventually("slot streaming") {
            streamer = try outbox.admin.value("""
                SELECT s.active_pid FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = '\(outbox.slot)' AND r.state IN ('catchup', 'streaming')
                """)
            return streamer != nil
        }
        let pid = try XCTUnwrap(streamer)
        // The PID in PostgreSQL's message is the walsender's (a database backend): spout names its client instead.
        // --no-standby: fail at once (without it, spout waits as a standby: StandbyTests).
        _ = try assertOneLineError(["run", "--no-standby"] + outbox.arguments, contains: [
            "replication slot \"\(outbox.slot)\" is in use by \"spout run host=", "pid=\(first.process.processIdentifier)",
            "server PID \(pid)", "not that PID"])
        first.signal(SIGTERM)
        XCTAssertEqual(first.waitForExit(), 0, first.stderr)
    }

    func testBadFlagValues() throws {
        _ = try assertOneLineError(["run", "--start-lsn", "nonsense"], contains: ["--start-lsn nonsense is not an LSN"])
        _ = try assertOneLineError(["run", "--topic", "a.{b"], contains: ["invalid topic template"])
        _ = try assertOneLineError(["run", "--sink", "carrier-pigeon://x"], contains: ["unknown sink"])
    }

    /// The first SIGTERM drains (here: waits for a stdout nobody reads); the second exits at
    /// once with 130 and one line in the log's format. Signals reach the synchronous handler
    /// even though the relay runs as a service on its own thread.
    func testSecondSignalExitsAtOnce() throws {
        for format in ["text", "json"] {
            let outbox = try OutboxFixture("second")
            defer { outbox.tearDown() }
            let spout = try SpoutProcess(["run", "--shutdown-timeout", "300", "--log-format", format] + outbox.arguments, stdoutPipe: true)
            try eventually("\(format): streaming") { spout.stderr.contains("streaming") || !spout.process.isRunning }
            // More than a pipe holds: the stdout sink waits for the reader with events in flight.
            try outbox.insert(outbox.admin, rows: 2000, payload: { "{\"pad\": \"\(String(repeating: "x", count: 200))\", \"n\": \($0)}" })
            // The first bytes on stdout: spout is writing the 2000 events, and the rest fill the pipe.
            XCTAssertFalse(try XCTUnwrap(spout.pipe).fileHandleForReading.availableData.isEmpty)
            spout.signal(SIGTERM)
            try eventually("\(format): draining") { spout.stderr.contains("stopping: waiting up to 300 s") || !spout.process.isRunning }
            XCTAssertFalse(spout.stderr.contains("for 0 acknowledgements"), spout.stderr)
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 130, spout.stderr)
            let last = try XCTUnwrap(spout.stderr.split(separator: "\n").last.map(String.init))
            if format == "text" {
                XCTAssertEqual(last, "spout: warning: second signal: exiting without waiting for acknowledgements")
            } else {
                let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: String], last)
                XCTAssertEqual(object["level"], "warning")
                XCTAssertEqual(object["message"], "second signal: exiting without waiting for acknowledgements")
                XCTAssertNotNil(object["time"]?.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression), last)
                // The handler's own clock arithmetic agrees with the other lines' (same minute or the next).
                let first = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((spout.stderr.split(separator: "\n").first ?? "").utf8)) as? [String: String])
                XCTAssertEqual(object["time"]?.prefix(10), first["time"]?.prefix(10), "same day: \(spout.stderr)")
            }
            try eventually("\(format): slot released") { try !outbox.slotIsActive }
        }
    }
}
