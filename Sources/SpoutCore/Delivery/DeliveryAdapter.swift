/// What a sink knows about its broker and nothing else: how to connect, encode and send an
/// event, read acknowledgements, and tell a transient failure from a permanent one. The
/// `DeliveryEngine` it is plugged into holds the events (its `queue`), retries with backoff,
/// reports outages and completions, and owns the descriptor the relay waits on.
///
/// The engine calls the adapter on the relay's thread only, passing itself; the adapter
/// answers through it:
/// - `engine.nextWaitingTicket()` / `engine.waitingTicket(after:)`, `engine.event(_:)` and
///   `engine.markSent(_:)` to send events in ticket order (per event, these read the queue in
///   place; `nextWaiting()` / `entry(_:)` copy a whole entry, for the rare paths);
/// - `engine.delivered(_:)` and `engine.fail(_:_:)` for what the broker acknowledged or
///   refused for good;
/// - `engine.retry(after:warning:)` for a transient failure: every sent event goes back to
///   waiting and the adapter sends nothing until `engine.isBackingOff` is false again;
/// - `engine.reachable()` when the broker answers again with nothing outstanding (an outage
///   otherwise ends with the first acknowledgement);
/// - `engine.wakeup` to watch its socket and signal from broker callbacks on other threads.
///
/// Porting a sink that carried its own machinery:
/// - its outstanding list → `engine.queue` (`sentCount` is the publish window in use,
///   `oldestSentAt` the age an acknowledgement timeout looks at, `unfinishedCount` what a
///   reconnect sends again);
/// - its backoff → `retry` and `isBackingOff` (a ceiling other than 5 s: pass
///   `RetryBackoff(ceiling:)` to the engine); its outage warning and "back" line → the
///   `warning` of `retry` / `unavailable` and `recoveredMessage`;
/// - its wakeup pipe or epoll set → `engine.wakeup`: `watch` a socket (thread-safe, so
///   library callbacks may call it), `include` a descriptor of its own, `signal()` from other
///   threads, or give `signalDescriptor` to a library that writes to one (librdkafka's
///   `rd_kafka_queue_io_event_enable`). The engine drains it before each `advance` and arms
///   its timer for the backoff and for `nextDeadline`, so no timer thread is needed.
public protocol DeliveryAdapter: AnyObject {
    /// The `sink` dimension of the engine's metrics: `redis`, `nats`, `kafka`.
    var sinkName: String { get }

    /// The line the engine logs when an outage ends, before " after N s": e.g.
    /// "Redis at 127.0.0.1:6379 accepts events again".
    var recoveredMessage: String { get }

    /// Whether events must carry their commit LSN (see `Sink.needsCommitLSN`).
    var needsCommitLSN: Bool { get }

    /// Runs once when the engine is built, before any event: connect (bounded), so that a
    /// wrong password stops spout at once; an unreachable broker is an outage, not an error.
    func start(_ engine: DeliveryEngine) throws(SpoutError)

    /// Makes progress without blocking (at most a short bounded wait for a full socket):
    /// connect when no backoff holds it back, read acknowledgements, send waiting events.
    /// Called by every poll; a thrown error stops the relay.
    func advance(_ engine: DeliveryEngine) throws(SinkError)

    /// An event was queued. Adapters that send at once (asynchronous publishing) do it here;
    /// the default leaves it to the next `advance`, which `nextDeadline` can make immediate.
    func queued(_ engine: DeliveryEngine)

    /// Called after every `advance` and `queued`: points `engine.wakeup` at what the adapter
    /// waits for (its socket) and returns its next deadline (connect or reply timeout, or
    /// now when it has work at once); the engine adds its own retry deadline.
    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant?

    /// Flushes what it can (bounded) and releases the connection.
    func close(_ engine: DeliveryEngine)
}

extension DeliveryAdapter {
    public func queued(_ engine: DeliveryEngine) {}
}
