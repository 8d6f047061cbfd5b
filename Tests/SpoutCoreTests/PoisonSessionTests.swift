import Foundation
import MetricsTestKit
@testable import SpoutCore
import XCTest

/// `--on-poison` for rows that cannot be mapped, decided by the session: the captured outbox
/// transaction with its second row's topic column (aggregate_type) or id set to NULL.
final class PoisonSessionTests: XCTestCase {
    typealias Driver = ReplicationSessionTests.Driver

    /// Begin, Relation, three inserts (the second poisoned by `poison`), Commit at `commit`.
    private func feedPoisoned(_ driver: inout Driver, commit: LSN, poison: (inout TupleData, PgOutputMessage.Relation) -> Void) throws {
        let fixture = try SessionFixture.load()
        var begin = fixture.begin
        begin.finalLSN = LSN(commit.rawValue - 0x10)
        var end = fixture.commit
        end.commitLSN = begin.finalLSN
        end.endLSN = commit
        try driver.feed(.begin(begin), walEnd: begin.finalLSN)
        try driver.feed(.relation(fixture.relation))
        for (index, var insert) in fixture.inserts.enumerated() {
            if index == 1 { poison(&insert.new, fixture.relation) }
            try driver.feed(.insert(insert), walEnd: begin.finalLSN)
        }
        try driver.feed(.commit(end), walEnd: commit)
    }

    private static func nullTopic(_ row: inout TupleData, _ relation: PgOutputMessage.Relation) {
        guard let index = relation.columns.firstIndex(where: { $0.name == "aggregate_type" }) else { return XCTFail("no aggregate_type") }
        row.columns[index] = .null
    }

    private static func nullID(_ row: inout TupleData, _ relation: PgOutputMessage.Relation) {
        row.columns[0] = .null
    }

    func testStopThrowsAndConfirmsNothingOfTheTransaction() throws {
        var driver = Driver { $0.streaming = true }
        XCTAssertThrowsError(try feedPoisoned(&driver, commit: LSN(0x2000), poison: Self.nullTopic)) { error in
            guard case SpoutError.unmappableEvent = error else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(driver.sent.count, 1, "the event before it was handed over")
    }

    func testSkipPassesOverTheRowCountsItAndConfirmsPastIt() throws {
        let ids = try SessionFixture.ids()
        for streaming in [true, false] {
            var driver = Driver {
                $0.streaming = streaming
                $0.onPoison = .skip
            }
            try feedPoisoned(&driver, commit: LSN(0x2000), poison: Self.nullTopic)
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.event.id), [ids[0], ids[2]], "the good events, in order")
            XCTAssertEqual(driver.warnings.count, 1)
            XCTAssertTrue(driver.warnings[0].contains("skipped outbox event \"\(ids[1])\""), driver.warnings[0])
            XCTAssertTrue(driver.warnings[0].contains("topic placeholder {aggregate_type} is null or empty"), driver.warnings[0])
            XCTAssertEqual(driver.session.skippedPerTopic, [PoisonPolicy.unmappedTopic: 1])
            driver.ack(0, 1)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "the LSN moves past the poison row")
        }
    }

    func testDeadLetterTakesThePoisonRowsPlaceInTicketOrder() throws {
        let ids = try SessionFixture.ids()
        for streaming in [true, false] {
            var driver = Driver {
                $0.streaming = streaming
                $0.onPoison = .deadLetter(topic: "dlq")
            }
            try feedPoisoned(&driver, commit: LSN(0x2000), poison: Self.nullTopic)
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.ticket), [0, 1, 2])
            XCTAssertEqual(driver.sent.map(\.event.topic), [driver.sent[0].event.topic, "dlq", driver.sent[2].event.topic])
            let letter = driver.sent[1].event
            XCTAssertEqual(letter.id, "dead-letter:\(ids[1])")
            XCTAssertEqual(letter.source, .deadLetter)
            XCTAssertEqual(letter.type, DeadLetter.eventType)
            XCTAssertEqual(letter.lsn, streaming ? .zero : LSN(0x2000), "stamped like any event")
            let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(letter.payload)) as? [String: Any])
            XCTAssertEqual(record["id"] as? String, ids[1])
            XCTAssertTrue(record["topic"] is NSNull, "no topic could be made")
            XCTAssertEqual(record["lsn"] as? String, LSN(0x1FF0).description, "where the transaction's commit record starts")
            XCTAssertTrue((record["error"] as? String)?.contains("{aggregate_type}") == true, "\(record)")
            let row = try XCTUnwrap(record["row"] as? [String: Any])
            XCTAssertEqual(row["id"] as? String, ids[1])
            XCTAssertTrue(row["aggregate_type"] is NSNull)
            XCTAssertNotNil(row["payload"] as? String)
            XCTAssertEqual(driver.warnings.count, 1)
            XCTAssertTrue(driver.warnings[0].contains("dead-lettered outbox event \"\(ids[1])\""), driver.warnings[0])
            XCTAssertEqual(driver.session.deadLetteredPerTopic, [PoisonPolicy.unmappedTopic: 1])
            driver.ack(0, 2)
            XCTAssertEqual(driver.session.confirmable, LSN(0x1000), "the dead letter is not acknowledged yet")
            driver.ack(1)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000))
        }
    }

    func testDeadLetterOfARowWithoutIDHasAStableID() throws {
        var driver = Driver {
            $0.streaming = true
            $0.onPoison = .deadLetter(topic: "dlq")
        }
        try feedPoisoned(&driver, commit: LSN(0x2000), poison: Self.nullID)
        XCTAssertEqual(driver.sent[1].event.id, "dead-letter:\(LSN(0x1FF0)):1", "the commit LSN and its position in the transaction")
        let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(driver.sent[1].event.payload)) as? [String: Any])
        XCTAssertTrue(record["id"] is NSNull)
        XCTAssertTrue((record["error"] as? String)?.contains("column \"id\" is null") == true, "\(record)")
    }

    func testSkippedRowSentAgainAfterAReconnectIsNotCountedTwice() throws {
        var driver = Driver {
            $0.streaming = true
            $0.onPoison = .skip
        }
        let fixture = try SessionFixture.load()
        var begin = fixture.begin
        begin.finalLSN = LSN(0x1FF0)
        try driver.feed(.begin(begin), walEnd: begin.finalLSN)
        try driver.feed(.relation(fixture.relation))
        var poisoned = fixture.inserts[1]
        Self.nullTopic(&poisoned.new, fixture.relation)
        try driver.feed(.insert(fixture.inserts[0]))
        try driver.feed(.insert(poisoned))
        driver.session.connectionLost()
        driver.session.resumed(slotConfirmed: LSN(0x1000), now: driver.now)
        try driver.feed(.begin(begin), walEnd: begin.finalLSN)
        try driver.feed(.relation(fixture.relation))
        try driver.feed(.insert(fixture.inserts[0]))
        try driver.feed(.insert(poisoned))
        try driver.feed(.insert(fixture.inserts[2]))
        XCTAssertEqual(driver.sent.map(\.ticket), [0, 1])
        XCTAssertEqual(driver.session.skippedPerTopic, [PoisonPolicy.unmappedTopic: 1], "taken before the connection dropped")
    }

    func testCountersReachTheMetrics() throws {
        let metrics = TestMetrics()
        let relayMetrics = RelayMetrics(sink: "fake", factory: metrics)
        var driver = Driver {
            $0.streaming = true
            $0.onPoison = .skip
        }
        try feedPoisoned(&driver, commit: LSN(0x2000), poison: Self.nullTopic)
        relayMetrics.publish(driver.session, confirmed: .zero, spoolBytes: 0)
        relayMetrics.publish(driver.session, confirmed: .zero, spoolBytes: 0)
        let counter = try metrics.expectCounter("spout_events_skipped_total", [("sink", "fake"), ("topic", PoisonPolicy.unmappedTopic)])
        XCTAssertEqual(counter.totalValue, 1)
    }
}
