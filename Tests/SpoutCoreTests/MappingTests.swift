import Foundation
import XCTest
@testable import SpoutCore

/// PostgreSQL type oids used by the outbox table.
private enum OID {
    static let bytea: UInt32 = 17
    static let int4: UInt32 = 23
    static let text: UInt32 = 25
    static let json: UInt32 = 114
    static let timestamptz: UInt32 = 1184
    static let uuid: UInt32 = 2950
    static let jsonb: UInt32 = 3802
}

private func relation(oid: UInt32 = 16893, namespace: String = "public", name: String = "outbox",
                      columns: [(String, UInt32)]) -> PgOutputMessage.Relation {
    PgOutputMessage.Relation(
        xid: nil, oid: oid, namespace: namespace, name: name, replicaIdentity: UInt8(ascii: "d"),
        columns: columns.enumerated().map { index, column in
            .init(flags: index == 0 ? 1 : 0, name: column.0, typeOID: column.1, typeModifier: -1)
        })
}

/// The default outbox table (sql/), payload of the given type.
private func outboxRelation(payloadType: UInt32 = OID.jsonb, oid: UInt32 = 16893) -> PgOutputMessage.Relation {
    relation(oid: oid, columns: [("id", OID.uuid), ("aggregate_type", OID.text), ("aggregate_id", OID.text), ("event_type", OID.text),
                                 ("payload", payloadType), ("headers", OID.jsonb), ("created_at", OID.timestamptz)])
}

private enum Cell {
    case value(String)
    case raw([UInt8])
    case null
    case toast
}

/// A text-format row as pgoutput delivers it: values packed into one storage array.
private func row(_ cells: [Cell]) -> TupleData {
    var storage: [UInt8] = [0xEE, 0xEE]  // ranges must not assume the storage starts with the first value
    var columns: [TupleData.Column] = []
    for cell in cells {
        switch cell {
        case let .value(text):
            storage.append(0xEE)
            let start = storage.count
            storage += Array(text.utf8)
            columns.append(.text(start..<storage.count))
        case let .raw(bytes):
            storage.append(0xEE)
            let start = storage.count
            storage += bytes
            columns.append(.text(start..<storage.count))
        case .null: columns.append(.null)
        case .toast: columns.append(.unchangedToast)
        }
    }
    return TupleData(columns: columns, storage: storage)
}

/// A row of the default outbox table.
private func outboxRow(id: Cell = .value("6f1c0d8e-1b7a-4a4e-9d55-0c5d4f1f2a10"), type: Cell = .value("order"),
                       aggregateID: Cell = .value("o-1"), eventType: Cell = .value("order.created"),
                       payload: Cell = .value(#"{"total": 42.5, "currency": "EUR"}"#), headers: Cell = .null) -> TupleData {
    row([id, type, aggregateID, eventType, payload, headers, .value("2026-11-23 11:30:06.975764+00")])
}

private let begin = PgOutputMessage.Begin(finalLSN: LSN(0x16_B374_D848), commitTime: PostgresTimestamp(rawValue: 762_525_296_789_012), xid: 871)

private func defaultMapping(topic: String = "outbox.event.{aggregate_type}", columns: OutboxMapping.Columns = .init(),
                            table: TableName = TableName(schema: "public", name: "outbox")) throws -> OutboxMapping {
    OutboxMapping(table: table, columns: columns, topic: try TopicTemplate(topic))
}

private func makeMapper(payloadType: UInt32 = OID.jsonb) throws -> EventMapper {
    var mapper = EventMapper(mapping: try defaultMapping())
    XCTAssertTrue(try mapper.register(outboxRelation(payloadType: payloadType)))
    return mapper
}

private func message(_ json: String, transactional: Bool = true, prefix: String = "outbox",
                     lsn: LSN = LSN(0x3E3_F518)) -> PgOutputMessage.LogicalMessage {
    PgOutputMessage.LogicalMessage(xid: nil, flags: transactional ? 1 : 0, lsn: lsn, prefix: prefix, content: Array(json.utf8))
}

private func assertThrows<T>(_ expression: @autoclosure () throws -> T, _ check: (Error) -> Bool,
                             _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
    do {
        let value = try expression()
        XCTFail("expected an error, got \(value) \(message)", file: file, line: line)
    } catch {
        XCTAssertTrue(check(error), "unexpected error \(error) \(message)", file: file, line: line)
    }
}

private func isMapping(_ expected: MappingError) -> (Error) -> Bool {
    { ($0 as? MappingError) == expected }
}

private func headers(_ pairs: [(String, String)]) -> [OutboxEvent.Header] {
    pairs.map { OutboxEvent.Header(name: $0.0, value: $0.1) }
}

final class TopicTemplateTests: XCTestCase {
    func testLiteralOnly() throws {
        let template = try TopicTemplate("orders")
        XCTAssertEqual(template.segments, [.literal("orders")])
        XCTAssertEqual(template.columns, [])
        XCTAssertEqual(template.description, "orders")
        XCTAssertEqual(try template.render { _ in nil }, "orders")
    }

    func testPlaceholders() throws {
        let template = try TopicTemplate("outbox.event.{aggregate_type}")
        XCTAssertEqual(template.segments, [.literal("outbox.event."), .column("aggregate_type")])
        XCTAssertEqual(template.columns, ["aggregate_type"])
        XCTAssertEqual(template.description, "outbox.event.{aggregate_type}")
        XCTAssertEqual(try template.render { $0 == "aggregate_type" ? "order" : nil }, "outbox.event.order")

        let two = try TopicTemplate("{tenant_id}.{event_type}")
        XCTAssertEqual(two.segments, [.column("tenant_id"), .literal("."), .column("event_type")])
        XCTAssertEqual(two.columns, ["tenant_id", "event_type"])
        XCTAssertEqual(try two.render { ["tenant_id": "acme", "event_type": "paid"][$0] }, "acme.paid")

        let adjacent = try TopicTemplate("{a}{b}-x")
        XCTAssertEqual(adjacent.segments, [.column("a"), .column("b"), .literal("-x")])
        XCTAssertEqual(try adjacent.render { $0.uppercased() }, "AB-x")
    }

    func testRenderRejectsNullAndEmptyParts() throws {
        let template = try TopicTemplate("t.{a}.{b}")
        assertThrows(try template.render { $0 == "a" ? "x" : nil }, isMapping(.emptyTopicPart(column: "b")))
        assertThrows(try template.render { $0 == "a" ? "" : "y" }, isMapping(.emptyTopicPart(column: "a")))
    }

    func testInvalidTemplates() {
        let cases: [(String, String)] = [
            ("", "empty"),
            ("orders.{aggregate_type", "unclosed '{'"),
            ("{", "unclosed '{'"),
            ("orders}", "unmatched '}'"),
            ("a}{b}", "unmatched '}'"),
            ("{a}}", "unmatched '}'"),
            ("orders.{}", "empty or nested placeholder"),
            ("{a{b}", "empty or nested placeholder"),
        ]
        for (text, reason) in cases {
            assertThrows(try TopicTemplate(text), isMapping(.invalidTopicTemplate(text, reason: reason)), text)
        }
    }
}

final class TableNameTests: XCTestCase {
    func testSchemaAndTable() throws {
        XCTAssertEqual(try TableName(parsing: "public.outbox"), TableName(schema: "public", name: "outbox"))
        XCTAssertEqual(try TableName(parsing: "app.events"), TableName(schema: "app", name: "events"))
        XCTAssertEqual(try TableName(parsing: "outbox"), TableName(schema: "public", name: "outbox"))
        let name = try TableName(parsing: "app.events")
        XCTAssertEqual(name.description, "app.events")
        XCTAssertEqual(name.sql, #""app"."events""#)
    }

    func testQuotedNames() throws {
        XCTAssertEqual(try TableName(parsing: #""my.schema".outbox"#), TableName(schema: "my.schema", name: "outbox"))
        XCTAssertEqual(try TableName(parsing: #""my.schema"."out.box""#), TableName(schema: "my.schema", name: "out.box"))
        XCTAssertEqual(try TableName(parsing: #""Outbox""#), TableName(schema: "public", name: "Outbox"))
        XCTAssertEqual(try TableName(parsing: #"App."Outbox""#), TableName(schema: "app", name: "Outbox"))
        // A doubled quote inside quotes is a quote.
        XCTAssertEqual(try TableName(parsing: #""out""box""#), TableName(schema: "public", name: #"out"box"#))
        XCTAssertEqual(try TableName(parsing: #""""""#), TableName(schema: "public", name: #"""#))
        XCTAssertEqual(TableName(schema: "my.schema", name: #"out"box"#).sql, #""my.schema"."out""box""#)
    }

    /// Unquoted names fold to lower case, as in PostgreSQL (the Relation message carries the stored name).
    func testUnquotedNamesFoldToLowerCase() throws {
        XCTAssertEqual(try TableName(parsing: "Public.OutBox"), TableName(schema: "public", name: "outbox"))
        XCTAssertEqual(try TableName(parsing: "OUTBOX"), TableName(schema: "public", name: "outbox"))
    }

    func testInvalidNames() {
        for text in ["", ".", "a.", ".a", "a..b", "a.b.c", #""unclosed"#, #""a.b"#, #""""#, #"a.""#] {
            assertThrows(try TableName(parsing: text), isMapping(.invalidTableName(text)), text)
        }
    }
}

final class EventMapperTests: XCTestCase {
    // MARK: - Relations

    func testRegisterOutboxAndOtherTables() throws {
        var mapper = EventMapper(mapping: try defaultMapping())
        XCTAssertTrue(try mapper.register(outboxRelation()))
        XCTAssertTrue(mapper.isOutbox(relationOID: 16893))
        XCTAssertFalse(try mapper.register(relation(oid: 200, name: "orders", columns: [("id", OID.int4), ("payload", OID.jsonb)])))
        XCTAssertFalse(mapper.isOutbox(relationOID: 200))
        XCTAssertNil(try mapper.event(relationOID: 200, row: row([.value("1"), .value("{}")]), commit: begin))
        XCTAssertFalse(try mapper.register(relation(oid: 201, namespace: "other", name: "outbox", columns: [("id", OID.int4), ("payload", OID.jsonb)])))
        XCTAssertFalse(mapper.isOutbox(relationOID: 201))
        XCTAssertFalse(mapper.isOutbox(relationOID: 999))
        XCTAssertTrue(mapper.isOutbox(relationOID: 16893))

        XCTAssertEqual(mapper.otherRelationName(200), "public.orders")
        XCTAssertEqual(mapper.otherRelationName(201), "other.outbox")

        // Without the startup OID, the same oid re-sent under another name is not the outbox.
        XCTAssertFalse(try mapper.register(outboxRelation().renamed("outbox_old")))
        XCTAssertFalse(mapper.isOutbox(relationOID: 16893))
        XCTAssertNil(try mapper.event(relationOID: 16893, row: outboxRow(), commit: begin))
    }

    func testRenamedOutboxIsFollowedByItsOID() throws {
        // ALTER TABLE outbox RENAME TO outbox2 while spout runs: the WAL's Relation carries the
        // new name, and the table is the same one (issue: a renamed outbox was skipped silently).
        var mapper = EventMapper(mapping: try defaultMapping(), outboxOID: 16893)
        XCTAssertTrue(try mapper.register(outboxRelation().renamed("outbox2")))
        XCTAssertTrue(mapper.isOutbox(relationOID: 16893))
        XCTAssertNotNil(try mapper.event(relationOID: 16893, row: outboxRow(), commit: begin))
        XCTAssertTrue(try mapper.register(outboxRelation()))
        XCTAssertTrue(mapper.isOutbox(relationOID: 16893))
    }

    func testEmptyNamespaceIsPgCatalog() throws {
        var mapper = EventMapper(mapping: try defaultMapping(table: TableName(schema: "pg_catalog", name: "outbox")))
        XCTAssertTrue(try mapper.register(relation(namespace: "", columns: [("id", OID.int4), ("payload", OID.jsonb), ("aggregate_type", OID.text)])))
    }

    func testMissingRequiredColumns() throws {
        var mapper = EventMapper(mapping: try defaultMapping())
        func missing(_ column: String) -> (Error) -> Bool {
            { error in
                guard case let .missingColumn(table, name, hint) = error as? MappingError else { return false }
                return table == "public.outbox" && name == column && !hint.isEmpty
            }
        }
        assertThrows(try mapper.register(relation(columns: [("payload", OID.jsonb), ("aggregate_type", OID.text)])), missing("id"))
        assertThrows(try mapper.register(relation(columns: [("id", OID.uuid), ("aggregate_type", OID.text)])), missing("payload"))
        assertThrows(try mapper.register(relation(columns: [("id", OID.uuid), ("payload", OID.jsonb)])), missing("aggregate_type"))
        XCTAssertFalse(mapper.isOutbox(relationOID: 16893))

        var tenant = EventMapper(mapping: try defaultMapping(topic: "{tenant_id}.{event_type}"))
        assertThrows(try tenant.register(outboxRelation()), missing("tenant_id"))
    }

    func testOptionalColumnsMayBeAbsent() throws {
        var mapper = EventMapper(mapping: try defaultMapping(topic: "events"))
        XCTAssertTrue(try mapper.register(relation(columns: [("payload", OID.jsonb), ("id", OID.int4)])))
        let event = try XCTUnwrap(try mapper.event(relationOID: 16893, row: row([.value("[1]"), .value("7")]), commit: begin))
        XCTAssertEqual(event, OutboxEvent(id: "7", topic: "events", key: nil, type: nil, payload: Array("[1]".utf8), payloadFormat: .json,
                                          headers: [], lsn: .zero, committedAt: begin.commitTime))
    }

    func testCustomColumnNamesAndReorderedColumns() throws {
        var columns = OutboxMapping.Columns()
        columns.id = "event_id"
        columns.payload = "body"
        columns.aggregateID = "entity"
        columns.eventType = "kind"
        columns.headers = "meta"
        var mapper = EventMapper(mapping: try defaultMapping(topic: "{tenant}.events", columns: columns))
        XCTAssertTrue(try mapper.register(relation(columns: [("meta", OID.jsonb), ("body", OID.text), ("tenant", OID.text),
                                                              ("kind", OID.text), ("entity", OID.text), ("event_id", OID.int4)])))
        let event = try XCTUnwrap(try mapper.event(relationOID: 16893, row: row([.value(#"{"a": "b"}"#), .value("hello"), .value("acme"),
                                                                                 .value("greeted"), .value("c-1"), .value("99")]), commit: begin))
        XCTAssertEqual(event.id, "99")
        XCTAssertEqual(event.topic, "acme.events")
        XCTAssertEqual(event.key, "c-1")
        XCTAssertEqual(event.type, "greeted")
        XCTAssertEqual(event.payload, Array("hello".utf8))
        XCTAssertEqual(event.payloadFormat, .text)
        XCTAssertEqual(event.headers, headers([("a", "b")]))

        // After a schema change the Relation is re-sent with new positions; they replace the old ones.
        XCTAssertTrue(try mapper.register(relation(columns: [("event_id", OID.int4), ("tenant", OID.text), ("body", OID.bytea)])))
        let changed = try XCTUnwrap(try mapper.event(relationOID: 16893, row: row([.value("100"), .value("beta"), .value(#"\x41"#)]), commit: begin))
        XCTAssertEqual(changed.id, "100")
        XCTAssertEqual(changed.topic, "beta.events")
        XCTAssertNil(changed.key)
        XCTAssertNil(changed.type)
        XCTAssertEqual(changed.headers, [])
        XCTAssertEqual(changed.payload, [0x41])
        XCTAssertEqual(changed.payloadFormat, .binary)
    }

    // MARK: - Rows

    func testJSONBPayloadPassesThroughUnchanged() throws {
        let payload = #"{"total":  42.5 , "items": [1, 2], "note": "caf\u00e9 \"x\"", "big": 12345678901234567890}"#
        let event = try XCTUnwrap(try makeMapper().event(relationOID: 16893, row: outboxRow(payload: .value(payload)), commit: begin))
        XCTAssertEqual(event, OutboxEvent(id: "6f1c0d8e-1b7a-4a4e-9d55-0c5d4f1f2a10", topic: "outbox.event.order", key: "o-1",
                                          type: "order.created", payload: Array(payload.utf8), payloadFormat: .json, headers: [],
                                          lsn: .zero, committedAt: PostgresTimestamp(rawValue: 762_525_296_789_012)))
    }

    func testJSONPayloadKeepsItsText() throws {
        let payload = "{\n  \"a\": 1\n}"
        let event = try XCTUnwrap(try makeMapper(payloadType: OID.json).event(relationOID: 16893, row: outboxRow(payload: .value(payload)), commit: begin))
        XCTAssertEqual(event.payload, Array(payload.utf8))
        XCTAssertEqual(event.payloadFormat, .json)
    }

    func testTextPayload() throws {
        let payload = "plain \"text\"\nwith ünïcode"
        let event = try XCTUnwrap(try makeMapper(payloadType: OID.text).event(relationOID: 16893, row: outboxRow(payload: .value(payload)), commit: begin))
        XCTAssertEqual(event.payload, Array(payload.utf8))
        XCTAssertEqual(event.payloadFormat, .text)
    }

    func testByteaPayload() throws {
        let mapper = try makeMapper(payloadType: OID.bytea)
        func payload(_ text: String) throws -> [UInt8] {
            try XCTUnwrap(try mapper.event(relationOID: 16893, row: outboxRow(payload: .value(text)), commit: begin)).payload
        }
        XCTAssertEqual(try payload(#"\x0001ff"#), [0, 1, 255])
        XCTAssertEqual(try payload(#"\xDEADbeef"#), [0xDE, 0xAD, 0xBE, 0xEF])
        XCTAssertEqual(try payload(#"\x"#), [])
        // Escape format (bytea_output = 'escape').
        XCTAssertEqual(try payload(#"ab\\c\001\377"#), [0x61, 0x62, 0x5C, 0x63, 0x01, 0xFF])
        XCTAssertEqual(try mapper.event(relationOID: 16893, row: outboxRow(payload: .value(#"\x00"#)), commit: begin)?.payloadFormat, .binary)
    }

    func testInvalidByteaPayloadThrows() throws {
        let mapper = try makeMapper(payloadType: OID.bytea)
        for text in [#"\x0"#, #"\x0g"#, #"\xzz"#, #"\9"#, #"\400"#, #"a\"#, #"\12"#] {
            assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(payload: .value(text)), commit: begin),
                         isMapping(.invalidPayload(reason: "bytea text is malformed")), text)
        }
    }

    func testHeaders() throws {
        let json = #"{"trace_id": "abc123", "attempt": 3, "ratio": -1.5e3, "ok": true, "off": false, "nested": {"a": [1, 2]}, "gone": null, "esc": "a\"b\u00e9\n"}"#
        let event = try XCTUnwrap(try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value(json)), commit: begin))
        XCTAssertEqual(event.headers, headers([("trace_id", "abc123"), ("attempt", "3"), ("ratio", "-1.5e3"), ("ok", "true"),
                                               ("off", "false"), ("nested", #"{"a": [1, 2]}"#), ("esc", "a\"bé\n")]))
        XCTAssertEqual(try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value("{}")), commit: begin)?.headers, [])
        XCTAssertEqual(try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value(" { } ")), commit: begin)?.headers, [])
        XCTAssertEqual(try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .null), commit: begin)?.headers, [])
        XCTAssertEqual(try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value("null")), commit: begin)?.headers, [])
    }

    func testInvalidHeadersThrow() throws {
        let mapper = try makeMapper()
        for json in ["[1, 2]", #""text""#, "3", #"{"a": 1,}"#, #"{"a" 1}"#, "{", #"{"a": 1} x"#, #"{"a": "\q"}"#, "", #"{"a": 01}"#] {
            assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(headers: .value(json)), commit: begin),
                         { error in if case .invalidHeaders = error as? MappingError { true } else { false } }, json)
        }
    }

    func testErrorOffsetsAreRelativeToTheValue() {
        // Header bytes sit at an offset inside the row's storage: the reported offset must not depend on it.
        do {
            _ = try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value(#"{"a": "\q"}"#)), commit: begin)
            XCTFail("no error")
        } catch let error as MappingError {
            XCTAssertEqual(error, .invalidHeaders(reason: "invalid escape at byte 7"))
        } catch {
            XCTFail("\(error)")
        }
        do {
            _ = try makeMapper().event(relationOID: 16893, row: outboxRow(headers: .value(#"{"a": x}"#)), commit: begin)
            XCTFail("no error")
        } catch let error as MappingError {
            XCTAssertEqual(error, .invalidHeaders(reason: "unexpected character at byte 6"))
        } catch {
            XCTFail("\(error)")
        }
    }

    func testNullColumnsThrow() throws {
        let mapper = try makeMapper()
        assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(id: .null), commit: begin), isMapping(.nullColumn(column: "id")))
        assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(payload: .null), commit: begin), isMapping(.nullColumn(column: "payload")))
        assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(payload: .toast), commit: begin), isMapping(.nullColumn(column: "payload")))
        assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(type: .null), commit: begin),
                     isMapping(.emptyTopicPart(column: "aggregate_type")))
        assertThrows(try mapper.event(relationOID: 16893, row: outboxRow(type: .value("")), commit: begin),
                     isMapping(.emptyTopicPart(column: "aggregate_type")))
        // Optional columns may be null.
        let event = try XCTUnwrap(try mapper.event(relationOID: 16893, row: outboxRow(aggregateID: .null, eventType: .null), commit: begin))
        XCTAssertNil(event.key)
        XCTAssertNil(event.type)
        XCTAssertEqual(mapper.rowID(relationOID: 16893, row: outboxRow(payload: .null)), "6f1c0d8e-1b7a-4a4e-9d55-0c5d4f1f2a10")
        XCTAssertNil(mapper.rowID(relationOID: 16893, row: outboxRow(id: .null)))
        XCTAssertNil(mapper.rowID(relationOID: 1, row: outboxRow()))
    }

    /// The captured outbox session, mapped end to end.
    func testCapturedOutboxSession() throws {
        let records = try Fixtures.records(try Fixtures.bytes("session_outbox.bin"))
        var mapper = EventMapper(mapping: try defaultMapping(table: try TableName(parsing: "fx_outbox")))
        var events: [OutboxEvent] = []
        var transaction: PgOutputMessage.Begin?
        for record in records {
            switch decodeMessage(record) {
            case let .success(.begin(value)): transaction = value
            case let .success(.relation(value)): XCTAssertTrue(try mapper.register(value))
            case let .success(.insert(insert)):
                let commit = try XCTUnwrap(transaction)
                events.append(try XCTUnwrap(try mapper.event(relationOID: insert.relationOID, row: insert.new, commit: commit)))
            case .success(.commit): break
            case let other: XCTFail("unexpected \(other)")
            }
        }
        XCTAssertEqual(events.map(\.id), ["807c0fb1-d68e-4ce9-9dc4-f5e03060072e", "54e41e91-f42b-4adf-a22f-55938b847014",
                                          "53043704-5f6a-40d1-baeb-4af2dae3aa0e"])
        XCTAssertEqual(events.map(\.topic), ["outbox.event.order", "outbox.event.order", "outbox.event.customer"])
        XCTAssertEqual(events.map(\.key), ["o-1", "o-1", "c-9"])
        XCTAssertEqual(events.map(\.type), ["order.created", "order.paid", "customer.renamed"])
        XCTAssertEqual(events.map { String(decoding: $0.payload, as: UTF8.self) },
                       [#"{"total": 42.5, "currency": "EUR"}"#, #"{"amount": 42.5}"#, #"{"name": "Zoë"}"#])
        XCTAssertEqual(events.map(\.payloadFormat), [.json, .json, .json])
        XCTAssertEqual(events.map(\.headers), [headers([("trace_id", "abc123")]), [], []])
        XCTAssertEqual(Set(events.map(\.lsn)), [.zero], "the commit LSN is set at the Commit, not by the mapper")
        XCTAssertEqual(Set(events.map(\.committedAt)), [PostgresTimestamp(rawValue: 848_748_606_977_000)])
    }

    // MARK: - Logical messages

    func testTransactionalOutboxMessage() throws {
        let json = #"{"id": "evt-1", "aggregate_type": "order", "aggregate_id": "o-1", "event_type": "order.created", "payload": {"total": 42.5, "items": [1, 2]}, "headers": {"h": "v", "n": 1, "z": null}}"#
        let event = try XCTUnwrap(try makeMapper().event(message: message(json), committedAt: begin.commitTime))
        XCTAssertEqual(event, OutboxEvent(id: "evt-1", topic: "outbox.event.order", key: "o-1", type: "order.created",
                                          payload: Array(#"{"total": 42.5, "items": [1, 2]}"#.utf8), payloadFormat: .json,
                                          headers: headers([("h", "v"), ("n", "1")]), lsn: .zero, committedAt: begin.commitTime))
    }

    func testMessageIDFallsBackToItsLSN() throws {
        let mapper = try makeMapper()
        let event = try XCTUnwrap(try mapper.event(message: message(#"{"aggregate_type": "order", "payload": [1]}"#, lsn: lsn("0/3E3F518")), committedAt: begin.commitTime))
        XCTAssertEqual(event.id, "lsn:0/3E3F518")
        XCTAssertEqual(event.payload, Array("[1]".utf8))
        XCTAssertNil(event.key)
        XCTAssertNil(event.type)
        XCTAssertEqual(event.headers, [])
        let nullID = try XCTUnwrap(try mapper.event(message: message(#"{"id": null, "aggregate_type": "o", "payload": 1}"#, lsn: lsn("16/B374D848")), committedAt: begin.commitTime))
        XCTAssertEqual(nullID.id, "lsn:16/B374D848")
        let numeric = try XCTUnwrap(try mapper.event(message: message(#"{"id": 42, "aggregate_type": "o", "payload": 1}"#), committedAt: begin.commitTime))
        XCTAssertEqual(numeric.id, "42")
    }

    func testMessagePayloadKinds() throws {
        let mapper = try makeMapper()
        func payload(_ value: String) throws -> [UInt8] {
            try XCTUnwrap(try mapper.event(message: message(#"{"aggregate_type": "t", "payload": "# + value + "}"), committedAt: begin.commitTime)).payload
        }
        XCTAssertEqual(try payload(#""hello \"you\"\n""#), Array(#""hello \"you\"\n""#.utf8), "a string stays a JSON string")
        XCTAssertEqual(try payload(#""\u00e9""#), Array("\"é\"".utf8))
        XCTAssertEqual(try payload("-12.5e-3"), Array("-12.5e-3".utf8))
        XCTAssertEqual(try payload("true"), Array("true".utf8))
        XCTAssertEqual(try payload("[ ]"), Array("[ ]".utf8))
        assertThrows(try mapper.event(message: message(#"{"aggregate_type": "t", "payload": null}"#), committedAt: begin.commitTime),
                     isMapping(.nullColumn(column: "payload")))
        assertThrows(try mapper.event(message: message(#"{"aggregate_type": "t"}"#), committedAt: begin.commitTime), isMapping(.nullColumn(column: "payload")))
        assertThrows(try mapper.event(message: message(#"{"payload": 1}"#), committedAt: begin.commitTime), isMapping(.emptyTopicPart(column: "aggregate_type")))
        assertThrows(try mapper.event(message: message(#"{"aggregate_type": "t", "payload": 1, "headers": "x"}"#), committedAt: begin.commitTime),
                     isMapping(.invalidHeaders(reason: "a string, not an object")))
        assertThrows(try mapper.event(message: message(#"{"aggregate_type": "t", "payload": 1, "headers": [1]}"#), committedAt: begin.commitTime),
                     { error in if case .invalidHeaders = error as? MappingError { true } else { false } })
        XCTAssertEqual(try mapper.event(message: message(#"{"aggregate_type": "t", "payload": 1, "headers": null}"#), committedAt: begin.commitTime)?.headers, [])
    }

    func testOtherMessagesAreNotEvents() throws {
        let mapper = try makeMapper()
        let json = #"{"aggregate_type": "order", "payload": {}}"#
        XCTAssertNotNil(try mapper.event(message: message(json, transactional: false), committedAt: begin.commitTime),
                        "non-transactional messages are events too")
        XCTAssertNil(try mapper.event(message: message(json, prefix: "audit"), committedAt: begin.commitTime))
        XCTAssertNil(try mapper.event(message: message(json, prefix: "outbox2"), committedAt: begin.commitTime))
        XCTAssertNil(try mapper.event(message: message("not json", prefix: "audit"), committedAt: begin.commitTime), "other prefixes are not parsed")

        var custom = EventMapper(mapping: OutboxMapping(table: TableName(schema: "public", name: "outbox"), topic: try TopicTemplate("x"),
                                                        messagePrefix: "events"))
        XCTAssertFalse(try custom.register(relation(name: "other", columns: [])))
        XCTAssertNil(try custom.event(message: message(json), committedAt: begin.commitTime))
        XCTAssertEqual(try custom.event(message: message(json, prefix: "events"), committedAt: begin.commitTime)?.topic, "x")
    }

    func testMalformedMessagesThrow() throws {
        let mapper = try makeMapper()
        for json in ["", "not json", "[1]", #""text""#, #"{"payload": 1"#, #"{"payload": 1} x"#, #"{"payload": }"#, #"{payload: 1}"#,
                     #"{"payload": tru}"#, #"{"payload": [1,]}"#, "{\"a\": \"\u{01}\"}"] {
            assertThrows(try mapper.event(message: message(json), committedAt: begin.commitTime),
                         { error in if case .invalidMessage = error as? MappingError { true } else { false } }, json)
        }
        assertThrows(try mapper.event(message: message("[1]"), committedAt: begin.commitTime), isMapping(.invalidMessage(reason: "expected a JSON object at byte 0")))
        assertThrows(try mapper.event(message: message(#"{"payload": 1} x"#), committedAt: begin.commitTime),
                     isMapping(.invalidMessage(reason: "trailing characters after the object at byte 15")))
    }

    func testCapturedLogicalMessages() throws {
        var columns = OutboxMapping.Columns()
        columns.payload = "event"
        let mapper = EventMapper(mapping: try defaultMapping(topic: "events", columns: columns))
        guard case let .success(.message(transactional)) = decodeMessage(try Fixtures.bytes("message_transactional.bin")),
              case let .success(.message(nontransactional)) = decodeMessage(try Fixtures.bytes("message_nontransactional.bin"))
        else { return XCTFail("fixtures are not logical messages") }
        let event = try XCTUnwrap(try mapper.event(message: transactional, committedAt: begin.commitTime))
        XCTAssertEqual(event, OutboxEvent(id: "42", topic: "events", key: nil, type: nil, payload: Array(#""order.created""#.utf8),
                                          payloadFormat: .json, headers: [], lsn: .zero, committedAt: begin.commitTime))
        // A non-transactional message is an event too (pg_logical_emit_message(false, …), as Debezium delivers it).
        let heartbeat = try XCTUnwrap(try EventMapper(mapping: try defaultMapping(topic: "events", columns: columns))
            .event(message: nontransactional, committedAt: begin.commitTime))
        XCTAssertEqual(heartbeat.id, "lsn:0/3E3F5A8")
        // With the default columns the captured message has no payload.
        assertThrows(try makeMapper().event(message: transactional, committedAt: begin.commitTime), isMapping(.nullColumn(column: "payload")))
    }
}

final class ByteaTextTests: XCTestCase {
    func testHexFormat() {
        XCTAssertEqual(ByteaText.decode(Array(#"\x0001ff"#.utf8)[...]), [0x00, 0x01, 0xFF])
        XCTAssertEqual(ByteaText.decode(Array(#"\xABcdEF"#.utf8)[...]), [0xAB, 0xCD, 0xEF])
        XCTAssertEqual(ByteaText.decode(Array(#"\x"#.utf8)[...]), [])
        XCTAssertEqual(ByteaText.decode(Array("prefix\\x00ff".utf8)[6...]), [0x00, 0xFF], "slices with a non-zero start")
        for invalid in [#"\x0"#, #"\x000"#, #"\xg0"#, #"\x0G"#, #"\x 0"#] {
            XCTAssertNil(ByteaText.decode(Array(invalid.utf8)[...]), invalid)
        }
    }

    func testEscapeFormat() {
        XCTAssertEqual(ByteaText.decode(Array("".utf8)[...]), [])
        XCTAssertEqual(ByteaText.decode(Array("abc".utf8)[...]), [0x61, 0x62, 0x63])
        XCTAssertEqual(ByteaText.decode(Array(#"\\"#.utf8)[...]), [0x5C])
        XCTAssertEqual(ByteaText.decode(Array(#"\000\001\377"#.utf8)[...]), [0x00, 0x01, 0xFF])
        XCTAssertEqual(ByteaText.decode(Array(#"a\\b\101"#.utf8)[...]), [0x61, 0x5C, 0x62, 0x41])
        XCTAssertEqual(ByteaText.decode(Array("xx\\101".utf8)[2...]), [0x41])
        for invalid in [#"\"#, #"a\"#, #"\1"#, #"\12"#, #"\400"#, #"\8"#, #"\08a"#, #"\x"# + "\\"] {
            XCTAssertNil(ByteaText.decode(Array(invalid.utf8)[...]), invalid)
        }
    }
}

final class JSONScannerTests: XCTestCase {
    private func members(_ text: String) throws -> [(key: String, value: JSONScanner.Value)] {
        try JSONScanner.objectMembers(Array(text.utf8)[...])
    }

    private func raw(_ text: String) -> JSONScanner.Value { .raw(Array(text.utf8)[...]) }

    private func failure(_ text: String) -> JSONScanner.Failure? {
        do {
            _ = try JSONScanner.objectMembers(Array(text.utf8)[...])
            return nil
        } catch {
            return error
        }
    }

    func testObjectMembers() throws {
        XCTAssertTrue(try members("{}").isEmpty)
        XCTAssertTrue(try members(" \n\t{ \r\n } \n").isEmpty)
        let parsed = try members(#"{"a":"x", "b" : 1 ,"c":null,"d":[1,{"e":2}],"f":true,"g":false,"h":-0.5E+10,"i":{},"j":[ ],"a":"dup"}"#)
        XCTAssertEqual(parsed.map(\.key), ["a", "b", "c", "d", "f", "g", "h", "i", "j", "a"])
        XCTAssertEqual(parsed.map(\.value), [.string("x"), raw("1"), .null, raw(#"[1,{"e":2}]"#), raw("true"), raw("false"),
                                             raw("-0.5E+10"), raw("{}"), raw("[ ]"), .string("dup")])
    }

    func testStringEscapes() throws {
        let parsed = try members(#"{"k\"ey":"a\"b\\c\/d\b\f\n\r\t", "plain": "Zoë ✓"}"#)
        XCTAssertEqual(parsed.map(\.key), ["k\"ey", "plain"])
        XCTAssertEqual(parsed.map(\.value), [.string("a\"b\\c/d\u{8}\u{C}\n\r\t"), .string("Zoë ✓")])
    }

    func testUnicodeEscapes() throws {
        let parsed = try members(#"{"\u0041": "\u00e9\u20AC", "pair": "\ud83d\ude00", "upper": "\uD83D\uDE00!", "nul": "\u0000", "mixed": "Zoë \u00e9x", "lone": "\ud83dx", "low": "\ude00", "highs": "\ud83d\ud83d\ude00"}"#)
        XCTAssertEqual(parsed.map(\.key), ["A", "pair", "upper", "nul", "mixed", "lone", "low", "highs"])
        XCTAssertEqual(parsed.map(\.value), [.string("é€"), .string("😀"), .string("😀!"), .string("\u{0}"), .string("Zoë éx"),
                                             .string("\u{FFFD}x"), .string("\u{FFFD}"), .string("\u{FFFD}😀")])
    }

    func testInvalidObjects() {
        let invalid = [
            "", "   ", "[]", "1", #""s""#, "{", "}", #"{"a"}"#, #"{"a":}"#, #"{"a":1,}"#, #"{"a" 1}"#, "{a:1}", #"{"a":1} x"#, #"{"a":1}{}"#,
            #"{"a":01}"#, #"{"a":-01}"#, #"{"a":1.}"#, #"{"a":.5}"#, #"{"a":-}"#, #"{"a":1e}"#, #"{"a":1e+}"#, #"{"a":+1}"#,
            #"{"a":tru}"#, #"{"a":nul}"#, #"{"a":nulL}"#, #"{"a":True}"#, #"{"a":"\x"}"#, #"{"a":"\u12"}"#, #"{"a":"\u12G4"}"#,
            #"{"a":"\u+041"}"#, #"{"a":"\u-041"}"#, "{\"a\":\"raw\nnewline\"}", "{\"a\":\"tab\there\"}", #"{"a":"unterminated}"#,
            #"{"a":[1,2}"#, #"{"a":{"b":1]}"#, #"{"a":1"#, #"{"a":[1 2]}"#, #"{"a":{"b"}}"#, #"{"a":'x'}"#, #"{"a":"x"#, #"{"a":"\"#,
            #"{"a":NaN}"#, #"{"a":Infinity}"#, "{\"a\":1,\"b\":2,}",
        ]
        for text in invalid {
            XCTAssertNotNil(failure(text), "accepted invalid JSON: \(text)")
        }
    }

    func testFailureOffsets() {
        XCTAssertEqual(failure(#"{"a":}"#), JSONScanner.Failure(offset: 5, reason: "unexpected character"))
        XCTAssertEqual(failure("[1]"), JSONScanner.Failure(offset: 0, reason: "expected a JSON object"))
        XCTAssertEqual(failure(#"{"a":1 x"#)?.reason, "expected ',' or '}'")
        XCTAssertEqual(failure(#"{"a":01}"#)?.reason, "invalid number (leading zero)")
        XCTAssertEqual(failure(#"{"a":1"#), JSONScanner.Failure(offset: 6, reason: "unterminated object"))
        XCTAssertEqual(failure(#"{"ab":"\x"}"#), JSONScanner.Failure(offset: 7, reason: "invalid escape"))
        XCTAssertEqual(failure(#"{"ab":"xy\u12"}"#), JSONScanner.Failure(offset: 9, reason: #"invalid \u escape"#))
        // Offsets count from the start of the slice, not of the array it lives in.
        let shifted = Array(#"xyz{"a":}"#.utf8)
        XCTAssertThrowsError(try JSONScanner.objectMembers(shifted[3...])) { error in
            XCTAssertEqual(error as? JSONScanner.Failure, JSONScanner.Failure(offset: 5, reason: "unexpected character"))
        }
        let escaped = Array(#"xyz{"ab":"\x"}"#.utf8)
        XCTAssertThrowsError(try JSONScanner.objectMembers(escaped[3...])) { error in
            XCTAssertEqual(error as? JSONScanner.Failure, JSONScanner.Failure(offset: 7, reason: "invalid escape"))
        }
    }

    func testSlicesWithNonZeroStart() throws {
        let bytes = Array(#"garbage{"a": [1, 2], "b": "c"}trailing"#.utf8)
        let parsed = try JSONScanner.objectMembers(bytes[7..<30])
        XCTAssertEqual(parsed.map(\.key), ["a", "b"])
        XCTAssertEqual(parsed.map(\.value), [raw("[1, 2]"), .string("c")])
    }

    func testDeepNestingIsRejectedNotACrash() {
        let deep = #"{"a":"# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        XCTAssertEqual(failure(deep)?.reason, "nested too deeply")
        let fine = #"{"a":"# + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"
        XCTAssertNil(failure(fine))
    }

    func testValidate() {
        func valid(_ text: String) -> Bool {
            do { try JSONScanner.validate(Array(text.utf8)[...]); return true } catch { return false }
        }
        for text in ["1", "-0", "0.5", "1e10", "1E-2", " [1, 2] ", #""s""#, "null", "true", "false", #"{"a": [null]}"#, "[]", "{}", "\n{}\n"] {
            XCTAssertTrue(valid(text), text)
        }
        for text in ["", " ", "1 2", "[1,]", "{", "nul", "01", "-", "[", #""\u00""#, "{} {}", "undefined", "1.e5"] {
            XCTAssertFalse(valid(text), text)
        }
    }

    func testCompact() {
        func compact(_ text: String) -> String {
            var output: [UInt8] = []
            JSONScanner.compact(Array(text.utf8)[...], into: &output)
            return String(decoding: output, as: UTF8.self)
        }
        XCTAssertEqual(compact("{ \"a\" : [1, 2],\n \"b\":\"x y\\\" z\" }"), "{\"a\":[1,2],\"b\":\"x y\\\" z\"}")
        XCTAssertEqual(compact("{\r\n\t\"a\": \"x\\\\\", \"b\": 1\n}"), "{\"a\":\"x\\\\\",\"b\":1}")
        XCTAssertEqual(compact("[\"  \", \"\\n\"]"), "[\"  \",\"\\n\"]")
        XCTAssertEqual(compact(""), "")
    }
}

final class JSONWriterTests: XCTestCase {
    private func string(_ text: String) -> String {
        var output: [UInt8] = []
        JSONWriter.appendString(text, to: &output)
        return String(decoding: output, as: UTF8.self)
    }

    func testStringEscapes() {
        XCTAssertEqual(string(""), #""""#)
        XCTAssertEqual(string(#"say "hi" \ bye"#), #""say \"hi\" \\ bye""#)
        XCTAssertEqual(string("a\nb\rc\td"), #""a\nb\rc\td""#)
        XCTAssertEqual(string("\u{0}\u{1}\u{8}\u{C}\u{1F}\u{7F}"), #""\u0000\u0001\u0008\u000c\u001f\u007f""#)
        XCTAssertEqual(string("Zoë ✓ 😀 /"), "\"Zoë ✓ 😀 /\"")
        // Round trip through Foundation.
        let tricky = "q\"b\\s/\n\r\t\u{0}\u{1B}\u{7F}é😀"
        var output: [UInt8] = []
        JSONWriter.appendString(tricky, to: &output)
        XCTAssertEqual(try JSONSerialization.jsonObject(with: Data(output), options: .fragmentsAllowed) as? String, tricky)
    }

    func testBase64MatchesFoundation() {
        var random = SystemRandomNumberGenerator()
        for length in 0..<40 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            var output: [UInt8] = []
            JSONWriter.appendBase64(bytes, to: &output)
            XCTAssertEqual(String(decoding: output, as: UTF8.self), "\"" + Data(bytes).base64EncodedString() + "\"", "\(bytes)")
        }
        var output: [UInt8] = []
        JSONWriter.appendBase64([0, 1, 255, 254], to: &output)
        XCTAssertEqual(String(decoding: output, as: UTF8.self), #""AAH//g==""#)
    }
}

final class StdoutSinkFormatTests: XCTestCase {
    private let committed = PostgresTimestamp(rawValue: 762_525_296_789_012)

    private func event(payload: [UInt8], format: OutboxEvent.PayloadFormat, key: String? = "o-1", type: String? = "order.created",
                       headers: [OutboxEvent.Header] = []) -> OutboxEvent {
        OutboxEvent(id: "evt-1", topic: "outbox.event.order", key: key, type: type, payload: payload, payloadFormat: format,
                    headers: headers, lsn: LSN(0x16_B374_D848), committedAt: committed)
    }

    private func line(_ event: OutboxEvent) -> [UInt8] {
        var output: [UInt8] = []
        StdoutSink.appendJSONLine(event, to: &output)
        return output
    }

    /// Parses one line: exactly one newline, at the end.
    private func parse(_ output: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(output.last, 0x0A, "ends with a newline", file: file, line: line)
        XCTAssertEqual(output.filter { $0 == 0x0A }.count, 1, "one line: \(String(decoding: output, as: UTF8.self))", file: file, line: line)
        XCTAssertFalse(output.contains(0x0D), file: file, line: line)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(output)) as? [String: Any], file: file, line: line)
    }

    func testExactJSONLine() {
        let output = line(OutboxEvent(id: "e1", topic: "t", key: "k", type: "ty", payload: Array(#"{"a":1}"#.utf8), payloadFormat: .json,
                                      headers: headers([("h", "v")]), lsn: LSN(0x10), committedAt: PostgresTimestamp(rawValue: 0)))
        XCTAssertEqual(String(decoding: output, as: UTF8.self),
                       #"{"id":"e1","topic":"t","key":"k","type":"ty","payload":{"a":1},"headers":{"h":"v"},"committed_at":"2000-01-01T00:00:00.000000Z","lsn":"0/10"}"# + "\n")
    }

    func testJSONPayloadIsEmbedded() throws {
        let payload = #"{"total": 42.5, "items": [1, {"sku": "A-1"}], "note": "tab\tx"}"#
        let object = try parse(line(event(payload: Array(payload.utf8), format: .json,
                                          headers: headers([("trace_id", "abc123"), ("attempt", "3")]))))
        XCTAssertEqual(Set(object.keys), ["id", "topic", "key", "type", "payload", "headers", "lsn", "committed_at"])
        XCTAssertEqual(object["id"] as? String, "evt-1")
        XCTAssertEqual(object["topic"] as? String, "outbox.event.order")
        XCTAssertEqual(object["key"] as? String, "o-1")
        XCTAssertEqual(object["type"] as? String, "order.created")
        let embedded = try XCTUnwrap(object["payload"] as? [String: Any])
        XCTAssertEqual(embedded["total"] as? Double, 42.5)
        let items = try XCTUnwrap(embedded["items"] as? [Any])
        XCTAssertEqual(items.first as? Int, 1)
        XCTAssertEqual((items.last as? [String: Any])?["sku"] as? String, "A-1")
        XCTAssertEqual(embedded["note"] as? String, "tab\tx")
        XCTAssertEqual(object["headers"] as? [String: String], ["trace_id": "abc123", "attempt": "3"])
        XCTAssertEqual(object["lsn"] as? String, "16/B374D848")
        XCTAssertEqual(object["committed_at"] as? String, "2024-02-29T12:34:56.789012Z")
        // The payload is copied byte for byte.
        XCTAssertTrue(String(decoding: line(event(payload: Array(payload.utf8), format: .json)), as: UTF8.self).contains(#""payload":"# + payload + ","))
    }

    func testNullKeyAndTypeAndEmptyHeaders() throws {
        let object = try parse(line(event(payload: Array("[]".utf8), format: .json, key: nil, type: nil)))
        XCTAssertTrue(object["key"] is NSNull)
        XCTAssertTrue(object["type"] is NSNull)
        XCTAssertEqual((object["headers"] as? [String: Any])?.count, 0)
        XCTAssertEqual((object["payload"] as? [Any])?.count, 0)
    }

    func testJSONPayloadWithNewlinesStaysOnOneLine() throws {
        let payload = "{\n  \"a\": \"line1\\nline2\",\r\n  \"b\": [1,\n 2],\n  \"s\": \"two  spaces\"\n}\n"
        let object = try parse(line(event(payload: Array(payload.utf8), format: .json)))
        let embedded = try XCTUnwrap(object["payload"] as? [String: Any])
        XCTAssertEqual(embedded["a"] as? String, "line1\nline2")
        XCTAssertEqual(embedded["b"] as? [Int], [1, 2])
        XCTAssertEqual(embedded["s"] as? String, "two  spaces")
    }

    func testTextPayloadBecomesAString() throws {
        let text = "say \"hi\"\n\ttab \\ back\u{01}\u{1F}\u{7F} é ✓ 😀\r"
        let output = line(event(payload: Array(text.utf8), format: .text))
        let object = try parse(output)
        XCTAssertEqual(object["payload"] as? String, text)
        XCTAssertNil(object["payload_encoding"])
        let raw = String(decoding: output, as: UTF8.self)
        XCTAssertTrue(raw.contains(#""payload":"say \"hi\"\n\ttab \\ back\u0001\u001f\u007f é ✓ 😀\r""#), raw)
    }

    func testBinaryPayloadIsBase64() throws {
        for bytes: [UInt8] in [[0, 1, 255, 254], [], [0x41], [0xDE, 0xAD], Array(0...255)] {
            let object = try parse(line(event(payload: bytes, format: .binary)))
            let encoded = try XCTUnwrap(object["payload"] as? String)
            XCTAssertEqual(Data(base64Encoded: encoded).map { [UInt8]($0) }, bytes)
            XCTAssertEqual(object["payload_encoding"] as? String, "base64")
        }
        XCTAssertEqual(try parse(line(event(payload: [0, 1, 255, 254], format: .binary)))["payload"] as? String, "AAH//g==")
    }

    func testHeadersAndFieldsAreEscaped() throws {
        let tricky = "a\"b\\c\nd\u{0}é"
        let object = try parse(line(OutboxEvent(id: tricky, topic: tricky, key: tricky, type: tricky, payload: Array("1".utf8), payloadFormat: .json,
                                                headers: headers([(tricky, tricky), ("x", "")]), lsn: .zero, committedAt: PostgresTimestamp(rawValue: -1))))
        for field in ["id", "topic", "key", "type"] {
            XCTAssertEqual(object[field] as? String, tricky, field)
        }
        XCTAssertEqual(object["headers"] as? [String: String], [tricky: tricky, "x": ""])
        XCTAssertEqual(object["payload"] as? Int, 1)
        XCTAssertEqual(object["lsn"] as? String, "0/0")
        XCTAssertEqual(object["committed_at"] as? String, "1999-12-31T23:59:59.999999Z")
    }

    func testLinesAppend() throws {
        var output: [UInt8] = []
        StdoutSink.appendJSONLine(event(payload: Array("1".utf8), format: .json), to: &output)
        StdoutSink.appendJSONLine(event(payload: Array("2".utf8), format: .json), to: &output)
        let lines = output.split(separator: 0x0A)
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(output.filter { $0 == 0x0A }.count, 2)
        for (index, line) in lines.enumerated() {
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
            XCTAssertEqual(object["payload"] as? Int, index + 1)
        }
    }
}

private extension PgOutputMessage.Relation {
    func renamed(_ name: String) -> Self {
        var copy = self
        copy.name = name
        return copy
    }
}
