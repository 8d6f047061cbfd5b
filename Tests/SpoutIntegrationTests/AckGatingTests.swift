import Foundation
import SpoutCore
import Synchronization
import XCTest

/// A sink that acknowledges only what the test releases, from another thread.
final class HoldingSink: Sink, @unchecked Sendable {
    /// false: events arrive as they are decoded, without their commit LSN (Kafka, NATS).
    let needsCommitLSN: Bool
    private let state = Mutex<(events: [(ticket: UInt64, event: OutboxEvent)], released: Set<UInt64>, reported: Set<UInt64>)>(([], [], []))
    private let wakeup = Wakeup()

    init(needsCommitLSN: Bool = true) {
        self.needsCommitLSN = needsCommitLSN
    }

    var events: [(ticket: UInt64, event: OutboxEvent)] { state.withLock { $0.events } }

    func release(_ tickets: some Sequence<UInt64>) {
        state.withLock { $0.released.formUnion(tickets) }
        wakeup.signal()
    }

    func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        state.withLock { $0.events.append((ticket, event)) }
    }

    func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        wakeup.drain()
        let ready = state.withLock { state -> [UInt64] in
            let ready = state.released.subtracting(state.reported).sorted()
            state.reported.formUnion(ready)
            return ready
        }
        for ticket in ready { report(.delivered(ticket: ticket)) }
    }

    var wakeupDescriptor: Int32? { wakeup.descriptor }
    func close() {}
}

extension OutboxFixture {
    /// An in-process relay on this outbox's publication and slot (both created when missing),
    /// and the position it starts from.
    func relay(sink: Sink, options: Relay.Options) throws -> (relay: Relay, start: LSN) {
        let connection = try PostgresConnection(url, replication: true)
        let setup = ReplicationSetup(table: TableName(schema: "public", name: table), publication: publication, slot: slot)
        try setup.ensurePublication(connection, create: true)
        let (slot, _) = try setup.ensureSlot(connection, create: true)
        let start = slot.confirmedFlush ?? .zero
        let stream = try ReplicationStream(connection: connection, slot: self.slot, publication: publication, start: start)
        let mapping = OutboxMapping(table: setup.table, topic: try TopicTemplate("outbox.event.{aggregate_type}"))
        let relay = Relay(stream: stream, mapper: EventMapper(mapping: mapping), sink: sink, start: start, options: options, log: Log(level: .warning))
        return (relay, start)
    }
}

/// Runs a Relay in-process on its own thread.
final class RelayRunner: @unchecked Sendable {
    let stop = StopSignal()
    let thread: Thread
    let outcome = LockedBox<Result<Relay.Outcome, SpoutError>?>(nil)

    init(outbox: OutboxFixture, sink: Sink, configure: (inout Relay.Options) -> Void = { _ in }) throws {
        var options = Relay.Options()
        options.shutdownTimeout = .seconds(2)
        configure(&options)
        let (relay, _) = try outbox.relay(sink: sink, options: options)
        let stop = stop
        let outcome = outcome
        let box = UncheckedBox(relay)
        thread = Thread {
            do throws(SpoutError) {
                let result = try box.value.run(until: stop)
                outcome.mutate { $0 = .success(result) }
            } catch {
                outcome.mutate { $0 = .failure(error) }
            }
        }
        thread.start()
    }

    func finish() -> Result<Relay.Outcome, SpoutError>? {
        stop.request()
        let deadline = Date().addingTimeInterval(30)
        while !thread.isFinished, Date() < deadline { usleep(20_000) }
        return outcome.value
    }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

final class AckGatingTests: XCTestCase {
    /// The slot's confirmed_flush_lsn never passes the newest transaction whose events (and
    /// all earlier ones) the sink acknowledged; once the sink acknowledges, it gets there.
    /// For a sink that takes events after their Commit (stdout, Redis lsn ids), and one that
    /// takes them as they are decoded (Kafka, NATS).
    func testConfirmedFlushWaitsForAcknowledgements() throws {
        for needsCommitLSN in [true, false] {
            try confirmedFlushWaitsForAcknowledgements(sink: HoldingSink(needsCommitLSN: needsCommitLSN))
        }
    }

    private func confirmedFlushWaitsForAcknowledgements(sink: HoldingSink) throws {
        let mode = sink.needsCommitLSN ? "after commit" : "as decoded"
        let outbox = try OutboxFixture("gating")
        defer { outbox.tearDown() }
        let runner = try RelayRunner(outbox: outbox, sink: sink)
        defer { _ = runner.finish() }
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        // Three transactions of two events each, and their exact commit end LSNs. (The idle
        // slot may follow the server's position into a transaction not yet sent; never to its end.)
        let witness = try CommitWitness(outbox)
        var ends: [LSN] = []
        for transaction in 0..<3 {
            let (_, xid) = try CommitWitness.transaction(outbox.admin) {
                try outbox.insert(outbox.admin, rows: 2, key: { "t\(transaction)-\($0)" })
            }
            ends.append(try witness.commitLSN(xid: xid))
        }
        try eventually("sink holds 6 events (\(mode))") { sink.events.count == 6 }
        if sink.needsCommitLSN {
            XCTAssertEqual(sink.events.map(\.event.lsn), [ends[0], ends[0], ends[1], ends[1], ends[2], ends[2]], "each event has its commit LSN")
        } else {
            XCTAssertEqual(Set(sink.events.map(\.event.lsn)), [.zero], "no commit LSN before the Commit")
        }
        XCTAssertEqual(sink.events.map(\.ticket), Array(0..<6), "tickets in commit order (\(mode))")

        // Nothing acknowledged: status updates keep going (every second), the slot stays put.
        sleep(3)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), ends[0], mode)

        // Out of order: all of the third transaction and half of the second.
        sink.release([sink.events[4].ticket, sink.events[5].ticket, sink.events[2].ticket])
        sleep(2)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), ends[0], "nothing of the first transaction is acknowledged (\(mode))")

        sink.release([sink.events[0].ticket, sink.events[1].ticket])
        try eventually(timeout: 10, "confirmed reaches the first transaction (\(mode))") { try XCTUnwrap(try outbox.confirmedFlush) == ends[0] }
        sleep(2)
        XCTAssertEqual(try XCTUnwrap(try outbox.confirmedFlush), ends[0], "the second transaction still has an unacknowledged event (\(mode))")

        sink.release([sink.events[3].ticket])
        try eventually(timeout: 10, "confirmed reaches the third transaction (\(mode))") { try XCTUnwrap(try outbox.confirmedFlush) >= ends[2] }

        guard case .success(.stopped)? = runner.finish() else { return XCTFail("relay did not stop cleanly (\(mode)): \(String(describing: runner.outcome.value))") }
    }

    /// A sink that takes events as they are decoded gets a transaction bigger than the window
    /// in window-sized parts, before its Commit: reading waits for acknowledgements, and the
    /// slot does not move until the last event is acknowledged.
    func testWindowBoundsATransactionHandedOverAsDecoded() throws {
        let outbox = try OutboxFixture("window")
        defer { outbox.tearDown() }
        let sink = HoldingSink(needsCommitLSN: false)
        let runner = try RelayRunner(outbox: outbox, sink: sink) { $0.maxInFlightEvents = 100 }
        defer { _ = runner.finish() }
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let witness = try CommitWitness(outbox)
        let (_, xid) = try CommitWitness.transaction(outbox.admin) { try outbox.insert(outbox.admin, rows: 1000) }
        let end = try witness.commitLSN(xid: xid)
        var released = 0
        while released < 1000 {
            try eventually("the sink holds the next part of the transaction") { sink.events.count >= released + 100 }
            usleep(200_000)
            XCTAssertEqual(sink.events.count, released + 100, "the window holds exactly 100 events")
            XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), end, "\(released) of 1000 acknowledged")
            sink.release(sink.events[released..<released + 100].map(\.ticket))
            released += 100
        }
        try eventually(timeout: 10, "confirmed reaches the transaction's end") { try XCTUnwrap(try outbox.confirmedFlush) >= end }
        XCTAssertEqual(sink.events.map(\.ticket), Array(0..<1000))
        XCTAssertEqual(Set(sink.events.map(\.event.id)).count, 1000)
        guard case .success(.stopped)? = runner.finish() else { return XCTFail("relay did not stop cleanly: \(String(describing: runner.outcome.value))") }
    }
    /// A stop while the sink still holds events: the relay waits (bounded), confirms only
    /// what was acknowledged, and stops.
    func testShutdownConfirmsOnlyAcknowledged() throws {
        let outbox = try OutboxFixture("shutdown")
        defer { outbox.tearDown() }
        let sink = HoldingSink()
        let runner = try RelayRunner(outbox: outbox, sink: sink)
        defer { _ = runner.finish() }
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        try outbox.insert(outbox.admin, rows: 1)
        try outbox.insert(outbox.admin, rows: 1)
        try eventually("sink holds 2 events") { sink.events.count == 2 }
        sink.release([sink.events[0].ticket])
        let first = sink.events[0].event.lsn
        guard case .success(.stopped)? = runner.finish() else { return XCTFail("relay did not stop: \(String(describing: runner.outcome.value))") }
        XCTAssertEqual(try outbox.confirmedFlush, first)
    }
}
