/// The events a sink holds, in ticket order, from the oldest one not yet finished (delivered
/// or failed for good) to the newest one handed over: the delivery engine's outstanding queue.
///
/// Order rule: events go to the broker strictly in ticket order (`nextWaiting`). A transient
/// failure puts every sent event back to waiting (`rewind`), so the next send starts again at
/// the oldest unacknowledged event and nothing later overtakes it. Acknowledgements may arrive
/// in any order (Kafka partitions); the queue frees a slot once every older one is finished.
///
/// A ring buffer of power-of-two size: appending and finishing allocate nothing once it has
/// grown to the in-flight window.
public struct DeliveryQueue: Sendable {
    public enum State: UInt8, Sendable {
        /// Not sent yet, or back from a transient failure: the next to send, in ticket order.
        case waiting
        /// With the broker; its acknowledgement is due.
        case sent
        /// Reported to the relay; its slot is free once the older ones are finished too.
        case finished
    }

    /// One held event and its bookkeeping, as `subscript` hands it out (a copy).
    public struct Entry: Sendable {
        public var ticket: UInt64
        public var event: OutboxEvent
        /// How many events of the same transaction (same commit LSN) came before this one:
        /// with the commit LSN, a stable id for the event (Redis `--redis-ids lsn`).
        public var position: UInt32
        public var state: State
        /// How often it was sent.
        public var attempts: UInt32
        /// When it was last sent (acknowledgement timeouts).
        public var sentAt: ContinuousClock.Instant?
        /// When a transient failure first sent it back to waiting.
        public var firstFailureAt: ContinuousClock.Instant?
    }

    /// An entry's bookkeeping, apart from its event: plain values of fixed layout, so the
    /// per-event reads and writes (state, markSent, finish) neither copy the event (and
    /// retain its strings and arrays) nor go through runtime value witnesses, as a stored
    /// `ContinuousClock.Instant` would make them (a resilient standard-library type).
    private struct Mark {
        var state: State = .waiting
        var position: UInt32 = 0
        var attempts: UInt32 = 0
        /// `approximateSize` of the event, taken once when it arrives (batching by bytes).
        var size: UInt32 = 0
        /// `StoredInstant`s.
        var sentAt: Duration?
        var firstFailureAt: Duration?
    }

    private var marks: [Mark]
    /// The events, slot by slot like `marks`; nil in a free slot.
    private var events: [OutboxEvent?]
    private var head = 0
    /// Unfinished and finished-but-not-yet-freed entries from `head`.
    public private(set) var count = 0
    /// The ticket at `head`.
    public private(set) var oldestTicket: UInt64 = 0
    /// No entry below this ticket is waiting.
    private var waitingFrom: UInt64 = 0
    /// Entries with the broker.
    public private(set) var sentCount = 0
    /// Entries not finished.
    public private(set) var unfinishedCount = 0

    private var lastLSN = LSN.zero
    private var nextPosition: UInt32 = 0

    public init(capacity: Int) {
        var size = 16
        while size < capacity, size < 1 << 20 { size <<= 1 }
        marks = [Mark](repeating: Mark(), count: size)
        events = [OutboxEvent?](repeating: nil, count: size)
    }

    public var isEmpty: Bool { unfinishedCount == 0 }
    /// Entries wait to be sent (new, or back from a transient failure).
    public var hasWaiting: Bool { unfinishedCount > sentCount }
    /// The ticket after the newest entry.
    public var endTicket: UInt64 { oldestTicket + UInt64(count) }
    private var mask: Int { marks.count - 1 }

    private func slot(_ ticket: UInt64) -> Int? {
        guard ticket >= oldestTicket, ticket < endTicket else { return nil }
        return (head + Int(ticket - oldestTicket)) & mask
    }

    /// Takes the next event; tickets must follow each other without gaps (false otherwise).
    public mutating func append(_ event: OutboxEvent, ticket: UInt64) -> Bool {
        if count == 0 {
            oldestTicket = ticket
            waitingFrom = ticket
        }
        guard ticket == endTicket else { return false }
        if count == marks.count { grow() }
        // Events of one transaction arrive together and share its commit LSN.
        var position: UInt32 = 0
        if event.lsn == lastLSN { position = nextPosition } else { lastLSN = event.lsn }
        nextPosition = position &+ 1
        let slot = (head + count) & mask
        marks[slot] = Mark(position: position, size: UInt32(clamping: event.approximateSize))
        events[slot] = event
        count += 1
        unfinishedCount += 1
        return true
    }

    /// The entry with this ticket, if the queue holds it (finished ones too, until freed): a
    /// copy, for what is not on the per-event path (the hot path reads `event`, `state`, `size`).
    public subscript(ticket: UInt64) -> Entry? {
        guard let slot = slot(ticket), let event = events[slot] else { return nil }
        let mark = marks[slot]
        return Entry(ticket: ticket, event: event, position: mark.position, state: mark.state, attempts: mark.attempts,
                     sentAt: mark.sentAt.map(StoredInstant.instant), firstFailureAt: mark.firstFailureAt.map(StoredInstant.instant))
    }

    /// The event with this ticket, if the queue holds it.
    public func event(_ ticket: UInt64) -> OutboxEvent? {
        guard let slot = slot(ticket) else { return nil }
        return events[slot]
    }

    /// The event's position in its transaction (see `Entry.position`).
    public func position(_ ticket: UInt64) -> UInt32? {
        slot(ticket).map { marks[$0].position }
    }

    /// The event's `approximateSize`, as taken when it arrived.
    public func size(_ ticket: UInt64) -> Int? {
        slot(ticket).map { Int(marks[$0].size) }
    }

    public func state(_ ticket: UInt64) -> State? {
        slot(ticket).map { marks[$0].state }
    }

    /// The oldest waiting ticket: the next to send.
    public mutating func nextWaiting() -> UInt64? {
        while waitingFrom < endTicket {
            if state(waitingFrom) == .waiting { return waitingFrom }
            waitingFrom += 1
        }
        return nil
    }

    /// The first waiting ticket after `ticket` (to gather a batch without marking it sent yet).
    public func waiting(after ticket: UInt64) -> UInt64? {
        var next = max(ticket &+ 1, waitingFrom)
        while next < endTicket {
            if state(next) == .waiting { return next }
            next += 1
        }
        return nil
    }

    public mutating func markSent(_ ticket: UInt64, at instant: ContinuousClock.Instant) {
        guard let slot = slot(ticket), marks[slot].state == .waiting else { return }
        marks[slot].state = .sent
        marks[slot].sentAt = StoredInstant.store(instant)
        marks[slot].attempts += 1
        sentCount += 1
    }

    /// A transient failure: every sent entry waits to be sent again, before anything newer.
    /// Returns how many went back.
    @discardableResult
    public mutating func rewind(at instant: ContinuousClock.Instant) -> Int {
        guard sentCount > 0 else { return 0 }
        let rewound = sentCount
        var ticket = oldestTicket
        var first: UInt64?
        let failedAt = StoredInstant.store(instant)
        while sentCount > 0, ticket < endTicket {
            if let slot = slot(ticket), marks[slot].state == .sent {
                marks[slot].state = .waiting
                if marks[slot].firstFailureAt == nil { marks[slot].firstFailureAt = failedAt }
                sentCount -= 1
                if first == nil { first = ticket }
            }
            ticket += 1
        }
        if let first { waitingFrom = min(waitingFrom, first) }
        return rewound
    }

    /// Another event takes an unfinished entry's place (a dead letter for one the broker
    /// refused): it waits to be sent, first in line. False if the ticket is not held or finished.
    public mutating func replace(_ ticket: UInt64, with event: OutboxEvent) -> Bool {
        guard let slot = slot(ticket), marks[slot].state != .finished else { return false }
        if marks[slot].state == .sent { sentCount -= 1 }
        marks[slot].state = .waiting
        marks[slot].attempts = 0
        marks[slot].size = UInt32(clamping: event.approximateSize)
        events[slot] = event
        waitingFrom = min(waitingFrom, ticket)
        return true
    }

    /// Delivered, or failed for good. False if the ticket is not held or was finished already.
    @discardableResult
    public mutating func finish(_ ticket: UInt64) -> Bool {
        guard let slot = slot(ticket) else { return false }
        let state = marks[slot].state
        guard state != .finished else { return false }
        if state == .sent { sentCount -= 1 }
        unfinishedCount -= 1
        marks[slot].state = .finished
        while count > 0, marks[head].state == .finished {
            events[head] = nil
            head = (head + 1) & mask
            oldestTicket += 1
            count -= 1
        }
        waitingFrom = max(waitingFrom, oldestTicket)
        return true
    }

    /// When the oldest entry with the broker was sent. Entries are sent in ticket order, so
    /// no sent entry has waited longer.
    public var oldestSentAt: ContinuousClock.Instant? {
        guard sentCount > 0 else { return nil }
        var ticket = oldestTicket
        while ticket < endTicket {
            if let slot = slot(ticket), marks[slot].state == .sent { return marks[slot].sentAt.map(StoredInstant.instant) }
            ticket += 1
        }
        return nil
    }

    /// The oldest unfinished entry's ticket.
    public var oldestUnfinished: UInt64? {
        var ticket = oldestTicket
        while ticket < endTicket {
            if state(ticket) != .finished { return ticket }
            ticket += 1
        }
        return nil
    }

    private mutating func grow() {
        var biggerMarks = [Mark](repeating: Mark(), count: marks.count * 2)
        var biggerEvents = [OutboxEvent?](repeating: nil, count: marks.count * 2)
        for offset in 0..<count {
            biggerMarks[offset] = marks[(head + offset) & mask]
            biggerEvents[offset] = events[(head + offset) & mask]
        }
        marks = biggerMarks
        events = biggerEvents
        head = 0
    }
}
