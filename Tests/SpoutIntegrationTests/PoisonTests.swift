import Foundation
@testable import SpoutCore
import XCTest
@testable import SpoutKafka
@testable import SpoutNATS

/// `--on-poison` end to end: a poison row among good ones, under each policy, with the real
/// spout, PostgreSQL and broker. Nothing good is lost, order is kept, the dead letter holds
/// the row, and the slot moves past the poison event (a restarted spout does not see it again).
final class PoisonTests: XCTestCase {
    /// Rows `tenants` (nil: a NULL tenant_id, which `--topic {tenant_id}` cannot map) in one
    /// transaction, with `seq` payloads from `first`; returns their ids.
    @discardableResult
    private func insert(_ outbox: OutboxFixture, _ connection: PostgresConnection, tenants: [String?], aggregate: String = "order",
                        first: Int = 0) throws -> [String] {
        let values = tenants.enumerated().map { index, tenant in
            "('\(aggregate)', 'k\(first + index)', 'Created', '{\"seq\": \(first + index)}', \(tenant.map { SQL.literal($0) } ?? "NULL"))"
        }
        return try connection.sql("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, tenant_id)
            VALUES \(values.joined(separator: ",")) RETURNING id
            """).compactMap { $0.first ?? nil }
    }

    private func seqs(_ events: [[String: Any]]) -> [Int] {
        events.compactMap { ($0["payload"] as? [String: Any])?["seq"] as? Int }
    }

    private func waitConfirmed(_ outbox: OutboxFixture, past lsn: LSN) throws {
        try eventually("the slot is confirmed past \(lsn)") { (try outbox.confirmedFlush ?? .zero) >= lsn }
    }

    // MARK: stdout, a row that cannot be mapped

    func testStdoutStopHaltsBeforeTheRowThatCannotBeMapped() throws {
        let outbox = try OutboxFixture("poison_stop")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--topic", "t.{tenant_id}"] + outbox.arguments)
        try eventually("spout streams") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        try insert(outbox, writer, tenants: ["a", "a"])
        let ids = try insert(outbox, writer, tenants: ["a", nil, "a"], first: 2)
        let error = spout.waitForFailure(timeout: 30)
        XCTAssertTrue(error.contains(ids[1]) && error.contains("{tenant_id}"), error)
        XCTAssertEqual(seqs(spout.events).prefix(2), [0, 1], "what came before is delivered")
    }

    func testStdoutSkipAndDeadLetterGoOnAndMovePast() throws {
        for policy in ["skip", "dead-letter"] {
            let outbox = try OutboxFixture("poison_\(policy == "skip" ? "skip" : "dlq")")
            defer { outbox.tearDown() }
            let arguments = ["run", "--topic", "t.{tenant_id}", "--on-poison", policy] + outbox.arguments
            var spout = try SpoutProcess(arguments)
            try eventually("spout streams") { try outbox.streamingWalsender != nil }
            let writer = try TestDatabase.connect()
            let ids = try insert(outbox, writer, tenants: ["a", nil, "b"])
            try insert(outbox, writer, tenants: ["a", "a"], first: 3)
            let end = try outbox.currentLSN()
            try eventually("the good events arrive") { spout.events.count >= 4 }
            try waitConfirmed(outbox, past: end)
            XCTAssertEqual(seqs(spout.events), [0, 2, 3, 4], "\(policy): nothing good lost, in order")
            let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") }
            XCTAssertEqual(warnings.count, 1, spout.stderr)
            XCTAssertTrue(warnings.first?.contains(ids[1]) == true, spout.stderr)
            let records = spout.stderr.split(separator: "\n").filter { $0.hasPrefix("{\"id\":") }
            if policy == "dead-letter" {
                XCTAssertEqual(records.count, 1, spout.stderr)
                let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data((records.first ?? "").utf8)) as? [String: Any])
                XCTAssertEqual(record["id"] as? String, ids[1])
                XCTAssertTrue(record["topic"] is NSNull)
                XCTAssertTrue((record["error"] as? String)?.contains("{tenant_id}") == true, "\(record)")
                XCTAssertNotNil(LSN(record["lsn"] as? String ?? ""), "\(record)")
                let row = try XCTUnwrap(record["row"] as? [String: Any])
                XCTAssertEqual(row["aggregate_id"] as? String, "k1")
                XCTAssertTrue(row["tenant_id"] is NSNull)
                XCTAssertEqual(row["payload"] as? String, "{\"seq\": 1}")
            } else {
                XCTAssertEqual(records.count, 0, spout.stderr)
            }
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0)

            // Restarted: the poison row does not come again, new rows do.
            spout = try SpoutProcess(arguments)
            try eventually("spout streams again") { try outbox.streamingWalsender != nil }
            try insert(outbox, writer, tenants: ["c"], first: 5)
            try eventually("the new event arrives") { !spout.events.isEmpty }
            let after = try outbox.currentLSN()
            try waitConfirmed(outbox, past: after)
            XCTAssertEqual(seqs(spout.events), [5])
            XCTAssertFalse(spout.stderr.contains(ids[1]), spout.stderr)
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0)
        }
    }

    // MARK: Redis, a refusal (WRONGTYPE) and a row that cannot be mapped

    /// Both kinds at once: a key of another type (WRONGTYPE, refused by Redis) and a row whose
    /// topic placeholder is NULL; with server ids (events as decoded) and `--redis-ids lsn`
    /// (events spooled until their commit).
    func testRedisDeadLettersAndSkipsWhatItRefusesAndWhatCannotBeMapped() throws {
        for (policy, ids) in [("dead-letter", "server"), ("dead-letter", "lsn"), ("skip", "server")] {
            let redis = try RedisServer()
            let client = try redis.client()
            try client.command("SET", "outbox.blocked.a", "not a stream")
            let outbox = try OutboxFixture("poison_redis")
            defer { outbox.tearDown() }
            let spout = try SpoutProcess(["run", "--sink", redis.url, "--on-poison", policy, "--redis-ids", ids,
                                          "--topic", "outbox.{aggregate_type}.{tenant_id}"] + outbox.arguments)
            try eventually("spout streams") { try outbox.streamingWalsender != nil }
            let writer = try TestDatabase.connect()
            try insert(outbox, writer, tenants: ["a", "a"], aggregate: "fine")
            let bad = try insert(outbox, writer, tenants: ["a"], aggregate: "blocked", first: 2)
            let unmappable = try insert(outbox, writer, tenants: ["a", nil, "a"], aggregate: "fine", first: 3)
            let end = try outbox.currentLSN()
            try eventually("good events delivered; stderr: \(spout.stderr)") { try client.entries("outbox.fine.a").count == 4 }
            try waitConfirmed(outbox, past: end)
            let fine = try client.entries("outbox.fine.a").compactMap { entry in
                (try? JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any])?["seq"] as? Int
            }
            XCTAssertEqual(fine, [0, 1, 3, 5], "\(policy), \(ids) ids: nothing good lost, in order")
            let letters = try client.entries(PoisonPolicy.defaultDeadLetterTopic)
            if policy == "dead-letter" {
                // The row's dead letter goes out in its place; the refused event's once Redis
                // refused it, which may be after events behind it were published.
                XCTAssertEqual(letters.count, 2)
                let records = try letters.map { letter in
                    try XCTUnwrap(JSONSerialization.jsonObject(with: Data((letter.fields["payload"] ?? "").utf8)) as? [String: Any])
                }.sorted { ($0["topic"] is NSNull ? 1 : 0) < ($1["topic"] is NSNull ? 1 : 0) }
                guard records.count == 2 else { continue }
                XCTAssertEqual(records[0]["id"] as? String, bad.first)
                XCTAssertEqual(records[0]["topic"] as? String, "outbox.blocked.a")
                XCTAssertTrue((records[0]["error"] as? String)?.contains("WRONGTYPE") == true, "\(records[0])")
                let event = try XCTUnwrap(records[0]["event"] as? [String: Any])
                XCTAssertEqual((event["payload"] as? [String: Any])?["seq"] as? Int, 2)
                XCTAssertEqual(records[1]["id"] as? String, unmappable[1])
                XCTAssertTrue((records[1]["error"] as? String)?.contains("{tenant_id}") == true, "\(records[1])")
                XCTAssertEqual((records[1]["row"] as? [String: Any])?["payload"] as? String, "{\"seq\": 4}")
                XCTAssertTrue(spout.stderr.contains("dead-lettered event \"\(bad[0])\""), spout.stderr)
            } else {
                XCTAssertEqual(letters.count, 0)
                XCTAssertTrue(spout.stderr.contains("skipped event \"\(bad[0])\""), spout.stderr)
                XCTAssertTrue(spout.stderr.contains("skipped outbox event \"\(unmappable[1])\""), spout.stderr)
            }
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0)
        }
    }

    /// Redis out of memory refuses every XADD: with --max-retries 2 each event is sent three
    /// times, then skipped; once memory is back, events flow again. An outage before does not count.
    func testRedisMaxRetriesMakesARefusedEventPoison() throws {
        let redis = try RedisServer()
        let client = try redis.client()
        let outbox = try OutboxFixture("poison_retries")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--on-poison", "skip", "--max-retries", "2"] + outbox.arguments)
        try eventually("spout streams") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        try insert(outbox, writer, tenants: ["a"])
        try eventually("the first event arrives") { try client.entries("outbox.event.order").count == 1 }
        try client.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        try client.command("CONFIG", "SET", "maxmemory", "1")
        let refused = try insert(outbox, writer, tenants: ["a"], first: 1)
        let end = try outbox.currentLSN()
        try waitConfirmed(outbox, past: end)
        XCTAssertTrue(spout.stderr.contains("skipped event \"\(refused[0])\""), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("more than --max-retries 2"), spout.stderr)
        try client.command("CONFIG", "SET", "maxmemory", "0")
        try insert(outbox, writer, tenants: ["a"], first: 2)
        try eventually("events flow again") { try client.entries("outbox.event.order").count == 2 }
        let seqs = try client.entries("outbox.event.order").compactMap { entry in
            (try? JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any])?["seq"] as? Int
        }
        XCTAssertEqual(seqs, [0, 2])
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 30), 0)
    }

    // MARK: NATS, a subject it cannot take

    func testNATSDeadLettersOrSkipsAnEventWithAnInvalidSubject() throws {
        for policy in ["dead-letter", "skip"] {
            let server = try NATSServer()
            let client = try JetStreamTestClient(server.url)
            try client.addStream("OUTBOX", subjects: ["outbox.event.>", PoisonPolicy.defaultDeadLetterTopic])
            let outbox = try OutboxFixture("poison_nats")
            defer { outbox.tearDown() }
            let spout = try SpoutProcess(["run", "--sink", server.url, "--on-poison", policy] + outbox.arguments)
            try eventually("spout streams") { try outbox.streamingWalsender != nil }
            let writer = try TestDatabase.connect()
            try insert(outbox, writer, tenants: ["a", "a"])
            let bad = try insert(outbox, writer, tenants: ["a"], aggregate: "bad type", first: 2)
            try insert(outbox, writer, tenants: ["a", "a"], first: 3)
            let end = try outbox.currentLSN()
            eventually(timeout: 60, "5 messages in the stream, got \(client.count("OUTBOX"))") { client.count("OUTBOX") >= (policy == "skip" ? 4 : 5) }
            try waitConfirmed(outbox, past: end)
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0, spout.stderr)
            let messages = try client.messages("OUTBOX")
            let good = messages.filter { $0.subject == "outbox.event.order" }.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.data)) as? [String: Any])?["seq"] as? Int
            }
            XCTAssertEqual(good, [0, 1, 3, 4], "nothing good lost, in order")
            let letters = messages.filter { $0.subject == PoisonPolicy.defaultDeadLetterTopic }
            if policy == "skip" {
                XCTAssertEqual(letters.count, 0)
                XCTAssertTrue(spout.stderr.contains("skipped event \"\(bad[0])\""), spout.stderr)
                continue
            }
            XCTAssertEqual(letters.count, 1)
            let letter = try XCTUnwrap(letters.first)
            XCTAssertEqual(letter.header("Nats-Msg-Id"), "dead-letter:\(bad[0])")
            let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(letter.data)) as? [String: Any])
            XCTAssertEqual(record["id"] as? String, bad[0])
            XCTAssertEqual(record["topic"] as? String, "outbox.event.bad type")
            XCTAssertTrue((record["error"] as? String)?.contains("not a valid NATS subject") == true, "\(record)")
        }
    }

    // MARK: Kafka, an event larger than message.max.bytes

    func testKafkaDeadLettersOrSkipsAnOversizedEventAndGoesOn() throws {
        for policy in ["dead-letter", "skip"] {
            let cluster = try KafkaMockCluster(brokers: 1)
            try cluster.command("create-topic outbox.event.order 1 1")
            try cluster.command("create-topic \(PoisonPolicy.defaultDeadLetterTopic) 1 1")
            let outbox = try OutboxFixture("poison_kafka")
            defer { outbox.tearDown() }
            let spout = try SpoutProcess(["run", "--sink", cluster.sinkURL, "--on-poison", policy,
                                          "--kafka-property", "message.max.bytes=1000"] + outbox.arguments)
            try eventually("spout streams") { try outbox.streamingWalsender != nil }
            let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap,
                                                 topics: [("outbox.event.order", 1), (PoisonPolicy.defaultDeadLetterTopic, 1)])
            let writer = try TestDatabase.connect()
            try insert(outbox, writer, tenants: ["a", "a"])
            let big = String(repeating: "x", count: 5000)
            let (bad, _) = try outbox.insertReturningLSN(writer, rows: 1, key: { _ in "k2" }, payload: { _ in "{\"big\": \"\(big)\"}" })
            try insert(outbox, writer, tenants: ["a", "a"], first: 3)
            let end = try outbox.currentLSN()
            XCTAssertTrue(consumer.waitFor(policy == "skip" ? 4 : 5), "got \(consumer.messages.count); stderr: \(spout.stderr)")
            try waitConfirmed(outbox, past: end)
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0, spout.stderr)
            let good = consumer.messages.filter { $0.topic == "outbox.event.order" }.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.value.utf8)) as? [String: Any])?["seq"] as? Int
            }
            XCTAssertEqual(good, [0, 1, 3, 4], "nothing good lost, in order")
            let letters = consumer.messages.filter { $0.topic == PoisonPolicy.defaultDeadLetterTopic }
            if policy == "skip" {
                XCTAssertEqual(letters.count, 0)
                XCTAssertTrue(spout.stderr.contains("skipped event \"\(bad[0])\""), spout.stderr)
                continue
            }
            XCTAssertEqual(letters.count, 1)
            let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data((letters.first?.value ?? "").utf8)) as? [String: Any])
            XCTAssertEqual(record["id"] as? String, bad.first)
            XCTAssertEqual(record["topic"] as? String, "outbox.event.order")
            XCTAssertTrue((record["error"] as? String)?.contains("message.max.bytes") == true, "\(record)")
            XCTAssertGreaterThan(record["payload_omitted_bytes"] as? Int ?? 0, 5000, "the payload is left out, its size stays")
            XCTAssertEqual((record["event"] as? [String: Any])?["key"] as? String, "k2")
        }
    }

    // MARK: The options

    func testOptionsAreCheckedAndShown() throws {
        let bad = try SpoutProcess.run(["run", "--on-poison", "ignore", "--check-config"])
        XCTAssertEqual(bad.status, 64)
        XCTAssertTrue(bad.stderr.contains("--on-poison ignore is not stop, dead-letter or skip"), bad.stderr)
        let retries = try SpoutProcess.run(["run", "--check-config"], environment: ["SPOUT_MAX_RETRIES": "-1"])
        XCTAssertEqual(retries.status, 64)
        XCTAssertTrue(retries.stderr.contains("SPOUT_MAX_RETRIES=-1 is out of range: use 0 to 1000000"), retries.stderr)
        let empty = try SpoutProcess.run(["run", "--on-poison", "dead-letter", "--dead-letter-topic", "", "--check-config"])
        XCTAssertEqual(empty.status, 64)
        XCTAssertTrue(empty.stderr.contains("--dead-letter-topic  is empty"), empty.stderr)
        let unused = try SpoutProcess.run(["run", "--dead-letter-topic", "dlq", "--check-config"])
        XCTAssertEqual(unused.status, 64)
        XCTAssertTrue(unused.stderr.contains("--dead-letter-topic dlq is used only with --on-poison dead-letter"), unused.stderr)
        let defaults = try SpoutProcess.run(["run", "--check-config"])
        XCTAssertEqual(defaults.status, 0, defaults.stderr)
        XCTAssertTrue(defaults.stdout.contains("on-poison = stop\n"), defaults.stdout)
        XCTAssertTrue(defaults.stdout.contains("max-retries = none (retry forever)"), defaults.stdout)
        let given = try SpoutProcess.run(["run", "--check-config", "--max-retries", "5"],
                                         environment: ["SPOUT_ON_POISON": "dead-letter", "SPOUT_DEAD_LETTER_TOPIC": "dlq"])
        XCTAssertEqual(given.status, 0, given.stderr)
        XCTAssertTrue(given.stdout.contains("on-poison = dead-letter\ndead-letter-topic = dlq\nmax-retries = 5"), given.stdout)
    }
}
