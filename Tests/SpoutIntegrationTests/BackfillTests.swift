import Foundation
import SpoutCore
import XCTest

/// `spout backfill`: re-publishes rows from the table, in primary-key order, marked
/// `source: backfill`; interrupted (SIGINT, kill -9) it resumes with `--after` the last key
/// it printed, and every row arrives.
final class BackfillTests: XCTestCase {
    /// 200k rows: SIGINT after the first progress line (the backfill stops after the batch's
    /// acknowledgements and names the key to resume from), kill -9 after the resumed run's
    /// first progress line (whose key is done), then the rest: every row arrives.
    func testInterruptedBackfillResumesWithEveryRow() throws {
        let outbox = try OutboxFixture("backfill")
        defer { outbox.tearDown() }
        try outbox.insertSeries(200000, aggregateType: "order")
        // --rate keeps each run long (20 s for the table) next to the test's reaction to a progress line.
        let options = ["backfill", "--batch", "2000", "--rate", "10000"] + outbox.arguments

        let first = try SpoutProcess(options)
        try eventually("a progress line: \(first.stderr)") { first.stderr.contains("last key") }
        first.signal(SIGINT)
        XCTAssertEqual(first.waitForExit(timeout: 60), 130, first.stderr)
        let resumeKey = try XCTUnwrap(Self.value(after: "resume with --after ", in: first.stderr), first.stderr)
        let firstIDs = first.events.compactMap { $0["id"] as? String }
        XCTAssertEqual(firstIDs.last, resumeKey, "the key to resume from is the last row published")
        XCTAssertEqual(firstIDs.count % 2000, 0, "whole batches")
        XCTAssertTrue(first.events.allSatisfy { $0["source"] as? String == "backfill" })

        let second = try SpoutProcess(options + ["--after", resumeKey])
        try eventually("a progress line: \(second.stderr)") { second.stderr.contains("rows/s") }
        let progress = try XCTUnwrap(second.stderr.split(separator: "\n").first { $0.contains("last key") })
        let doneKey = try XCTUnwrap(Self.value(after: "last key ", in: String(progress)))
        second.signal(SIGKILL)
        XCTAssertNotNil(second.waitForExit(timeout: 30))
        let secondIDs = second.events.compactMap { $0["id"] as? String }
        XCTAssertTrue(secondIDs.contains(doneKey), "a key printed as done was published")
        XCTAssertTrue(secondIDs.allSatisfy { $0 > resumeKey }, "nothing before --after")

        let third = try SpoutProcess(["backfill", "--batch", "5000", "--after", doneKey] + outbox.arguments)
        XCTAssertEqual(third.waitForExit(timeout: 300), 0, third.stderr)
        XCTAssertTrue(third.stderr.contains("backfill: done"), third.stderr)
        let thirdIDs = third.events.compactMap { $0["id"] as? String }
        XCTAssertEqual(thirdIDs, thirdIDs.sorted(), "primary-key order")

        let table = Set(try outbox.admin.sql("SELECT id FROM public.\(outbox.table)").compactMap { $0.first ?? nil })
        XCTAssertEqual(table.count, 200_000)
        XCTAssertEqual(Set(firstIDs + secondIDs + thirdIDs), table, "every row arrived")
        XCTAssertEqual(Set(firstIDs).count + Set(thirdIDs).count + Set(secondIDs.filter { $0 <= doneKey }).count, 200_000,
                       "apart from what kill -9 cut short, no row twice")
    }

    /// --where selects rows; --rate caps rows per second (a lower bound on the time taken);
    /// --redis-ids lsn is refused; --after of the wrong shape is named.
    func testWhereRateAndRefusals() throws {
        let outbox = try OutboxFixture("backfillwhere")
        defer { outbox.tearDown() }
        try outbox.insertSeries(600, aggregateType: "CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END", sql: true)
        let started = Date()
        let even = try SpoutProcess.run(["backfill", "--where", "aggregate_type = 'even'", "--rate", "200", "--batch", "50"] + outbox.arguments)
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(even.status, 0, even.stderr)
        let lines = even.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(lines.count, 300)
        XCTAssertTrue(lines.allSatisfy { $0["topic"] as? String == "outbox.event.even" && $0["source"] as? String == "backfill" })
        XCTAssertGreaterThanOrEqual(elapsed, 1.4, "300 rows at 200 rows/s take 1.5 s at least")
        XCTAssertTrue(even.stderr.contains("300 rows of public.\(outbox.table) to publish"), even.stderr)

        let redis = try SpoutProcess.run(["backfill", "--sink", "redis://127.0.0.1:1", "--redis-ids", "lsn"] + outbox.arguments)
        XCTAssertEqual(redis.status, 64, redis.stderr)
        XCTAssertTrue(redis.stderr.contains("--redis-ids lsn cannot take backfilled rows"), redis.stderr)

        let badWhere = try SpoutProcess.run(["backfill", "--where", "no_such_column = 1"] + outbox.arguments)
        XCTAssertEqual(badWhere.status, 1, badWhere.stderr)
        XCTAssertTrue(badWhere.stderr.contains("check --where"), badWhere.stderr)
        XCTAssertTrue(badWhere.stdout.isEmpty)
    }

    /// The text after `marker` on its line, up to the end or a space.
    static func value(after marker: String, in text: String) -> String? {
        guard let range = text.range(of: marker, options: .backwards) else { return nil }
        let rest = text[range.upperBound...]
        return String(rest.prefix { $0 != "\n" && $0 != " " && $0 != ")" })
    }
}
