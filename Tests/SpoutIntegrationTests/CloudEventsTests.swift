import Foundation
import SpoutCore
import XCTest

/// `--envelope cloudevents` on every sink, read back by an independent consumer: the
/// `cloudevents` Python SDK (PyPI, pinned by scripts/py-deps) parses what Spout produced —
/// stdout's structured JSON, Kafka's binary mode, NATS's `ce-*` headers, Redis's fields — and
/// must accept it; its attributes must be the rows that were written.
final class CloudEventsTests: XCTestCase {
    /// One row as written, and the attributes it must become.
    struct Expected {
        var key: String?
        var type: String
        var data: Any
        var lsn: LSN
    }

    /// The rows of `write`: `tenant_id` is the aggregate id (NULL in some rows: no subject, no
    /// partition key), `kind` the event type (NULL in some: the type is the topic).
    static let mappingArguments = ["--aggregate-id-column", "tenant_id", "--event-type-column", "kind"]

    private func outbox(_ prefix: String) throws -> OutboxFixture {
        try OutboxFixture(prefix, extraColumns: ", kind text")
    }

    /// `spout run --envelope cloudevents` (to stdout, or `sink`) while `write` writes the rows;
    /// returns once the slot confirms them all (the sink acknowledged every event) and spout
    /// has stopped.
    private func relay(_ outbox: OutboxFixture, sink: [String] = []) throws
        -> (rows: [String: Expected], written: ClosedRange<Date>, spout: SpoutProcess) {
        let witness = try CommitWitness(outbox)
        let spout = try SpoutProcess(["run", "--envelope", "cloudevents"] + sink + Self.mappingArguments + outbox.arguments)
        try eventually("spout streams from the slot; stderr: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        let start = Date()
        let (rows, after) = try write(outbox, witness: witness)
        let end = Date()
        try eventually("the slot confirms every event; stderr: \(spout.stderr)") { try XCTUnwrap(try outbox.confirmedFlush) >= after }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        return (rows, start...end, spout)
    }

    /// Three transactions of mixed rows; returns each row's expectation by id and the WAL
    /// position after the last commit.
    private func write(_ outbox: OutboxFixture, witness: CommitWitness) throws -> (rows: [String: Expected], after: LSN) {
        let writer = try TestDatabase.connect()
        let headers = #"{"traceparent": "00-abc-01", "tenant": "t1", "Trace-Id": "not an extension name", "lsn": "not ours"}"#
        let rows: [[(key: String?, kind: String?, payload: String)]] = [
            [("tenant-1", "OrderPlaced", #"{"n": 1, "items": [1, 2]}"#), ("tenant-2", "OrderPlaced", #"{"n": 2}"#)],
            [(nil, "OrderCancelled", #"{"n": 3, "text": "quote\" backslash\\ line\nbreak é ☃"}"#), ("tenant-1", nil, #"[3, "x"]"#),
             ("tenant-3", "Shipped", #""just a string""#)],
            [("tenant 4/ü", "Odd type/ü", #"{"n": 6, "nested": {"deep": [null, true, 1.5]}}"#)],
        ]
        var expected: [String: Expected] = [:]
        for transaction in rows {
            let (ids, xid) = try CommitWitness.transaction(writer) {
                try transaction.map { row in
                    try XCTUnwrap(try writer.value("""
                        INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, tenant_id, kind, payload, headers)
                        VALUES ('order', 'unused', 'unused', \(row.key.map(SQL.literal) ?? "NULL"), \(row.kind.map(SQL.literal) ?? "NULL"),
                                \(SQL.literal(row.payload)), \(SQL.literal(headers)))
                        RETURNING id
                        """))
                }
            }
            let lsn = try witness.commitLSN(xid: xid)
            for (id, row) in zip(ids, transaction) {
                let data = try JSONSerialization.jsonObject(with: Data(row.payload.utf8), options: [.fragmentsAllowed])
                expected[id] = Expected(key: row.key, type: row.kind ?? "outbox.event.order", data: data, lsn: lsn)
            }
        }
        return (expected, try outbox.currentLSN())
    }

    /// What the SDK made of each message, checked against the rows: every attribute, once each.
    private func check(_ events: [[String: Any]], against rows: [String: Expected], outbox: OutboxFixture,
                       written: ClosedRange<Date>, file: StaticString = #filePath, line: UInt = #line) throws {
        let database = try XCTUnwrap(try outbox.admin.value("SELECT current_database()"))
        XCTAssertEqual(events.count, rows.count, "one event per row", file: file, line: line)
        XCTAssertEqual(Set(events.compactMap { $0["id"] as? String }), Set(rows.keys), file: file, line: line)
        let timeFormat = ISO8601DateFormatter()
        for event in events {
            guard let id = event["id"] as? String, let row = rows[id] else { XCTFail("unexpected event \(event)", file: file, line: line); continue }
            XCTAssertEqual(event["specversion"] as? String, "1.0", file: file, line: line)
            XCTAssertEqual(event["source"] as? String, "/postgres/\(database)/\(outbox.table)", file: file, line: line)
            XCTAssertEqual(event["type"] as? String, row.type, file: file, line: line)
            XCTAssertEqual(event["subject"] as? String, row.key, file: file, line: line)
            XCTAssertEqual(event["partitionkey"] as? String, row.key, file: file, line: line)
            XCTAssertEqual(event["lsn"] as? String, row.lsn.description, file: file, line: line)
            XCTAssertEqual(event["datacontenttype"] as? String, "application/json", file: file, line: line)
            XCTAssertEqual(event["traceparent"] as? String, "00-abc-01", "a header with a valid name is an extension", file: file, line: line)
            XCTAssertEqual(event["tenant"] as? String, "t1", file: file, line: line)
            XCTAssertNil(event["Trace-Id"] ?? event["trace-id"], "other headers are left out", file: file, line: line)
            XCTAssertNil(event["spoutsource"], file: file, line: line)
            XCTAssertTrue((event["data"] as? NSObject)?.isEqual(row.data) ?? false, "data \(event["data"] ?? "nil") is the payload \(row.data)",
                          file: file, line: line)
            // The commit time: the SDK made it a timezone-aware datetime (isoformat: …+00:00), to the second here.
            let text = event["time"] as? String ?? ""
            XCTAssertTrue(text.hasSuffix("+00:00"), "time \(text) in UTC", file: file, line: line)
            let time = try XCTUnwrap(timeFormat.date(from: text.prefix(19) + "Z"), "time \(text)", file: file, line: line)
            XCTAssertTrue(written.lowerBound.addingTimeInterval(-6) <= time && time <= written.upperBound.addingTimeInterval(5),
                          "commit time \(time) is when the rows were written (\(written))", file: file, line: line)
            let known: Set<String> = ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "lsn", "partitionkey",
                                      "traceparent", "tenant", "data"]
            XCTAssertEqual(Set(event.keys).subtracting(known), [], file: file, line: line)
        }
    }

    // MARK: Sinks

    func testStdoutWritesStructuredCloudEvents() throws {
        let outbox = try outbox("ce_stdout")
        defer { outbox.tearDown() }
        let (rows, written, spout) = try relay(outbox)
        let lines = spout.lines.map(String.init)
        XCTAssertEqual(lines.count, rows.count, spout.stdout)
        try check(try CloudEventsSDK.parse("structured", lines), against: rows, outbox: outbox, written: written)
        // Structured mode puts the payload in `data` as JSON, not as a string.
        XCTAssertTrue(lines.allSatisfy { $0.hasPrefix(#"{"specversion":"1.0","id":""#) && $0.contains(#","data":"#) }, spout.stdout)
    }

    /// bytea payloads: JSON bytes are `data`, anything else `data_base64` with
    /// application/octet-stream; a backfilled row carries `spoutsource`; --ce-source is the source.
    func testStdoutNonJSONPayloadsAndBackfill() throws {
        let outbox = try OutboxFixture("ce_bytes", extraColumns: ", body bytea")
        defer { outbox.tearDown() }
        let writer = try TestDatabase.connect()
        let ids = try [#"'\x7b2261223a317d'"#, #"'\x00ff10'"#, #"'\x68656c6c6f'"#].map { body in
            try XCTUnwrap(try writer.value("""
                INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, body)
                VALUES ('order', 'k', 'Created', '{}', \(body)::bytea) RETURNING id
                """))
        }
        let result = try SpoutProcess.run(["backfill", "--envelope", "cloudevents", "--ce-source", "urn:shop:outbox",
                                           "--payload-column", "body"] + outbox.arguments)
        XCTAssertEqual(result.status, 0, result.stderr)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3, result.stdout)
        let events = try CloudEventsSDK.parse("structured", lines)
        let byID = Dictionary(events.map { ($0["id"] as? String ?? "", $0) }, uniquingKeysWith: { first, _ in first })
        for id in ids {
            XCTAssertEqual(byID[id]?["source"] as? String, "urn:shop:outbox")
            XCTAssertEqual(byID[id]?["spoutsource"] as? String, "backfill")
            XCTAssertEqual(byID[id]?["subject"] as? String, "k")
            XCTAssertEqual(byID[id]?["type"] as? String, "Created")
        }
        XCTAssertEqual(byID[ids[0]]?["datacontenttype"] as? String, "application/json")
        XCTAssertEqual((byID[ids[0]]?["data"] as? [String: Int])?["a"], 1)
        for (id, bytes) in [(ids[1], Data([0x00, 0xFF, 0x10])), (ids[2], Data("hello".utf8))] {
            XCTAssertEqual(byID[id]?["datacontenttype"] as? String, "application/octet-stream")
            XCTAssertEqual((byID[id]?["data"] as? [String: String])?["base64"], bytes.base64EncodedString())
        }
    }

    func testKafkaBinaryMode() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 3 1")
        let outbox = try outbox("ce_kafka")
        defer { outbox.tearDown() }
        let (rows, written, _) = try relay(outbox, sink: ["--sink", cluster.sinkURL])
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 3)])
        XCTAssertTrue(consumer.waitFor(rows.count, timeout: 60), "got \(consumer.messages.count) of \(rows.count)")

        for message in consumer.messages {
            XCTAssertTrue(message.headers.allSatisfy { $0.name.hasPrefix("ce_") || $0.name == "content-type" }, "\(message.headers)")
            XCTAssertEqual(message.key, message.header("ce_partitionkey"), "the Kafka key is the aggregate id, as without the envelope")
        }
        let messages: [[String: Any]] = consumer.messages.map { message in
            var headers: [String: String] = [:]
            for header in message.headers { headers[header.name] = Data(header.value.utf8).base64EncodedString() }
            return ["headers": headers, "key": message.key.map { Data($0.utf8).base64EncodedString() as Any } ?? NSNull(),
                    "value": Data(message.value.utf8).base64EncodedString()]
        }
        try check(try CloudEventsSDK.parse("kafka", messages), against: rows, outbox: outbox, written: written)
    }

    func testNATSBinaryMode() throws {
        let server = try NATSServer()
        let client = try JetStreamTestClient(server.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try outbox("ce_nats")
        defer { outbox.tearDown() }
        let (rows, written, _) = try relay(outbox, sink: ["--sink", server.url])
        let stored = try client.messages("OUTBOX")
        for message in stored {
            XCTAssertEqual(message.header("Nats-Msg-Id"), message.header("ce-id"), "the stream still drops duplicates by event id")
            XCTAssertEqual(message.header("ce-datacontenttype"), "application/json")
            XCTAssertNil(message.header("content-type"), "Content-Type would say structured mode")
        }
        XCTAssertTrue(stored.contains { $0.header("ce-subject") == "tenant%204/%C3%BC" && $0.header("ce-type") == "Odd%20type/%C3%BC" },
                      "header values are percent-encoded: \(stored.map(\.headers))")
        let messages: [[String: Any]] = stored.map { message in
            ["headers": message.headers.compactMapValues(\.first), "data": message.data.base64EncodedString()]
        }
        try check(try CloudEventsSDK.parse("nats", messages), against: rows, outbox: outbox, written: written)
    }

    func testRedisFields() throws {
        let redis = try RedisServer()
        let outbox = try outbox("ce_redis")
        defer { outbox.tearDown() }
        let (rows, written, _) = try relay(outbox, sink: ["--sink", redis.url])
        let entries = try redis.client().entries("outbox.event.order")
        XCTAssertEqual(entries.first?.fieldNames.prefix(3), ["ce_specversion", "ce_id", "ce_source"])
        XCTAssertEqual(entries.first?.fieldNames.last, "payload")
        let messages: [[String: Any]] = entries.map { entry in
            ["fields": entry.fields.mapValues { Data($0.utf8).base64EncodedString() }]
        }
        try check(try CloudEventsSDK.parse("redis", messages), against: rows, outbox: outbox, written: written)
    }

    /// The CloudEvents RabbitMQ binding: `ce-` headers, `content_type` = datacontenttype.
    func testAMQPBinaryMode() throws {
        let server = try RabbitMQServer("ce-tests")
        defer { server.stop(remove: true) }
        let pika = try PikaClient(server.url)
        try pika.setUp(exchange: "ce_outbox", queue: "ce_events", keys: ["#"])
        let outbox = try outbox("ce_amqp")
        defer { outbox.tearDown() }
        let (rows, written, _) = try relay(outbox, sink: ["--sink", server.url, "--amqp-exchange", "ce_outbox"])
        let stored = try pika.drain("ce_events")
        for message in stored {
            XCTAssertTrue(message.headers.keys.allSatisfy { $0.hasPrefix("ce-") }, "\(message.headers)")
            XCTAssertEqual(message.contentType, "application/json")
            XCTAssertEqual(message.messageID, message.header("ce-id"))
        }
        let messages: [[String: Any]] = stored.map { message in
            ["headers": message.headers.compactMapValues { $0 as? String }, "content_type": message.contentType ?? "",
             "body": Data(message.body.utf8).base64EncodedString()]
        }
        try check(try CloudEventsSDK.parse("rabbitmq", messages), against: rows, outbox: outbox, written: written)
    }

    /// STOMP has no CloudEvents binding: the `ce-` headers of the RabbitMQ binding, `content-type`.
    func testSTOMPBinaryMode() throws {
        let server = try RabbitMQServer("ce-stomp-tests")
        defer { server.stop(remove: true) }
        try STOMPConsumer.declare(server, queue: "ce_events")
        let outbox = try outbox("ce_stomp")
        defer { outbox.tearDown() }
        let (rows, written, _) = try relay(outbox, sink: ["--sink", server.stompURL, "--stomp-destination", "/queue/ce_events"])
        let stored = try STOMPConsumer.drain(server, queue: "ce_events", distinct: rows.count)
        XCTAssertEqual(stored.count, rows.count)
        for message in stored {
            XCTAssertEqual(message.headers["content-type"], "application/json")
            XCTAssertEqual(message.id, message.headers["ce-id"], "spout-event-id stays")
            XCTAssertNil(message.headers["traceparent"], "the row's headers are extensions now, not headers: \(message.headers)")
            XCTAssertNil(message.key)
        }
        let messages: [[String: Any]] = stored.map { message in
            ["headers": message.headers.filter { $0.key.hasPrefix("ce-") }, "content_type": message.headers["content-type"] ?? "",
             "body": Data(message.body.utf8).base64EncodedString()]
        }
        try check(try CloudEventsSDK.parse("rabbitmq", messages), against: rows, outbox: outbox, written: written)
    }

    // MARK: Configuration

    func testEnvelopeSettingsAreCheckedAndReported() throws {
        let outbox = try outbox("ce_config")
        defer { outbox.tearDown() }
        let report = try SpoutProcess.run(["run", "--check-config", "--envelope", "cloudevents"] + outbox.arguments)
        XCTAssertEqual(report.status, 0, report.stderr)
        XCTAssertTrue(report.stdout.contains("envelope = cloudevents"), report.stdout)
        let database = try XCTUnwrap(try outbox.admin.value("SELECT current_database()"))
        XCTAssertTrue(report.stdout.contains("ce-source = /postgres/\(database)/\(outbox.table)"), report.stdout)

        let plain = try SpoutProcess.run(["run", "--check-config"] + outbox.arguments)
        XCTAssertTrue(plain.stdout.contains("envelope = none"), plain.stdout)
        XCTAssertFalse(plain.stdout.contains("ce-source"), plain.stdout)

        let wrong = try SpoutProcess.run(["run", "--check-config"] + outbox.arguments, environment: ["SPOUT_ENVELOPE": "cloudevent"])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.stderr.contains("SPOUT_ENVELOPE=cloudevent is not none or cloudevents"), wrong.stderr)
        let orphan = try SpoutProcess.run(["run", "--check-config", "--ce-source", "/x"] + outbox.arguments)
        XCTAssertNotEqual(orphan.status, 0)
        XCTAssertTrue(orphan.stderr.contains("--ce-source /x needs --envelope cloudevents"), orphan.stderr)
        let blank = try SpoutProcess.run(["run", "--check-config", "--envelope", "cloudevents", "--ce-source", "a b"] + outbox.arguments)
        XCTAssertNotEqual(blank.status, 0)
        XCTAssertTrue(blank.stderr.contains("is not a URI-reference"), blank.stderr)
    }
}

/// The `cloudevents` SDK (scripts/py-deps installs it; scripts/test exports SPOUT_TEST_PYTHONPATH)
/// run on what a test read from a sink, through Tests/python/cloudevents_check.py.
enum CloudEventsSDK {
    static func parse(_ mode: String, _ messages: [Any]) throws -> [[String: Any]] {
        guard let path = ProcessInfo.processInfo.environment["SPOUT_TEST_PYTHONPATH"], !path.isEmpty else {
            throw XCTSkip("SPOUT_TEST_PYTHONPATH is not set: run scripts/py-deps (scripts/test exports it) for the cloudevents SDK")
        }
        let script = PrivateServer.repository.appendingPathComponent("Tests/python/cloudevents_check.py").path
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("spout-ce-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: ["mode": mode, "messages": messages]).write(to: input)
        defer { try? FileManager.default.removeItem(at: input) }
        let (status, output) = try runCommand("/usr/bin/env", ["PYTHONPATH=\(path)", "python3", script, input.path])
        guard status == 0 else {
            XCTFail("the cloudevents SDK refused what spout produced: \(output)")
            return []
        }
        let parsed = try JSONSerialization.jsonObject(with: Data(output.utf8))
        return try XCTUnwrap(parsed as? [[String: Any]], output)
    }
}
