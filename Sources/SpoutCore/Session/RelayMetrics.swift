import CoreMetrics
import Foundation
import Synchronization

/// The relay's metrics (swift-metrics). The session counts in plain integers on the hot
/// path; these objects are brought up to date only when a status update goes out, so the
/// per-event cost is an array increment.
final class RelayMetrics {
    private let sink: String
    private let factory: MetricsFactory
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
    /// 1 while standing by (another client holds the slot), 0 otherwise.
    private let standby: Gauge
    /// Age of the oldest event waiting for the sink's acknowledgement (since its commit); 0 when none waits.
    private let lagSeconds: Gauge
    /// What `/healthz` and `/readyz` read (another thread): state changes, never per event.
    let health: RelayHealth
    private var sampledAcknowledgement: Int64 = 0
    /// Per topic, in the session's topic order, with what was already published.
    private var delivered: [(counter: Counter, published: Int)] = []
    private var failed: [String: (counter: Counter, published: Int)] = [:]
    // issue 13: poison events (rows that cannot be mapped; the engine counts the sink's refusals)
    private var skipped: [String: (counter: Counter, published: Int)] = [:]
    private var deadLettered: [String: (counter: Counter, published: Int)] = [:]
    private var publishedTransactions = 0

    init(sink: String, factory: MetricsFactory, health: RelayHealth = RelayHealth()) {
        self.sink = sink
        self.health = health
        self.factory = factory
        let dimensions = [("sink", sink)]
        transactions = Counter(label: "spout_transactions_total", dimensions: dimensions, factory: factory)
        confirmedLSN = Gauge(label: "spout_confirmed_lsn", dimensions: dimensions, factory: factory)
        receivedLSN = Gauge(label: "spout_received_lsn", dimensions: dimensions, factory: factory)
        inFlightEvents = Gauge(label: "spout_in_flight_events", dimensions: dimensions, factory: factory)
        inFlightBytes = Gauge(label: "spout_in_flight_bytes", dimensions: dimensions, factory: factory)
        spoolBytes = Gauge(label: "spout_spool_bytes", dimensions: dimensions, factory: factory)
        commitToAck = CoreMetrics.Timer(label: "spout_commit_to_ack_seconds", dimensions: dimensions, factory: factory)
        reconnects = Counter(label: "spout_reconnects_total", dimensions: dimensions, factory: factory)
        connected = Gauge(label: "spout_connected", dimensions: dimensions, factory: factory)
        standby = Gauge(label: "spout_standby", dimensions: dimensions, factory: factory)
        lagSeconds = Gauge(label: "spout_lag_seconds", dimensions: dimensions, factory: factory)
    }

    /// Streaming (or not) from PostgreSQL.
    func connection(up: Bool) {
        connected.record(up ? 1 : 0)
        if up { standby.record(0) }
        health.set(up ? .streaming : .disconnected)
    }

    /// Another client holds the slot: this relay waits to take over.
    func standingBy() {
        standby.record(1)
        health.set(.standby)
    }

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
        publish(session.failedPerTopic, into: &failed, label: "spout_events_failed_total")
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
        health.confirmed(confirmed)
        // Lag: how long the oldest event still waiting for the sink has been committed.
        let now = LatencyRecorder.nowMicros()
        lagSeconds.record(session.oldestUnacknowledgedCommit.map { Double(max(0, LatencyRecorder.age(of: $0, at: now))) / 1e6 } ?? 0)
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

/// The relay's state for `/healthz` and `/readyz`, read from another thread. The relay writes
/// it when its state changes and once per loop turn (`beat`: one clock read and one atomic
/// store, never per event); readers take a `Snapshot`.
public final class RelayHealth: Sendable {
    public enum Phase: UInt8, Sendable {
        /// Setting up (connecting, checking the table and slot), before the relay runs.
        case starting
        /// Streaming from PostgreSQL.
        case streaming
        /// Disconnected from PostgreSQL, reconnecting with backoff.
        case disconnected
        /// Another client holds the slot; this instance takes over when it is released.
        case standby
        /// Stopping: draining what the sink holds, confirming, exiting.
        case stopping
        /// The relay ended (stopped, or halted on an error).
        case stopped
    }

    public struct Snapshot: Sendable {
        public var phase: Phase
        /// Seconds since the relay loop last turned; nil before it ran.
        public var sinceBeat: Double?
        /// How long the sink's current outage has lasted, 0 without one.
        public var sinkOutageSeconds: Double
        /// Why the relay ended, when it ended on an error.
        public var haltReason: String?
        /// The position the relay last confirmed to PostgreSQL.
        public var confirmed: LSN

        public init(phase: Phase, sinceBeat: Double?, sinkOutageSeconds: Double = 0, haltReason: String? = nil, confirmed: LSN = .zero) {
            self.phase = phase
            self.sinceBeat = sinceBeat
            self.sinkOutageSeconds = sinkOutageSeconds
            self.haltReason = haltReason
            self.confirmed = confirmed
        }
    }

    private let phase = Atomic<UInt8>(Phase.starting.rawValue)
    /// Monotonic nanoseconds of the last loop turn; 0: not yet.
    private let lastBeat = Atomic<Int64>(0)
    private let outageBits = Atomic<UInt64>(0)
    private let confirmedLSN = Atomic<UInt64>(0)
    private let halt = Mutex<String?>(nil)

    public init() {}

    /// The relay loop turned (also while waiting, standing by or in an outage).
    @inline(__always)
    public func beat() { lastBeat.store(Self.monotonicNanos(), ordering: .relaxed) }

    public func set(_ phase: Phase) {
        // A stop is final: a reconnect reported while draining does not make it streaming again.
        let current = Phase(rawValue: self.phase.load(ordering: .relaxed))
        if current == .stopped || (current == .stopping && phase != .stopped) { return }
        self.phase.store(phase.rawValue, ordering: .relaxed)
    }

    /// The relay ended on `error` (a halt: not ready, with the error as the reason).
    public func halted(_ reason: String) {
        halt.withLock { $0 = reason }
        phase.store(Phase.stopped.rawValue, ordering: .relaxed)
    }

    /// The sink's outage has lasted `seconds` (0: none). Fed from `spout_sink_outage_seconds`.
    public func sinkOutage(seconds: Double) { outageBits.store(seconds.bitPattern, ordering: .relaxed) }

    func confirmed(_ lsn: LSN) { confirmedLSN.store(lsn.rawValue, ordering: .relaxed) }

    public var snapshot: Snapshot {
        let beat = lastBeat.load(ordering: .relaxed)
        return Snapshot(phase: Phase(rawValue: phase.load(ordering: .relaxed)) ?? .starting,
                        sinceBeat: beat == 0 ? nil : Double(Self.monotonicNanos() - beat) / 1e9,
                        sinkOutageSeconds: Double(bitPattern: outageBits.load(ordering: .relaxed)),
                        haltReason: halt.withLock { $0 }, confirmed: LSN(rawValue: confirmedLSN.load(ordering: .relaxed)))
    }

    static func monotonicNanos() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}
