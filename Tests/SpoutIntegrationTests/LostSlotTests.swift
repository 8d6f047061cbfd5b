import Foundation
import SpoutCore
import XCTest

/// A lost slot (`--on-slot-lost`): `fail` stops with the cause and the fix; `recreate`
/// creates the slot again with an exported snapshot and publishes every row the table still
/// holds before streaming from its consistent point.
final class LostSlotTests: XCTestCase {
    /// A dropped slot: refused with a message naming --on-slot-lost; with `recreate`, every
    /// row of the table arrives (the ones delivered before the loss again, same ids), then new ones stream.
    func testDroppedSlotRecreatedPublishesEveryRowOfTheTable() throws {
        let outbox = try OutboxFixture("lostdrop")
        defer { outbox.tearDown() }
        let first = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(first.stderr)") { try outbox.streamingWalsender != nil }
        let delivered = try outbox.insert(outbox.admin, rows: 2, aggregate: "delivered")
        try eventually("two events") { first.events.count == 2 }
        first.signal(SIGTERM)
        XCTAssertEqual(first.waitForExit(), 0, first.stderr)
        try outbox.admin.sql("SELECT pg_drop_replication_slot('\(outbox.slot)')")
        let lost = try outbox.insert(outbox.admin, rows: 3, aggregate: "lost")

        let refused = try SpoutProcess(["run", "--on-slot-lost", "fail"] + outbox.arguments)
        let line = refused.waitForFailure(timeout: 30, "a lost slot is refused")
        XCTAssertTrue(line.contains("is gone"), line)
        XCTAssertTrue(line.contains("--on-slot-lost recreate"), line)
        XCTAssertNil(try outbox.confirmedFlush, "no slot was created")

        let recreated = try SpoutProcess(["run", "--on-slot-lost", "recreate"] + outbox.arguments)
        try eventually("spout streams from the slot: \(recreated.stderr)") { try outbox.streamingWalsender != nil }
        XCTAssertTrue(recreated.stderr.contains("in place of the lost one"), recreated.stderr)
        XCTAssertEqual(Set(recreated.events.compactMap { $0["id"] as? String }), Set(delivered + lost))
        XCTAssertTrue(recreated.events.allSatisfy { $0["source"] as? String == "snapshot" })
        try outbox.insert(outbox.admin, rows: 1, aggregate: "new")
        try eventually("the new slot streams") { recreated.events.count == 6 }
        XCTAssertNil(recreated.events.last?["source"])
        recreated.signal(SIGTERM)
        XCTAssertEqual(recreated.waitForExit(), 0, recreated.stderr)
        try assertEveryRowOnce(recreated.events.compactMap { $0["id"] as? String }, outbox)
    }

    /// The deprecated spelling still works, with one warning; contradicting it is an error.
    func testRecreateLostSlotIsADeprecatedAlias() throws {
        let outbox = try OutboxFixture("lostalias")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        try outbox.admin.sql("SELECT pg_drop_replication_slot('\(outbox.slot)')")
        let contradiction = try SpoutProcess.run(["setup", "--recreate-lost-slot", "--on-slot-lost", "fail"] + outbox.arguments)
        XCTAssertEqual(contradiction.status, 64, contradiction.stderr)
        XCTAssertTrue(contradiction.stderr.contains("contradicts --on-slot-lost fail"), contradiction.stderr)
        let setup = try SpoutProcess.run(["setup", "--recreate-lost-slot"] + outbox.arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        XCTAssertEqual(setup.stderr.components(separatedBy: "is deprecated: use --on-slot-lost recreate").count, 2, setup.stderr)
        // setup cannot publish: it marks the slot, and the next run publishes the table's rows.
        XCTAssertEqual(try outbox.admin.value("SELECT snapshot_pending FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'"), "t")
        try outbox.insert(outbox.admin, rows: 2)
        let run = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot: \(run.stderr)") { try outbox.streamingWalsender != nil }
        XCTAssertEqual(run.events.count, 2, run.stderr)
        run.signal(SIGTERM)
        XCTAssertEqual(run.waitForExit(), 0, run.stderr)
    }

    /// A slot PostgreSQL invalidated for real (max_slot_wal_keep_size, on a server of the
    /// test's own): `fail` names the cause and the option; `recreate` drops it, and every
    /// row of the table arrives, then streamed ones.
    func testInvalidatedSlotRecreatedPublishesEveryRow() throws {
        let server = try PrivateServer.start("lostslot-\(ProcessInfo.processInfo.processIdentifier)")
        defer { server.stop() }
        let admin = try PostgresConnection(server.url)
        try admin.query("""
            CREATE TABLE public.outbox (id bigserial PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
              event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb)
            """, context: "")
        let arguments = ["--database-url", server.url]
        let setup = try SpoutProcess.run(["setup"] + arguments)
        XCTAssertEqual(setup.status, 0, setup.stderr)
        try admin.query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT 'o', g::text, 'C', '{}' FROM generate_series(1, 100) g",
                        context: "")
        try admin.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", context: "")
        try admin.query("SELECT pg_reload_conf()", context: "")
        try eventually(timeout: 60, "the slot is invalidated") {
            try admin.query("CREATE TABLE IF NOT EXISTS wal_filler (x text)", context: "")
            try admin.query("INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)", context: "")
            try admin.query("SELECT pg_switch_wal()", context: "")
            try admin.query("CHECKPOINT", context: "")
            return try admin.query("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'spout'", context: "").first?.first ?? nil == "lost"
        }
        let refused = try SpoutProcess.run(["run"] + arguments)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("is invalidated (wal_removed"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("--on-slot-lost recreate"), refused.stderr)

        let spout = try SpoutProcess(["run", "--on-slot-lost", "recreate"] + arguments)
        try eventually(timeout: 60, "100 events, got \(spout.events.count): \(spout.stderr)") { spout.events.count == 100 }
        XCTAssertTrue(spout.stderr.contains("dropped the invalidated replication slot"), spout.stderr)
        try eventually("spout streams from the new slot") {
            try admin.query("SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = 'spout'", context: "").first == ["t", "reserved"]
        }
        try admin.query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', 'new', 'C', '{}')", context: "")
        try eventually("the new slot streams") { spout.events.count == 101 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let ids = spout.events.compactMap { $0["id"] as? String }
        XCTAssertEqual(ids, (1...101).map(String.init), "every row once, in primary-key order, then the streamed one")
    }
}
