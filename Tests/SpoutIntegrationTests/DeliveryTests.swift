import Foundation
import SpoutCore
import XCTest

/// The delivery contract (DESIGN.md §1) against a real PostgreSQL, through the `spout` executable.
final class DeliveryTests: XCTestCase {
    /// 10,000 events in transactions of 1, 10 and 1,000 rows from four connections at once:
    /// each arrives once, transactions whole and in commit order, with topic, key, payload and LSN.
    func testTenThousandEventsArriveOnceInCommitOrder() throws {
        let outbox = try OutboxFixture("order")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--report-latency"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        // Per writer: (rows per transaction, transactions). 4 writers × 2,500 events.
        let plans: [[(rows: Int, count: Int)]] = [
            [(1, 500), (10, 100), (1000, 1)],
            [(10, 150), (1000, 1)],
            [(1, 1000), (10, 50), (1000, 1)],
            [(1, 500), (1000, 2)],
        ]
        let failures = LockedBox<[String]>([])
        let threads = plans.enumerated().map { writer, plan in
            Thread {
                do {
                    let connection = try TestDatabase.connect()
                    var sequence = 0
                    var transaction = 0
                    // Interleave the sizes so the writers' transactions mix.
                    var remaining = plan
                    while remaining.contains(where: { $0.count > 0 }) {
                        for index in remaining.indices where remaining[index].count > 0 {
                            remaining[index].count -= 1
                            let base = sequence
                            let tx = transaction
                            try outbox.insert(connection, rows: remaining[index].rows, aggregate: "agg\(writer)",
                                              key: { "w\(writer)-k\((base + $0) % 7)" },
                                              payload: { "{\"writer\": \(writer), \"seq\": \(base + $0), \"tx\": \(tx)}" })
                            sequence += remaining[index].rows
                            transaction += 1
                        }
                    }
                } catch {
                    failures.mutate { $0.append("writer \(writer): \(error)") }
                }
            }
        }
        threads.forEach { $0.start() }
        try eventually(timeout: 180, "10,000 events, got \(spout.lines.count)") {
            XCTAssertTrue(failures.value.isEmpty, "\(failures.value)")
            return spout.lines.count >= 10_000 || !failures.value.isEmpty
        }
        XCTAssertTrue(failures.value.isEmpty, "\(failures.value)")
        usleep(500_000)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let events = spout.events
        XCTAssertEqual(events.count, 10_000, "every event exactly once")
        XCTAssertEqual(Set(events.compactMap { $0["id"] as? String }).count, 10_000, "no duplicate ids")

        var lastLSN = LSN.zero
        var lastSequence: [Int: Int] = [:]
        var transactionLSN: [String: LSN] = [:]
        var closedTransactions = Set<String>()
        var currentTransaction: String?
        for event in events {
            guard let payload = event["payload"] as? [String: Any], let writer = payload["writer"] as? Int,
                  let sequence = payload["seq"] as? Int, let tx = payload["tx"] as? Int,
                  let lsnText = event["lsn"] as? String, let lsn = LSN(lsnText) else {
                return XCTFail("malformed event \(event)")
            }
            XCTAssertEqual(event["topic"] as? String, "outbox.event.agg\(writer)")
            XCTAssertEqual(event["key"] as? String, "w\(writer)-k\(sequence % 7)")
            XCTAssertEqual(event["type"] as? String, "Created")
            XCTAssertEqual(event["headers"] as? [String: String], ["h": "v"])
            XCTAssertNotNil(event["committed_at"] as? String)
            // Commit order: LSNs never go back, and one writer's events keep their order.
            XCTAssertGreaterThanOrEqual(lsn, lastLSN, "commit order")
            lastLSN = lsn
            XCTAssertGreaterThan(sequence, lastSequence[writer] ?? -1, "writer \(writer) order")
            lastSequence[writer] = sequence
            // A transaction's events are contiguous and share its commit LSN; LSNs identify transactions.
            let transaction = "\(writer)/\(tx)"
            if transaction != currentTransaction {
                XCTAssertFalse(closedTransactions.contains(transaction), "transaction \(transaction) split")
                if let current = currentTransaction { closedTransactions.insert(current) }
                currentTransaction = transaction
                XCTAssertNil(transactionLSN.values.first { $0 == lsn }, "two transactions with LSN \(lsn)")
                transactionLSN[transaction] = lsn
            }
            XCTAssertEqual(transactionLSN[transaction], lsn)
        }
        XCTAssertEqual(lastSequence, [0: 2499, 1: 2499, 2: 2499, 3: 2499])
        XCTAssertTrue(spout.stderr.contains("latency commit→ack: count=10000 p50="), spout.stderr)
        XCTAssertEqual(transactionLSN.count, 500 + 100 + 1 + 150 + 1 + 1000 + 50 + 1 + 500 + 2)
        // After a clean stop everything delivered is confirmed.
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), lastLSN)
    }

    /// SIGKILL in the middle of a stream, then a restart: the union of both runs holds every
    /// event, and an event appears twice only if it was not confirmed when the first run died.
    func testCrashAndResumeLosesNothing() throws {
        let outbox = try OutboxFixture("crash")
        defer { outbox.tearDown() }
        let writer = try TestDatabase.connect()
        var expected = Set<String>()

        let first = try SpoutProcess(["run", "--max-in-flight", "50"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        // Writes until after the kill, so the first run dies mid-stream by construction.
        let background = try OutboxWriter(outbox, key: { "bg\($0)" })
        background.start(rows: 10, pause: 1_000)
        try eventually("first run received events") { first.lines.count >= 1_000 }
        first.signal(SIGKILL)
        first.waitForExit()
        let confirmedAtCrash = try XCTUnwrap(try outbox.confirmedFlush)
        background.waitForMore(20)
        try background.stop()
        XCTAssertLessThan(confirmedAtCrash, try XCTUnwrap(background.transactions.last).after, "the first run died mid-stream")
        expected.formUnion(background.ids)
        expected.formUnion(try outbox.insert(writer, rows: 100, key: { "after\($0)" }))
        XCTAssertEqual(expected.count, background.ids.count + 100)

        try eventually("the killed run's walsender released the slot") { try !outbox.slotIsActive }
        let second = try SpoutProcess(["run"] + outbox.arguments)
        let firstEvents = first.events
        try eventually(timeout: 120, "second run catches up") {
            let seen = Set((firstEvents + second.events).compactMap { $0["id"] as? String })
            return seen.isSuperset(of: expected)
        }
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)

        let secondEvents = second.events
        let union = Set((firstEvents + secondEvents).compactMap { $0["id"] as? String })
        XCTAssertTrue(union.isSuperset(of: expected), "lost \(expected.subtracting(union).count) events")
        let firstIDs = Set(firstEvents.compactMap { $0["id"] as? String })
        for event in secondEvents {
            guard let id = event["id"] as? String, firstIDs.contains(id) else { continue }
            let lsn = try XCTUnwrap(LSN(try XCTUnwrap(event["lsn"] as? String)))
            XCTAssertGreaterThan(lsn, confirmedAtCrash, "event \(id) at \(lsn) was confirmed before the crash, yet sent again")
        }
        // Within each run, no event twice.
        XCTAssertEqual(firstIDs.count, firstEvents.count)
        XCTAssertEqual(Set(secondEvents.compactMap { $0["id"] as? String }).count, secondEvents.count)
    }

    /// A backlog written while spout was not running (the replay path: spout reads the
    /// socket in batches when transactions are older than 100 ms): 3,000 single-row
    /// transactions, one 20,000-row transaction and one more row arrive once, in commit order,
    /// with commit LSNs that only grow.
    func testBacklogWrittenWhileStoppedArrivesOnceInOrder() throws {
        let outbox = try OutboxFixture("backlog")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        try outbox.admin.sql("""
            DO $$ BEGIN FOR i IN 1..3000 LOOP
              INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
                   VALUES ('single', (i % 7)::text, 'Created', jsonb_build_object('seq', i));
              COMMIT; END LOOP; END $$
            """)
        try outbox.admin.sql("""
            INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
            SELECT 'bulk', (i % 7)::text, 'Imported', jsonb_build_object('seq', 3000 + i) FROM generate_series(1, 20000) i
            """)
        try outbox.admin.sql("""
            INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('single', '0', 'Created', jsonb_build_object('seq', 23001))
            """)
        let end = try outbox.currentLSN()
        usleep(300_000)
        let run = try SpoutProcess.run(["run", "--end-lsn", end.description, "--max-in-flight", "500"] + outbox.arguments, timeout: 120)
        XCTAssertEqual(run.status, 0, run.stderr)
        let events = run.stdout.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        let sequences = events.compactMap { ($0["payload"] as? [String: Any])?["seq"] as? Int }
        XCTAssertEqual(sequences, Array(1...23_001))
        XCTAssertEqual(Set(events.compactMap { $0["id"] as? String }).count, 23_001)
        let lsns = events.compactMap { ($0["lsn"] as? String).flatMap { LSN($0) } }
        XCTAssertEqual(lsns.count, 23_001)
        XCTAssertEqual(Set(lsns).count, 3_002, "one commit LSN per transaction")
        XCTAssertTrue(zip(lsns, lsns.dropFirst()).allSatisfy { $0 <= $1 }, "commit order")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), try XCTUnwrap(lsns.last))
    }

    /// A 50,000-row transaction with a 64 KiB spool: events go through the spool file and
    /// still arrive once, in order, with the transaction's LSN.
    func testLargeTransactionThroughTheSpool() throws {
        let outbox = try OutboxFixture("large")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--spool-memory-bytes", "65536", "--max-in-flight", "100"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        try outbox.admin.sql("""
            INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
            SELECT 'bulk', (i % 10)::text, 'Imported', jsonb_build_object('seq', i, 'pad', repeat('x', 100))
              FROM generate_series(1, 50000) i
            """)
        try outbox.insert(outbox.admin, rows: 1, aggregate: "after")
        try eventually(timeout: 120, "50,001 events, got \(spout.lines.count)") { spout.lines.count >= 50_001 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let events = spout.events
        XCTAssertEqual(events.count, 50_001)
        let sequences = events.prefix(50_000).compactMap { ($0["payload"] as? [String: Any])?["seq"] as? Int }
        XCTAssertEqual(sequences, Array(1...50_000))
        XCTAssertEqual(Set(events.prefix(50_000).compactMap { $0["lsn"] as? String }).count, 1)
        XCTAssertEqual(events.last?["topic"] as? String, "outbox.event.after")
    }

    /// A reader that stops reading (a full stdout pipe, like a stalled broker): spout keeps
    /// sending status updates, so the walsender (wal_sender_timeout = 5 s in the test server)
    /// does not drop it; nothing is confirmed that was not written; then everything arrives.
    func testStalledReaderKeepsTheConnectionAlive() throws {
        let outbox = try OutboxFixture("stalled")
        defer { outbox.tearDown() }
        XCTAssertEqual(try outbox.admin.value("SHOW wal_sender_timeout"), "5s")
        let spout = try SpoutProcess(["run"] + outbox.arguments, stdoutPipe: true)
        var pid: String?
        try eventually("slot active with a walsender PID") {
            pid = try outbox.admin.value("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")
            return pid != nil
        }
        // About 3 MB of lines: far more than a pipe holds.
        for batch in 0..<10 {
            try outbox.insert(outbox.admin, rows: 1000, key: { "b\(batch)-\($0)" }, payload: { "{\"pad\": \"\(String(repeating: "x", count: 200))\", \"n\": \($0)}" })
        }
        let lastCommit = try outbox.currentLSN()
        // Longer than wal_sender_timeout (5 s): a client that stopped sending status would be cut off by now.
        sleep(8)
        XCTAssertTrue(spout.process.isRunning, spout.stderr)
        XCTAssertEqual(try outbox.admin.value("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"), pid,
                       "the walsender kept the same connection")
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), lastCommit, "confirmed events still stuck in the pipe")
        let reader = try XCTUnwrap(spout.pipe).fileHandleForReading
        var lines = 0
        let deadline = Date().addingTimeInterval(60)
        while lines < 10_000, Date() < deadline {
            lines += reader.availableData.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        }
        XCTAssertEqual(lines, 10_000)
        try eventually(timeout: 20, "confirmed reaches the last commit") { try XCTUnwrap(try outbox.confirmedFlush) >= lastCommit }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
    }

    /// Heavy writes to another table while the outbox is idle: the slot keeps confirming, so
    /// it does not hold WAL.
    func testIdleSlotDoesNotHoldWAL() throws {
        let outbox = try OutboxFixture("idle")
        defer { outbox.tearDown() }
        let other = TestDatabase.uniqueName("busy")
        try outbox.admin.sql("CREATE TABLE \(other) (id bigserial PRIMARY KEY, filler text)")
        defer { _ = try? outbox.admin.sql("DROP TABLE IF EXISTS \(other)") }

        let spout = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let before = try XCTUnwrap(try outbox.confirmedFlush)
        for _ in 0..<20 {
            try outbox.admin.sql("INSERT INTO \(other) (filler) SELECT repeat('x', 200) FROM generate_series(1, 2000)")
        }
        let written = try outbox.currentLSN()
        XCTAssertGreaterThan(written.rawValue - before.rawValue, 4 << 20, "the writes made WAL")
        try eventually(timeout: 20, "confirmed_flush_lsn follows the WAL to \(written)") {
            try XCTUnwrap(try outbox.confirmedFlush) >= written
        }
        let held = try XCTUnwrap(try outbox.admin.value(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'"))
        XCTAssertLessThan(Int(held) ?? .max, 1 << 20)
        XCTAssertTrue(spout.lines.isEmpty, "no events from another table")
        spout.signal(SIGINT)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
    }

    /// A row that cannot be mapped stops spout with a clear message and a non-zero exit; the
    /// slot is confirmed up to the transaction before it and no further.
    func testUnmappableRowStopsWithoutConfirmingIt() throws {
        let outbox = try OutboxFixture("unmappable")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--topic", "{tenant_id}.{event_type}"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        try outbox.admin.sql("INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id) VALUES ('a', '1', 'Good', '{}', 'acme')")
        try eventually("first event") { spout.lines.count == 1 }
        let good = try XCTUnwrap(LSN(try XCTUnwrap(spout.events.first?["lsn"] as? String)))
        let witness = try CommitWitness(outbox)
        let (inserted, badXID) = try CommitWitness.transaction(outbox.admin) {
            try outbox.admin.value("INSERT INTO \(outbox.table) (aggregate_type, aggregate_id, event_type, payload) VALUES ('a', '2', 'Bad', '{}') RETURNING id")
        }
        let badID = try XCTUnwrap(inserted)
        spout.waitForFailure(timeout: 30)
        XCTAssertTrue(spout.stderr.contains(badID), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("{tenant_id}"), spout.stderr)
        XCTAssertEqual(spout.lines.count, 1)
        // Up to the good transaction (or idle WAL after it), never the bad one.
        let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
        XCTAssertGreaterThanOrEqual(confirmed, good)
        XCTAssertLessThan(confirmed, try witness.commitLSN(xid: badXID), "confirmed the unmappable transaction")
    }
}

/// A value shared between threads in tests.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value { lock.withLock { stored } }
    func mutate(_ body: (inout Value) -> Void) { lock.withLock { body(&stored) } }
}
