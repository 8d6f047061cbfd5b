import CoreMetrics

// issue 14: several sinks
/// Several sinks that look like one to the relay (`--sink NAME=URL` given more than once,
/// `--route`): each event goes to the member its `route` names (`--default-route` when the
/// route rendered empty or NULL); completions come from all of them, on the tickets the relay
/// gave out, so the LSN is confirmed only once every member acknowledged everything before it.
/// An event routed to no member is a poison event (`--on-poison`), never dropped unseen.
///
/// Each member sees tickets of its own, consecutive (the delivery engine's queue needs them
/// so); the relay's ticket of each is kept until the member reports it, and reported instead.
///
/// Called from the relay's thread only, like every sink. Per event: one dictionary lookup for
/// the route and two inserts into maps whose capacity is reserved up front.
public final class RoutedSink: Sink {
    public struct Member {
        public var name: String
        public var sink: Sink
        public init(name: String, sink: Sink) {
            self.name = name
            self.sink = sink
        }
    }

    public let members: [Member]
    private let index: [String: Int]
    private let defaultMember: Int?
    private let defaultRoute: String?
    private let log: Log
    private let factory: MetricsFactory
    private var policy = PoisonPolicy.stop
    /// Completions decided here (a poison event under stop or skip), reported by the next `poll`.
    private var local: [SinkCompletion] = []
    /// The member of each ticket in flight, for the stop's log (which holds the oldest).
    private var inFlight: [UInt64: Int] = [:]
    /// Per member: its next ticket, and the relay's ticket of each of its tickets in flight.
    private var nextMemberTicket: [UInt64]
    private var relayTickets: [[UInt64: UInt64]]
    private var inFlightPerMember: [Int]
    private var recordedPerMember: [Int]
    private let inFlightGauges: [Gauge]
    private var poisonCounters: [String: Counter] = [:]

    /// - Parameters:
    ///   - members: at least one, names unique.
    ///   - defaultRoute: the member of events whose route rendered empty or NULL; nil: those are poison.
    ///   - expectedInFlight: the relay's window, to size the in-flight map once.
    public init(members: [Member], defaultRoute: String?, expectedInFlight: Int = 10_000, log: Log = Log(),
                metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        var index: [String: Int] = [:]
        for (position, member) in members.enumerated() {
            guard index.updateValue(position, forKey: member.name) == nil else {
                throw .invalidOption("--sink: two sinks are named \"\(member.name)\": give each a name of its own (--sink NAME=URL)")
            }
        }
        guard !members.isEmpty else { throw .invalidOption("--route needs at least one --sink NAME=URL") }
        if let defaultRoute, index[defaultRoute] == nil {
            throw .invalidOption("--default-route \(defaultRoute) is not a sink: name one of \(members.map(\.name).joined(separator: ", "))")
        }
        self.members = members
        self.index = index
        self.defaultRoute = defaultRoute
        self.defaultMember = defaultRoute.flatMap { index[$0] }
        self.log = log
        self.factory = metrics
        inFlight.reserveCapacity(max(expectedInFlight, 16))
        local.reserveCapacity(64)
        nextMemberTicket = Array(repeating: 0, count: members.count)
        relayTickets = members.map { _ in
            var tickets: [UInt64: UInt64] = [:]
            tickets.reserveCapacity(max(expectedInFlight / max(members.count, 1), 16))
            return tickets
        }
        inFlightPerMember = Array(repeating: 0, count: members.count)
        recordedPerMember = Array(repeating: -1, count: members.count)
        wakeupDescriptors = members.compactMap(\.sink.wakeupDescriptor)
        wakeupDescriptor = wakeupDescriptors.count == members.count ? wakeupDescriptors.first : nil
        inFlightGauges = members.map { Gauge(label: "spout_in_flight_events", dimensions: [("sink", $0.name)], factory: metrics) }
    }

    public var needsCommitLSN: Bool { members.contains { $0.sink.needsCommitLSN } }

    /// Only when every member has one: otherwise the relay polls (a member without one completes in `poll`).
    public let wakeupDescriptor: Int32?

    /// Read once: the relay asks on every idle turn, and a member's descriptor does not change.
    public let wakeupDescriptors: [Int32]

    public var metricsName: String { "routed" }

    public func adopt(_ policy: PoisonPolicy, maxRetries: Int?) {
        self.policy = policy
        for member in members { member.sink.adopt(policy, maxRetries: maxRetries) }
    }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        // A dead letter of a row that could not be mapped has no route: the default's sink, else the first.
        let fallback = event.source == .deadLetter ? defaultMember ?? 0 : defaultMember
        guard let member = event.route.flatMap({ index[$0] }) ?? (event.route == nil ? fallback : nil) else {
            return try unroutable(event, ticket: ticket)
        }
        try send(event, ticket: ticket, to: member)
    }

    private func send(_ event: OutboxEvent, ticket: UInt64, to member: Int) throws(SinkError) {
        let memberTicket = nextMemberTicket[member]
        try members[member].sink.send(event, ticket: memberTicket)
        nextMemberTicket[member] = memberTicket + 1
        relayTickets[member][memberTicket] = ticket
        inFlight[ticket] = member
        inFlightPerMember[member] += 1
    }

    /// An event whose route names no sink: poison.
    private func unroutable(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        let names = members.map(\.name).joined(separator: ", ")
        let reason = event.route.map { "its route \"\($0)\" (--route) names no sink: the sinks are \(names)" }
            ?? "its route (--route) is empty or NULL and there is no --default-route: the sinks are \(names)"
        switch policy {
        case .stop:
            local.append(.failed(ticket: ticket, SinkError(.permanent, reason + "; fix the row's route or add the sink, or set --on-poison",
                                                           eventID: event.id, topic: event.topic)))
        case .skip:
            log.warning("skipped event \"\(event.id)\" for topic \"\(event.topic)\" (--on-poison skip): \(reason)",
                        metadata: ["event": "\(event.id)", "topic": "\(event.topic)"])
            count("spout_events_skipped_total", topic: event.topic)
            local.append(.delivered(ticket: ticket))
        case let .deadLetter(topic):
            // On the default route's sink, else the first: the dead letter takes the event's ticket.
            let member = defaultMember ?? 0
            log.warning("dead-lettered event \"\(event.id)\" for topic \"\(event.topic)\" to \"\(topic)\" on sink \"\(members[member].name)\" "
                        + "(--on-poison dead-letter): \(reason)", metadata: ["event": "\(event.id)", "topic": "\(event.topic)"])
            count("spout_events_dead_lettered_total", topic: event.topic)
            try send(DeadLetter.event(refused: event, error: reason, topic: topic), ticket: ticket, to: member)
        }
    }

    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        if !local.isEmpty {
            for completion in local { report(completion) }
            local.removeAll(keepingCapacity: true)
        }
        for member in members.indices {
            try members[member].sink.poll { completion in
                let memberTicket: UInt64
                switch completion {
                case let .delivered(done): memberTicket = done
                case let .failed(done, _): memberTicket = done
                }
                // A ticket the member never had (or reports twice) is not the relay's to hear of.
                guard let ticket = relayTickets[member].removeValue(forKey: memberTicket) else { return }
                if inFlight.removeValue(forKey: ticket) != nil { inFlightPerMember[member] -= 1 }
                switch completion {
                case .delivered: report(.delivered(ticket: ticket))
                case let .failed(_, error): report(.failed(ticket: ticket, error))
                }
            }
            if recordedPerMember[member] != inFlightPerMember[member] {
                recordedPerMember[member] = inFlightPerMember[member]
                inFlightGauges[member].record(inFlightPerMember[member])
            }
        }
    }

    /// Events each member holds, by name.
    public var inFlightByMember: [(name: String, events: Int)] {
        members.indices.map { (members[$0].name, inFlightPerMember[$0]) }
    }

    public var pendingSummary: String? {
        guard let oldest = inFlight.min(by: { $0.key < $1.key }) else { return nil }
        let counts = inFlightByMember.map { "\($0.name) \($0.events)" }.joined(separator: ", ")
        return "sink \"\(members[oldest.value].name)\" holds the oldest unacknowledged event; in flight per sink: \(counts)"
    }

    public func close() {
        if let summary = pendingSummary { log.info("closing the sinks: \(summary)") }
        for member in members { member.sink.close() }
    }

    private func count(_ label: String, topic: String) {
        let key = label + "\u{0}" + topic
        if poisonCounters[key] == nil {
            poisonCounters[key] = Counter(label: label, dimensions: [("sink", metricsName), ("topic", topic)], factory: factory)
        }
        poisonCounters[key]?.increment()
    }
}
