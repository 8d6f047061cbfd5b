import CoreMetrics

/// The relay's metrics (swift-metrics). The session counts in plain integers on the hot
/// path; these objects are brought up to date only when a status update goes out, so the
/// per-event cost is an array increment.
final class RelayMetrics {
    private let sink: String
    private let factory: MetricsFactory
    private let failed: Counter
    private let transactions: Counter
    private let confirmedLSN: Gauge
    private let receivedLSN: Gauge
    private let inFlightEvents: Gauge
    private let inFlightBytes: Gauge
    private let spoolBytes: Gauge
    /// Sampled: the newest acknowledged event's commit → ack time, once per status update
    /// that follows new acknowledgements (not per event: that would cost a histogram update each).
    private let commitToAck: CoreMetrics.Timer
    /// Connections to PostgreSQL made again after one was lost.
    private let reconnects: Counter
    /// 1 while streaming from PostgreSQL, 0 while disconnected or standing by.
    private let connected: Gauge
    private var sampledAcknowledgement: Int64 = 0
    /// Per topic, in the session's topic order, with what was already published.
    private var delivered: [(counter: Counter, published: Int)] = []
    private var publishedFailed = 0
    // issue 13: poison events (rows that cannot be mapped; the engine counts the sink's refusals)
    private var skipped: [String: (counter: Counter, published: Int)] = [:]
    private var deadLettered: [String: (counter: Counter, published: Int)] = [:]
    private var publishedTransactions = 0

    init(sink: String, factory: MetricsFactory) {
        self.sink = sink
        self.factory = factory
        let dimensions = [("sink", sink)]
        failed = Counter(label: "spout_events_failed_total", dimensions: dimensions, factory: factory)
        transactions = Counter(label: "spout_transactions_total", dimensions: dimensions, factory: factory)
        confirmedLSN = Gauge(label: "spout_confirmed_lsn", dimensions: dimensions, factory: factory)
        receivedLSN = Gauge(label: "spout_received_lsn", dimensions: dimensions, factory: factory)
        inFlightEvents = Gauge(label: "spout_in_flight_events", dimensions: dimensions, factory: factory)
        inFlightBytes = Gauge(label: "spout_in_flight_bytes", dimensions: dimensions, factory: factory)
        spoolBytes = Gauge(label: "spout_spool_bytes", dimensions: dimensions, factory: factory)
        commitToAck = CoreMetrics.Timer(label: "spout_commit_to_ack_seconds", dimensions: dimensions, factory: factory)
        reconnects = Counter(label: "spout_reconnects_total", dimensions: dimensions, factory: factory)
        connected = Gauge(label: "spout_connected", dimensions: dimensions, factory: factory)
    }

    /// Streaming (or not) from PostgreSQL.
    func connection(up: Bool) { connected.record(up ? 1 : 0) }

    /// Streaming again after a lost connection.
    func reconnected() { reconnects.increment() }

    /// Publishes what changed since the last call. `confirmed` is what the status update reported.
    func publish(_ session: borrowing ReplicationSession, confirmed: LSN, spoolBytes spooled: Int) {
        let counts = session.deliveredPerTopic
        while delivered.count < counts.count {
            let topic = session.topics[delivered.count]
            delivered.append((Counter(label: "spout_events_delivered_total", dimensions: [("sink", sink), ("topic", topic)], factory: factory), 0))
        }
        for index in counts.indices where counts[index] != delivered[index].published {
            delivered[index].counter.increment(by: counts[index] - delivered[index].published)
            delivered[index].published = counts[index]
        }
        if session.failedEvents != publishedFailed {
            failed.increment(by: session.failedEvents - publishedFailed)
            publishedFailed = session.failedEvents
        }
        publish(session.skippedPerTopic, into: &skipped, label: "spout_events_skipped_total")
        publish(session.deadLetteredPerTopic, into: &deadLettered, label: "spout_events_dead_lettered_total")
        if session.statistics.transactions != publishedTransactions {
            transactions.increment(by: session.statistics.transactions - publishedTransactions)
            publishedTransactions = session.statistics.transactions
        }
        confirmedLSN.record(Double(confirmed.rawValue))
        receivedLSN.record(Double(session.tracker.received.rawValue))
        inFlightEvents.record(session.dispatchedUnacknowledged)
        inFlightBytes.record(session.inFlightBytes)
        spoolBytes.record(spooled)
        if let newest = session.newestAcknowledged, newest.acknowledgedAt != sampledAcknowledgement {
            sampledAcknowledgement = newest.acknowledgedAt
            commitToAck.recordMicroseconds(max(0, LatencyRecorder.age(of: newest.committedAt, at: newest.acknowledgedAt)))
        }
    }

    private func publish(_ counts: [String: Int], into counters: inout [String: (counter: Counter, published: Int)], label: String) {
        for (topic, count) in counts where counters[topic]?.published != count {
            var entry = counters[topic] ?? (Counter(label: label, dimensions: [("sink", sink), ("topic", topic)], factory: factory), 0)
            entry.counter.increment(by: count - entry.published)
            entry.published = count
            counters[topic] = entry
        }
    }
}
