import Foundation
import SpoutCore
import Synchronization
import XCTest

/// Failover slots (PostgreSQL 17+): created with failover = true, copied to a physical standby
/// that synchronizes slots, shown by `spout status`, and streamed from after a promotion. The
/// primary/standby pairs are private servers (scripts/pg-start, scripts/pg-standby) of the
/// version scripts/test runs this pass against; the 17+ tests skip in the PostgreSQL 15 pass.
final class FailoverTests: XCTestCase {
    static let outboxTable = OutboxFixture.createTableSQL("outbox")

    /// A primary with the outbox table and a standby synchronizing its failover slots.
    private func startPair() throws -> (primary: PrivateServer, standby: PrivateServer) {
        try TestServerVersion.require(atLeast: 17, for: "failover slots")
        let tag = "fo\(getpid())_\(UInt16.random(in: 0...UInt16.max))"
        let primary = try PrivateServer.start("\(tag)-primary", version: TestServerVersion.major)
        addTeardownBlock { primary.stop() }
        try primary.connect().sql(Self.outboxTable)
        let standby = try PrivateServer.standby(of: primary, "\(tag)-standby")
        addTeardownBlock { standby.stop() }
        return (primary, standby)
    }

    /// The standby's copy of slot "spout": synchronized, persisted (a new copy stays temporary
    /// until the primary's slot moves past the standby), and its confirmed_flush_lsn.
    private func standbyCopy(_ standby: PostgresConnection) throws -> (synced: Bool, temporary: Bool, confirmed: LSN?)? {
        guard let row = try standby.sql("SELECT synced, temporary, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'spout'").first,
              row.count == 3 else { return nil }
        return (row[0] == "t", row[1] == "t", row[2].flatMap { LSN($0) })
    }

    private func statusJSON(_ url: String) throws -> [String: Any] {
        let status = try SpoutProcess.run(["status", "--json", "--database-url", url])
        XCTAssertEqual(status.status, 0, status.stderr)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any], status.stdout)
    }

    private func streaming(_ primary: PostgresConnection) throws -> Bool {
        try primary.value("""
            SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = 'spout' AND r.state IN ('catchup', 'streaming')
            """) == "1"
    }

    private func insert(_ connection: PostgresConnection, rows: Int, tag: String) throws {
        let values = (0..<rows).map { "('order', '\(tag)-\($0)', 'Created', '{\"n\": \($0)}')" }.joined(separator: ",")
        try connection.sql("INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) VALUES \(values)")
    }

    /// spout setup creates a failover slot; the standby's copy becomes synchronized and
    /// catches up with what spout confirmed; status shows both ends.
    func testFailoverSlotIsSynchronizedToTheStandby() throws {
        let (primary, standby) = try startPair()
        let primaryConnection = try primary.connect(), standbyConnection = try standby.connect()
        let setup = try SpoutProcess.run(["setup", "--database-url", primary.url])
        XCTAssertEqual(setup.status, 0, setup.stderr)
        XCTAssertEqual(try primaryConnection.value("SELECT failover FROM pg_replication_slots WHERE slot_name = 'spout'"), "t")

        let spout = try SpoutProcess(["run", "--database-url", primary.url])
        defer { spout.signal(SIGKILL) }
        try eventually("spout streams: \(spout.stderr)") { try streaming(primaryConnection) }
        for batch in 0..<10 { try insert(primaryConnection, rows: 10, tag: "b\(batch)") }
        let written = try XCTUnwrap(try primaryConnection.lsn("SELECT pg_current_wal_lsn()"))
        eventually("100 events: \(spout.stderr)") { spout.events.count == 100 }
        XCTAssertEqual(spout.events.count, 100)
        try eventually(timeout: 60, "the primary's slot confirms past the inserts") {
            try primaryConnection.lsn("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'spout'") ?? .zero >= written
        }
        // The slot sync worker naps up to 30 s when nothing changes: a generous deadline.
        try eventually(timeout: 120, "the standby's copy is synchronized, persisted and caught up: \(String(describing: try? standbyCopy(standbyConnection)))") {
            guard let copy = try standbyCopy(standbyConnection) else { return false }
            return copy.synced && !copy.temporary && (copy.confirmed ?? .zero) >= written
        }

        let onPrimary = try statusJSON(primary.url)
        XCTAssertEqual(onPrimary["server_role"] as? String, "primary")
        XCTAssertEqual(onPrimary["failover"] as? Bool, true)
        XCTAssertEqual(onPrimary["synced"] as? Bool, false)
        let physical = try XCTUnwrap(standby.environment["SPOUT_PG_STANDBY_SLOT"])
        XCTAssertEqual(onPrimary["synchronized_standby_slots"] as? String, physical)
        let standbys = try XCTUnwrap(onPrimary["standby_slots"] as? [[String: Any]])
        XCTAssertEqual(standbys.count, 1)
        XCTAssertEqual(standbys.first?["slot"] as? String, physical)
        XCTAssertEqual(standbys.first?["exists"] as? Bool, true)
        XCTAssertEqual(standbys.first?["active"] as? Bool, true)
        // Logical walsenders of failover slots send nothing the standby has not flushed.
        XCTAssertEqual(standbys.first?["behind_bytes"] as? Int, 0)
        XCTAssertEqual((onPrimary["failover_problems"] as? [String])?.isEmpty, true, "\(onPrimary)")

        let onStandby = try statusJSON(standby.url)
        XCTAssertEqual(onStandby["server_role"] as? String, "standby")
        XCTAssertEqual(onStandby["failover"] as? Bool, true)
        XCTAssertEqual(onStandby["synced"] as? Bool, true)
        XCTAssertEqual(onStandby["temporary"] as? Bool, false)
        XCTAssertEqual((onStandby["failover_problems"] as? [String])?.isEmpty, true, "\(onStandby)")
        let text = try SpoutProcess.run(["status", "--database-url", standby.url])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("server              standby"), text.stdout)
        XCTAssertTrue(text.stdout.contains("synced              yes\n"), text.stdout)

        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
    }

    /// A standby without the settings slot synchronization needs: status names each one.
    func testStatusOnAStandbyNamesMissingSettings() throws {
        let (primary, standby) = try startPair()
        XCTAssertEqual(try SpoutProcess.run(["setup", "--database-url", primary.url]).status, 0)
        let primaryConnection = try primary.connect(), standbyConnection = try standby.connect()
        // A copy stays temporary (and goes when synchronization stops) until the primary's slot
        // has moved past the standby, catalog_xmin too: advance it over a fresh running-xacts
        // record (pg_log_standby_snapshot), as a confirming spout would, until the copy persists.
        try eventually(timeout: 120, "the standby has a persisted copy of the slot: \(String(describing: try? standbyCopy(standbyConnection)))") {
            try primaryConnection.sql("SELECT pg_log_standby_snapshot()")
            try primaryConnection.sql("SELECT pg_replication_slot_advance('spout', pg_current_wal_lsn())")
            return try standbyCopy(standbyConnection).map { $0.synced && !$0.temporary } ?? false
        }
        try standbyConnection.sql("ALTER SYSTEM SET hot_standby_feedback = off")
        try standbyConnection.sql("SELECT pg_reload_conf()")
        try eventually("the reload took effect") { try standbyConnection.value("SHOW hot_standby_feedback") == "off" }
        let status = try statusJSON(standby.url)
        let problems = try XCTUnwrap(status["failover_problems"] as? [String])
        XCTAssertTrue(problems.contains { $0.hasPrefix("hot_standby_feedback is off on this standby") }, "\(problems)")
        let text = try SpoutProcess.run(["status", "--database-url", standby.url])
        XCTAssertTrue(text.stdout.contains("problem             hot_standby_feedback is off"), text.stdout)
    }

    /// On the shared server (17+): an existing slot without failover is altered by setup;
    /// --no-failover creates a plain one, and status says what it lacks.
    func testExistingSlotBecomesAFailoverSlotAndNoFailoverIsHonoured() throws {
        try TestServerVersion.require(atLeast: 17, for: "failover slots")
        let outbox = try OutboxFixture("foalter")
        defer { outbox.tearDown() }
        try outbox.admin.sql("SELECT pg_create_logical_replication_slot('\(outbox.slot)', 'pgoutput')")
        XCTAssertEqual(try outbox.admin.value("SELECT failover FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"), "f")
        let setup = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        XCTAssertTrue(setup.stderr.contains("made replication slot \"\(outbox.slot)\" a failover slot"), setup.stderr)
        XCTAssertEqual(try outbox.admin.value("SELECT failover FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"), "t")
        let status = try SpoutProcess.run(["status", "--json"] + outbox.arguments)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any], status.stderr)
        XCTAssertEqual(object["failover"] as? Bool, true)
        // The shared test server has no standbys: the slot could get ahead of any.
        XCTAssertTrue((object["failover_problems"] as? [String])?.contains { $0.hasPrefix("synchronized_standby_slots is empty") } == true, "\(object)")

        let plain = try OutboxFixture("fono")
        defer { plain.tearDown() }
        let noFailover = try SpoutProcess.run(["setup", "--no-failover"] + plain.arguments)
        XCTAssertEqual(noFailover.status, 0, noFailover.stderr)
        XCTAssertEqual(try plain.admin.value("SELECT failover FROM pg_replication_slots WHERE slot_name = '\(plain.slot)'"), "f")
        // The same through the environment: run leaves the plain slot alone.
        let run = try SpoutProcess(["run"] + plain.arguments, environment: ["SPOUT_FAILOVER": "false"])
        try eventually("spout streams: \(run.stderr)") { try plain.streamingWalsender != nil }
        run.signal(SIGTERM)
        XCTAssertEqual(run.waitForExit(timeout: 60), 0, run.stderr)
        XCTAssertEqual(try plain.admin.value("SELECT failover FROM pg_replication_slots WHERE slot_name = '\(plain.slot)'"), "f")
        let plainStatus = try SpoutProcess.run(["status", "--json"] + plain.arguments)
        let plainObject = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(plainStatus.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(plainObject["failover"] as? Bool, false)
        XCTAssertTrue((plainObject["failover_problems"] as? [String])?.contains { $0.hasPrefix("the slot is not a failover slot") } == true, "\(plainObject)")
    }

    /// Before PostgreSQL 17 there are no failover slots: asking for one is an error naming the
    /// version and where it was asked; by default nothing changes.
    func testFailoverIsRefusedBeforePostgreSQL17() throws {
        guard TestServerVersion.major < 17 else { throw XCTSkip("runs against PostgreSQL 15/16 (this pass: \(TestServerVersion.major))") }
        let outbox = try OutboxFixture("fo15")
        defer { outbox.tearDown() }
        for command in [["setup"], ["run"]] {
            let refused = try SpoutProcess.run(command + ["--failover"] + outbox.arguments)
            XCTAssertEqual(refused.status, 64, refused.stderr)
            XCTAssertTrue(refused.stderr.contains("--failover needs PostgreSQL 17 or newer (failover slots), the server is PostgreSQL \(TestServerVersion.major)"),
                          refused.stderr)
            XCTAssertEqual(refused.stderr.split(separator: "\n").count, 1, refused.stderr)
        }
        let fromEnvironment = try SpoutProcess.run(["setup"] + outbox.arguments, environment: ["SPOUT_FAILOVER": "true"])
        XCTAssertEqual(fromEnvironment.status, 64, fromEnvironment.stderr)
        XCTAssertTrue(fromEnvironment.stderr.contains("SPOUT_FAILOVER needs PostgreSQL 17 or newer"), fromEnvironment.stderr)
        XCTAssertEqual(try outbox.admin.value("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"), "0")

        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let status = try SpoutProcess.run(["status", "--json"] + outbox.arguments)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any], status.stderr)
        XCTAssertTrue(object["failover"] is NSNull, "\(object)")
        XCTAssertTrue((object["failover_problems"] as? [String])?.first?.contains("has no failover slots") == true, "\(object)")
    }

    /// The primary dies under load and the standby is promoted: spout, on a multi-host URL,
    /// continues on the new primary from the synchronized slot, and every row of the new
    /// primary's outbox arrives. (Rows committed on the old primary and never replicated are a
    /// database-level loss outside spout: the new primary's table is what counts.)
    func testPromotedStandbyContinuesFromTheSynchronizedSlot() throws {
        try TestServerVersion.require(atLeast: 17, for: "failover slots")
        let help = try SpoutProcess.run(["run", "--help"])
        guard help.stdout.contains("--reconnect-timeout") else {
            throw XCTSkip("waits for reconnecting to PostgreSQL (issue 12 part 1, branch i12-reconnect): spout must reconnect to the promoted standby through the multi-host URL")
        }
        let (primary, standby) = try startPair()
        let primaryConnection = try primary.connect(), standbyConnection = try standby.connect()
        XCTAssertEqual(try SpoutProcess.run(["setup", "--database-url", primary.url]).status, 0)
        let url = "postgresql://postgres@127.0.0.1:\(primary.port),127.0.0.1:\(standby.port)/postgres?target_session_attrs=read-write"
        let spout = try SpoutProcess(["run", "--database-url", url])
        defer { spout.signal(SIGKILL) }
        try eventually("spout streams: \(spout.stderr)") { try streaming(primaryConnection) }

        // Steady load on the primary until it dies.
        final class Switch: Sendable { let on = Atomic<Bool>(true) }
        let writing = Switch(), primaryURL = primary.url
        let writer = Thread {
            guard let connection = try? PostgresConnection(primaryURL) else { return }
            var batch = 0
            while writing.on.load(ordering: .relaxed) {
                let values = (0..<5).map { "('order', 'w\(batch)-\($0)', 'Created', '{}')" }.joined(separator: ",")
                guard (try? connection.sql("INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) VALUES \(values)")) != nil else { break }
                batch += 1
                usleep(2_000)
            }
        }
        writer.start()
        defer { writing.on.store(false, ordering: .relaxed) }
        eventually(timeout: 60, "events flow under load: \(spout.stderr)") { spout.events.count >= 500 }
        // The standby's copy catches up with a position the primary's slot confirmed under load.
        let confirmed = try XCTUnwrap(try primaryConnection.lsn("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'spout'"))
        try eventually(timeout: 120, "the standby's copy is synchronized and caught up with \(confirmed)") {
            guard let copy = try standbyCopy(standbyConnection) else { return false }
            return copy.synced && !copy.temporary && (copy.confirmed ?? .zero) >= confirmed
        }

        try primary.pgCtl(["-m", "immediate", "-w", "stop"])
        writing.on.store(false, ordering: .relaxed)
        try standby.pgCtl(["-w", "-t", "60", "promote"])
        try eventually("the standby is a primary") { try standbyConnection.value("SELECT pg_is_in_recovery()") == "f" }
        // Spout continues on the new primary: rows written there arrive too.
        for batch in 0..<20 { try insert(standbyConnection, rows: 5, tag: "after\(batch)") }
        let expected = Set(try standbyConnection.sql("SELECT id::text FROM public.outbox").compactMap { $0.first ?? nil })
        eventually(timeout: 180, "every row of the new primary's outbox arrives: \(spout.stderr)") {
            let delivered = Set(spout.events.compactMap { $0["id"] as? String })
            return expected.isSubset(of: delivered)
        }
        XCTAssertTrue(try standbyConnection.value("SELECT active FROM pg_replication_slots WHERE slot_name = 'spout'") == "t", "spout streams from the promoted standby's slot")
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
    }
}
