/// The events the Kafka sink holds, in ticket order, from the oldest one not yet finished
/// (delivered or failed for good) to the newest one handed over.
///
/// Order rule: events go to librdkafka strictly in ticket order. An event that comes back
/// with a retriable error is `waiting` again and the next one to produce; the sink produces
/// it only once librdkafka holds nothing else, so nothing later can overtake it.
struct KafkaDeliveryWindow {
    enum State: UInt8 {
        /// Not handed to librdkafka (new, queue full, or back from a retriable error).
        case waiting
        /// librdkafka holds it; its delivery report is due.
        case producing
        /// Reported to the relay; its slot is free once the older ones are finished too.
        case finished
    }

    private var events: [OutboxEvent?]
    private var states: [State]
    /// When each `producing` event was handed to librdkafka (the sink's own message timeout).
    private var producedAt: [ContinuousClock.Instant]
    private var head = 0
    private(set) var count = 0
    /// The ticket at `head`.
    private(set) var oldestTicket: UInt64 = 0
    /// No event below this ticket is waiting.
    private var waitingFrom: UInt64 = 0
    /// Events librdkafka holds.
    private(set) var producing = 0

    init(capacity: Int) {
        var size = 16
        while size < capacity, size < 1 << 20 { size <<= 1 }
        events = [OutboxEvent?](repeating: nil, count: size)
        states = [State](repeating: .finished, count: size)
        producedAt = [ContinuousClock.Instant](repeating: .now, count: size)
    }

    var isEmpty: Bool { count == 0 }
    private var endTicket: UInt64 { oldestTicket + UInt64(count) }
    private var mask: Int { events.count - 1 }

    private func index(_ ticket: UInt64) -> Int? {
        guard ticket >= oldestTicket, ticket < endTicket else { return nil }
        return (head + Int(ticket - oldestTicket)) & mask
    }

    /// Takes the next event; tickets must follow each other without gaps.
    mutating func append(_ event: OutboxEvent, ticket: UInt64) -> Bool {
        if count == 0 {
            oldestTicket = ticket
            waitingFrom = ticket
        }
        guard ticket == endTicket else { return false }
        if count == events.count { grow() }
        let slot = (head + count) & mask
        events[slot] = event
        states[slot] = .waiting
        count += 1
        return true
    }

    func event(_ ticket: UInt64) -> OutboxEvent? {
        index(ticket).flatMap { events[$0] }
    }

    func state(_ ticket: UInt64) -> State? {
        index(ticket).map { states[$0] }
    }

    /// The oldest waiting ticket: the next to hand to librdkafka.
    mutating func nextWaiting() -> UInt64? {
        while waitingFrom < endTicket {
            if let slot = index(waitingFrom), states[slot] == .waiting { return waitingFrom }
            waitingFrom += 1
        }
        return nil
    }

    mutating func markProducing(_ ticket: UInt64, at instant: ContinuousClock.Instant) {
        guard let slot = index(ticket), states[slot] == .waiting else { return }
        states[slot] = .producing
        producedAt[slot] = instant
        producing += 1
    }

    /// When the oldest event was handed to librdkafka, if librdkafka holds it. Events go to
    /// librdkafka in ticket order, so outside a recovery (when the oldest may be waiting
    /// again) no event librdkafka holds has waited longer.
    var oldestProducedAt: ContinuousClock.Instant? {
        count > 0 && states[head] == .producing ? producedAt[head] : nil
    }

    /// A retriable failure: the event waits to be produced again, before anything newer.
    mutating func markWaiting(_ ticket: UInt64) {
        guard let slot = index(ticket), states[slot] == .producing else { return }
        states[slot] = .waiting
        producing -= 1
        waitingFrom = min(waitingFrom, ticket)
    }

    /// Delivered, or failed for good. Returns the event (for the error message), or nil if
    /// the ticket is not held (already finished).
    mutating func finish(_ ticket: UInt64) -> OutboxEvent? {
        guard let slot = index(ticket), states[slot] != .finished else { return nil }
        if states[slot] == .producing { producing -= 1 }
        states[slot] = .finished
        let event = events[slot]
        events[slot] = nil
        while count > 0, states[head] == .finished {
            head = (head + 1) & mask
            oldestTicket += 1
            count -= 1
        }
        waitingFrom = max(waitingFrom, oldestTicket)
        return event
    }

    private mutating func grow() {
        var newEvents = [OutboxEvent?](repeating: nil, count: events.count * 2)
        var newStates = [State](repeating: .finished, count: events.count * 2)
        var newProducedAt = [ContinuousClock.Instant](repeating: .now, count: events.count * 2)
        for offset in 0..<count {
            newEvents[offset] = events[(head + offset) & mask]
            newStates[offset] = states[(head + offset) & mask]
            newProducedAt[offset] = producedAt[(head + offset) & mask]
        }
        events = newEvents
        states = newStates
        producedAt = newProducedAt
        head = 0
    }
}
