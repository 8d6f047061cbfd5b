import XCTest
@testable import SpoutCore

/// DESIGN.md §1 stated as directly as possible: the flushed LSN is the end of the newest
/// transaction whose events, and all earlier transactions' events, are acknowledged; when
/// nothing is open or unacknowledged it follows the newest received position (clamped by
/// the follow limit). It never goes back.
private struct ReferenceModel {
    struct Transaction {
        var end: LSN
        var tickets: Range<UInt64>
    }

    var confirmed: LSN
    var received: LSN
    var followLimit: LSN?
    var transactions: [Transaction] = []
    var acknowledged: Set<UInt64> = []
    /// Issued and not acknowledged.
    var pending: Set<UInt64> = []
    var nextTicket: UInt64 = 0
    /// Tickets below this one belong to committed transactions; those above, to the next commit.
    var committedTickets: UInt64 = 0
    var open = false
    /// Transactions before this index are fully acknowledged (a cache, advanced by `settle`).
    private(set) var settled = 0
    /// The lowest ticket not acknowledged (a cache, advanced by `acknowledge`).
    private(set) var lowestPending: UInt64 = 0

    init(start: LSN, followLimit: LSN? = nil) {
        confirmed = start
        received = start
        self.followLimit = followLimit
    }

    func isAcknowledged(_ transaction: Transaction) -> Bool {
        transaction.tickets.allSatisfy { acknowledged.contains($0) }
    }

    var unacknowledged: Int { pending.count }

    mutating func observe(_ walEnd: LSN) {
        received = max(received, walEnd)
        settle()
    }

    mutating func begin() { open = true }

    /// A ticket for an event of the open transaction (a streaming sink).
    mutating func issue() -> UInt64 {
        pending.insert(nextTicket)
        nextTicket += 1
        return nextTicket - 1
    }

    mutating func commit(end: LSN, events: Int) -> UInt64 {
        open = false
        let first = nextTicket
        nextTicket += UInt64(events)
        pending.formUnion(first..<nextTicket)
        transactions.append(Transaction(end: end, tickets: committedTickets..<nextTicket))
        committedTickets = nextTicket
        received = max(received, end)
        settle()
        return first
    }

    mutating func abandon() {
        open = false
        settle()
    }

    mutating func acknowledge(_ ticket: UInt64) {
        if ticket < nextTicket {
            acknowledged.insert(ticket)
            pending.remove(ticket)
        }
        while lowestPending < nextTicket, acknowledged.contains(lowestPending) { lowestPending += 1 }
        settle()
    }

    private mutating func settle() {
        while settled < transactions.count, isAcknowledged(transactions[settled]) {
            confirmed = max(confirmed, transactions[settled].end)
            settled += 1
        }
        if settled == transactions.count, !open, pending.isEmpty {
            confirmed = max(confirmed, followLimit.map { min(received, $0) } ?? received)
        }
    }

    /// The safety half of the contract, checked independently of `confirmed`'s exact value.
    func assertSafe(_ tracker: AckTracker, _ context: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) {
        for transaction in transactions[settled...] where !isAcknowledged(transaction) {
            XCTAssertLessThan(tracker.confirmed, transaction.end, "confirmed passed a transaction with an unacknowledged event: \(context())",
                              file: file, line: line)
        }
        XCTAssertLessThanOrEqual(tracker.confirmed, tracker.received, context(), file: file, line: line)
    }

    func assertMatches(_ tracker: AckTracker, _ context: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(tracker.confirmed, confirmed, "confirmed: \(context())", file: file, line: line)
        XCTAssertEqual(tracker.received, received, "received: \(context())", file: file, line: line)
        XCTAssertEqual(tracker.unacknowledged, unacknowledged, "unacknowledged: \(context())", file: file, line: line)
        XCTAssertEqual(tracker.acknowledgedBelow, lowestPending, "acknowledgedBelow: \(context())", file: file, line: line)
        XCTAssertEqual(tracker.isIdle, !open && unacknowledged == 0, "isIdle: \(context())", file: file, line: line)
        assertSafe(tracker, context(), file: file, line: line)
    }
}

/// Deterministic generator, so a failing scenario can be replayed from its seed.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func permutations<T>(_ items: [T]) -> [[T]] {
    guard items.count > 1 else { return [items] }
    var result: [[T]] = []
    for index in items.indices {
        var rest = items
        let head = rest.remove(at: index)
        for tail in permutations(rest) { result.append([head] + tail) }
    }
    return result
}

final class AckTrackerTests: XCTestCase {
    private let start = LSN(0x10)

    func testInitialState() {
        let tracker = AckTracker(start: LSN(0x1234))
        XCTAssertEqual(tracker.confirmed, LSN(0x1234))
        XCTAssertEqual(tracker.received, LSN(0x1234))
        XCTAssertEqual(tracker.unacknowledged, 0)
        XCTAssertEqual(tracker.acknowledgedBelow, 0)
        XCTAssertTrue(tracker.isIdle)
        XCTAssertNil(tracker.followLimit)
        XCTAssertFalse(tracker.isUnacknowledged(0))
    }

    func testInOrderAcks() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        XCTAssertFalse(tracker.isIdle)
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 3), 0)
        XCTAssertEqual(tracker.confirmed, start)
        XCTAssertEqual(tracker.received, LSN(0x200))
        XCTAssertEqual(tracker.unacknowledged, 3)
        tracker.acknowledge(0)
        tracker.acknowledge(1)
        XCTAssertEqual(tracker.confirmed, start)
        XCTAssertFalse(tracker.isIdle)
        tracker.acknowledge(2)
        XCTAssertEqual(tracker.confirmed, LSN(0x200))
        XCTAssertTrue(tracker.isIdle)

        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x300), eventCount: 2), 3, "tickets continue across transactions")
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x400), eventCount: 1), 5)
        tracker.acknowledge(3)
        tracker.acknowledge(4)
        XCTAssertEqual(tracker.confirmed, LSN(0x300))
        tracker.acknowledge(5)
        XCTAssertEqual(tracker.confirmed, LSN(0x400))
    }

    func testOutOfOrderAcksNeverPassAnUnacknowledgedTransaction() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 2)  // tickets 0, 1
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x300), eventCount: 1)  // ticket 2
        tracker.acknowledge(2)
        XCTAssertEqual(tracker.confirmed, start, "T2 is acknowledged but T1 is not")
        tracker.acknowledge(1)
        XCTAssertEqual(tracker.confirmed, start, "T1 still has ticket 0")
        XCTAssertEqual(tracker.acknowledgedBelow, 0)
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.acknowledgedBelow, 3)
        XCTAssertEqual(tracker.confirmed, LSN(0x300))

        // The first transaction complete, the second not: stop at the first.
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x400), eventCount: 2)  // 3, 4
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x500), eventCount: 2)  // 5, 6
        tracker.acknowledge(4)
        tracker.acknowledge(5)
        tracker.acknowledge(3)
        XCTAssertEqual(tracker.confirmed, LSN(0x400))
        tracker.acknowledge(6)
        XCTAssertEqual(tracker.confirmed, LSN(0x500))
    }

    /// Every order of acknowledgements for a few small transactions, checked against the
    /// reference model after every single ack (and after a repeated ack).
    func testAllAckPermutationsAgainstReferenceModel() {
        let shapes: [[Int]] = [[1], [3], [2, 0, 1, 2], [1, 1, 1, 1, 1, 1], [3, 3], [0, 0, 1], [4, 1, 1], [1, 0, 0, 2, 0], [2, 2, 2]]
        var checkedOrders = 0
        for shape in shapes {
            let ticketCount = UInt64(shape.reduce(0, +))
            for order in permutations(Array(0..<ticketCount)) {
                var tracker = AckTracker(start: start)
                var model = ReferenceModel(start: start)
                var end: UInt64 = 0x100
                for (index, events) in shape.enumerated() {
                    tracker.transactionBegan()
                    model.begin()
                    tracker.observe(walEnd: LSN(end - 0x10))  // a change inside the transaction
                    model.observe(LSN(end - 0x10))
                    let first = tracker.transactionCommitted(endLSN: LSN(end), eventCount: events)
                    XCTAssertEqual(first, model.commit(end: LSN(end), events: events), "shape \(shape) transaction \(index)")
                    model.assertMatches(tracker, "shape \(shape) after commit \(index)")
                    end += 0x100
                }
                for (step, ticket) in order.enumerated() {
                    XCTAssertTrue(tracker.isUnacknowledged(ticket))
                    tracker.acknowledge(ticket)
                    model.acknowledge(ticket)
                    XCTAssertFalse(tracker.isUnacknowledged(ticket))
                    model.assertMatches(tracker, "shape \(shape) order \(order) step \(step)")
                    for other in 0..<ticketCount + 2 {
                        XCTAssertEqual(tracker.isUnacknowledged(other), other < ticketCount && !model.acknowledged.contains(other),
                                       "shape \(shape) order \(order) step \(step) ticket \(other)")
                    }
                    // Acknowledging an already acknowledged ticket changes nothing.
                    let repeated = order[step / 2]
                    tracker.acknowledge(repeated)
                    model.assertMatches(tracker, "shape \(shape) order \(order) step \(step) repeated \(repeated)")
                }
                let last = LSN(end - 0x100)
                XCTAssertEqual(tracker.confirmed, shape.isEmpty ? start : last, "shape \(shape) order \(order)")
                XCTAssertTrue(tracker.isIdle)
                checkedOrders += 1
            }
        }
        XCTAssertEqual(checkedOrders, 1 + 6 + 120 + 720 + 720 + 1 + 720 + 6 + 720)
    }

    /// Commits, acks (any order, repeated, unknown), observed positions, begins, abandoned
    /// transactions and a follow limit, interleaved at random, against the reference model.
    func testRandomInterleavingsAgainstReferenceModel() {
        // How often the interesting situations came up, so the scenarios cannot silently degenerate.
        var heldBackByPending = 0, heldBackByOpen = 0, followedIdle = 0, clamped = 0
        for seed in UInt64(1)...300 {
            var random = SplitMix64(state: seed)
            let limit: LSN? = seed % 3 == 0 ? LSN(UInt64.random(in: 0x100...0x4000, using: &random)) : nil
            var tracker = AckTracker(start: start)
            tracker.followLimit = limit
            var model = ReferenceModel(start: start, followLimit: limit)
            var cursor: UInt64 = 0x10
            let steps = seed % 50 == 0 ? 3000 : 80
            for step in 0..<steps {
                let context = "seed \(seed) step \(step)"
                switch UInt64.random(in: 0..<100, using: &random) {
                case 0..<15:
                    cursor += UInt64.random(in: 1...0x40, using: &random)
                    tracker.observe(walEnd: LSN(cursor))
                    model.observe(LSN(cursor))
                case 15..<20:
                    // An older position (XLogData LSNs are not monotonic): never moves anything back.
                    let old = LSN(UInt64.random(in: 0...cursor, using: &random))
                    tracker.observe(walEnd: old)
                    model.observe(old)
                case 20..<30:
                    if !model.open {
                        tracker.transactionBegan()
                        model.begin()
                    }
                case 30..<35:
                    // Events handed to a streaming sink before their transaction's Commit.
                    if model.open, seed % 2 == 0 {
                        for _ in 0..<Int.random(in: 1...3, using: &random) {
                            XCTAssertEqual(tracker.issueTicket(), model.issue(), context)
                        }
                    }
                case 35..<55:
                    cursor += UInt64.random(in: 1...0x80, using: &random)
                    let events = Int.random(in: 0...(step % 7 == 0 ? 12 : 3), using: &random)
                    let first = tracker.transactionCommitted(endLSN: LSN(cursor), eventCount: events)
                    XCTAssertEqual(first, model.commit(end: LSN(cursor), events: events), context)
                case 55..<60:
                    tracker.transactionAbandoned()
                    model.abandon()
                case 60..<95:
                    for _ in 0..<Int.random(in: 1...3, using: &random) {
                        guard let ticket = model.pending.randomElement(using: &random) else { break }
                        tracker.acknowledge(ticket)
                        model.acknowledge(ticket)
                    }
                default:
                    // Repeated or never issued.
                    let ticket = UInt64.random(in: 0...(model.nextTicket + 5), using: &random)
                    if ticket >= model.nextTicket || model.acknowledged.contains(ticket) {
                        tracker.acknowledge(ticket)
                        model.acknowledge(ticket)
                    }
                }
                model.assertMatches(tracker, context)
                if tracker.confirmed < tracker.received {
                    if !model.pending.isEmpty { heldBackByPending += 1 } else if model.open { heldBackByOpen += 1 } else { clamped += 1 }
                } else if model.pending.isEmpty, !model.open, !model.transactions.isEmpty {
                    followedIdle += 1
                }
            }
            // Drain: acknowledge everything; nothing is left behind.
            for ticket in model.pending.sorted(by: >) {
                tracker.acknowledge(ticket)
                model.acknowledge(ticket)
                model.assertMatches(tracker, "seed \(seed) drain \(ticket)")
            }
            XCTAssertEqual(tracker.unacknowledged, 0)
        }
        XCTAssertGreaterThan(heldBackByPending, 1000)
        XCTAssertGreaterThan(heldBackByOpen, 1000)
        XCTAssertGreaterThan(followedIdle, 1000)
        XCTAssertGreaterThan(clamped, 100)
    }

    /// Tickets issued inside a transaction (a streaming sink) hold its LSN back until the
    /// Commit arrived and every one of them is acknowledged, whatever the order.
    func testTicketsIssuedBeforeCommit() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        let first = tracker.issueTicket(), second = tracker.issueTicket()
        tracker.observe(walEnd: LSN(0x100))
        tracker.acknowledge(second)
        tracker.acknowledge(first)
        XCTAssertEqual(tracker.confirmed, start, "acknowledged but not committed")
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 0), 2)
        XCTAssertEqual(tracker.confirmed, LSN(0x200))

        tracker.transactionBegan()
        let third = tracker.issueTicket()
        _ = tracker.transactionCommitted(endLSN: LSN(0x300), eventCount: 0)
        XCTAssertEqual(tracker.confirmed, LSN(0x200), "committed but not acknowledged")
        XCTAssertEqual(tracker.unacknowledged, 1)
        tracker.acknowledge(third)
        XCTAssertEqual(tracker.confirmed, LSN(0x300))
        XCTAssertTrue(tracker.isIdle)
    }

    func testTransactionsWithoutEvents() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 0), 0)
        XCTAssertEqual(tracker.confirmed, LSN(0x200), "an empty transaction is confirmable at once")
        XCTAssertTrue(tracker.isIdle)

        // Behind an unacknowledged transaction it waits.
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x300), eventCount: 1), 0)
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x400), eventCount: 0), 1)
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x500), eventCount: 0), 1)
        XCTAssertEqual(tracker.confirmed, LSN(0x200))
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.confirmed, LSN(0x500))
    }

    func testIdleFollowsObservedPosition() {
        var tracker = AckTracker(start: start)
        tracker.observe(walEnd: LSN(0x500))
        XCTAssertEqual(tracker.confirmed, LSN(0x500))
        XCTAssertEqual(tracker.received, LSN(0x500))
        tracker.observe(walEnd: LSN(0x400))
        XCTAssertEqual(tracker.confirmed, LSN(0x500), "never backwards")
        XCTAssertEqual(tracker.received, LSN(0x500))
        tracker.observe(walEnd: .zero)  // XLogData of a Relation message
        XCTAssertEqual(tracker.confirmed, LSN(0x500))
        tracker.observe(walEnd: LSN(0x1_0000_0000))
        XCTAssertEqual(tracker.confirmed, LSN(0x1_0000_0000))
    }

    func testNoFollowingWhileATransactionIsOpen() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        tracker.observe(walEnd: LSN(0x900))
        XCTAssertEqual(tracker.confirmed, start, "a Begin without Commit holds the position")
        XCTAssertEqual(tracker.received, LSN(0x900))
        tracker.transactionBegan()  // repeated Begin (e.g. after Origin) changes nothing
        tracker.observe(walEnd: LSN(0x950))
        XCTAssertEqual(tracker.confirmed, start)
        _ = tracker.transactionCommitted(endLSN: LSN(0x980), eventCount: 0)
        XCTAssertEqual(tracker.confirmed, LSN(0x980))
        tracker.observe(walEnd: LSN(0xA00))
        XCTAssertEqual(tracker.confirmed, LSN(0xA00))

        // An earlier transaction completes while the next is open: confirm its end, not the observed position.
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0xB00), eventCount: 1)
        tracker.transactionBegan()
        tracker.observe(walEnd: LSN(0xC00))
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.confirmed, LSN(0xB00))
        XCTAssertFalse(tracker.isIdle)
        _ = tracker.transactionCommitted(endLSN: LSN(0xD00), eventCount: 0)
        XCTAssertEqual(tracker.confirmed, LSN(0xD00))
    }

    func testNoFollowingWhileEventsAreUnacknowledged() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 1)
        tracker.observe(walEnd: LSN(0x900))
        XCTAssertEqual(tracker.confirmed, start)
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.confirmed, LSN(0x900), "idle again: follows the newest received position")
    }

    func testAbandonedTransactionResumesFollowing() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        tracker.observe(walEnd: LSN(0x700))
        XCTAssertEqual(tracker.confirmed, start)
        tracker.transactionAbandoned()
        XCTAssertEqual(tracker.confirmed, LSN(0x700))
        XCTAssertTrue(tracker.isIdle)
    }

    func testFollowLimitClampsIdleFollowingButNotCommits() {
        var tracker = AckTracker(start: start)
        tracker.followLimit = LSN(0x400)
        tracker.observe(walEnd: LSN(0x300))
        XCTAssertEqual(tracker.confirmed, LSN(0x300))
        tracker.observe(walEnd: LSN(0x500))
        XCTAssertEqual(tracker.confirmed, LSN(0x400))
        XCTAssertEqual(tracker.received, LSN(0x500))

        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x600), eventCount: 1)
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.confirmed, LSN(0x600), "a delivered transaction is confirmed past the limit")
        tracker.observe(walEnd: LSN(0x700))
        XCTAssertEqual(tracker.confirmed, LSN(0x600))
        _ = tracker.transactionCommitted(endLSN: LSN(0x800), eventCount: 0)
        XCTAssertEqual(tracker.confirmed, LSN(0x800))

        tracker.followLimit = nil
        tracker.observe(walEnd: LSN(0x900))
        XCTAssertEqual(tracker.confirmed, LSN(0x900))
    }

    func testDuplicateAndUnknownTicketsAreIgnored() {
        var tracker = AckTracker(start: start)
        tracker.acknowledge(5)  // before it was issued: not remembered
        tracker.acknowledge(UInt64.max)
        XCTAssertEqual(tracker.unacknowledged, 0)
        tracker.transactionBegan()
        XCTAssertEqual(tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 6), 0)
        XCTAssertEqual(tracker.unacknowledged, 6)
        XCTAssertTrue(tracker.isUnacknowledged(5))
        for ticket: UInt64 in [0, 1, 2, 3, 4] { tracker.acknowledge(ticket) }
        XCTAssertEqual(tracker.confirmed, start, "ticket 5's early ack must not count")
        tracker.acknowledge(4)
        tracker.acknowledge(0)
        tracker.acknowledge(6)
        XCTAssertEqual(tracker.unacknowledged, 1)
        XCTAssertEqual(tracker.confirmed, start)
        tracker.acknowledge(5)
        XCTAssertEqual(tracker.confirmed, LSN(0x200))
        tracker.acknowledge(5)
        XCTAssertEqual(tracker.unacknowledged, 0)
        XCTAssertEqual(tracker.acknowledgedBelow, 6)

        // A repeated out-of-order ack is counted once.
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x300), eventCount: 3)  // 6, 7, 8
        tracker.acknowledge(8)
        tracker.acknowledge(8)
        XCTAssertEqual(tracker.unacknowledged, 2)
        tracker.acknowledge(6)
        tracker.acknowledge(7)
        XCTAssertEqual(tracker.unacknowledged, 0)
        XCTAssertEqual(tracker.acknowledgedBelow, 9)
        XCTAssertEqual(tracker.confirmed, LSN(0x300))
    }

    func testUnacknowledgedBookkeeping() {
        var tracker = AckTracker(start: start)
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x200), eventCount: 5)
        tracker.acknowledge(1)
        tracker.acknowledge(3)
        XCTAssertEqual(tracker.unacknowledged, 3)
        XCTAssertEqual(tracker.acknowledgedBelow, 0)
        XCTAssertEqual((0..<7).map { tracker.isUnacknowledged($0) }, [true, false, true, false, true, false, false])
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.acknowledgedBelow, 2)
        XCTAssertEqual(tracker.unacknowledged, 2)
        tracker.acknowledge(2)
        XCTAssertEqual(tracker.acknowledgedBelow, 4)
        XCTAssertEqual((0..<7).map { tracker.isUnacknowledged($0) }, [false, false, false, false, true, false, false])
        XCTAssertEqual(tracker.confirmed, start)
        tracker.acknowledge(4)
        XCTAssertEqual(tracker.acknowledgedBelow, 5)
        XCTAssertEqual(tracker.unacknowledged, 0)
        XCTAssertEqual(tracker.confirmed, LSN(0x200))
    }

    func testCommitBehindConfirmedDoesNotMoveBack() {
        var tracker = AckTracker(start: LSN(0x1000))
        tracker.transactionBegan()
        _ = tracker.transactionCommitted(endLSN: LSN(0x800), eventCount: 1)
        tracker.acknowledge(0)
        XCTAssertEqual(tracker.confirmed, LSN(0x1000))
        XCTAssertEqual(tracker.received, LSN(0x1000))
    }

    /// Many transactions: the pending list is compacted on the way without losing any.
    func testManyTransactions() {
        var tracker = AckTracker(start: start)
        var model = ReferenceModel(start: start)
        for index in 0..<3000 {
            tracker.transactionBegan()
            model.begin()
            let end = LSN(0x1000 + UInt64(index) * 0x10)
            XCTAssertEqual(tracker.transactionCommitted(endLSN: end, eventCount: 1), model.commit(end: end, events: 1))
        }
        for ticket in UInt64(0)..<2000 {
            tracker.acknowledge(ticket)
            model.acknowledge(ticket)
            XCTAssertEqual(tracker.confirmed, LSN(0x1000 + ticket * 0x10), "after ack \(ticket)")
        }
        model.assertMatches(tracker, "after 2000 in-order acks")
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 1999 * 0x10))
        for index in 3000..<4000 {
            let end = LSN(0x1000 + UInt64(index) * 0x10)
            XCTAssertEqual(tracker.transactionCommitted(endLSN: end, eventCount: 1), model.commit(end: end, events: 1))
        }
        // Right after compaction every remaining transaction still counts, one at a time.
        tracker.acknowledge(2000)
        model.acknowledge(2000)
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 2000 * 0x10))
        tracker.acknowledge(2002)
        model.acknowledge(2002)
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 2000 * 0x10))
        tracker.acknowledge(2001)
        model.acknowledge(2001)
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 2002 * 0x10))
        for ticket in (UInt64(2004)..<4000).reversed() { tracker.acknowledge(ticket); model.acknowledge(ticket) }
        model.assertMatches(tracker, "all but ticket 2003")
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 2002 * 0x10))
        tracker.acknowledge(2003)
        model.acknowledge(2003)
        model.assertMatches(tracker, "all acknowledged")
        XCTAssertEqual(tracker.confirmed, LSN(0x1000 + 3999 * 0x10))
        XCTAssertTrue(tracker.isIdle)
    }
}
