import Foundation
import XCTest
@testable import SpoutCore

/// Rows read with SQL (snapshot, backfill) map exactly like the same rows inserted and
/// streamed, and carry their `source` marker; streamed events carry none.
final class TableRowMappingTests: XCTestCase {
    private let columns: [(name: String, typeOID: UInt32)] = [
        ("id", 2950), ("aggregate_type", 25), ("aggregate_id", 25), ("event_type", 25), ("payload", 3802), ("headers", 3802),
        ("tenant_id", 25),
    ]
    private let values: [String?] = ["0b9f3c1e-0000-4000-8000-000000000001", "order", "42", "Created", "{\"n\": 1}", "{\"h\": \"v\"}", "acme"]

    private func mapper() throws -> EventMapper {
        EventMapper(mapping: OutboxMapping(table: TableName(schema: "public", name: "outbox"),
                                           topic: try TopicTemplate("{tenant_id}.{aggregate_type}")))
    }

    private var reader: OutboxTableReader {
        OutboxTableReader(table: TableName(schema: "public", name: "outbox"),
                          columns: columns.map { OutboxTableReader.Column(name: $0.name, typeOID: $0.typeOID) },
                          primaryKey: [OutboxTableReader.KeyColumn(name: "id", type: "uuid")])
    }

    func testATableRowMapsLikeAStreamedRow() throws {
        var streaming = try mapper()
        let relation = PgOutputMessage.Relation(xid: nil, oid: 7, namespace: "public", name: "outbox", replicaIdentity: UInt8(ascii: "d"),
                                                columns: columns.map { .init(flags: 0, name: $0.name, typeOID: $0.typeOID, typeModifier: -1) })
        try streaming.register(relation)
        let read = reader.row(values + ["0b9f3c1e-0000-4000-8000-000000000001"])
        XCTAssertEqual(read.key, ["0b9f3c1e-0000-4000-8000-000000000001"])
        let begin = PgOutputMessage.Begin(finalLSN: LSN(10), commitTime: PostgresTimestamp(rawValue: 5), xid: 1)
        let streamed = try XCTUnwrap(try streaming.event(relationOID: 7, row: read.tuple, commit: begin))

        let layout = try reader.layout(try mapper())
        let snapshot = try mapper().event(tableRow: read.tuple, layout: layout, lsn: LSN(99), committedAt: PostgresTimestamp(rawValue: 5), source: .snapshot)
        XCTAssertEqual(snapshot.source, .snapshot)
        XCTAssertEqual(snapshot.lsn, LSN(99))
        var expected = streamed
        expected.lsn = LSN(99)
        expected.source = .snapshot
        XCTAssertEqual(snapshot, expected)
        XCTAssertEqual(snapshot.topic, "acme.order")
    }

    func testTheStdoutLineCarriesTheSourceOnlyForRepublishedRows() throws {
        let layout = try reader.layout(try mapper())
        let read = reader.row(values + ["k"])
        for (source, marker) in [(OutboxEvent.Source.stream, nil), (.snapshot, "snapshot"), (.backfill, "backfill")] {
            let event = try mapper().event(tableRow: read.tuple, layout: layout, lsn: LSN(1), committedAt: PostgresTimestamp(rawValue: 0), source: source)
            var line: [UInt8] = []
            StdoutSink.appendJSONLine(event, to: &line)
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
            XCTAssertEqual(object["source"] as? String, marker, String(decoding: line, as: UTF8.self))
            XCTAssertEqual(object["lsn"] as? String, "0/1")
        }
    }

    func testAMissingColumnIsNamed() throws {
        let narrow = OutboxTableReader(table: TableName(schema: "public", name: "outbox"),
                                       columns: [.init(name: "id", typeOID: 25)], primaryKey: [])
        XCTAssertThrowsError(try narrow.layout(try mapper())) { error in
            XCTAssertTrue("\(error)".contains("payload"), "\(error)")
        }
    }

    func testKeysRoundTrip() {
        XCTAssertEqual(OutboxTableReader.keyText(["5"]), "5")
        XCTAssertEqual(OutboxTableReader.key("5", columns: 1), ["5"])
        let composite = OutboxTableReader.keyText(["2026-01-01 00:00:00+00", "a\"b"])
        XCTAssertEqual(OutboxTableReader.key(composite, columns: 2), ["2026-01-01 00:00:00+00", "a\"b"])
        XCTAssertNil(OutboxTableReader.key("[\"x\"]", columns: 2))
        XCTAssertNil(OutboxTableReader.key("x", columns: 2))
    }

    func testKeysetConditionCastsEachValue() {
        let twoColumns = OutboxTableReader(table: TableName(schema: "public", name: "outbox"), columns: [],
                                           primaryKey: [.init(name: "created_at", type: "timestamp with time zone"), .init(name: "id", type: "bigint")])
        XCTAssertEqual(twoColumns.after(["2026-01-01", "7'"]),
                       "ROW(\"created_at\", \"id\") > ROW('2026-01-01'::timestamp with time zone, '7'''::bigint)")
    }
}
