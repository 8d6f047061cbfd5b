import SpoutCore
import CoreMetrics

/// Publishes events to NATS JetStream: subject = topic, payload = the event's payload,
/// `Nats-Msg-Id` = event id, `Spout-Key` = key, `Spout-Event-Type` = type, then the event's
/// headers (with `--envelope cloudevents`: `Nats-Msg-Id` and the NATS binding's percent-encoded
/// `ce-*` headers instead). An event counts as delivered when its stream's PubAck arrives.
///
/// The delivery engine holds the events, retries and reports outages; `NATSJetStreamAdapter`
/// publishes, reads PubAcks and classifies what goes wrong.
public final class NATSJetStreamSink: DeliveryEngine {
    /// Header carrying the event's key (aggregate id), when it has one.
    public static let keyHeader = "Spout-Key"
    /// Header carrying the event's type, when it has one.
    public static let typeHeader = "Spout-Event-Type"
    /// `snapshot` or `backfill` on re-published rows; streamed events have none.
    public static let sourceHeader = "Spout-Source"

    /// Checks the URL and, for `tls://`, the TLS files without connecting (`--check-config`).
    public static func validate(url: String, options: SinkOptions) throws(SpoutError) {
        _ = try NATSJetStreamAdapter.endpoint(url, options: options)
    }

    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let adapter = try NATSJetStreamAdapter(url: url, options: options, log: log)
        // Reconnecting after a lost connection: 100 ms doubling to 5 s.
        try super.init(adapter: adapter, capacity: options.maxInFlightEvents, backoff: RetryBackoff(ceiling: .seconds(5)),
                       log: log, wakeup: adapter.wakeup, metrics: metrics)
    }
}
