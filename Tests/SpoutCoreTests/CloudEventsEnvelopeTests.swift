import Foundation
import XCTest
@testable import SpoutCore

/// The CloudEvents envelope's encoding: structured JSON (stdout) and the attributes of binary mode.
final class CloudEventsEnvelopeTests: XCTestCase {
    private let envelope = CloudEventEnvelope(source: "/postgres/shop/outbox")
    /// 2024-05-06T07:08:09.123456Z
    private let committed = PostgresTimestamp(unixMicroseconds: 1_714_979_289_123_456)

    private func event(payload: String, format: OutboxEvent.PayloadFormat = .json, key: String? = "order-1",
                       type: String? = "OrderPlaced", headers: [OutboxEvent.Header] = [],
                       source: OutboxEvent.Source = .stream) -> OutboxEvent {
        OutboxEvent(id: "e-1", topic: "outbox.event.order", key: key, type: type, payload: Array(payload.utf8),
                    payloadFormat: format, headers: headers, lsn: LSN(rawValue: 0x1_0000_00A0), committedAt: committed, source: source)
    }

    private func structured(_ event: OutboxEvent) throws -> [String: Any] {
        var line: [UInt8] = []
        envelope.appendStructured(event, to: &line)
        XCTAssertEqual(line.last, UInt8(ascii: "\n"))
        XCTAssertEqual(line.filter { $0 == 0x0A }.count, 1, "one event, one line")
        let object = try JSONSerialization.jsonObject(with: Data(line.dropLast()), options: [.fragmentsAllowed])
        return try XCTUnwrap(object as? [String: Any])
    }

    func testStructuredJSONCarriesEveryAttribute() throws {
        let object = try structured(event(payload: "{\"total\": 12,\n \"items\": [1, 2]}"))
        XCTAssertEqual(object["specversion"] as? String, "1.0")
        XCTAssertEqual(object["id"] as? String, "e-1")
        XCTAssertEqual(object["source"] as? String, "/postgres/shop/outbox")
        XCTAssertEqual(object["type"] as? String, "OrderPlaced")
        XCTAssertEqual(object["subject"] as? String, "order-1")
        XCTAssertEqual(object["time"] as? String, "2024-05-06T07:08:09.123456Z")
        XCTAssertEqual(object["datacontenttype"] as? String, "application/json")
        XCTAssertEqual(object["lsn"] as? String, "1/A0")
        XCTAssertEqual(object["partitionkey"] as? String, "order-1")
        XCTAssertNil(object["spoutsource"])
        XCTAssertNil(object["data_base64"])
        let data = try XCTUnwrap(object["data"] as? [String: Any])
        XCTAssertEqual(data["total"] as? Int, 12)
        XCTAssertEqual(data["items"] as? [Int], [1, 2])
    }

    func testNullAggregateIDLeavesOutSubjectAndPartitionKey() throws {
        let object = try structured(event(payload: "{}", key: nil))
        XCTAssertNil(object["subject"])
        XCTAssertNil(object["partitionkey"])
        // An empty aggregate id is no subject (it must not be empty), but still the key.
        let empty = try structured(event(payload: "{}", key: ""))
        XCTAssertNil(empty["subject"])
        XCTAssertEqual(empty["partitionkey"] as? String, "")
    }

    func testTypeFallsBackToTheTopic() throws {
        XCTAssertEqual(try structured(event(payload: "{}", type: nil))["type"] as? String, "outbox.event.order")
        XCTAssertEqual(try structured(event(payload: "{}", type: ""))["type"] as? String, "outbox.event.order")
    }

    func testNonJSONPayloadIsBase64() throws {
        let text = try structured(event(payload: "plain words", format: .text))
        XCTAssertEqual(text["datacontenttype"] as? String, "text/plain; charset=utf-8")
        XCTAssertNil(text["data"])
        XCTAssertEqual(text["data_base64"] as? String, Data("plain words".utf8).base64EncodedString())

        var bytes = event(payload: "", format: .binary)
        bytes.payload = [0x00, 0xFF, 0x10, 0x7B]
        let binary = try structured(bytes)
        XCTAssertEqual(binary["datacontenttype"] as? String, "application/octet-stream")
        XCTAssertEqual(binary["data_base64"] as? String, Data([0x00, 0xFF, 0x10, 0x7B]).base64EncodedString())

        // Not UTF-8, or not one JSON value: not JSON.
        var latin1 = event(payload: "", format: .binary)
        latin1.payload = [UInt8(ascii: "\""), 0xE9, UInt8(ascii: "\"")]
        XCTAssertFalse(CloudEventEnvelope.payloadIsJSON(latin1))
        XCTAssertFalse(CloudEventEnvelope.payloadIsJSON(event(payload: "{\"a\":1} {}", format: .text)))
        XCTAssertFalse(CloudEventEnvelope.payloadIsJSON(event(payload: "", format: .text)))
    }

    func testTextOrBytesThatParseAsJSONAreJSON() throws {
        let text = try structured(event(payload: "[1,\n 2]", format: .text))
        XCTAssertEqual(text["datacontenttype"] as? String, "application/json")
        XCTAssertEqual(text["data"] as? [Int], [1, 2])
        let bytes = try structured(event(payload: "{\"a\":\"b\"}", format: .binary))
        XCTAssertEqual(bytes["datacontenttype"] as? String, "application/json")
        XCTAssertEqual((bytes["data"] as? [String: String])?["a"], "b")
    }

    func testStringsAreEscaped() throws {
        let nasty = "quote\" backslash\\ line\nbreak tab\t nul\u{0} esc\u{1B} del\u{7F} é ☃"
        var event = event(payload: "{}", key: nasty, type: nasty, headers: [OutboxEvent.Header(name: "trace", value: nasty)])
        event.id = nasty
        let object = try structured(event)
        XCTAssertEqual(object["id"] as? String, nasty)
        XCTAssertEqual(object["type"] as? String, nasty)
        XCTAssertEqual(object["subject"] as? String, nasty)
        XCTAssertEqual(object["partitionkey"] as? String, nasty)
        XCTAssertEqual(object["trace"] as? String, nasty)
    }

    func testHeadersBecomeExtensionsOnlyWithValidNames() throws {
        let headers = [("traceparent", "00-abc-01"), ("tenant1", "t"), ("Trace-Id", "upper and dash"), ("x_y", "underscore"),
                       ("", "empty"), ("abcdefghijklmnopqrstu", "21 characters"), ("lsn", "overrides?"), ("id", "overrides?"),
                       ("data", "reserved"), ("tenant1", "a duplicate")].map { OutboxEvent.Header(name: $0.0, value: $0.1) }
        let object = try structured(event(payload: "{}", headers: headers))
        XCTAssertEqual(object["traceparent"] as? String, "00-abc-01")
        XCTAssertEqual(object["tenant1"] as? String, "t")
        XCTAssertEqual(object["lsn"] as? String, "1/A0")
        XCTAssertEqual(object["id"] as? String, "e-1")
        for skipped in ["Trace-Id", "x_y", "", "abcdefghijklmnopqrstu"] { XCTAssertNil(object[skipped], skipped) }
        XCTAssertEqual(Set(object.keys), ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "lsn",
                                          "partitionkey", "data", "traceparent", "tenant1"])

        var binary: [(String, String)] = []
        envelope.forEachAttribute(of: event(payload: "{}", headers: headers)) { binary.append(($0, $1)) }
        XCTAssertEqual(binary.map(\.0), ["specversion", "id", "source", "type", "subject", "time", "lsn", "partitionkey",
                                         "traceparent", "tenant1"])
        XCTAssertEqual(binary.map(\.1), ["1.0", "e-1", "/postgres/shop/outbox", "OrderPlaced", "order-1",
                                         "2024-05-06T07:08:09.123456Z", "1/A0", "order-1", "00-abc-01", "t"])
    }

    func testRepublishedRowsCarrySpoutSource() throws {
        XCTAssertEqual(try structured(event(payload: "{}", source: .backfill))["spoutsource"] as? String, "backfill")
        var names: [String] = []
        envelope.forEachAttribute(of: event(payload: "{}", key: nil, source: .snapshot)) { name, value in
            names.append(name)
            if name == "spoutsource" { XCTAssertEqual(value, "snapshot") }
        }
        XCTAssertEqual(names, ["specversion", "id", "source", "type", "time", "lsn", "spoutsource"])
    }

    func testDefaultSource() {
        XCTAssertEqual(CloudEventEnvelope.defaultSource(database: "shop", table: TableName(schema: "public", name: "outbox")),
                       "/postgres/shop/outbox")
        XCTAssertEqual(CloudEventEnvelope.defaultSource(database: "shop", table: TableName(schema: "sales", name: "outbox")),
                       "/postgres/shop/sales.outbox")
        XCTAssertEqual(CloudEventEnvelope.defaultSource(database: "my db/x", table: TableName(schema: "public", name: "Out Box")),
                       "/postgres/my%20db%2Fx/Out%20Box")
    }

    /// The NATS binding's header values (its example: "Euro € 😀").
    func testHeaderValuesArePercentEncoded() {
        XCTAssertEqual(CloudEventEnvelope.percentEncodedHeaderValue("Euro \u{20AC} \u{1F600}"), "Euro%20%E2%82%AC%20%F0%9F%98%80")
        XCTAssertEqual(CloudEventEnvelope.percentEncodedHeaderValue("a\"b%c\td\u{7F}"), "a%22b%25c%09d%7F")
        XCTAssertEqual(CloudEventEnvelope.percentEncodedHeaderValue("/postgres/shop/outbox"), "/postgres/shop/outbox")
    }

    func testDatabaseNameFollowsLibpq() {
        XCTAssertEqual(PostgresConnection.databaseName("postgresql://u@h:5432/shop", environment: [:]), "shop")
        XCTAssertEqual(PostgresConnection.databaseName("host=h dbname=inventory user=u", environment: [:]), "inventory")
        XCTAssertEqual(PostgresConnection.databaseName("postgresql://h", environment: ["PGDATABASE": "fromenv", "PGUSER": "x"]), "fromenv")
        XCTAssertEqual(PostgresConnection.databaseName("postgresql://alice@h", environment: [:]), "alice")
        XCTAssertEqual(PostgresConnection.databaseName("postgresql://h", environment: ["PGUSER": "bob"]), "bob")
    }

    /// Dead-letter records are Spout's own record, never enveloped: the same stderr line as without the envelope.
    func testDeadLettersAreNotEnveloped() throws {
        var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
        XCTAssertEqual(Glibc.pipe(&out), 0)
        XCTAssertEqual(Glibc.pipe(&err), 0)
        defer { [out[0], err[0]].forEach { _ = Glibc.close($0) } }
        let sink = StdoutSink(descriptor: out[1], deadLetterDescriptor: err[1], cloudEvents: envelope)
        let record = #"{"id":"e-1","error":"bad"}"#
        try sink.send(event(payload: record, source: .deadLetter), ticket: 1)
        var bytes: [UInt8] = []
        sink.encode(event(payload: record, source: .deadLetter), into: &bytes)
        try bytes.withUnsafeBytes { try sink.send(encoded: $0, commitLSN: LSN(rawValue: 1), ticket: 2) }
        try sink.poll { _ in }
        sink.close()
        [out[1], err[1]].forEach { _ = Glibc.close($0) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(Glibc.read(out[0], &buffer, buffer.count), 0, "nothing on stdout")
        let count = Glibc.read(err[0], &buffer, buffer.count)
        XCTAssertEqual(String(decoding: buffer[..<max(0, count)], as: UTF8.self), record + "\n" + record + "\n")
    }

    /// stdout encodes before the Commit and ends the line with the LSN after it: the same bytes
    /// as encoding the whole event at once.
    func testStdoutPreCommitEncodingMatchesTheWholeLine() throws {
        var pipe: [Int32] = [0, 0]
        XCTAssertEqual(Glibc.pipe(&pipe), 0)
        defer { Glibc.close(pipe[0]) }
        let sink = StdoutSink(descriptor: pipe[1], cloudEvents: envelope)
        var sample = event(payload: "{\"a\": [1,\n2]}", headers: [OutboxEvent.Header(name: "tenant", value: "t1")])
        var record: [UInt8] = []
        sample.lsn = .zero
        sink.encode(sample, into: &record)
        try record.withUnsafeBytes { try sink.send(encoded: $0, commitLSN: LSN(rawValue: 0x1_0000_00A0), ticket: 1) }
        sample.lsn = LSN(rawValue: 0x1_0000_00A0)
        try sink.send(sample, ticket: 2)
        var delivered: [UInt64] = []
        try sink.poll { if case let .delivered(ticket) = $0 { delivered.append(ticket) } }
        XCTAssertEqual(delivered, [1, 2])
        sink.close()
        Glibc.close(pipe[1])
        var output = [UInt8](repeating: 0, count: 1 << 16)
        let count = Glibc.read(pipe[0], &output, output.count)
        let lines = output[..<max(0, count)].split(separator: UInt8(ascii: "\n"))
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(Array(lines[0]), Array(lines[1]))
        var expected: [UInt8] = []
        envelope.appendStructured(sample, to: &expected)
        XCTAssertEqual(Array(lines[0]) + [UInt8(ascii: "\n")], expected)
    }
}
