import Foundation
import MetricsTestKit
@testable import SpoutCore
import XCTest

/// `--on-poison` and `--max-retries` for events the broker refuses, decided by the delivery
/// engine (the scripted adapter of `DeliveryEngineTests`), and stdout's dead letters on stderr.
final class PoisonEngineTests: XCTestCase {
    typealias ScriptedAdapter = DeliveryEngineTests.ScriptedAdapter

    private var clock: DeliveryEngineTests.FakeClock!
    private var metrics: TestMetrics!
    private var adapter: ScriptedAdapter!
    private var engine: DeliveryEngine!

    private func makeEngine(_ policy: PoisonPolicy, maxRetries: Int? = nil) throws {
        clock = DeliveryEngineTests.FakeClock()
        metrics = TestMetrics()
        adapter = ScriptedAdapter()
        let clock = self.clock!
        engine = try DeliveryEngine(adapter: adapter, capacity: 8, log: Log(level: .error), metrics: metrics,
                                    clock: { clock.now }, random: SeededRandom(seed: 3))
        engine.adopt(policy, maxRetries: maxRetries)
    }

    private func event(_ ticket: UInt64) -> OutboxEvent {
        OutboxEvent(id: "e\(ticket)", topic: "t", key: "k", type: nil, payload: Array("{\"n\":\(ticket)}".utf8), payloadFormat: .json,
                    headers: [], lsn: LSN(0x100), committedAt: PostgresTimestamp(rawValue: 0))
    }

    @discardableResult
    private func poll() throws -> [SinkCompletion] { try engine.completions() }

    func testStopFailsTheEventAndEverythingBehindIt() throws {
        try makeEngine(.stop)
        for ticket: UInt64 in 0..<4 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        adapter.script = [{ $0.delivered(0); $0.fail(1, "too large"); $0.delivered(2); $0.delivered(3) }]
        let completions = try poll()
        XCTAssertEqual(delivered(completions), [0])
        XCTAssertEqual(completions.count, 4, "1 failed, 2 and 3 not published")
    }

    func testSkipAcknowledgesTheRefusedEventAndGoesOn() throws {
        try makeEngine(.skip)
        for ticket: UInt64 in 0..<4 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        adapter.script = [{ $0.delivered(0); $0.fail(1, "too large"); $0.delivered(2) }]
        XCTAssertEqual(delivered(try poll()), [0, 1, 2])
        adapter.script = [{ $0.delivered(3) }]
        XCTAssertEqual(delivered(try poll()), [3])
        try engine.send(event(4), ticket: 4)
        try poll()
        XCTAssertEqual(adapter.sent, [0, 1, 2, 3, 4], "nothing sent twice, the stream goes on")
        XCTAssertEqual(try metrics.expectCounter("spout_events_skipped_total", [("sink", "fake"), ("topic", "t")]).totalValue, 1)
    }

    func testDeadLetterTakesTheTicketAndIsAcknowledgedForIt() throws {
        try makeEngine(.deadLetter(topic: "dlq"))
        for ticket: UInt64 in 0..<4 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        var letter: OutboxEvent?
        adapter.script = [{ engine in
            engine.delivered(0)
            engine.fail(1, "the message is too large")
            letter = engine.event(1)
            engine.delivered(2)
        }]
        XCTAssertEqual(delivered(try poll()), [0, 2], "ticket 1 waits for its dead letter")
        XCTAssertEqual(adapter.sent, [0, 1, 2, 3, 1], "the dead letter went out at once, in ticket 1's place")
        let record = try XCTUnwrap(letter)
        XCTAssertEqual(record.topic, "dlq")
        XCTAssertEqual(record.id, "dead-letter:e1")
        XCTAssertEqual(record.key, "k", "the aggregate's key: its dead letters keep their order")
        XCTAssertEqual(record.source, .deadLetter)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(record.payload)) as? [String: Any])
        XCTAssertEqual(json["id"] as? String, "e1")
        XCTAssertEqual(json["topic"] as? String, "t")
        XCTAssertEqual(json["error"] as? String, "the message is too large")
        XCTAssertEqual(json["lsn"] as? String, LSN(0x100).description)
        let original = try XCTUnwrap(json["event"] as? [String: Any])
        XCTAssertEqual(original["payload"] as? [String: Int], ["n": 1])
        XCTAssertEqual(original["key"] as? String, "k")
        adapter.script = [{ $0.delivered(1); $0.delivered(3) }]
        XCTAssertEqual(delivered(try poll()), [1, 3])
        XCTAssertEqual(try metrics.expectCounter("spout_events_dead_lettered_total", [("sink", "fake"), ("topic", "t")]).totalValue, 1)
    }

    func testARefusedDeadLetterStopsTheSink() throws {
        try makeEngine(.deadLetter(topic: "dlq"))
        for ticket: UInt64 in 0..<3 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        adapter.script = [{ $0.delivered(0); $0.fail(1, "too large") }]
        try poll()
        adapter.script = [{ $0.fail(1, "no such stream") }]
        let completions = try poll()
        guard case let .failed(ticket, error)? = completions.first else { return XCTFail("\(completions)") }
        XCTAssertEqual(ticket, 1)
        XCTAssertTrue(error.message.contains("no such stream"))
        XCTAssertTrue(engine.isStopped)
    }

    func testMaxRetriesMakesARepeatedlyRefusedEventPoison() throws {
        try makeEngine(.skip, maxRetries: 2)
        try engine.send(event(0), ticket: 0)
        try poll()
        for attempt in 1...2 {
            adapter.script = [{ $0.refusedTransiently(0, reason: "OOM", warning: "Redis is out of memory") }]
            XCTAssertEqual(delivered(try poll()), [], "retry \(attempt)")
            clock.advance(.seconds(10))
            try poll()
        }
        XCTAssertEqual(adapter.sent, [0, 0, 0])
        // An outage in between sends it again too, and does not count.
        adapter.script = [{ $0.retry(after: "connection refused", warning: "Redis is down") }]
        try poll()
        clock.advance(.seconds(10))
        try poll()
        XCTAssertEqual(adapter.sent, [0, 0, 0, 0])
        adapter.script = [{ $0.refusedTransiently(0, reason: "OOM", warning: "Redis is out of memory") }]
        XCTAssertEqual(delivered(try poll()), [0], "a third refusal: poison, skipped")
    }

    func testWithoutMaxRetriesARefusalIsRetriedForEver() throws {
        try makeEngine(.skip)
        try engine.send(event(0), ticket: 0)
        try poll()
        for _ in 1...20 {
            adapter.script = [{ $0.refusedTransiently(0, reason: "OOM", warning: "Redis is out of memory") }]
            XCTAssertEqual(delivered(try poll()), [])
            clock.advance(.seconds(10))
            try poll()
        }
        XCTAssertEqual(adapter.sent.count, 21)
    }

    func testStdoutWritesDeadLettersToItsErrorDescriptorAndAcknowledgesThem() throws {
        var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&out), 0)
        XCTAssertEqual(pipe(&err), 0)
        defer { for fd in out + err { close(fd) } }
        let sink = StdoutSink(descriptor: out[1], deadLetterDescriptor: err[1])
        let letter = DeadLetter.event(refused: event(1), error: "boom", topic: "dlq")
        // The spooled path: encoded before the commit, sent after it.
        for (ticket, item) in [event(0), letter, event(2)].enumerated() {
            var record: [UInt8] = []
            sink.encode(item, into: &record)
            try record.withUnsafeBytes { try sink.send(encoded: $0, commitLSN: LSN(0x200), ticket: UInt64(ticket)) }
        }
        var acknowledged: [UInt64] = []
        try sink.poll { if case let .delivered(ticket) = $0 { acknowledged.append(ticket) } }
        XCTAssertEqual(acknowledged, [0, 1, 2])
        var buffer = [UInt8](repeating: 0, count: 65536)
        let outCount = read(out[0], &buffer, buffer.count)
        let lines = String(decoding: buffer[..<max(0, outCount)], as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 2, "only the good events on stdout")
        let errCount = read(err[0], &buffer, buffer.count)
        let errText = String(decoding: buffer[..<max(0, errCount)], as: UTF8.self)
        XCTAssertTrue(errText.hasSuffix("\n"))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(errText.utf8)) as? [String: Any])
        XCTAssertEqual(json["id"] as? String, "e1")
        XCTAssertEqual(json["error"] as? String, "boom")
    }
}
