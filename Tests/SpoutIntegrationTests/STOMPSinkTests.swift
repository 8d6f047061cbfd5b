import Foundation
import SpoutCore
import XCTest

/// The STOMP sink against RabbitMQ's STOMP plugin (scripts/rabbitmq-start, one server for the
/// class), through the `spout` executable; messages read back with stomp.py from durable
/// queues declared before spout publishes.
final class STOMPSinkTests: XCTestCase {
    nonisolated(unsafe) private static var shared: RabbitMQServer?
    nonisolated(unsafe) private static var startError: Error?

    override class func setUp() {
        super.setUp()
        do { shared = try RabbitMQServer("stomp-tests") } catch { startError = error }
    }

    override class func tearDown() {
        shared?.remove()
        shared = nil
        super.tearDown()
    }

    /// A durable queue declared first, an outbox, and spout streaming it to that queue.
    private func startSpout(_ server: RabbitMQServer, _ prefix: String, extra: [String] = []) throws -> (String, OutboxFixture, SpoutProcess) {
        let queue = TestDatabase.uniqueName("q")
        try STOMPConsumer.declare(server, queue: queue)
        let outbox = try OutboxFixture(prefix)
        let spout = try SpoutProcess(["run", "--sink", server.stompURL, "--stomp-destination", "/queue/\(queue)"] + extra + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        return (queue, outbox, spout)
    }

    /// `more` transactions more, then the writer stops; the slot confirms all, spout exits 0 on SIGTERM.
    private func finish(_ spout: SpoutProcess, _ outbox: OutboxFixture, writer: OutboxWriter, more: Int) throws {
        writer.waitForMore(more)
        try writer.stop()
        let written = try outbox.currentLSN()
        try eventually(timeout: 120, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
    }

    private func server() throws -> RabbitMQServer {
        _ = try STOMPConsumer.pythonPath
        if let startError = Self.startError { throw startError }
        return try XCTUnwrap(Self.shared)
    }

    /// 1,000 events and one with awkward headers arrive once each, in commit order, with
    /// spout's headers and the row's (escaped on the wire, as they were in the row); a row
    /// header that would steer the frame is left out with one warning. The slot confirms them.
    func testEventsArriveInOrderWithHeaders() throws {
        let server = try server()
        let (queue, outbox, spout) = try startSpout(server, "stomp")
        defer { outbox.tearDown() }

        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 100, rows: 10)
        let special = try XCTUnwrap(try outbox.admin.value("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, headers)
            VALUES ('special', 'key:with:colons', 'Odd', '"text"',
                    '{"colon:name": "a:b", "multi": "line1\\nline2\\r", "back": "x\\\\y", "destination": "/queue/elsewhere"}')
            RETURNING id
            """))
        let written = try outbox.currentLSN()
        try eventually(timeout: 60, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try STOMPConsumer.drain(server, queue: queue, distinct: 1_001)
        XCTAssertEqual(messages.compactMap(\.id), writer.ids + [special], "each event once, in commit order")
        XCTAssertEqual(messages.prefix(1_000).compactMap(\.seq), Array(0..<1_000))
        let first = try XCTUnwrap(messages.first)
        XCTAssertEqual(first.headers["spout-key"], "k0")
        XCTAssertEqual(first.headers["spout-event-type"], "Created")
        XCTAssertEqual(first.headers["h"], "v", "the row's headers")
        XCTAssertEqual(first.headers["content-type"], "application/json")
        XCTAssertEqual(first.headers["persistent"], "true")
        let odd = try XCTUnwrap(messages.last)
        XCTAssertEqual(odd.headers["spout-key"], "key:with:colons")
        XCTAssertEqual(odd.headers["colon:name"], "a:b")
        XCTAssertEqual(odd.headers["multi"], "line1\nline2\r")
        XCTAssertEqual(odd.headers["back"], "x\\y")
        XCTAssertEqual(odd.headers["destination"], "/queue/\(queue)", "a row header cannot steer the frame")
        XCTAssertEqual(odd.body, "\"text\"", "payload as stored")
        XCTAssertEqual(spout.stderr.components(separatedBy: "is not passed to STOMP").count - 1, 1, spout.stderr)
    }

    /// SIGKILL of spout in the middle of a stream, then a restart: every event arrives at least
    /// once, and per key in commit order. The writer runs until after the kill.
    func testSpoutCrashAndRestartDeliversEverythingInOrder() throws {
        let server = try server()
        let queue = TestDatabase.uniqueName("q")
        try STOMPConsumer.declare(server, queue: queue)
        let outbox = try OutboxFixture("stompcrash")
        defer { outbox.tearDown() }
        let arguments = ["run", "--sink", server.stompURL, "--stomp-destination", "/queue/\(queue)"] + outbox.arguments

        let first = try SpoutProcess(arguments + ["--max-in-flight", "50"])
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 10, pause: 2_000)
        try writer.waitUntilConfirmed(80, outbox)
        // Frozen, then killed: the crash happens at one instant the test chose.
        first.signal(SIGSTOP)
        first.signal(SIGKILL)
        first.waitForExit()
        let confirmedAtCrash = try XCTUnwrap(try outbox.confirmedFlush)
        writer.waitForMore(30)
        try writer.stop()
        let last = try XCTUnwrap(writer.transactions.last).after
        XCTAssertLessThan(confirmedAtCrash, last, "the restart had unconfirmed events to publish again")

        let second = try SpoutProcess(arguments)
        try eventually(timeout: 90, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)

        assertAllArrivedInOrder(try STOMPConsumer.drain(server, queue: queue, distinct: writer.ids.count), writer: writer)
    }

    /// RabbitMQ stopped and started again while events flow: nothing is lost, per-key order
    /// holds, the slot does not confirm what was written while it was down, and spout logs
    /// one warning and one recovery line.
    func testBrokerRestartLosesNothing() throws {
        let server = try server()
        let (queue, outbox, spout) = try startSpout(server, "stomprestart")
        defer { outbox.tearDown() }

        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        try writer.waitUntilConfirmed(50, outbox)
        server.stop()
        eventually(timeout: 60, "spout notices the broker is gone") { spout.stderr.contains("STOMP server at") }

        // Written while the broker is down: the slot must stay before it.
        let marker = try OutboxFixture.Marker(outbox)
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), marker.before, "confirmed past an event the broker never had")
        XCTAssertTrue(spout.process.isRunning, "spout waits for the broker instead of failing: \(spout.stderr)")

        try server.start()
        try finish(spout, outbox, writer: writer, more: 50)

        let messages = try STOMPConsumer.drain(server, queue: queue, distinct: writer.ids.count + marker.ids.count)
        assertAllArrivedInOrder(messages, writer: writer)
        XCTAssertEqual(Set(messages.compactMap(\.id)).intersection(marker.ids).count, marker.ids.count, "the events written during the outage")
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("STOMP server at") && !$0.contains("accepts events again") }
        XCTAssertEqual(warnings.count, 1, "one warning per outage: \(spout.stderr)")
        XCTAssertTrue(spout.stderr.contains("accepts events again"), spout.stderr)
    }

    /// A row whose destination RabbitMQ refuses (no such exchange) among good ones, in the
    /// middle of a transaction of 101 (so that many events are on the wire when RabbitMQ
    /// refuses it): topic = the row's aggregate_type, the destination template = the topic.
    private func refusedDestination(policy: String, extra: [String] = []) throws -> (spout: SpoutProcess, outbox: OutboxFixture, server: RabbitMQServer, queue: String,
                                                                 before: [String], after: [String], badCommit: LSN) {
        let server = try server()
        let queue = TestDatabase.uniqueName("q")
        try STOMPConsumer.declare(server, queue: queue)
        let outbox = try OutboxFixture("stomppoison")
        let spout = try SpoutProcess(["run", "--sink", server.stompURL, "--topic", "{aggregate_type}", "--stomp-destination", "{topic}",
                                      "--on-poison", policy] + extra + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let witness = try CommitWitness(outbox)
        var before: [String] = []
        for _ in 0..<5 { before += try outbox.insert(outbox.admin, rows: 1, aggregate: "/queue/\(queue)") }
        var after: [String] = []
        let (_, xid) = try CommitWitness.transaction(outbox.admin) {
            before += try outbox.insert(outbox.admin, rows: 50, aggregate: "/queue/\(queue)")
            try outbox.insert(outbox.admin, rows: 1, aggregate: "/exchange/no-such-exchange")
            after += try outbox.insert(outbox.admin, rows: 50, aggregate: "/queue/\(queue)")
        }
        for _ in 0..<5 { after += try outbox.insert(outbox.admin, rows: 1, aggregate: "/queue/\(queue)") }
        return (spout, outbox, server, queue, before, after, try witness.commitLSN(xid: xid))
    }

    /// `--on-poison stop`: spout stops with one error line naming the refusal; the events
    /// before it arrived and the slot stays before the refused one.
    func testRefusedDestinationStops() throws {
        let run = try refusedDestination(policy: "stop")
        defer { run.outbox.tearDown() }
        XCTAssertNotEqual(run.spout.waitForExit(timeout: 60) ?? 0, 0, run.spout.stderr)
        // Not waitForFailure: the warning that quotes RabbitMQ's "Processing error" holds "error" too.
        let errors = run.spout.stderr.split(separator: "\n").filter { $0.hasPrefix("spout: error:") }
        XCTAssertEqual(errors.count, 1, run.spout.stderr)
        let line = String(errors.first ?? "")
        XCTAssertTrue(line.contains("no-such-exchange"), line)
        XCTAssertTrue(line.contains("refused"), line)
        XCTAssertLessThan(try XCTUnwrap(try run.outbox.confirmedFlush), run.badCommit, "the refused event is not confirmed")
        let messages = try STOMPConsumer.drain(run.server, queue: run.queue, distinct: run.before.count)
        XCTAssertEqual(Array(firstArrivals(messages).prefix(run.before.count)), run.before, "the events before the refused one, in order")
    }

    /// `--on-poison skip`: the refused event is skipped with a warning, every other one
    /// arrives in order, and the slot confirms past it.
    func testRefusedDestinationIsSkipped() throws {
        let run = try refusedDestination(policy: "skip")
        defer { run.outbox.tearDown() }
        let written = try run.outbox.currentLSN()
        try eventually(timeout: 60, "the slot confirms past the skipped event") { try XCTUnwrap(try run.outbox.confirmedFlush) >= written }
        run.spout.signal(SIGTERM)
        XCTAssertEqual(run.spout.waitForExit(), 0, run.spout.stderr)
        XCTAssertTrue(run.spout.stderr.contains("skipped event"), run.spout.stderr)
        XCTAssertTrue(run.spout.stderr.contains("no-such-exchange"), run.spout.stderr)
        let messages = try STOMPConsumer.drain(run.server, queue: run.queue, distinct: run.before.count + run.after.count)
        XCTAssertEqual(firstArrivals(messages), run.before + run.after, "all good events, in order")
    }

    /// `--on-poison dead-letter`: the refused event's dead letter goes to the dead-letter
    /// destination (the template renders its topic), marked `spout-source: dead-letter`.
    func testRefusedDestinationIsDeadLettered() throws {
        let dlq = TestDatabase.uniqueName("dlq")
        let run = try refusedDestination(policy: "dead-letter", extra: ["--dead-letter-topic", "/queue/\(dlq)"])
        defer { run.outbox.tearDown() }
        let written = try run.outbox.currentLSN()
        try eventually(timeout: 60, "the slot confirms past the dead-lettered event") { try XCTUnwrap(try run.outbox.confirmedFlush) >= written }
        run.spout.signal(SIGTERM)
        XCTAssertEqual(run.spout.waitForExit(), 0, run.spout.stderr)
        let letters = try STOMPConsumer.drain(run.server, queue: dlq, distinct: 1)
        let letter = try XCTUnwrap(letters.first)
        XCTAssertEqual(letter.headers["spout-source"], "dead-letter")
        XCTAssertTrue(letter.body.contains("no-such-exchange"), letter.body)
        let messages = try STOMPConsumer.drain(run.server, queue: run.queue, distinct: run.before.count + run.after.count)
        XCTAssertEqual(firstArrivals(messages), run.before + run.after)
    }

    /// RabbitMQ frozen (SIGSTOP) while events flow: its heart-beats stop, spout gives the
    /// connection up after twice the interval, reconnects once it answers again, and every
    /// event arrives, in order.
    func testHungBrokerIsDetectedByHeartBeats() throws {
        let server = try server()
        let (queue, outbox, spout) = try startSpout(server, "stomphung")
        defer { outbox.tearDown() }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 20_000)
        try writer.waitUntilConfirmed(20, outbox)
        server.pause()
        let marker = try OutboxFixture.Marker(outbox)
        eventually(timeout: 60, "spout gives up the silent connection") { spout.stderr.contains("twice its heart-beat interval") || spout.stderr.contains("no RECEIPT within") }
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), marker.before, "confirmed past an event the broker never acknowledged")
        server.resume()

        try finish(spout, outbox, writer: writer, more: 20)
        let messages = try STOMPConsumer.drain(server, queue: queue, distinct: writer.ids.count + marker.ids.count)
        assertAllArrivedInOrder(messages, writer: writer)
        XCTAssertEqual(Set(messages.compactMap(\.id)).intersection(marker.ids).count, marker.ids.count)
    }

    /// A destination placeholder the event has no value for (no such header) makes the
    /// event poison: with `--on-poison stop`, one error naming the placeholder.
    func testDestinationWithoutValueIsPoison() throws {
        let server = try server()
        let outbox = try OutboxFixture("stompnovalue")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.stompURL, "--stomp-destination", "/queue/{tenant}"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        // The commit's own LSN: other WAL (a running-xacts record) may come before it, and
        // confirming that is right, so "before the insert" would be too strict a bound.
        let witness = try CommitWitness(outbox)
        let (_, xid) = try CommitWitness.transaction(outbox.admin) { try outbox.insert(outbox.admin, rows: 1) }
        let line = spout.waitForFailure(timeout: 30)
        XCTAssertTrue(line.contains("has no header \"tenant\" for {tenant}"), line)
        XCTAssertTrue(line.contains("--stomp-destination /queue/{tenant}"), line)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: xid), "the poison event is not confirmed")
    }

    /// A wrong password stops spout at once with one error naming the user and the server,
    /// never the password.
    func testWrongPasswordIsAClearError() throws {
        let server = try server()
        let outbox = try OutboxFixture("stompauth")
        defer { outbox.tearDown() }
        let url = server.stompURL.replacingOccurrences(of: "spout-test-secret", with: "wrong-pw-4711")
        let spout = try SpoutProcess(["run", "--sink", url] + outbox.arguments)
        let line = spout.waitForFailure(timeout: 30)
        XCTAssertTrue(line.contains("user \"spout\""), line)
        XCTAssertTrue(line.contains("127.0.0.1:\(server.stompPort)"), line)
        XCTAssertFalse(spout.stderr.contains("wrong-pw-4711") || spout.stdout.contains("wrong-pw-4711"), spout.stderr)
    }
}
