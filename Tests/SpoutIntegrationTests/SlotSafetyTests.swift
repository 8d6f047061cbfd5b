import Foundation
import SpoutCore
import XCTest

/// "Never silent" (DESIGN.md §4): a table, publication or slot that changed under Spout is
/// detected before any position past the change is confirmed, and every insert that arrives
/// through the publication is delivered or stops Spout.
final class SlotSafetyTests: XCTestCase {
    /// ALTER TABLE … RENAME while spout runs: the same table (same OID), so its inserts are
    /// delivered, with a warning. Before: the insert was skipped and confirmed, silently.
    func testRenamedOutboxIsFollowedByItsOID() throws {
        let outbox = try OutboxFixture("renamed")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 1, aggregate: "before")
        try eventually("first event") { spout.events.count == 1 }
        try outbox.admin.sql("ALTER TABLE public.\(outbox.table) RENAME TO \(outbox.table)_2")
        try outbox.admin.sql("""
            INSERT INTO public.\(outbox.table)_2 (aggregate_type, aggregate_id, event_type, payload) VALUES ('during', '1', 'Renamed', '{}')
            """)
        try outbox.admin.sql("ALTER TABLE public.\(outbox.table)_2 RENAME TO \(outbox.table)")
        try outbox.insert(outbox.admin, rows: 1, aggregate: "after")
        try eventually("three events, got \(spout.events.count): \(spout.stderr)") { spout.events.count == 3 }
        XCTAssertEqual(spout.events.compactMap { $0["topic"] as? String },
                       ["outbox.event.before", "outbox.event.during", "outbox.event.after"])
        XCTAssertTrue(spout.stderr.contains("is named public.\(outbox.table)_2 in the WAL: it was renamed"), spout.stderr)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
    }

    /// A dropped and recreated outbox: the new table is not in the publication, so its rows
    /// never reach the slot. Spout stops with what changed, and the idle slot was not
    /// confirmed past the change. Before: it kept confirming the current WAL position.
    func testRecreatedTableStopsSpoutBeforeItsRowsAreConfirmed() throws {
        let outbox = try OutboxFixture("recreated")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 1)
        try eventually("first event") { spout.events.count == 1 }
        try outbox.admin.sql("DROP TABLE public.\(outbox.table)")
        try outbox.admin.sql("CREATE TABLE public.\(outbox.table) (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregate_type text, "
                             + "aggregate_id text, event_type text, payload jsonb, headers jsonb)")
        let beforeLostRows = try outbox.currentLSN()
        try outbox.insert(outbox.admin, rows: 5)
        let line = spout.waitForFailure(timeout: 30, "spout notices the recreated table")
        XCTAssertTrue(line.contains("was dropped while spout ran"), line)
        XCTAssertTrue(line.contains("ALTER PUBLICATION"), line)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), beforeLostRows, "the slot was confirmed past the recreated table's rows")
    }

    /// ALTER PUBLICATION … DROP TABLE: same story, its own message.
    func testTableRemovedFromThePublicationStopsSpout() throws {
        let outbox = try OutboxFixture("unpublished")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) DROP TABLE public.\(outbox.table)")
        let beforeLostRows = try outbox.currentLSN()
        try outbox.insert(outbox.admin, rows: 3)
        // An event that still arrives (a logical message) must not confirm past the lost rows either.
        try outbox.admin.sql("SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregate_type\": \"m\", \"payload\": 1}')")
        let line = spout.waitForFailure(timeout: 30, "spout notices the publication change")
        XCTAssertTrue(line.contains("no longer publishes the outbox table"), line)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), beforeLostRows)
    }

    /// Removed from the publication and added again between two checks: still published,
    /// but the rows in between may be lost; the membership row tells.
    func testTableRemovedAndAddedAgainStopsSpout() throws {
        let outbox = try OutboxFixture("readded")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        // One transaction: the watch (every 2 s) never sees the table missing, only the new membership row.
        try outbox.admin.sql("BEGIN")
        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) DROP TABLE public.\(outbox.table)")
        let beforeLostRows = try outbox.currentLSN()
        try outbox.insert(outbox.admin, rows: 2)
        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) ADD TABLE public.\(outbox.table)")
        try outbox.admin.sql("COMMIT")
        let line = spout.waitForFailure(timeout: 30, "spout notices the publication change")
        XCTAssertTrue(line.contains("was removed from publication \"\(outbox.publication)\" and added again"), line)
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), beforeLostRows, "nothing past the change")
    }

    /// `ALTER PUBLICATION … SET (publish = 'update')` while spout runs: inserts since never reach
    /// the slot, so spout stops before confirming past the change; and a publication without
    /// inserts is refused at start.
    func testPublicationThatStopsPublishingInsertsStopsSpout() throws {
        let outbox = try OutboxFixture("noinserts")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let beforeChange = try outbox.currentLSN()
        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) SET (publish = 'update')")
        try outbox.insert(outbox.admin, rows: 2)
        let line = spout.waitForFailure(timeout: 30, "spout notices the publication change")
        XCTAssertTrue(line.contains("publication \"\(outbox.publication)\" no longer publishes inserts"), line)
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), beforeChange, "nothing past the change")
        let again = try SpoutProcess.run(["run"] + outbox.arguments)
        XCTAssertEqual(again.status, 1, again.stderr)
        XCTAssertTrue(again.stderr.contains("does not publish inserts, so no event would ever arrive: ALTER PUBLICATION"), again.stderr)
    }

    /// A slot creation that failed leaves no "lost slot" behind.
    func testFailedSlotCreationIsNotALostSlot() throws {
        let outbox = try OutboxFixture("badslot")
        defer { outbox.tearDown() }
        let arguments = ["run", "--database-url", outbox.url, "--table", "public.\(outbox.table)", "--publication", outbox.publication,
                         "--slot", "Bad-Name"]
        for _ in 0..<2 {
            let result = try SpoutProcess.run(arguments)
            XCTAssertEqual(result.status, 1, result.stderr)
            XCTAssertTrue(result.stderr.contains("cannot create replication slot \"Bad-Name\""), result.stderr)
            XCTAssertFalse(result.stderr.contains("is gone"), result.stderr)
        }
        _ = try? outbox.admin.sql("DELETE FROM public.spout_slots WHERE slot_name = 'Bad-Name'")
    }

    /// A publication dropped and created again: stopped while running, and on the next start
    /// the server's "does not exist" comes with PostgreSQL's reason and the remedy, not a
    /// contradicting "created publication".
    func testRecreatedPublicationIsExplained() throws {
        let outbox = try OutboxFixture("repub")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 1)
        try eventually("first event") { spout.events.count == 1 }
        try outbox.admin.sql("DROP PUBLICATION \(outbox.publication)")
        try outbox.insert(outbox.admin, rows: 1, aggregate: "gap")
        try outbox.admin.sql("CREATE PUBLICATION \(outbox.publication) FOR TABLE public.\(outbox.table) WITH (publish = 'insert')")
        try outbox.insert(outbox.admin, rows: 1)
        // The watch or the walsender (decoding the insert between drop and re-creation) notices first.
        let line = spout.waitForFailure(timeout: 30, "spout notices the recreated publication")
        XCTAssertTrue(line.contains("dropped and created again"), line)
        // The restart decodes the insert made while the publication was gone: PostgreSQL up to
        // 17 fails, 18 skips it with a WARNING, which spout takes as the same failure.
        let again = try SpoutProcess(["run"] + outbox.arguments)
        let restart = again.waitForFailure(timeout: 30, "the restart fails the same way, explained")
        XCTAssertTrue(restart.contains("dropped and created again after the slot's position"), restart)
        XCTAssertTrue(restart.contains("pg_replication_slot_advance('\(outbox.slot)'"), restart)
        XCTAssertFalse(again.stderr.contains("created publication"), again.stderr)
    }

    /// A publication that also publishes another table is refused at startup; an insert into
    /// another table that reaches spout anyway (the table added while it runs) stops it.
    func testInsertsFromOtherTablesAreNeverDroppedSilently() throws {
        let outbox = try OutboxFixture("shared")
        defer { outbox.tearDown() }
        let other = "other_\(outbox.table)"
        try outbox.admin.sql("CREATE TABLE public.\(other) (id int PRIMARY KEY, payload jsonb)")
        defer { _ = try? outbox.admin.sql("DROP TABLE public.\(other)") }
        try outbox.admin.sql("CREATE PUBLICATION \(outbox.publication) FOR TABLE public.\(outbox.table), public.\(other) WITH (publish = 'insert')")
        let refused = try SpoutProcess.run(["run"] + outbox.arguments)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("publishes other tables besides public.\(outbox.table) (public.\(other))"), refused.stderr)

        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) DROP TABLE public.\(other)")
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.admin.sql("ALTER PUBLICATION \(outbox.publication) ADD TABLE public.\(other)")
        try outbox.admin.sql("INSERT INTO public.\(other) VALUES (1, '{}')")
        let line = spout.waitForFailure(timeout: 30, "an insert into another table stops spout")
        XCTAssertTrue(line.contains("an insert into public.\(other) arrived through the publication") || line.contains("publication"), line)
    }

    /// A slot spout created and that was dropped: refused with the events at risk and the
    /// fix, never silently created anew; `--on-slot-lost recreate` (here by its deprecated
    /// spelling `--recreate-lost-slot`) is the explicit choice.
    func testLostSlotIsRefusedUntilRecreatedExplicitly() throws {
        let outbox = try OutboxFixture("lost")
        defer { outbox.tearDown() }
        let first = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(first.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 2)
        try eventually("two events") { first.events.count == 2 }
        first.signal(SIGTERM)
        XCTAssertEqual(first.waitForExit(), 0, first.stderr)
        let lastConfirmed = try XCTUnwrap(try outbox.confirmedFlush)
        try outbox.admin.sql("SELECT pg_drop_replication_slot('\(outbox.slot)')")
        try outbox.insert(outbox.admin, rows: 3, aggregate: "lost")

        let refused = try SpoutProcess(["run"] + outbox.arguments)
        let line = refused.waitForFailure(timeout: 30, "a lost slot is refused")
        XCTAssertTrue(line.contains("replication slot \"\(outbox.slot)\" is gone"), line)
        XCTAssertTrue(line.contains("last saw it confirmed up to"), line)
        XCTAssertTrue(line.contains("--on-slot-lost recreate"), line)
        XCTAssertFalse(refused.stderr.contains("created replication slot"), refused.stderr)
        XCTAssertNil(try outbox.confirmedFlush, "no slot was created")
        let markerLSN = try XCTUnwrap(try outbox.admin.lsn("SELECT confirmed_lsn FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'"))
        XCTAssertGreaterThan(markerLSN, .zero)
        XCTAssertLessThanOrEqual(markerLSN, lastConfirmed)
        XCTAssertTrue(line.contains(markerLSN.description), line)

        let status = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(status.status, 1, "setup refuses the lost slot too: \(status.stderr)")

        let recreated = try SpoutProcess(["run", "--recreate-lost-slot"] + outbox.arguments)
        try eventually("spout streams from the slot: \(recreated.stderr)") { try outbox.streamingWalsender != nil }
        XCTAssertTrue(recreated.stderr.contains("in place of the lost one"), recreated.stderr)
        // The rows the table holds come first, from the new slot's snapshot (LostSlotTests has the details).
        XCTAssertEqual(recreated.events.count, 5, recreated.stderr)
        try outbox.insert(outbox.admin, rows: 1, aggregate: "new")
        try eventually("the new slot streams") { recreated.events.count == 6 }
        recreated.signal(SIGTERM)
        XCTAssertEqual(recreated.waitForExit(), 0, recreated.stderr)

        // Dropping through spout is the explicit choice: the next run creates a slot without asking.
        XCTAssertEqual(try SpoutProcess.run(["slot", "drop", outbox.slot] + outbox.arguments.filter { $0 != "--slot" && $0 != outbox.slot }).status, 0)
        let fresh = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(fresh.status, 0, fresh.stderr)
        XCTAssertTrue(fresh.stderr.contains("created replication slot"), fresh.stderr)
    }

    /// Slots spout cannot stream correctly are refused before streaming: another plugin,
    /// another database, two-phase decoding, invalidated.
    func testUnusableSlotsAreRefusedUpFront() throws {
        let outbox = try OutboxFixture("unusable")
        defer { outbox.tearDown() }
        try outbox.admin.sql("SELECT pg_create_logical_replication_slot('\(outbox.slot)', 'pgoutput', false, true)")
        var result = try SpoutProcess.run(["run"] + outbox.arguments)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("two_phase"), result.stderr)
        try outbox.admin.sql("SELECT pg_drop_replication_slot('\(outbox.slot)')")

        let database = "db_\(outbox.slot)"
        try outbox.admin.sql("CREATE DATABASE \(database)")
        defer { _ = try? outbox.admin.sql("DROP DATABASE \(database)") }
        let otherURL = try TestDatabase.url(database: database)
        let other = try PostgresConnection(otherURL)
        try other.sql("SELECT pg_create_logical_replication_slot('\(outbox.slot)', 'pgoutput')")
        result = try SpoutProcess.run(["run"] + outbox.arguments)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("belongs to database \"\(database)\", not \"postgres\""), result.stderr)
        try other.sql("SELECT pg_drop_replication_slot('\(outbox.slot)')")
    }

    /// A slot whose WAL PostgreSQL removed (max_slot_wal_keep_size) is refused, and `slot
    /// list` says so rather than "inactive".
    func testInvalidatedSlotIsRefusedAndListedAsSuch() throws {
        let outbox = try OutboxFixture("invalid")
        defer { outbox.tearDown() }
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        try outbox.admin.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        try outbox.admin.sql("SELECT pg_reload_conf()")
        defer {
            _ = try? outbox.admin.sql("ALTER SYSTEM RESET max_slot_wal_keep_size")
            _ = try? outbox.admin.sql("SELECT pg_reload_conf()")
        }
        // Other tests' slots on this server are dropped by then; only this one falls behind.
        try eventually(timeout: 60, "the slot is invalidated") {
            try outbox.admin.sql("CREATE TEMP TABLE IF NOT EXISTS wal_filler (x text)")
            try outbox.admin.sql("INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
            try outbox.admin.sql("SELECT pg_switch_wal()")
            try outbox.admin.sql("CHECKPOINT")
            return try outbox.admin.value("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'") == "lost"
        }
        let result = try SpoutProcess.run(["run"] + outbox.arguments)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("is invalidated (wal_removed"), result.stderr)
        XCTAssertTrue(result.stderr.contains("--on-slot-lost recreate"), result.stderr)
        let list = try SpoutProcess.run(["slot", "list", "--database-url", outbox.url])
        let row = list.stdout.split(separator: "\n").first { $0.hasPrefix(outbox.slot + " ") } ?? ""
        XCTAssertTrue(row.contains("invalidated (wal_removed)"), list.stdout)
    }
}

/// sql/role.sql's least-privilege role runs spout after the owner's `spout setup`: it can
/// stream, check the publication and record the slot's progress.
final class LeastPrivilegeTests: XCTestCase {
    func testTheRoleFromRoleSQLRuns() throws {
        let outbox = try OutboxFixture("leastpriv")
        defer { outbox.tearDown() }
        let role = "role_\(outbox.slot)"
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = try String(contentsOf: repository.appendingPathComponent("sql/role.sql"), encoding: .utf8)
            .replacingOccurrences(of: "public.outbox ", with: "public.\(outbox.table) ")
            .replacingOccurrences(of: "public.outbox;", with: "public.\(outbox.table);")
            .replacingOccurrences(of: "ROLE spout ", with: "ROLE \(role) ")
            .replacingOccurrences(of: "TO spout;", with: "TO \(role);")
        try outbox.admin.sql(script)
        defer {
            _ = try? outbox.admin.sql("REVOKE ALL ON public.spout_slots FROM \(role)")
            _ = try? outbox.admin.sql("REVOKE ALL ON SCHEMA public FROM \(role)")
            _ = try? outbox.admin.sql("DROP OWNED BY \(role)")
            _ = try? outbox.admin.sql("DROP ROLE \(role)")
        }
        // The owner creates the publication (sql/publication.sql); the role creates its slot and records it.
        try outbox.admin.sql("CREATE PUBLICATION \(outbox.publication) FOR TABLE public.\(outbox.table) WITH (publish = 'insert')")
        var components = try XCTUnwrap(URLComponents(string: outbox.url))
        components.user = role
        let arguments = ["run", "--database-url", try XCTUnwrap(components.string), "--table", "public.\(outbox.table)",
                         "--publication", outbox.publication, "--slot", outbox.slot]
        let spout = try SpoutProcess(arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        let setupSeen = try XCTUnwrap(try outbox.admin.value("SELECT created_at FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'"))
        try outbox.insert(outbox.admin, rows: 2)
        try eventually("two events: \(spout.stderr)") { spout.events.count == 2 }
        // The watch records the slot's progress when it starts (then every 30 s) as this role.
        try eventually("the role records the slot's progress") {
            try outbox.admin.value("SELECT seen_at > \(SQL.literal(setupSeen)) FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'") == "t"
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertFalse(spout.stderr.contains("warning"), spout.stderr)
    }
}
