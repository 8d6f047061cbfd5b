/// Decides which LSN may be reported to PostgreSQL as flushed (DESIGN.md §1).
///
/// A pure state machine: the relay tells it what arrived from the server and what the sink
/// acknowledged; it answers with the confirmable LSN. Every event handed to a sink carries a
/// ticket, issued in commit order. A transaction's commit `end_lsn` becomes confirmable once
/// every ticket up to its last one is acknowledged, whatever order the acks arrive in.
/// When nothing is open or unacknowledged, the confirmable LSN follows the newest position
/// received, so an idle outbox does not hold WAL (what PostgreSQL's apply worker does).
public struct AckTracker: Sendable {
    private struct PendingCommit: Sendable {
        /// One past the last ticket of the transaction.
        var ticketEnd: UInt64
        var endLSN: LSN
    }

    /// The newest LSN that is safe to report as flushed.
    public private(set) var confirmed: LSN
    /// The newest server position seen (XLogData or keepalive `walEnd`).
    public private(set) var received: LSN
    /// When set, the idle position is never followed past this LSN (replay with an end).
    public var followLimit: LSN?

    private var nextTicket: UInt64 = 0
    /// Every ticket below this one is acknowledged.
    public private(set) var acknowledgedBelow: UInt64 = 0
    /// Acknowledged tickets at or above `acknowledgedBelow` (acks that arrived out of order).
    private var acknowledgedAhead: Set<UInt64> = []
    private var pending: [PendingCommit] = []
    private var pendingHead = 0
    private var transactionOpen = false

    public init(start: LSN) {
        confirmed = start
        received = start
    }

    /// Events issued and not yet acknowledged.
    public var unacknowledged: Int {
        Int(nextTicket - acknowledgedBelow) - acknowledgedAhead.count
    }

    /// Whether `ticket` was issued and is still waiting for its acknowledgement.
    public func isUnacknowledged(_ ticket: UInt64) -> Bool {
        ticket >= acknowledgedBelow && ticket < nextTicket && !acknowledgedAhead.contains(ticket)
    }

    /// True when nothing is open, buffered or unacknowledged.
    public var isIdle: Bool { !transactionOpen && pendingHead == pending.count && acknowledgedBelow == nextTicket }

    /// The server reported a position (`walEnd` of XLogData or a keepalive).
    public mutating func observe(walEnd: LSN) {
        if walEnd > received { received = walEnd }
        advance()
    }

    /// A Begin arrived: until its Commit, the idle position is not followed.
    public mutating func transactionBegan() {
        transactionOpen = true
    }

    /// A ticket for an event of the open transaction, handed to the sink before its Commit
    /// arrives. The transaction's LSN becomes confirmable only after the Commit, once this
    /// ticket and every earlier one are acknowledged.
    public mutating func issueTicket() -> UInt64 {
        defer { nextTicket += 1 }
        return nextTicket
    }

    /// A Commit arrived for a transaction with `eventCount` events not yet ticketed (those
    /// ticketed with `issueTicket` while it was open belong to it too). Returns the first of
    /// the `eventCount` consecutive tickets to hand to the sink with those events, in order.
    public mutating func transactionCommitted(endLSN: LSN, eventCount: Int) -> UInt64 {
        transactionOpen = false
        let first = nextTicket
        nextTicket += UInt64(eventCount)
        if endLSN > received { received = endLSN }
        pending.append(PendingCommit(ticketEnd: nextTicket, endLSN: endLSN))
        advance()
        return first
    }

    /// The transaction in progress was abandoned (its events will come again after a restart).
    public mutating func transactionAbandoned() {
        transactionOpen = false
        advance()
    }

    /// The sink acknowledged the event with this ticket. Acks may arrive in any order;
    /// a repeated or unknown ticket changes nothing.
    public mutating func acknowledge(_ ticket: UInt64) {
        guard ticket >= acknowledgedBelow, ticket < nextTicket else { return }
        if ticket == acknowledgedBelow {
            acknowledgedBelow += 1
            while acknowledgedAhead.remove(acknowledgedBelow) != nil { acknowledgedBelow += 1 }
        } else {
            acknowledgedAhead.insert(ticket)
        }
        advance()
    }

    private mutating func advance() {
        while pendingHead < pending.count, pending[pendingHead].ticketEnd <= acknowledgedBelow {
            let lsn = pending[pendingHead].endLSN
            if lsn > confirmed { confirmed = lsn }
            pendingHead += 1
        }
        if pendingHead == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingHead = 0
        } else if pendingHead > 1024, pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        if isIdle {
            let idle = followLimit.map { min(received, $0) } ?? received
            if idle > confirmed { confirmed = idle }
        }
    }
}
