import CoreMetrics
import Prometheus
import SpoutCore

/// swift-metrics → swift-prometheus, with each of spout's metrics' help text (the registry
/// takes help only through its own API, not through `PrometheusMetricsFactory`), and
/// `spout_sink_outage_seconds` also told to the `RelayHealth` that `/readyz` reads: the
/// delivery engine records it while an outage lasts, so readiness needs no hook in the engine.
public struct SpoutMetricsFactory: MetricsFactory {
    public let registry: PrometheusCollectorRegistry
    let health: RelayHealth

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), health: RelayHealth) {
        self.registry = registry
        self.health = health
    }

    /// Help texts by metric name; one name, one text (the registry insists).
    public static let help: [String: String] = [
        "spout_events_delivered_total": "Events the sink acknowledged, by sink and topic.",
        "spout_events_failed_total": "Events the sink failed permanently.",
        // Counted by the poison-event policies (--on-poison dead-letter / skip).
        "spout_events_dead_lettered_total": "Poison events published to the dead-letter topic instead of their own.",
        "spout_events_skipped_total": "Poison events skipped (logged and counted, not delivered).",
        "spout_transactions_total": "Transactions received from PostgreSQL.",
        "spout_confirmed_lsn": "The WAL position last confirmed to PostgreSQL (flush LSN, as a number).",
        "spout_received_lsn": "The WAL position last received from PostgreSQL (as a number).",
        "spout_lag_bytes": "Bytes of WAL between the server's current position and the slot's confirmed position (refreshed every few seconds).",
        "spout_lag_seconds": "Age of the oldest event waiting for the sink's acknowledgement, since its commit; 0 when none waits.",
        "spout_in_flight_events": "Events handed to the sink and not yet acknowledged.",
        "spout_in_flight_bytes": "Bytes of events handed to the sink and not yet acknowledged.",
        "spout_spool_bytes": "Bytes of events waiting for their commit or for room in the window.",
        "spout_commit_to_ack_seconds": "Commit to sink acknowledgement, sampled once per status update.",
        "spout_reconnects_total": "Connections to PostgreSQL made again after one was lost.",
        "spout_connected": "1 while streaming from PostgreSQL, 0 otherwise.",
        "spout_standby": "1 while standing by for a slot another client holds, 0 otherwise.",
        "spout_sink_outages_total": "Sink outages begun (broker unreachable or refusing writes).",
        "spout_sink_outage_seconds": "How long the current sink outage has lasted; 0 without one.",
        "spout_sink_retries_total": "Transient sink failures retried after a backoff.",
    ]

    /// Commit → acknowledgement buckets: a millisecond to a minute.
    static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
        .seconds(10), .seconds(30), .seconds(60),
    ]

    private func help(_ label: String) -> String { Self.help[label] ?? "" }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(name: label, labels: dimensions, help: help(label))
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(name: label, labels: dimensions, help: help(label))
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard !aggregate else {
            return registry.makeValueHistogram(name: label, labels: dimensions, buckets: [0.001, 0.01, 0.1, 1, 10, 100, 1000], help: help(label))
        }
        let gauge = registry.makeGauge(name: label, labels: dimensions, help: help(label))
        return label == "spout_sink_outage_seconds" ? OutageRecorder(gauge: gauge, health: health) : gauge
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(name: label, labels: dimensions, help: help(label))
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(name: label, labels: dimensions, buckets: Self.latencyBuckets, help: help(label))
    }

    public func destroyCounter(_ handler: any CounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    public func destroyRecorder(_ handler: any RecorderHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
        if let outage = handler as? OutageRecorder { registry.unregisterGauge(outage.gauge) }
        if let histogram = handler as? ValueHistogram { registry.unregisterValueHistogram(histogram) }
    }

    public func destroyMeter(_ handler: any MeterHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
    }

    public func destroyTimer(_ handler: any TimerHandler) {
        if let histogram = handler as? DurationHistogram { registry.unregisterDurationHistogram(histogram) }
    }
}

/// `spout_sink_outage_seconds`: the gauge, and the same value for readiness.
final class OutageRecorder: RecorderHandler, Sendable {
    let gauge: Prometheus.Gauge
    let health: RelayHealth

    init(gauge: Prometheus.Gauge, health: RelayHealth) {
        self.gauge = gauge
        self.health = health
    }

    func record(_ value: Int64) { record(Double(value)) }

    func record(_ value: Double) {
        gauge.record(value)
        health.sinkOutage(seconds: value)
    }
}
