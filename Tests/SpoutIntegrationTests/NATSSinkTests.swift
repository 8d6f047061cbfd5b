import Foundation
import SpoutCore
@testable import SpoutNATS
import SpoutSinks
import XCTest

/// The NATS JetStream sink against real `nats-server -js` processes, through the `spout` executable.
final class NATSSinkTests: XCTestCase {
    /// Events on two subjects arrive once each with id, key, type and the event's headers;
    /// odd header names and values are made NATS-safe (no control character reaches the wire)
    /// and Nats-* event headers are not passed.
    func testEveryEventArrivesOnceWithHeaders() throws {
        let server = try NATSServer()
        let client = try JetStreamTestClient(server.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try OutboxFixture("nats")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 200, rows: 1)
        try writer.write(transactions: 50, rows: 10, aggregate: "invoice")
        try writer.write(transactions: 2, rows: 500)
        let special = try XCTUnwrap(try outbox.admin.value("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, headers)
            VALUES ('special', 'key with space' || chr(27) || '[2J', 'O' || chr(127) || 'dd', '"text"',
                    '{"traceparent": "00-abc-01", "two words": "x", "multi": "line1\\r\\nline2", "Nats-Rollup": "all",
                      "ctl": "a\\u001b]0;title\\u0007b\\tc\\u0085d", "esc\\u001bname": "1"}')
            RETURNING id
            """))
        let written = try outbox.currentLSN()

        eventually(timeout: 60, "1,701 events in the stream, got \(client.count("OUTBOX"))") { client.count("OUTBOX") >= 1_701 }
        try eventually("the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try client.messages("OUTBOX")
        XCTAssertEqual(messages.count, 1_701)
        let specialMessage = try XCTUnwrap(messages.first { $0.header("Nats-Msg-Id") == special })
        XCTAssertEqual(specialMessage.subject, "outbox.event.special")
        XCTAssertEqual(specialMessage.header(NATSJetStreamSink.keyHeader), "key with space [2J", "control characters in the key become spaces")
        XCTAssertEqual(specialMessage.header(NATSJetStreamSink.typeHeader), "O dd")
        XCTAssertEqual(specialMessage.header("traceparent"), "00-abc-01")
        XCTAssertEqual(specialMessage.header("two_words"), "x", "invalid header name characters become _")
        XCTAssertEqual(specialMessage.header("multi"), "line1 line2", "line breaks in header values become spaces")
        XCTAssertEqual(specialMessage.header("ctl"), "a ]0;title b c d", "control characters in header values become spaces")
        XCTAssertEqual(specialMessage.header("esc_name"), "1", "control characters in header names become _")
        XCTAssertNil(specialMessage.header("Nats-Rollup"), "event headers cannot steer the server")
        XCTAssertEqual(String(decoding: specialMessage.data, as: UTF8.self), "\"text\"", "payload as stored")
        XCTAssertEqual(spout.stderr.components(separatedBy: "Nats-").count - 1, 1, "one warning about the Nats-* header: \(spout.stderr)")

        assertStoredOnceInOrder(messages.filter { $0.subject != "outbox.event.special" }, ids: writer.ids)
        XCTAssertEqual(Set(messages.map(\.subject)), ["outbox.event.order", "outbox.event.invoice", "outbox.event.special"])
    }

    /// SIGKILL of spout in the middle of a stream, then a restart: the re-published events
    /// that had landed are dropped by the stream (Nats-Msg-Id), so each event is stored once.
    /// The writer runs until after the kill, so spout dies mid-stream by construction.
    func testSpoutCrashAndRestartStoresEachEventOnce() throws {
        let server = try NATSServer()
        let client = try JetStreamTestClient(server.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try OutboxFixture("natscrash")
        defer { outbox.tearDown() }

        let first = try SpoutProcess(["run", "--sink", server.url, "--max-in-flight", "50"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 10, pause: 2_000)
        eventually("first run delivered some events") { client.count("OUTBOX") >= 800 }
        // Frozen, then killed: the crash happens at one instant the test chose.
        first.signal(SIGSTOP)
        first.signal(SIGKILL)
        first.waitForExit()
        let confirmedAtCrash = try XCTUnwrap(try outbox.confirmedFlush)
        // Events the first run never saw: the second run has work whatever the first got to.
        writer.waitForMore(30)
        try writer.stop()
        let last = try XCTUnwrap(writer.transactions.last).after
        XCTAssertLessThan(client.count("OUTBOX"), UInt64(writer.ids.count), "spout died mid-stream")
        XCTAssertLessThan(confirmedAtCrash, last, "the restart had unconfirmed events to publish again")

        let second = try SpoutProcess(["run", "--sink", server.url] + outbox.arguments)
        eventually(timeout: 60, "\(writer.ids.count) events, got \(client.count("OUTBOX"))") { client.count("OUTBOX") >= UInt64(writer.ids.count) }
        try eventually("the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)

        assertStoredOnceInOrder(try client.messages("OUTBOX"), ids: writer.ids)
    }

    /// nats-server SIGKILLed and restarted on the same port and store while events flow:
    /// nothing is lost or stored twice, per-key order holds, spout warns once, and while the
    /// server is down the slot does not confirm events written meanwhile.
    func testServerRestartLosesNothingAndHoldsTheSlot() throws {
        let server = try NATSServer()
        let client = try JetStreamTestClient(server.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try OutboxFixture("natsrestart")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        // Writes until told: the server dies while events are still being written.
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 3_000)
        eventually("events flowing") { client.count("OUTBOX") >= 500 }
        // Stopped first, so that publishes sent meanwhile sit in its socket buffer and die
        // with it: those must be published again, in order.
        server.pause()
        usleep(500_000)
        server.kill()

        // Written while the server is down: it cannot have been delivered, so the slot must stay before it.
        let marker = try OutboxFixture.Marker(outbox)
        let outageEnd = Date().addingTimeInterval(3)
        var highest = LSN.zero
        while Date() < outageEnd {
            highest = max(highest, try XCTUnwrap(try outbox.confirmedFlush))
            usleep(100_000)
        }
        XCTAssertLessThanOrEqual(highest, marker.before, "confirmed past an event the broker never had")
        XCTAssertTrue(spout.process.isRunning, "spout waits for the broker instead of failing: \(spout.stderr)")
        XCTAssertTrue(try outbox.slotIsActive)

        try server.start()
        writer.waitForMore(50)
        try writer.stop()
        let total = writer.ids.count + marker.ids.count
        let written = try outbox.currentLSN()
        eventually(timeout: 90, "\(total) events after the restart, got \(client.count("OUTBOX"))") { client.count("OUTBOX") >= UInt64(total) }
        try eventually("the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try client.messages("OUTBOX")
        assertStoredOnceInOrder(messages.filter { $0.header(NATSJetStreamSink.keyHeader) != "marker" }, ids: writer.ids)
        XCTAssertEqual(Set(messages.filter { $0.header(NATSJetStreamSink.keyHeader) == "marker" }.compactMap { $0.header("Nats-Msg-Id") }),
                       Set(marker.ids))
        let outageWarnings = spout.stderr.split(separator: "\n").filter { $0.contains("is unavailable") }
        XCTAssertEqual(outageWarnings.count, 1, "one warning per outage: \(spout.stderr)")
        XCTAssertTrue(spout.stderr.contains("is back after"), spout.stderr)
    }

    /// nats-server stops answering (SIGSTOP) for longer than the PubAck timeout, then
    /// continues: spout gives up the connection, re-publishes in order on a new one, and the
    /// stream drops what the old connection delivered late. Each event once, in order.
    func testHungServerTimesOutAndRecovers() throws {
        let server = try NATSServer()
        let client = try JetStreamTestClient(server.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let outbox = try OutboxFixture("natshung")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        // Writes until told: events are in flight when the server stops answering.
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 20_000)
        eventually("events flowing") { client.count("OUTBOX") >= 300 }
        server.pause()
        let marker = try OutboxFixture.Marker(outbox)
        eventually(timeout: 30, "a warning that NATS stopped answering") { spout.stderr.contains("is unavailable") }
        XCTAssertLessThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), marker.before, "confirmed past an event the broker never acknowledged")
        server.resume()

        writer.waitForMore(20)
        try writer.stop()
        let total = writer.ids.count + marker.ids.count
        let written = try outbox.currentLSN()
        eventually(timeout: 90, "\(total) events after the server continued, got \(client.count("OUTBOX"))") { client.count("OUTBOX") >= UInt64(total) }
        try eventually("the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let messages = try client.messages("OUTBOX")
        assertStoredOnceInOrder(messages.filter { $0.header(NATSJetStreamSink.keyHeader) != "marker" }, ids: writer.ids)
        XCTAssertEqual(messages.filter { $0.header(NATSJetStreamSink.keyHeader) == "marker" }.count, marker.ids.count)
    }

    /// No stream captures the topic: spout stops with one error line that names the subject
    /// and says how to create the stream, and does not confirm the event.
    func testMissingStreamStopsWithOneClearError() throws {
        let server = try NATSServer()
        let outbox = try OutboxFixture("natsmissing")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let witness = try CommitWitness(outbox)
        let (_, xid) = try CommitWitness.transaction(outbox.admin) { try outbox.insert(outbox.admin, rows: 5) }

        // At once: the events behind the failed one are never sent, so there is nothing to
        // wait for (the default shutdown timeout is 30 s).
        let line = spout.waitForFailure(timeout: 10)
        XCTAssertTrue(line.contains("\"outbox.event.order\""), line)
        XCTAssertTrue(line.contains("nats stream add"), line)
        XCTAssertTrue(line.contains("--subjects 'outbox.event.>'"), line)
        XCTAssertTrue(line.contains("--nats-create-stream"), line)
        // The idle slot may have followed the WAL into the transaction, never to its commit end.
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: xid), "the event is not confirmed")
    }

    /// `--nats-create-stream` creates a file-storage stream for the first topic and adds
    /// later topics to it. The server is not running when spout starts: spout waits for it.
    func testCreateStreamOptionAndBrokerStartingLate() throws {
        let server = try NATSServer(startNow: false)
        let outbox = try OutboxFixture("natscreate")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url, "--nats-create-stream", "SPOUT_EVENTS"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        eventually("a warning that NATS is unreachable") { spout.stderr.contains("is unavailable") }
        let writer = try OutboxWriter(outbox)
        let witness = try CommitWitness(outbox)
        let (_, xid) = try CommitWitness.transaction(writer.connection) { try writer.write(transactions: 1, rows: 5) }
        usleep(1_000_000)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: xid), "nothing confirmed while NATS is down")
        XCTAssertTrue(spout.process.isRunning, spout.stderr)
        try server.start()
        try writer.write(transactions: 1, rows: 5, aggregate: "invoice")

        let client = try JetStreamTestClient(server.url)
        eventually("10 events in SPOUT_EVENTS") { client.count("SPOUT_EVENTS") >= 10 }
        let stream = try XCTUnwrap(try client.stream("SPOUT_EVENTS"))
        XCTAssertEqual(Set(stream.subjects), ["outbox.event.order", "outbox.event.invoice"])
        XCTAssertTrue(stream.fileStorage)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        assertStoredOnceInOrder(try client.messages("SPOUT_EVENTS"), ids: writer.ids)
        XCTAssertTrue(spout.stderr.contains("created JetStream stream SPOUT_EVENTS"), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("added subject outbox.event.invoice"), spout.stderr)
    }

    /// The stream is deleted while spout runs: the next publishes get "no responders", spout
    /// looks the stream up again, creates it (--nats-create-stream) and re-publishes; the new
    /// stream holds every event written after the deletion, once and in order.
    func testStreamDeletedWhileRunningIsCreatedAgain() throws {
        let server = try NATSServer()
        let outbox = try OutboxFixture("natsdeleted")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", server.url, "--nats-create-stream", "AGAIN"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 1, rows: 5)
        let client = try JetStreamTestClient(server.url)
        eventually("5 events in AGAIN") { client.count("AGAIN") == 5 }
        try client.deleteStream("AGAIN")
        try writer.write(transactions: 2, rows: 5)
        eventually("the 10 later events in a new AGAIN") { client.count("AGAIN") >= 10 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        assertStoredOnceInOrder(try client.messages("AGAIN"), ids: Array(writer.ids.suffix(10)))
        XCTAssertTrue(spout.stderr.contains("no JetStream stream answered a publish"), spout.stderr)
        XCTAssertEqual(spout.stderr.components(separatedBy: "created JetStream stream AGAIN").count - 1, 2, spout.stderr)
    }

    /// nats://user:password@host with a server list whose first server is down; a wrong
    /// password is a clear startup error that does not show the password; bad URLs are
    /// rejected before connecting.
    func testCredentialsServerListAndBadURLs() throws {
        for bad in ["nats://", "nats://host:notaport", "nats://host:70000", "nats://h1,h2:1,", "nats://a/b", "nats://:pw@host"] {
            XCTAssertThrowsError(try SinkRegistry.makeSink(bad), bad) { error in
                guard case SpoutError.invalidOption = error else { return XCTFail("\(bad): \(error)") }
            }
        }
        XCTAssertThrowsError(try SinkRegistry.makeSink("nats://user:hunter2@host:x")) { error in
            XCTAssertFalse("\(error)".contains("hunter2"), "\(error)")
        }

        let server = try NATSServer(extraArguments: ["--user", "spout", "--pass", "s3cret-pw"])
        let unused = try NATSServer(startNow: false)
        let outbox = try OutboxFixture("natsauth")
        defer { outbox.tearDown() }

        let rejected = try SpoutProcess(["run", "--sink", "nats://spout:wrong-pw@127.0.0.1:\(server.port)"] + outbox.arguments)
        XCTAssertNotEqual(rejected.waitForExit(timeout: 30), 0)
        XCTAssertTrue(rejected.stderr.contains("rejected the credentials"), rejected.stderr)
        XCTAssertFalse(rejected.stderr.contains("wrong-pw"), rejected.stderr)

        let url = "nats://spout:s3cret-pw@127.0.0.1:\(unused.port),127.0.0.1:\(server.port)"
        let spout = try SpoutProcess(["run", "--sink", url, "--nats-create-stream", "AUTH"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 3, rows: 1)
        let client = try JetStreamTestClient("nats://spout:s3cret-pw@127.0.0.1:\(server.port)")
        eventually("3 events in AUTH") { client.count("AUTH") >= 3 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertFalse(spout.stderr.contains("s3cret-pw"), spout.stderr)
        assertStoredOnceInOrder(try client.messages("AUTH"), ids: writer.ids)
    }
}

extension OutboxFixture {
    /// Ten events with key `marker`, and the WAL position just before them.
    struct Marker {
        let before: LSN
        let ids: [String]

        init(_ outbox: OutboxFixture) throws {
            let connection = try TestDatabase.connect()
            before = try outbox.currentLSN()
            ids = try outbox.insert(connection, rows: 10, key: { _ in "marker" }, payload: { "{\"seq\": \($0)}" })
        }
    }
}
