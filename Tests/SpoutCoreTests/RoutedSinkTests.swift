@testable import SpoutCore
import XCTest

// issue 14: several sinks
/// `RoutedSink` over sinks that complete when the test says, and the route through the spool.
final class RoutedSinkTests: XCTestCase {
    /// Holds what it is sent until `complete`.
    final class HoldingSink: Sink {
        var sent: [(OutboxEvent, UInt64)] = []
        var ready: [SinkCompletion] = []
        let needsLSN: Bool
        let descriptor: Int32?
        var adopted: PoisonPolicy?
        var closed = false
        init(needsLSN: Bool = false, descriptor: Int32? = nil) {
            self.needsLSN = needsLSN
            self.descriptor = descriptor
        }
        var needsCommitLSN: Bool { needsLSN }
        var wakeupDescriptor: Int32? { descriptor }
        func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) { sent.append((event, ticket)) }
        func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
            for completion in ready { report(completion) }
            ready.removeAll()
        }
        func complete() { ready += sent.map { .delivered(ticket: $0.1) }; sent.removeAll() }
        func close() { closed = true }
        func adopt(_ policy: PoisonPolicy, maxRetries: Int?) { adopted = policy }
    }

    private func event(_ id: String, route: String?) -> OutboxEvent {
        var event = OutboxEvent(id: id, topic: "t", key: "k", type: nil, payload: Array("{}".utf8), payloadFormat: .json,
                                headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))
        event.route = route
        return event
    }

    private func poll(_ sink: Sink) throws -> [String] {
        var reported: [String] = []
        try sink.poll { completion in
            switch completion {
            case let .delivered(ticket): reported.append("ok \(ticket)")
            case let .failed(ticket, error): reported.append("failed \(ticket): \(error.message)")
            }
        }
        return reported
    }

    func testRoutesEachEventAndReportsEveryMembersCompletions() throws {
        let a = HoldingSink(descriptor: 7), b = HoldingSink(needsLSN: true, descriptor: 9)
        let routed = try RoutedSink(members: [.init(name: "a", sink: a), .init(name: "b", sink: b)], defaultRoute: "b")
        XCTAssertTrue(routed.needsCommitLSN, "one member needs the commit LSN")
        XCTAssertEqual(routed.wakeupDescriptors, [7, 9])
        XCTAssertEqual(routed.wakeupDescriptor, 7)
        routed.adopt(.skip, maxRetries: nil)
        XCTAssertEqual(a.adopted, .skip)
        XCTAssertEqual(b.adopted, .skip)

        try routed.send(event("1", route: "a"), ticket: 0)
        try routed.send(event("2", route: "b"), ticket: 1)
        try routed.send(event("3", route: nil), ticket: 2)
        try routed.send(event("4", route: "a"), ticket: 3)
        XCTAssertEqual(a.sent.map(\.0.id), ["1", "4"])
        XCTAssertEqual(b.sent.map(\.0.id), ["2", "3"], "no route: the default")
        XCTAssertEqual(a.sent.map(\.1), [0, 1], "each member's tickets follow each other")
        XCTAssertEqual(b.sent.map(\.1), [0, 1])
        XCTAssertEqual(routed.inFlightByMember.map(\.events), [2, 2])
        XCTAssertEqual(routed.pendingSummary, "sink \"a\" holds the oldest unacknowledged event; in flight per sink: a 2, b 2")

        // a acknowledges first; b holds ticket 1, so a tracker confirms only ticket 0.
        a.complete()
        XCTAssertEqual(try poll(routed), ["ok 0", "ok 3"])
        var tracker = AckTracker(start: LSN(rawValue: 100))
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(rawValue: 150), eventCount: 2), 0)
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(rawValue: 200), eventCount: 2), 2)
        tracker.acknowledge(0)
        tracker.acknowledge(3)
        XCTAssertEqual(tracker.confirmed, LSN(rawValue: 100), "b has not acknowledged ticket 1")
        XCTAssertEqual(routed.pendingSummary, "sink \"b\" holds the oldest unacknowledged event; in flight per sink: a 0, b 2")
        b.complete()
        XCTAssertEqual(try poll(routed), ["ok 1", "ok 2"])
        tracker.acknowledge(1)
        tracker.acknowledge(2)
        XCTAssertEqual(tracker.confirmed, LSN(rawValue: 200))
        XCTAssertNil(routed.pendingSummary)
        routed.close()
        XCTAssertTrue(a.closed && b.closed)
    }

    func testUnknownRouteIsPoison() throws {
        let a = HoldingSink(), b = HoldingSink(descriptor: 3)
        let routed = try RoutedSink(members: [.init(name: "a", sink: a), .init(name: "b", sink: b)], defaultRoute: nil)
        XCTAssertNil(routed.wakeupDescriptor, "a member without a descriptor: the relay polls")
        try routed.send(event("1", route: "nowhere"), ticket: 0)
        try routed.send(event("2", route: nil), ticket: 1)
        let stopped = try poll(routed)
        XCTAssertEqual(stopped.count, 2)
        XCTAssertTrue(stopped[0].hasPrefix("failed 0: its route \"nowhere\" (--route) names no sink: the sinks are a, b"), stopped[0])
        XCTAssertTrue(stopped[1].hasPrefix("failed 1: its route (--route) is empty or NULL and there is no --default-route"), stopped[1])

        routed.adopt(.skip, maxRetries: nil)
        try routed.send(event("3", route: "nowhere"), ticket: 2)
        XCTAssertEqual(try poll(routed), ["ok 2"])

        routed.adopt(.deadLetter(topic: "dlq"), maxRetries: nil)
        try routed.send(event("4", route: "nowhere"), ticket: 3)
        XCTAssertEqual(a.sent.map(\.0.topic), ["dlq"], "the dead letter on the first sink, with the event's ticket")
        XCTAssertEqual(a.sent.map(\.1), [0])
        XCTAssertEqual(a.sent.first?.0.source, .deadLetter)
        a.complete()
        XCTAssertEqual(try poll(routed), ["ok 3"], "reported with the relay's ticket")
        var unmappable = event("5", route: nil)
        unmappable.source = .deadLetter
        try routed.send(unmappable, ticket: 4)
        XCTAssertEqual(a.sent.map(\.0.id), ["5"], "a dead letter without a route: the first sink, as it is")
    }

    func testNamesAreCheckedAndTheRouteSurvivesTheSpool() throws {
        XCTAssertThrowsError(try RoutedSink(members: [.init(name: "a", sink: HoldingSink()), .init(name: "a", sink: HoldingSink())], defaultRoute: nil))
        XCTAssertThrowsError(try RoutedSink(members: [.init(name: "a", sink: HoldingSink())], defaultRoute: "b"))

        let spool = EventSpool(memoryLimit: 1 << 16)
        try spool.append(event("1", route: "orders"))
        try spool.append(event("2", route: nil))
        var letter = event("3", route: "audit")
        letter.source = .deadLetter
        try spool.append(letter)
        XCTAssertEqual(try spool.pop()?.event.route, "orders")
        XCTAssertNil(try spool.pop()?.event.route)
        let popped = try XCTUnwrap(try spool.pop()?.event)
        XCTAssertEqual(popped.route, "audit")
        XCTAssertEqual(popped.source, .deadLetter)
    }
}
