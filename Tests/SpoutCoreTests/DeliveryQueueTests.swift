import XCTest
@testable import SpoutCore

/// The delivery engine's pure parts: the outstanding queue, the retry policy, the outage state.
final class DeliveryQueueTests: XCTestCase {
    private let start = ContinuousClock.now

    private func event(_ id: Int, lsn: UInt64 = 0) -> OutboxEvent {
        OutboxEvent(id: "e\(id)", topic: "t", key: nil, type: nil, payload: [], payloadFormat: .json, headers: [],
                    lsn: LSN(rawValue: lsn), committedAt: PostgresTimestamp(rawValue: 0))
    }

    func testSendsInTicketOrderAndFreesInOrder() {
        var queue = DeliveryQueue(capacity: 4)
        for ticket in 10..<15 { XCTAssertTrue(queue.append(event(Int(ticket)), ticket: UInt64(ticket))) }
        XCTAssertFalse(queue.append(event(99), ticket: 99), "a gap in tickets")
        XCTAssertEqual(queue.nextWaiting(), 10)
        queue.markSent(10, at: start)
        queue.markSent(11, at: start + .seconds(1))
        XCTAssertEqual(queue.nextWaiting(), 12)
        XCTAssertEqual(queue.sentCount, 2)
        XCTAssertEqual(queue.oldestSentAt, start)
        // Acknowledged out of order: 11 is finished, 10 still holds the head.
        XCTAssertTrue(queue.finish(11))
        XCTAssertFalse(queue.finish(11), "reported once")
        XCTAssertEqual(queue.oldestTicket, 10)
        XCTAssertEqual(queue[10]?.attempts, 1)
        XCTAssertTrue(queue.finish(10))
        XCTAssertEqual(queue.oldestTicket, 12, "both freed")
        XCTAssertEqual(queue.unfinishedCount, 3)
        XCTAssertNil(queue.oldestSentAt)
    }

    func testRewindSendsTheOldestAgainFirst() {
        var queue = DeliveryQueue(capacity: 16)
        for ticket in 0..<6 { _ = queue.append(event(ticket), ticket: UInt64(ticket)) }
        for ticket in 0..<4 { queue.markSent(UInt64(ticket), at: start) }
        queue.finish(1) // acknowledged before the failure
        XCTAssertEqual(queue.rewind(at: start + .seconds(2)), 3)
        XCTAssertEqual(queue.sentCount, 0)
        XCTAssertEqual(queue.nextWaiting(), 0)
        XCTAssertEqual(queue.waiting(after: 0), 2, "1 is finished")
        XCTAssertEqual(queue[0]?.firstFailureAt, start + .seconds(2))
        queue.markSent(0, at: start)
        XCTAssertEqual(queue[0]?.attempts, 2)
        // A later failure keeps the first failure's time.
        queue.rewind(at: start + .seconds(9))
        XCTAssertEqual(queue[0]?.firstFailureAt, start + .seconds(2))
        XCTAssertEqual(queue[5]?.firstFailureAt, nil, "never sent")
    }

    func testGrowsAroundTheRing() {
        var queue = DeliveryQueue(capacity: 1)
        var next: UInt64 = 0
        var acknowledged: UInt64 = 0
        for round in 0..<50 {
            for _ in 0..<(round % 7 + 1) {
                XCTAssertTrue(queue.append(event(Int(next)), ticket: next))
                next += 1
            }
            while let ticket = queue.nextWaiting() { queue.markSent(ticket, at: start) }
            for _ in 0..<(round % 5) where acknowledged < next {
                XCTAssertEqual(queue[acknowledged]?.event.id, "e\(acknowledged)")
                XCTAssertTrue(queue.finish(acknowledged))
                acknowledged += 1
            }
        }
        XCTAssertEqual(queue.unfinishedCount, Int(next - acknowledged))
        XCTAssertEqual(queue.oldestTicket, acknowledged)
        for ticket in acknowledged..<next { XCTAssertEqual(queue[ticket]?.event.id, "e\(ticket)") }
    }

    func testPositionsCountEventsOfOneTransaction() {
        var queue = DeliveryQueue(capacity: 8)
        let lsns: [UInt64] = [100, 100, 100, 200, 300, 300]
        for (ticket, lsn) in lsns.enumerated() { _ = queue.append(event(ticket, lsn: lsn), ticket: UInt64(ticket)) }
        XCTAssertEqual((0..<6).map { queue[UInt64($0)]?.position }, [0, 1, 2, 0, 0, 1])
    }

    /// The per-event accessors read what the entry copy (`subscript`) gives, and the times the
    /// queue stores as offsets come back as the very instants given.
    func testTicketAccessorsAgreeWithTheEntries() {
        var queue = DeliveryQueue(capacity: 2)
        var payloadEvent = event(7, lsn: 100)
        payloadEvent.payload = Array(repeating: 1, count: 300)
        payloadEvent.headers = [.init(name: "h", value: "v")]
        _ = queue.append(event(6, lsn: 100), ticket: 6)
        _ = queue.append(payloadEvent, ticket: 7)
        _ = queue.append(event(8, lsn: 200), ticket: 8) // grows the ring
        for ticket: UInt64 in 6...8 {
            let entry = queue[ticket]
            XCTAssertEqual(queue.event(ticket), entry?.event)
            XCTAssertEqual(queue.position(ticket), entry?.position)
            XCTAssertEqual(queue.state(ticket), entry?.state)
            XCTAssertEqual(queue.size(ticket), entry?.event.approximateSize)
        }
        XCTAssertEqual(queue.position(7), 1)
        XCTAssertNil(queue.event(9))
        XCTAssertNil(queue.size(5))
        let sentAt = start + .nanoseconds(123_456_789) + .seconds(-3)
        queue.markSent(6, at: sentAt)
        XCTAssertEqual(queue[6]?.sentAt, sentAt)
        XCTAssertEqual(queue.oldestSentAt, sentAt)
        XCTAssertEqual(queue.state(6), .sent)
        queue.rewind(at: start + .seconds(1))
        XCTAssertEqual(queue[6]?.firstFailureAt, start + .seconds(1))
        XCTAssertTrue(queue.finish(6))
        XCTAssertNil(queue.event(6), "freed")
    }

    // MARK: Retry policy

    func testBackoffDoublesToItsCeilingWithJitterAndResets() {
        var random = SeededRandom(seed: 7)
        var backoff = RetryBackoff(first: .milliseconds(100), ceiling: .seconds(5))
        var ceilings: [Duration] = []
        for _ in 0..<10 {
            let delay = backoff.next(using: &random)
            let ceiling = min(.milliseconds(100) * (1 << (backoff.attempts - 1)), .seconds(5))
            XCTAssertGreaterThanOrEqual(delay, ceiling / 2)
            XCTAssertLessThanOrEqual(delay, ceiling)
            ceilings.append(ceiling)
        }
        XCTAssertEqual(ceilings.prefix(3), [.milliseconds(100), .milliseconds(200), .milliseconds(400)])
        XCTAssertEqual(ceilings.last, .seconds(5))
        backoff.reset()
        XCTAssertLessThanOrEqual(backoff.next(using: &random), .milliseconds(100))
        for _ in 0..<1000 { _ = backoff.next(using: &random) }
        XCTAssertLessThanOrEqual(backoff.next(using: &random), .seconds(5), "no overflow after many failures")
    }

    func testBackoffJitterSpreadsReconnects() {
        var random = SeededRandom(seed: 1)
        var delays: Set<Duration> = []
        for _ in 0..<20 {
            var backoff = RetryBackoff(ceiling: .seconds(10))
            for _ in 0..<8 { _ = backoff.next(using: &random) }
            delays.insert(backoff.next(using: &random))
        }
        XCTAssertGreaterThan(delays.count, 10)
        XCTAssertTrue(delays.allSatisfy { $0 >= .seconds(5) && $0 <= .seconds(10) })
    }

    // MARK: Outage state

    func testOneOutageFromFirstFailureToRecovery() {
        var outage = OutageState()
        XCTAssertNil(outage.recovered(at: start), "no outage to end")
        XCTAssertTrue(outage.failed(at: start))
        XCTAssertEqual(outage.since, start)
        XCTAssertFalse(outage.failed(at: start + .seconds(1)), "the same outage")
        XCTAssertEqual(outage.length(at: start + .seconds(3)), .seconds(3))
        XCTAssertEqual(outage.recovered(at: start + .milliseconds(12_340)), .milliseconds(12_340))
        XCTAssertFalse(outage.isActive)
        XCTAssertTrue(outage.failed(at: start + .seconds(20)))
        XCTAssertEqual(outage.count, 2)
        XCTAssertEqual(OutageState.seconds(.milliseconds(12_340)), "12.3")
        XCTAssertEqual(OutageState.seconds(.milliseconds(49)), "0.0")
        XCTAssertEqual(OutageState.seconds(.milliseconds(950)), "1.0")
    }
}

/// A seeded generator (xorshift64*): the same jitter on every run.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
}
