import CoreMetrics

/// The delivery machinery every broker sink shares, written once: the ordered queue of
/// outstanding events, the retry policy (`RetryBackoff`), the outage reporter (one warning when
/// an outage begins, one line when it ends, and the `spout_sink_*` outage metrics), the
/// descriptor the relay waits on (`DeliveryWakeup`) with its timer, and completion reporting.
/// What is specific to a broker lives in its `DeliveryAdapter`.
///
/// A sink is an engine with its adapter: `RedisStreamSink` subclasses it and only builds its
/// adapter. The relay drives the engine through `Sink`; the engine drives the adapter; the
/// adapter answers through the engine's methods below. All on the relay's thread.
///
/// Delivery rules the engine keeps for every sink:
/// - events go to the broker in ticket order; a transient failure (`retry`) puts every sent,
///   unacknowledged event back to waiting and holds sending back for a backoff, so the
///   oldest goes out again first and per-key order survives;
/// - every ticket is reported exactly once, delivered or failed, from `poll`;
/// - after an event's permanent failure (`fail`) nothing more is sent: every event behind it
///   fails at once ("not published"), while acknowledgements of events before it are still
///   read and reported, so the relay confirms all that came before the failed event;
/// - after a failure of the sink itself (`stop`, an error from the adapter) every later
///   `send` and `poll` throws it.
open class DeliveryEngine: Sink {
    public let wakeup: DeliveryWakeup
    /// The outstanding events, in ticket order.
    public private(set) var queue: DeliveryQueue
    public let log: Log

    private let adapter: any DeliveryAdapter
    private var backoff: RetryBackoff
    private var outage = OutageState()
    /// No sending or reconnecting before this instant (a backoff runs).
    private var retryAt: ContinuousClock.Instant?
    /// Once set, every `send` and `poll` throws it.
    private var failure: SinkError?
    /// The first event that failed for good: nothing after it is sent.
    private var failedTicket: UInt64?
    /// Reported by the next `poll`.
    private var completions: [SinkCompletion] = []
    private let metrics: DeliveryMetrics
    private let metricsFactory: MetricsFactory
    /// What a permanent refusal of one event does (`--on-poison`, through `adopt`).
    public private(set) var poisonPolicy = PoisonPolicy.stop
    /// Tickets whose dead letter is on its way, with the refused event's topic (for the counter).
    private var deadLetters: [UInt64: String] = [:]
    /// A dead letter waits to be sent: `poll` lets the adapter advance once more.
    private var deadLetterQueued = false
    private var poisonCounters: [String: Counter] = [:]
    /// Transient refusals per ticket (`refusedTransiently`), apart from the sends an outage
    /// repeats, which never count.
    private var refusals: [UInt64: Int] = [:]
    /// `--max-retries`: transient refusals of one event (`refusedTransiently`) before it is
    /// poison; nil: retried for ever.
    public private(set) var maxRetries: Int?
    private let clock: @Sendable () -> ContinuousClock.Instant
    private var random: any RandomNumberGenerator

    /// - Parameters:
    ///   - capacity: events the queue is sized for at first (the relay's in-flight window).
    ///   - backoff: the retry policy; sinks differ only in its ceiling.
    ///   - wakeup: one the adapter made first, when parts it builds before the engine must
    ///     signal it (a client library's callbacks); nil: the engine makes its own.
    ///   - metrics: where the outage and retry metrics go (tests: `TestMetrics`).
    ///   - clock, random: injected by tests.
    public init(adapter: any DeliveryAdapter, capacity: Int, backoff: RetryBackoff = RetryBackoff(), log: Log,
                wakeup: DeliveryWakeup? = nil, metrics: MetricsFactory = MetricsSystem.factory,
                clock: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now },
                random: any RandomNumberGenerator = SystemRandomNumberGenerator()) throws(SpoutError) {
        self.adapter = adapter
        self.backoff = backoff
        self.log = log
        self.clock = clock
        self.random = random
        self.metrics = DeliveryMetrics(sink: adapter.sinkName, factory: metrics)
        metricsFactory = metrics
        queue = DeliveryQueue(capacity: min(max(capacity, 1), 65_536))
        completions.reserveCapacity(min(max(capacity, 16), 4096))
        if let wakeup {
            self.wakeup = wakeup
        } else {
            do { self.wakeup = try DeliveryWakeup() } catch { throw .sink(error) }
        }
        try adapter.start(self)
        updateWakeup()
    }

    deinit { adapter.close(self) }

    // MARK: Sink

    public var needsCommitLSN: Bool { adapter.needsCommitLSN }

    /// The `sink` dimension of metrics: the adapter's name (redis, nats, kafka).
    public var metricsName: String { adapter.sinkName }

    /// Always there, also while the broker is down: the relay then sleeps until the next deadline.
    public var wakeupDescriptor: Int32? { wakeup.descriptor }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        if let failure { throw failure }
        if failedTicket != nil {
            completions.append(.failed(ticket: ticket, Self.notPublished(event)))
            return
        }
        guard queue.append(event, ticket: ticket) else {
            throw SinkError(.permanent, "internal error: ticket \(ticket) out of sequence", eventID: event.id, topic: event.topic)
        }
        adapter.queued(self)
        // The first event after a quiet spell may make the adapter's work due at once.
        if queue.unfinishedCount == 1 { updateWakeup() }
    }

    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        wakeup.drain()
        let now = clock()
        if let due = retryAt, now >= due { retryAt = nil }
        if failure == nil {
            do {
                try adapter.advance(self)
                // A dead letter took a refused event's place: send it now, not at the next wakeup.
                if deadLetterQueued {
                    deadLetterQueued = false
                    try adapter.advance(self)
                }
            } catch { stop(error) }
        }
        if outage.isActive { metrics.outageSeconds.record(outage.length(at: clock()).seconds) }
        if !completions.isEmpty {
            for completion in completions { report(completion) }
            completions.removeAll(keepingCapacity: true)
        }
        updateWakeup()
        if let failure { throw failure }
    }

    public func close() {
        adapter.close(self)
    }

    public func adopt(_ policy: PoisonPolicy, maxRetries: Int?) {
        poisonPolicy = policy
        self.maxRetries = maxRetries
    }

    private func updateWakeup() {
        let now = clock()
        var deadline = adapter.nextDeadline(self)
        if let retryAt { deadline = min(deadline ?? retryAt, retryAt) }
        wakeup.arm(failure == nil ? deadline : nil, now: now)
    }

    // MARK: For adapters

    /// The engine's clock (tests inject theirs).
    public final var now: ContinuousClock.Instant { clock() }

    /// A backoff after a transient failure holds sending and reconnecting back.
    public final var isBackingOff: Bool {
        guard let retryAt else { return false }
        return clock() < retryAt
    }

    /// Nothing more is sent: an event failed for good, or the sink did.
    public final var isStopped: Bool { failure != nil || failedTicket != nil }

    // Per event, adapters use the ticket methods and `event(_:)`: they read the queue in place
    // (`queue` from outside the engine is a copy of it). The entry methods copy a whole entry.

    /// The oldest waiting ticket: the next to send.
    public final func nextWaitingTicket() -> UInt64? { queue.nextWaiting() }

    /// The waiting ticket after `ticket`, to gather a batch before marking it sent.
    public final func waitingTicket(after ticket: UInt64) -> UInt64? { inPlace { $0.waiting(after: ticket) } }

    /// The event of a ticket the queue holds.
    public final func event(_ ticket: UInt64) -> OutboxEvent? { inPlace { $0.event(ticket) } }

    /// The event's `approximateSize` (taken when it arrived), to size a batch without a copy.
    public final func size(_ ticket: UInt64) -> Int? { inPlace { $0.size(ticket) } }

    /// The event's position in its transaction (`DeliveryQueue.Entry.position`).
    public final func position(_ ticket: UInt64) -> UInt32? { inPlace { $0.position(ticket) } }

    /// Where a ticket stands; nil when the queue does not hold it.
    public final func state(_ ticket: UInt64) -> DeliveryQueue.State? { inPlace { $0.state(ticket) } }

    /// Events with the broker (the publish window in use).
    public final var sentCount: Int { queue.sentCount }

    /// The oldest waiting event: the next to send.
    public final func nextWaiting() -> DeliveryQueue.Entry? {
        inPlace { queue in queue.nextWaiting().flatMap { queue[$0] } }
    }

    /// The waiting event after `ticket`, to gather a batch before marking it sent.
    public final func waiting(after ticket: UInt64) -> DeliveryQueue.Entry? {
        inPlace { queue in queue.waiting(after: ticket).flatMap { queue[$0] } }
    }

    public final func entry(_ ticket: UInt64) -> DeliveryQueue.Entry? { inPlace { $0[ticket] } }

    /// Reads the queue in place. `queue.method()` on the stored property would copy the queue
    /// for the call (retaining its arrays, then releasing them): a cost per event otherwise.
    @inline(__always)
    private func inPlace<Result>(_ body: (inout DeliveryQueue) -> Result) -> Result {
        body(&queue)
    }

    /// Events wait to be sent.
    public final var hasWaiting: Bool { queue.hasWaiting }

    /// The event is with the broker now.
    public final func markSent(_ ticket: UInt64, at instant: ContinuousClock.Instant? = nil) {
        queue.markSent(ticket, at: instant ?? clock())
    }

    /// The broker acknowledged the event. Also ends an outage. A ticket not held (reported
    /// already) is ignored; one waiting to be sent again counts: an acknowledgement is one.
    public final func delivered(_ ticket: UInt64) {
        guard queue.finish(ticket) else { return }
        if !deadLetters.isEmpty, let topic = deadLetters.removeValue(forKey: ticket) {
            count("spout_events_dead_lettered_total", topic: topic)
        }
        if !refusals.isEmpty { refusals[ticket] = nil }
        completions.append(.delivered(ticket: ticket))
        backoff.reset()
        if outage.isActive { recovered() }
    }

    /// The broker refused the event for good: it fails with `message` (naming the event),
    /// and the sink stops.
    public final func fail(_ ticket: UInt64, _ message: String) {
        guard let entry = queue[ticket] else { return }
        fail(ticket, SinkError(.permanent, message, eventID: entry.event.id, topic: entry.event.topic))
    }

    public final func fail(_ ticket: UInt64, _ error: SinkError) {
        if poisonPolicy != .stop, passOver(ticket, error) { return }
        guard queue.finish(ticket) else { return }
        completions.append(.failed(ticket: ticket, error))
        guard failedTicket.map({ ticket < $0 }) ?? true else { return }
        failedTicket = ticket
        // What waits or is in flight behind it can never be confirmed: fail it now rather than
        // leave the relay's drain waiting for it; what came before is still acknowledged.
        var later = ticket + 1
        while later < queue.endTicket {
            if let event = queue.event(later), queue.finish(later) {
                completions.append(.failed(ticket: later, Self.notPublished(event)))
            }
            later += 1
        }
    }

    /// `--on-poison skip` or `dead-letter` for an event the broker refused for good: false when
    /// the policy does not apply (a dead letter refused in turn stops the sink, as `stop` does).
    private func passOver(_ ticket: UInt64, _ error: SinkError) -> Bool {
        guard let state = queue.state(ticket), state != .finished, let event = queue.event(ticket),
              event.source != .deadLetter else { return false }
        switch poisonPolicy {
        case .stop:
            return false
        case .skip:
            queue.finish(ticket)
            log.warning("skipped event \"\(event.id)\" for topic \"\(event.topic)\" (--on-poison skip): \(error.message)",
                        metadata: ["event": "\(event.id)", "topic": "\(event.topic)"])
            count("spout_events_skipped_total", topic: event.topic)
            completions.append(.delivered(ticket: ticket))
        case let .deadLetter(topic):
            let letter = DeadLetter.event(refused: event, error: error.message, topic: topic)
            guard queue.replace(ticket, with: letter) else { return false }
            log.warning("dead-lettered event \"\(event.id)\" for topic \"\(event.topic)\" to \"\(topic)\" (--on-poison dead-letter): \(error.message)",
                        metadata: ["event": "\(event.id)", "topic": "\(event.topic)"])
            deadLetters[ticket] = event.topic
            deadLetterQueued = true
        }
        return true
    }

    /// A refusal of this one event that may pass (a Redis OOM reply, a JetStream leader
    /// election): retried with backoff like any transient failure, until it was sent more than
    /// `maxRetries` times; then it is poison (`fail`). Outages (a lost connection, a broker
    /// down) are `retry`, never this: they do not count.
    public final func refusedTransiently(_ ticket: UInt64, reason: @autoclosure () -> String, warning: @autoclosure () -> String) {
        if refusalExhaustsRetries(ticket, reason: reason()) { return }
        retry(after: reason(), warning: warning())
    }

    /// Counts a transient refusal of this one event, for an adapter that retries its own way
    /// (a new connection): true when it was one too many, and the event is poison now (`fail`).
    public final func refusalExhaustsRetries(_ ticket: UInt64, reason: @autoclosure () -> String) -> Bool {
        guard let maxRetries, let event = queue.event(ticket) else { return false }
        let refused = refusals[ticket, default: 0] + 1
        guard refused > maxRetries else {
            refusals[ticket] = refused
            return false
        }
        refusals[ticket] = nil
        fail(ticket, SinkError(.permanent, "refused \(refused) times, more than --max-retries \(maxRetries): \(reason())",
                               eventID: event.id, topic: event.topic))
        return true
    }

    private func count(_ label: String, topic: String) {
        let key = label + "\u{0}" + topic
        if poisonCounters[key] == nil {
            poisonCounters[key] = Counter(label: label, dimensions: [("sink", adapter.sinkName), ("topic", topic)], factory: metricsFactory)
        }
        poisonCounters[key]?.increment()
    }

    private static func notPublished(_ event: OutboxEvent) -> SinkError {
        SinkError(.permanent, "not published: an earlier event failed permanently", eventID: event.id, topic: event.topic)
    }

    /// A permanent failure not tied to one event (a refused login): the sink stops, and the
    /// next poll throws it.
    public func stop(_ error: SinkError) {
        if failure == nil { failure = error }
    }

    /// A transient failure: every sent, unacknowledged event waits to be sent again, in order,
    /// after a backoff (`isBackingOff`). The first failure of an outage logs `warning`; later
    /// ones only `reason`, at debug.
    public func retry(after reason: @autoclosure () -> String, warning: @autoclosure () -> String) {
        let now = clock()
        queue.rewind(at: now)
        retryAt = now + backoff.next(using: &random)
        metrics.retries.increment()
        unavailable(reason(), warning: warning())
    }

    /// The broker is in trouble, but nothing needs sending again (the client library retries
    /// by itself): an outage begins, with its one `warning`, unless one is under way; the
    /// next acknowledgement ends it.
    public func unavailable(_ reason: @autoclosure () -> String, warning: @autoclosure () -> String) {
        if outage.failed(at: clock()) {
            metrics.outages.increment()
            metrics.outageSeconds.record(0)
            log.warning(warning())
        } else {
            log.debug("\(adapter.sinkName): still failing: \(reason())")
        }
    }

    /// The broker answers again (a new connection's handshake): with nothing outstanding
    /// that ends an outage; otherwise the first acknowledgement does.
    public func reachable() {
        guard queue.isEmpty else { return }
        backoff.reset()
        if outage.isActive { recovered() }
    }

    /// Whether an outage is under way (its warning was logged).
    public var inOutage: Bool { outage.isActive }

    private func recovered() {
        guard let length = outage.recovered(at: clock()) else { return }
        metrics.outageSeconds.record(0)
        log.info("\(adapter.recoveredMessage) after \(OutageState.seconds(length)) s")
    }

}
