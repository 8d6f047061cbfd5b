import Foundation
import SpoutCore
import XCTest

/// `spout run --snapshot initial`: a slot spout creates first publishes the rows already in
/// the table, from the slot's exported snapshot, then streams from its consistent point —
/// every row exactly once, none missed, also while a writer inserts during the snapshot and
/// when spout is killed in the middle of it.
final class SnapshotTests: XCTestCase {
    /// Rows before the slot existed arrive once, marked, before the streamed ones; a later
    /// run on the existing slot publishes nothing again.
    func testRowsBeforeTheSlotArriveOnceThenStreamedOnes() throws {
        let outbox = try OutboxFixture("snapinit")
        defer { outbox.tearDown() }
        try outbox.insertSeries(2500, aggregateType: "before")
        let spout = try SpoutProcess(["run", "--snapshot", "initial", "--max-in-flight", "100"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        XCTAssertEqual(spout.events.count, 2500, "every snapshot row is acknowledged before streaming starts")
        try outbox.insert(outbox.admin, rows: 3, aggregate: "after")
        try eventually("2503 events, got \(spout.events.count): \(spout.stderr)") { spout.events.count == 2503 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let events = spout.events
        XCTAssertEqual(events.prefix(2500).compactMap { $0["source"] as? String }, Array(repeating: "snapshot", count: 2500))
        XCTAssertEqual(events.prefix(2500).compactMap { $0["topic"] as? String }, Array(repeating: "outbox.event.before", count: 2500))
        XCTAssertTrue(events.suffix(3).allSatisfy { $0["source"] == nil && $0["topic"] as? String == "outbox.event.after" })
        try assertEveryRowOnce(events.compactMap { $0["id"] as? String }, outbox)
        // The snapshot's events carry the slot's consistent point: every one of their rows committed before it.
        let snapshotLSN = try XCTUnwrap(events.first?["lsn"] as? String).flatMap { LSN($0) }
        let created = try outbox.admin.lsn("SELECT created_lsn FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'")
        XCTAssertEqual(snapshotLSN, created)
        XCTAssertEqual(try outbox.admin.value("SELECT snapshot_pending FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'"), "f")

        let again = try SpoutProcess(["run", "--snapshot", "initial", "--log-level", "debug"] + outbox.arguments)
        try eventually("spout streams from the slot: \(again.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 1, aggregate: "later")
        try eventually("one event") { again.events.count == 1 }
        XCTAssertEqual(again.events.first?["topic"] as? String, "outbox.event.later")
        XCTAssertTrue(again.stderr.contains("--snapshot initial applies only to a slot spout creates"), again.stderr)
        again.signal(SIGTERM)
        XCTAssertEqual(again.waitForExit(), 0, again.stderr)
    }

    /// A writer inserts, one row per transaction, from before spout starts until after it
    /// streams: the rows committed before the consistent point come from the snapshot, the
    /// rest from the slot, each exactly once.
    func testConcurrentInsertsDuringTheSnapshotArriveExactlyOnce() throws {
        let outbox = try OutboxFixture("snapconc")
        defer { outbox.tearDown() }
        try outbox.insertSeries(20000, aggregateType: "before")
        let writes = Counter()
        let streaming = Flag()
        let finished = Flag()
        let thread = Thread {
            defer { finished.set() }
            guard let writer = try? PostgresConnection(outbox.url) else { return }
            var afterStreaming = 0
            // Until spout streams, then 200 more: inserts before, during and after the snapshot.
            while afterStreaming < 200 {
                guard (try? outbox.insert(writer, rows: 1, aggregate: "during")) != nil else { return }
                writes.add()
                if streaming.isSet { afterStreaming += 1 }
            }
        }
        thread.start()
        eventually("the writer runs") { writes.value >= 20 }
        let spout = try SpoutProcess(["run", "--snapshot", "initial"] + outbox.arguments)
        try eventually(timeout: 120, "spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        streaming.set()
        eventually(timeout: 60, "the writer is done") { finished.isSet }
        let total = try XCTUnwrap(Int(try XCTUnwrap(try outbox.admin.value("SELECT count(*) FROM public.\(outbox.table)"))))
        XCTAssertGreaterThan(total, 20_200)
        try eventually(timeout: 60, "\(total) events, got \(spout.events.count)") { spout.events.count >= total }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let events = spout.events
        try assertEveryRowOnce(events.compactMap { $0["id"] as? String }, outbox)
        let snapshotted = events.filter { $0["source"] as? String == "snapshot" }.count
        XCTAssertGreaterThanOrEqual(snapshotted, 20_020, "the rows before spout started are in the snapshot")
        XCTAssertLessThan(snapshotted, total, "rows written after the consistent point are streamed")
    }

    /// kill -9 while the snapshot's rows are being published (the sink is a pipe nobody
    /// reads, so spout waits there): a second run standing by meanwhile drops the slot, whose
    /// snapshot is pending, creates it again and publishes every row — without --snapshot.
    func testKillDuringTheSnapshotLosesNothing() throws {
        let outbox = try OutboxFixture("snapkill")
        defer { outbox.tearDown() }
        try outbox.insertSeries(5000, aggregateType: "before")
        let stuck = try SpoutProcess(["run", "--snapshot", "initial"] + outbox.arguments, stdoutPipe: true)
        try eventually("the snapshot is being published: \(stuck.stderr)") {
            guard stuck.stderr.contains("publishing the rows of") else { return false }
            return try outbox.admin.value(
                "SELECT created_lsn IS NOT NULL AND snapshot_pending FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'") == "t"
        }
        // The slot looks idle while its snapshot is published (PostgreSQL releases a slot once
        // created): another spout must not take it for an abandoned one and drop it.
        let slotBefore = try outbox.confirmedFlush
        let other = try SpoutProcess.run(["setup"] + outbox.arguments)
        XCTAssertEqual(other.status, 1, other.stderr)
        XCTAssertTrue(other.stderr.contains("is in use by \"spout run host="), other.stderr)
        XCTAssertEqual(try outbox.confirmedFlush, slotBefore, "the slot was left alone")
        // A second run stands by meanwhile, and takes over by publishing a new snapshot.
        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("the second run stands by: \(spout.stderr)") { spout.stderr.contains("while it publishes the slot's snapshot") }
        XCTAssertEqual(try outbox.confirmedFlush, slotBefore, "the slot was left alone")
        let oldConsistentPoint = try XCTUnwrap(try outbox.confirmedFlush)
        stuck.signal(SIGKILL)
        XCTAssertNotNil(stuck.waitForExit(timeout: 30))
        try outbox.insert(outbox.admin, rows: 2, aggregate: "meanwhile")

        try eventually(timeout: 60, "spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        XCTAssertTrue(spout.stderr.contains("was not finished"), spout.stderr)
        XCTAssertGreaterThan(try XCTUnwrap(try outbox.confirmedFlush), oldConsistentPoint, "a new slot")
        try outbox.insert(outbox.admin, rows: 1, aggregate: "after")
        try eventually("5003 events, got \(spout.events.count)") { spout.events.count == 5003 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        try assertEveryRowOnce(spout.events.compactMap { $0["id"] as? String }, outbox)
        // The two rows written after the kill are in the new snapshot or streamed, as the takeover fell.
        XCTAssertGreaterThanOrEqual(spout.events.filter { $0["source"] as? String == "snapshot" }.count, 5000)
    }

    /// `--redis-ids lsn`: the snapshot's entries get ids `<consistent point>-<n>`, in
    /// primary-key order and below every streamed entry's, and a `source` field.
    func testSnapshotIntoRedisWithLSNIDs() throws {
        let redis = try RedisServer()
        defer { redis.kill() }
        let outbox = try OutboxFixture("snapredis")
        defer { outbox.tearDown() }
        try outbox.insertSeries(300, aggregateType: "order")
        let spout = try SpoutProcess(["run", "--snapshot", "initial", "--sink", redis.url, "--redis-ids", "lsn"] + outbox.arguments)
        try eventually("spout streams from the slot: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 2)
        let client = try redis.client()
        try eventually("302 entries: \(spout.stderr)") { try client.totalLength("outbox.event.order") == 302 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let entries = try client.entries("outbox.event.order")
        let point = try XCTUnwrap(try outbox.admin.lsn("SELECT created_lsn FROM public.spout_slots WHERE slot_name = '\(outbox.slot)'"))
        XCTAssertEqual(entries.prefix(300).map(\.id), (0..<300).map { "\(point.rawValue)-\($0)" })
        XCTAssertTrue(entries.prefix(300).allSatisfy { $0.fields["source"] == "snapshot" })
        // Lower-case hex sorts like PostgreSQL's uuid order.
        let snapshotIDs = entries.prefix(300).compactMap { $0.fields["id"] }
        XCTAssertEqual(snapshotIDs, snapshotIDs.sorted(), "primary-key order")
        XCTAssertTrue(entries.suffix(2).allSatisfy { $0.fields["source"] == nil })
    }
}

extension OutboxFixture {
    /// `count` rows in one statement, aggregate ids 1…count, payload `{"n": i}`; the aggregate
    /// type is a string, or with `sql` an expression over `g` (the row's number).
    func insertSeries(_ count: Int, aggregateType: String, sql: Bool = false) throws {
        try admin.sql("""
            INSERT INTO public.\(table) (aggregate_type, aggregate_id, event_type, payload)
            SELECT \(sql ? aggregateType : SQL.literal(aggregateType)), g::text, 'Created', jsonb_build_object('n', g)
              FROM generate_series(1, \(count)) g
            """)
    }
}

/// The ids delivered are exactly the table's, each once.
func assertEveryRowOnce(_ ids: [String], _ outbox: OutboxFixture, file: StaticString = #filePath, line: UInt = #line) throws {
    let table = Set(try outbox.admin.sql("SELECT id FROM public.\(outbox.table)").compactMap { $0.first ?? nil })
    XCTAssertEqual(ids.count, Set(ids).count, "no row twice", file: file, line: line)
    XCTAssertEqual(Set(ids).count, table.count, "as many rows as the table holds", file: file, line: line)
    XCTAssertEqual(Set(ids), table, "the rows of the table", file: file, line: line)
}

fileprivate final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}

fileprivate final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var on = false
    func set() { lock.lock(); on = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return on }
}
