/// Which ticket each delivery tag of a channel in confirm mode stands for. The broker numbers
/// a channel's publishes 1, 2, 3…; a confirm names one tag, or with `multiple` every tag up to
/// it, and may come out of order for messages routed to different queues. Pure: no IO, so the
/// rules are tested alone.
struct AMQPDeliveryTags {
    /// The tickets from `head` on, by tag (`tickets[head]` has `headTag`); confirmed ones are `done`.
    private var tickets: [UInt64] = []
    private var head = 0
    private var headTag: UInt64 = 1
    private static let done = UInt64.max

    init(capacity: Int) {
        tickets.reserveCapacity(capacity)
    }

    /// Messages published and not yet confirmed.
    private(set) var unconfirmed = 0

    /// A new channel: tags start at 1 again.
    mutating func reset() {
        tickets.removeAll(keepingCapacity: true)
        head = 0
        headTag = 1
        unconfirmed = 0
    }

    /// The next publish carries `ticket`.
    mutating func published(_ ticket: UInt64) {
        tickets.append(ticket)
        unconfirmed += 1
    }

    /// Marks `tag` (with `multiple` every earlier tag too) confirmed and passes each ticket it
    /// confirms now, in tag order, once. Tags confirmed before or never published are ignored.
    mutating func confirm(_ tag: UInt64, multiple: Bool, _ each: (UInt64) -> Void) {
        let pending = tickets.count - head
        guard pending > 0, tag >= headTag, tag - headTag < UInt64(pending) else { return }
        let last = head + Int(tag - headTag)
        for index in (multiple ? head : last)...last where tickets[index] != Self.done {
            each(tickets[index])
            tickets[index] = Self.done
            unconfirmed -= 1
        }
        while head < tickets.count, tickets[head] == Self.done {
            head += 1
            headTag += 1
        }
        if head == tickets.count {
            tickets.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 4096, head * 2 >= tickets.count {
            tickets.removeFirst(head)
            head = 0
        }
    }
}
