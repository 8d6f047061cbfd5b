import Foundation
import MetricsTestKit
import Synchronization
import XCTest
@testable import SpoutCore

/// The delivery engine driven through `Sink` with a scripted adapter, an injected clock and
/// seeded jitter: ordering across retries, one outage per run of failures, completions
/// reported once, permanent failures stop the sink, and the metrics.
final class DeliveryEngineTests: XCTestCase {
    final class FakeClock: Sendable {
        private let instant = Mutex(ContinuousClock.now)
        var now: ContinuousClock.Instant { instant.withLock { $0 } }
        func advance(_ duration: Duration) { instant.withLock { $0 += duration } }
    }

    /// Sends every waiting event on `advance`; the test decides what the broker answers.
    final class ScriptedAdapter: DeliveryAdapter {
        var sinkName: String { "fake" }
        var recoveredMessage: String { "fake broker accepts events again" }
        var needsCommitLSN: Bool { false }
        var connected = true
        /// Tickets in the order they were sent, retries included.
        var sent: [UInt64] = []
        /// What the broker does on the next advance.
        var script: [(DeliveryEngine) -> Void] = []
        var closed = false

        func start(_ engine: DeliveryEngine) throws(SpoutError) {}

        func advance(_ engine: DeliveryEngine) throws(SinkError) {
            for step in script { step(engine) }
            script.removeAll()
            guard connected, !engine.isBackingOff, !engine.isStopped else { return }
            while let entry = engine.nextWaiting() {
                sent.append(entry.ticket)
                engine.markSent(entry.ticket)
            }
        }

        func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? { nil }

        func close(_ engine: DeliveryEngine) { closed = true }
    }

    private var clock: FakeClock!
    private var metrics: TestMetrics!
    private var adapter: ScriptedAdapter!
    private var engine: DeliveryEngine!

    override func setUpWithError() throws {
        clock = FakeClock()
        metrics = TestMetrics()
        adapter = ScriptedAdapter()
        let clock = self.clock!
        engine = try DeliveryEngine(adapter: adapter, capacity: 8, log: Log(level: .error), metrics: metrics,
                                    clock: { clock.now }, random: SeededRandom(seed: 3))
    }

    private func event(_ ticket: UInt64) -> OutboxEvent {
        OutboxEvent(id: "e\(ticket)", topic: "t", key: nil, type: nil, payload: [], payloadFormat: .json, headers: [],
                    lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))
    }

    @discardableResult
    private func poll() throws -> [SinkCompletion] { try engine.completions() }

    func testRetryResendsUnacknowledgedInOrderAfterBackoff() throws {
        for ticket: UInt64 in 0..<5 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        XCTAssertEqual(adapter.sent, [0, 1, 2, 3, 4])
        adapter.script = [{ $0.delivered(1) }, { $0.delivered(0) },
                          { $0.retry(after: "connection lost", warning: "fake broker is gone") }]
        XCTAssertEqual(delivered(try poll()), [1, 0], "reported as acknowledged, in any order")
        XCTAssertTrue(engine.isBackingOff)
        XCTAssertTrue(engine.inOutage)
        try engine.send(event(5), ticket: 5)
        try poll()
        XCTAssertEqual(adapter.sent.count, 5, "nothing goes out during the backoff")
        clock.advance(.milliseconds(100)) // the first backoff is at most 100 ms
        try poll()
        XCTAssertEqual(adapter.sent.dropFirst(5), [2, 3, 4, 5], "the oldest unacknowledged first, then the new one")
        XCTAssertEqual(engine.entry(2)?.attempts, 2)
        adapter.script = [{ for ticket: UInt64 in 2...5 { $0.delivered(ticket) } }]
        XCTAssertEqual(delivered(try poll()), [2, 3, 4, 5])
        XCTAssertFalse(engine.inOutage)
        XCTAssertTrue(engine.queue.isEmpty)
        XCTAssertEqual(try metrics.expectCounter("spout_sink_outages_total", [("sink", "fake")]).totalValue, 1)
        XCTAssertEqual(try metrics.expectCounter("spout_sink_retries_total", [("sink", "fake")]).totalValue, 1)
        XCTAssertEqual(try metrics.expectGauge("spout_sink_outage_seconds", [("sink", "fake")]).lastValue, 0)
    }

    func testFailuresInARowAreOneOutageWithGrowingBackoff() throws {
        try engine.send(event(0), ticket: 0)
        adapter.connected = false
        var waits: [Duration] = []
        for _ in 0..<6 {
            adapter.script = [{ $0.retry(after: "refused", warning: "cannot connect") }]
            try poll()
            var waited = Duration.zero
            while engine.isBackingOff {
                clock.advance(.milliseconds(10))
                waited += .milliseconds(10)
            }
            waits.append(waited)
        }
        XCTAssertGreaterThan(waits.last!, waits.first!)
        XCTAssertLessThanOrEqual(waits.last!, .seconds(5) + .milliseconds(10))
        XCTAssertEqual(try metrics.expectCounter("spout_sink_outages_total", [("sink", "fake")]).totalValue, 1, "one outage")
        XCTAssertEqual(try metrics.expectCounter("spout_sink_retries_total", [("sink", "fake")]).totalValue, 6)
        let seconds = try metrics.expectGauge("spout_sink_outage_seconds", [("sink", "fake")])
        XCTAssertGreaterThan(seconds.lastValue ?? 0, 0.5, "the gauge follows the current outage")

        // Back: a handshake with an event outstanding does not end the outage, its acknowledgement does.
        adapter.connected = true
        adapter.script = [{ $0.reachable() }]
        try poll()
        XCTAssertTrue(engine.inOutage)
        adapter.script = [{ $0.delivered(0) }]
        XCTAssertEqual(delivered(try poll()), [0])
        XCTAssertFalse(engine.inOutage)
        XCTAssertEqual(seconds.lastValue, 0)

        // The next failure is a new outage and starts again at the first backoff.
        try engine.send(event(1), ticket: 1)
        adapter.script = [{ $0.retry(after: "refused", warning: "cannot connect") }]
        try poll()
        clock.advance(.milliseconds(100))
        XCTAssertFalse(engine.isBackingOff)
        XCTAssertEqual(try metrics.expectCounter("spout_sink_outages_total", [("sink", "fake")]).totalValue, 2)
    }

    /// The outage's lines as users see them on stderr: one warning, debug lines while it
    /// lasts (hidden at info), and one line when it ends, with its length.
    func testOneWarningAndOneRecoveredLinePerOutage() throws {
        let lines = try capturingStandardError {
            let clock = self.clock!
            let engine = try DeliveryEngine(adapter: adapter, capacity: 8, log: Log(level: .info), metrics: metrics,
                                            clock: { clock.now }, random: SeededRandom(seed: 5))
            try engine.send(event(0), ticket: 0)
            for _ in 0..<3 {
                adapter.script = [{ $0.retry(after: "refused", warning: "cannot connect to the fake broker (refused)") }]
                try engine.poll { _ in }
                clock.advance(.seconds(5))
            }
            clock.advance(.milliseconds(1234))
            adapter.script = [{ $0.delivered(0) }]
            try engine.poll { _ in }
        }
        XCTAssertEqual(lines, ["spout: warning: cannot connect to the fake broker (refused)",
                               "spout: fake broker accepts events again after 16.2 s"])
    }

    /// Runs `body` with file descriptor 2 pointing at a file; returns the lines written.
    private func capturingStandardError(_ body: () throws -> Void) throws -> [String] {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stderr-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let file = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o600)
        guard file >= 0 else { throw XCTSkip("cannot create \(path)") }
        let saved = dup(STDERR_FILENO)
        dup2(file, STDERR_FILENO)
        close(file)
        defer { unlink(path) }
        do {
            defer {
                dup2(saved, STDERR_FILENO)
                close(saved)
            }
            try body()
        }
        return try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    func testReachableWithNothingOutstandingEndsTheOutage() throws {
        adapter.script = [{ $0.retry(after: "refused", warning: "cannot connect") }]
        try poll()
        XCTAssertTrue(engine.inOutage)
        clock.advance(.seconds(1))
        adapter.script = [{ $0.reachable() }]
        try poll()
        XCTAssertFalse(engine.inOutage)
    }

    func testTroubleWithoutResendingIsAnOutageToo() throws {
        try engine.send(event(0), ticket: 0)
        try poll()
        adapter.script = [{ $0.unavailable("broker down", warning: "the brokers are down") },
                          { $0.unavailable("broker down", warning: "the brokers are down") }]
        try poll()
        XCTAssertTrue(engine.inOutage)
        XCTAssertFalse(engine.isBackingOff, "nothing to resend, no backoff")
        XCTAssertEqual(engine.queue.sentCount, 1, "still with the broker")
        XCTAssertEqual(try metrics.expectCounter("spout_sink_outages_total", [("sink", "fake")]).totalValue, 1)
        XCTAssertEqual(metrics.counters(label: "spout_sink_retries_total").first?.totalValue ?? 0, 0)
        adapter.script = [{ $0.delivered(0) }]
        XCTAssertEqual(delivered(try poll()), [0])
        XCTAssertFalse(engine.inOutage)
    }

    func testPermanentFailureStopsSendingButEarlierAcknowledgementsStillCount() throws {
        for ticket: UInt64 in 0..<4 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        XCTAssertEqual(adapter.sent, [0, 1, 2, 3])
        // The broker refuses 2; 0 and 1 are still on their way back, 3 was sent behind it.
        adapter.script = [{ $0.fail(2, "the broker refused it") }]
        let first = try poll()
        XCTAssertEqual(first.count, 2, "\(first)")
        guard case let .failed(ticket, error) = first[0] else { return XCTFail("\(first)") }
        XCTAssertEqual(ticket, 2)
        XCTAssertEqual(error.description, "sink failed on event \"e2\" for topic \"t\": the broker refused it")
        guard case let .failed(behind, notPublished) = first[1] else { return XCTFail("\(first)") }
        XCTAssertEqual(behind, 3, "what is behind the failed event fails at once: the relay's drain does not wait for it")
        XCTAssertTrue(notPublished.message.hasPrefix("not published"), notPublished.message)
        XCTAssertTrue(engine.isStopped)
        // Events handed over later (the relay's drain) fail too, and nothing more goes out.
        try engine.send(event(4), ticket: 4)
        adapter.script = [{ $0.delivered(1) }, { $0.delivered(0) }, { $0.delivered(3) }]
        let later = try poll()
        XCTAssertEqual(delivered(later), [1, 0], "acknowledgements of events before the failed one still arrive")
        XCTAssertEqual(later.count, 3, "\(later)")
        XCTAssertEqual(adapter.sent, [0, 1, 2, 3], "nothing more goes out")
    }

    func testSinkFailureThrowsFromEveryLaterCall() throws {
        try engine.send(event(0), ticket: 0)
        try poll()
        adapter.script = [{ $0.stop(SinkError(.permanent, "the broker closed the account")) }]
        XCTAssertThrowsError(try poll())
        XCTAssertThrowsError(try engine.send(event(1), ticket: 1))
        XCTAssertThrowsError(try poll(), "every later poll throws it")
    }

    func testAdapterErrorStopsTheSink() throws {
        final class Refusing: DeliveryAdapter {
            var sinkName: String { "fake" }
            var recoveredMessage: String { "" }
            var needsCommitLSN: Bool { true }
            func start(_ engine: DeliveryEngine) throws(SpoutError) {}
            func advance(_ engine: DeliveryEngine) throws(SinkError) { throw SinkError(.permanent, "wrong password") }
            func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? { nil }
            func close(_ engine: DeliveryEngine) {}
        }
        let engine = try DeliveryEngine(adapter: Refusing(), capacity: 4, log: Log(level: .error), metrics: metrics)
        XCTAssertTrue(engine.needsCommitLSN)
        XCTAssertThrowsError(try engine.poll { _ in })
        XCTAssertTrue(engine.isStopped)
    }

    func testOutOfSequenceTicketIsRefused() throws {
        try engine.send(event(0), ticket: 0)
        XCTAssertThrowsError(try engine.send(event(2), ticket: 2))
    }

    func testStaleReportsAreIgnoredAndEachTicketReportedOnce() throws {
        for ticket: UInt64 in 0..<2 { try engine.send(event(ticket), ticket: ticket) }
        try poll()
        adapter.script = [{ $0.delivered(0) }, { $0.delivered(0) }, { $0.delivered(7) }, { $0.fail(0, "late") }]
        XCTAssertEqual(delivered(try poll()), [0])
        XCTAssertFalse(engine.isStopped, "a failure for a finished ticket is stale")
        // An acknowledgement for an event waiting to be sent again still counts.
        adapter.script = [{ $0.retry(after: "lost", warning: "lost") }, { $0.delivered(1) }]
        XCTAssertEqual(delivered(try poll()), [1])
        XCTAssertFalse(engine.inOutage)
    }

    func testCloseReachesTheAdapter() {
        engine.close()
        XCTAssertTrue(adapter.closed)
    }
}
