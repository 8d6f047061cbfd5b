import Foundation
import SpoutAMQP
import SpoutCore
import XCTest

/// The AMQP sink against a real RabbitMQ (scripts/rabbitmq-start, one per class), through the
/// `spout` executable, consumed with pika. Each test has its own exchange and queues.
final class AMQPSinkTests: XCTestCase {
    nonisolated(unsafe) static var server: RabbitMQServer?
    nonisolated(unsafe) static var startFailure = ""

    override class func setUp() {
        super.setUp()
        do { server = try RabbitMQServer("amqp-tests") } catch { startFailure = "\(error)" }
    }

    override class func tearDown() {
        server?.stop(remove: true)
        server = nil
        super.tearDown()
    }

    private func broker() throws -> (RabbitMQServer, PikaClient) {
        guard let server = Self.server else { throw XCTSkipFailure("scripts/rabbitmq-start amqp-tests did not start RabbitMQ: \(Self.startFailure)") }
        return (server, try PikaClient(server.url))
    }

    private func name(_ prefix: String) -> String { TestDatabase.uniqueName(prefix) }

    private func waitConfirmed(_ outbox: OutboxFixture, past lsn: LSN, file: StaticString = #filePath, line: UInt = #line) throws {
        try eventually(timeout: 60, "the slot confirms everything delivered", file: file, line: line) {
            try XCTUnwrap(try outbox.confirmedFlush) >= lsn
        }
    }

    /// 1,701 events on two routing keys, declared by spout (--amqp-declare): each arrives once,
    /// persistent, with message_id, type, content_type, timestamp and the row's headers plus
    /// spout-key, per key in commit order.
    func testEventsArriveInOrderWithTheirProperties() throws {
        let (server, client) = try broker()
        let exchange = name("ex"), queue = name("q")
        try client.setUp(exchange: exchange, queue: queue, keys: ["outbox.event.#"])
        let outbox = try OutboxFixture("amqp")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url, "--amqp-exchange", exchange, "--amqp-declare"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 200, rows: 1)
        try writer.write(transactions: 50, rows: 10, aggregate: "invoice")
        try writer.write(transactions: 2, rows: 500)
        let special = try XCTUnwrap(try outbox.admin.value("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, headers)
            VALUES ('special', 'key with space', 'Odd', '"text"', '{"traceparent": "00-abc-01", "spout-key": "spoofed"}')
            RETURNING id
            """))
        let written = try outbox.currentLSN()

        eventually(timeout: 60, "1,701 messages in the queue, got \(client.count(queue))") { client.count(queue) >= 1_701 }
        try waitConfirmed(outbox, past: written)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try client.drain(queue)
        XCTAssertEqual(messages.count, 1_701, "each event once in a run without failures")
        XCTAssertEqual(Set(messages.compactMap(\.messageID)).count, 1_701)
        let specialMessage = try XCTUnwrap(messages.first { $0.messageID == special })
        XCTAssertEqual(specialMessage.routingKey, "outbox.event.special")
        XCTAssertEqual(specialMessage.type, "Odd")
        XCTAssertEqual(specialMessage.header(AMQPSink.keyHeader), "key with space", "the row cannot spoof spout's own headers")
        XCTAssertEqual(specialMessage.header("traceparent"), "00-abc-01")
        XCTAssertNil(specialMessage.header(AMQPSink.sourceHeader), "streamed events carry no source marker")
        XCTAssertEqual(specialMessage.body, "\"text\"", "payload as stored")

        let regular = messages.filter { $0.routingKey != "outbox.event.special" }
        for message in regular {
            XCTAssertEqual(message.deliveryMode, 2, "persistent")
            XCTAssertEqual(message.contentType, "application/json")
            XCTAssertEqual(message.type, "Created")
            XCTAssertEqual(message.header("h"), "v", "the row's headers")
            XCTAssertGreaterThan(message.timestamp ?? 0, 1_600_000_000, "the commit time")
        }
        XCTAssertEqual(Set(regular.map(\.routingKey)), ["outbox.event.order", "outbox.event.invoice"])
        assertEveryEventInOrderPerKey(regular, idsByKey: writer.idsByKey)
    }

    /// SIGKILL of spout mid-stream, then a restart: every event arrives at least once (those
    /// unconfirmed at the crash again), per key first in commit order.
    func testSpoutCrashAndRestartLosesNothing() throws {
        let (server, client) = try broker()
        let exchange = name("ex"), queue = name("q")
        try client.setUp(exchange: exchange, queue: queue, keys: ["outbox.event.#"])
        let outbox = try OutboxFixture("amqpcrash")
        defer { outbox.tearDown() }
        let arguments = ["run", "--sink", server.url, "--amqp-exchange", exchange] + outbox.arguments

        let first = try SpoutProcess(arguments + ["--max-in-flight", "50"])
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 10, pause: 2_000)
        eventually(timeout: 60, "first run delivered some events") { client.count(queue) >= 800 }
        // Frozen, then killed: the crash happens at one instant the test chose.
        first.signal(SIGSTOP)
        first.signal(SIGKILL)
        first.waitForExit()
        let confirmedAtCrash = try XCTUnwrap(try outbox.confirmedFlush)
        writer.waitForMore(30)
        try writer.stop()
        let last = try XCTUnwrap(writer.transactions.last).after
        XCTAssertLessThan(client.count(queue), writer.ids.count, "spout died mid-stream")
        XCTAssertLessThan(confirmedAtCrash, last, "the restart had unconfirmed events to publish again")

        let second = try SpoutProcess(arguments)
        eventually(timeout: 60, "\(writer.ids.count) messages, got \(client.count(queue))") { client.count(queue) >= writer.ids.count }
        try waitConfirmed(outbox, past: last)
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)

        assertEveryEventInOrderPerKey(try client.drain(queue), idsByKey: writer.idsByKey)
    }

    /// RabbitMQ stopped and started again (same ports and data) while events flow: nothing is
    /// lost, per-key order holds, one warning for the outage and one line when it ends, and
    /// while the broker is down the slot does not confirm events written meanwhile.
    func testBrokerRestartLosesNothingAndHoldsTheSlot() throws {
        let (server, client) = try broker()
        let exchange = name("ex"), queue = name("q")
        try client.setUp(exchange: exchange, queue: queue, keys: ["outbox.event.#"])
        let outbox = try OutboxFixture("amqprestart")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url, "--amqp-exchange", exchange] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        eventually(timeout: 60, "events flowing") { client.count(queue) >= 500 }
        server.stop()

        // Written while the broker is down: it cannot have been delivered, so the slot stays before it.
        let markerBefore = try outbox.currentLSN()
        let markerIDs = try outbox.insert(try TestDatabase.connect(), rows: 10, key: { _ in "marker" }, payload: { "{\"seq\": \($0)}" })
        let outageEnd = Date().addingTimeInterval(3)
        var highest = LSN.zero
        while Date() < outageEnd {
            highest = max(highest, try XCTUnwrap(try outbox.confirmedFlush))
            usleep(100_000)
        }
        XCTAssertLessThanOrEqual(highest, markerBefore, "confirmed past an event the broker never had")
        XCTAssertTrue(spout.process.isRunning, "spout waits for the broker instead of failing: \(spout.stderr)")

        try server.start()
        writer.waitForMore(50)
        try writer.stop()
        let total = writer.ids.count + markerIDs.count
        let written = try outbox.currentLSN()
        eventually(timeout: 90, "\(total) messages after the restart, got \(client.count(queue))") { client.count(queue) >= total }
        try waitConfirmed(outbox, past: written)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        var idsByKey = writer.idsByKey
        idsByKey["marker"] = markerIDs
        assertEveryEventInOrderPerKey(try client.drain(queue), idsByKey: idsByKey)
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") && $0.contains("AMQP broker") }
        XCTAssertEqual(warnings.count, 1, "one warning for the outage: \(spout.stderr)")
        XCTAssertEqual(spout.stderr.components(separatedBy: "accepts events again").count - 1, 1, spout.stderr)
    }

    /// An event no queue is bound for comes back (basic.return before its basic.ack): under
    /// `--on-poison stop` spout stops with an error naming the routing key and confirms only
    /// what came before; under `dead-letter` its dead letter goes to the dead-letter topic and
    /// the events after it flow on.
    func testUnroutableEventIsPoison() throws {
        let (server, client) = try broker()
        for policy in ["stop", "dead-letter"] {
            let exchange = name("ex"), queue = name("q"), letters = name("dlq")
            try client.setUp(exchange: exchange, queue: queue, keys: ["outbox.event.order"])
            try client.setUp(exchange: exchange, queue: letters, keys: [PoisonPolicy.defaultDeadLetterTopic])
            let outbox = try OutboxFixture("amqppoison")
            defer { outbox.tearDown() }
            let spout = try SpoutProcess(["run", "--sink", server.url, "--amqp-exchange", exchange, "--on-poison", policy] + outbox.arguments)
            try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
            let connection = try TestDatabase.connect()
            try outbox.insert(connection, rows: 1, payload: { _ in "{\"seq\": 0}" })
            // The bad event's own commit LSN bounds what may be confirmed (other WAL may precede it).
            let witness = try CommitWitness(outbox)
            let (bad, badXID) = try CommitWitness.transaction(connection) {
                try outbox.insert(connection, rows: 1, aggregate: "nowhere", payload: { _ in "{\"seq\": 1}" })
            }
            try outbox.insert(connection, rows: 1, payload: { _ in "{\"seq\": 2}" })
            let end = try outbox.currentLSN()

            if policy == "stop" {
                let error = spout.waitForFailure(timeout: 30)
                XCTAssertTrue(error.contains("unroutable") && error.contains("\"outbox.event.nowhere\"") && error.contains(bad[0]), error)
                XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: badXID), "nothing confirmed past the unroutable event")
                XCTAssertEqual(try client.drain(queue).compactMap(\.sequence).first, 0)
                continue
            }
            eventually(timeout: 30, "2 messages and 1 dead letter") { client.count(queue) >= 2 && client.count(letters) >= 1 }
            try waitConfirmed(outbox, past: end)
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(timeout: 30), 0, spout.stderr)
            XCTAssertEqual(try client.drain(queue).compactMap(\.sequence), [0, 2], "nothing good lost, in order")
            let letter = try XCTUnwrap(try client.drain(letters).first)
            XCTAssertEqual(letter.messageID, "dead-letter:\(bad[0])")
            XCTAssertEqual(letter.header(AMQPSink.sourceHeader), "dead-letter")
            XCTAssertEqual(letter.routingKey, PoisonPolicy.defaultDeadLetterTopic)
            XCTAssertTrue(spout.stderr.contains("dead-lettered event \"\(bad[0])\""), spout.stderr)
        }
    }

    /// A queue that refuses publishes when full makes the broker nack them: each refused event
    /// is published again with backoff, and after --max-retries it is poison (here: skipped);
    /// the events the queue took are confirmed once, not refused again.
    func testNackedEventsAreRetriedThenPoison() throws {
        let (server, client) = try broker()
        let exchange = name("ex"), queue = name("q")
        try client.setUp(exchange: exchange, queue: queue, keys: ["#"], rejectAbove: 5)
        let outbox = try OutboxFixture("amqpnack")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url, "--amqp-exchange", exchange, "--on-poison", "skip", "--max-retries", "1"]
                                     + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let ids = try outbox.insert(try TestDatabase.connect(), rows: 8, key: { _ in "k" }, payload: { "{\"seq\": \($0)}" })
        try waitConfirmed(outbox, past: try outbox.currentLSN())
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 30), 0, spout.stderr)

        XCTAssertEqual(try client.drain(queue).compactMap(\.sequence), [0, 1, 2, 3, 4], "the queue took the first five, once each")
        for id in ids.suffix(3) {
            XCTAssertTrue(spout.stderr.contains("skipped event \"\(id)\"") && spout.stderr.contains("more than --max-retries 1"), spout.stderr)
        }
        XCTAssertEqual(spout.stderr.components(separatedBy: "skipped event").count - 1, 3, spout.stderr)
        XCTAssertTrue(spout.stderr.contains("basic.nack"), spout.stderr)
    }

    /// A wrong password stops spout at start with one error naming the user and the broker,
    /// never the password; a missing exchange names the fix.
    func testWrongPasswordAndMissingExchangeAreClearStartupErrors() throws {
        let (server, client) = try broker()
        let exchange = name("ex")
        try client.setUp(exchange: exchange, queue: name("q"), keys: ["#"])
        let outbox = try OutboxFixture("amqpauth")
        defer { outbox.tearDown() }

        let password = "Wr0ng-Secret-\(UInt32.random(in: 0...UInt32.max))"
        let wrong = try SpoutProcess(["run", "--sink", server.url(password: password), "--amqp-exchange", exchange] + outbox.arguments)
        let error = wrong.waitForFailure(timeout: 30)
        XCTAssertTrue(error.contains("user \"spout\"") && error.contains("127.0.0.1:\(server.port)") && error.contains("fix the user or password"), error)
        XCTAssertFalse(wrong.stderr.contains(password) || wrong.stdout.contains(password), "the password never shows")
        XCTAssertEqual(wrong.process.terminationStatus, 1)

        let missing = try SpoutProcess(["run", "--sink", server.url, "--amqp-exchange", name("missing")] + outbox.arguments)
        let missingError = missing.waitForFailure(timeout: 30)
        XCTAssertTrue(missingError.contains("does not exist") && missingError.contains("--amqp-declare"), missingError)
    }
}
