import CoreMetrics

/// The engine's metrics, with dimension `sink`:
/// - `spout_sink_outages_total`: outages begun (broker unreachable or refusing writes);
/// - `spout_sink_outage_seconds`: how long the current outage has lasted, 0 when there is none;
/// - `spout_sink_retries_total`: transient failures retried after a backoff.
/// Only outages and retries touch them: nothing on the per-event path.
struct DeliveryMetrics {
    let outages: Counter
    let outageSeconds: Gauge
    let retries: Counter

    init(sink: String, factory: MetricsFactory) {
        let dimensions = [("sink", sink)]
        outages = Counter(label: "spout_sink_outages_total", dimensions: dimensions, factory: factory)
        outageSeconds = Gauge(label: "spout_sink_outage_seconds", dimensions: dimensions, factory: factory)
        retries = Counter(label: "spout_sink_retries_total", dimensions: dimensions, factory: factory)
    }
}
