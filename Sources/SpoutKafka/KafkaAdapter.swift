import SpoutCore
import CRdKafka

/// What the Kafka sink knows about librdkafka, plugged into the delivery engine: producing,
/// delivery reports (the acknowledgements), and what each error means.
///
/// An event is acknowledged when its delivery report says the brokers accepted it, which with
/// the defaults (`acks=all`, `enable.idempotence=true`) means every in-sync replica wrote it.
/// The per-message opaque carries the ticket, so each report finds its ticket.
///
/// librdkafka keeps a queue of its own and retries by itself: it runs with
/// `message.timeout.ms=0` (no timeout), so its idempotent producer retries a down broker, a
/// leader change or a timed-out request for as long as it takes, in order and without
/// duplicates. The engine's queue holds the same events in ticket order, `sent` while
/// librdkafka has them; a broker that cannot be reached (librdkafka's error callback) is an
/// outage for the engine to report (`unavailable`), not a reason to take anything back.
///
/// librdkafka must never give up on a message by itself: when it does (a message timeout,
/// exhausted retries), it bumps the producer epoch and goes on writing the later messages of
/// the partition it still holds, so the failed one, produced again, lands after them
/// (INTRODUCTION.md, "Message timeout considerations": 1, 4, 5). A user's `message.timeout.ms`
/// is therefore applied here: when the oldest event librdkafka holds has waited that long,
/// the adapter takes everything back (queued and in flight). Then, as after any retriable
/// error, the engine puts every sent event back to waiting and backs off, and the adapter
/// produces again only once librdkafka holds nothing and the backoff has passed, from the
/// oldest event, so a later event of a key never overtakes an earlier one (requests that were
/// in flight may still be written, in order: duplicates, never a reordering). Permanent errors
/// (too large, not authorized, invalid topic) fail the event's ticket with its id and topic.
final class KafkaAdapter: DeliveryAdapter {
    let sinkName = "kafka"
    /// Kafka messages carry the commit LSN only in the CloudEvents envelope (`ce_lsn`); without
    /// it events go out as they are decoded.
    var needsCommitLSN: Bool { producer.cloudEvents != nil }
    let recoveredMessage = "kafka: the brokers acknowledge events again"

    /// How long `close` waits for librdkafka to deliver what it still holds.
    /// The relay has already waited (--shutdown-timeout) for acknowledgements by then.
    static let closeFlushMilliseconds: Int32 = 2_000

    private let producer: KafkaProducerHandle
    private let log: Log
    /// The user's `message.timeout.ms` in milliseconds, applied here (librdkafka's own stays 0).
    private let messageTimeout: Int?
    /// Everything librdkafka held was taken back after a retriable error: nothing is produced
    /// until librdkafka has returned it all (`held` is 0) and the engine's backoff has passed.
    private var recovering = false
    /// Messages librdkafka holds: produced, their delivery report not yet served.
    private var held = 0
    /// librdkafka's queue was full: produce again on the next poll.
    private var queueFull = false
    /// The produce time matters only to the message timeout: without one, no clock read.
    private let started = ContinuousClock.now
    private var closed = false

    init(producer: KafkaProducerHandle, messageTimeout: Int?, log: Log) {
        self.producer = producer
        self.messageTimeout = messageTimeout
        self.log = log
    }

    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        producer.signalReports(to: engine.wakeup.signalDescriptor)
    }

    func queued(_ engine: DeliveryEngine) {
        if !recovering, !queueFull { produceWaiting(engine) }
    }

    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        var failure: SinkError?
        producer.poll(deliveries: { handle($0, engine) }, errors: { error in
            if let problem = handle(error, engine), failure == nil { failure = problem }
        })
        if let failure { throw failure }

        if !recovering, let timeout = messageTimeout, let since = engine.queue.oldestSentAt, engine.now - since >= .milliseconds(timeout) {
            beginRecovery(engine, because: "an event waited longer than message.timeout.ms=\(timeout) for its acknowledgement (_MSG_TIMED_OUT)")
        }
        if recovering {
            if held == 0, !engine.isBackingOff {
                recovering = false
                produceWaiting(engine)
            }
        } else if queueFull {
            produceWaiting(engine)
        }
    }

    /// The message timeout of the oldest event librdkafka holds. Delivery reports write to the
    /// engine's wakeup themselves; the engine adds its backoff deadline.
    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        guard !recovering, let timeout = messageTimeout, let since = engine.queue.oldestSentAt else { return nil }
        return since + .milliseconds(timeout)
    }

    func close(_ engine: DeliveryEngine) {
        guard !closed else { return }
        closed = true
        let left = producer.close(flushTimeoutMilliseconds: Self.closeFlushMilliseconds)
        if left > 0 {
            log.warning("kafka: \(left) messages were not acknowledged by the brokers within \(Self.closeFlushMilliseconds / 1000) s of closing; "
                        + "they are not confirmed and are sent again when spout restarts")
        }
    }

    // MARK: Producing and reports

    /// Hands waiting events to librdkafka in ticket order until one cannot go.
    private func produceWaiting(_ engine: DeliveryEngine) {
        let now = messageTimeout == nil ? started : engine.now
        while !engine.isStopped, let entry = engine.nextWaiting() {
            switch producer.produce(entry.event, ticket: entry.ticket) {
            case .queued:
                engine.markSent(entry.ticket, at: now)
                held += 1
                queueFull = false
            case .rejected(RD_KAFKA_RESP_ERR__QUEUE_FULL, _):
                // librdkafka's queue is full (queue.buffering.max.*): its delivery reports free
                // room and wake the relay; produce again from this event then.
                if !queueFull { log.debug("kafka: librdkafka's queue is full (queue.buffering.max.*); producing again as deliveries free room") }
                queueFull = true
                return
            case let .rejected(code, reason):
                if KafkaErrorClass(code) == .retriable {
                    beginRecovery(engine, because: "\(reason) (\(KafkaProducerHandle.name(code)))")
                } else {
                    engine.fail(entry.ticket, Self.rejection(code: code, reason: reason))
                }
                return
            }
        }
    }

    private func handle(_ delivery: KafkaProducerHandle.Delivery, _ engine: DeliveryEngine) {
        held = max(0, held - 1)
        if delivery.error == RD_KAFKA_RESP_ERR_NO_ERROR {
            // Also for an event taken back meanwhile: its report was queued before the purge,
            // and it is not produced again before every report is served.
            engine.delivered(delivery.ticket)
            return
        }
        if KafkaErrorClass(delivery.error) == .retriable {
            // Purged messages come back here too (`_PURGE_QUEUE`, `_PURGE_INFLIGHT`), while recovering.
            beginRecovery(engine, because: "\(KafkaProducerHandle.describe(delivery.error)) (\(KafkaProducerHandle.name(delivery.error)))")
            return
        }
        var reason = KafkaProducerHandle.describe(delivery.error)
        if delivery.error == RD_KAFKA_RESP_ERR__FATAL, let fatal = producer.fatalError { reason = fatal }
        engine.fail(delivery.ticket, Self.rejection(code: delivery.error, reason: reason))
    }

    /// Errors librdkafka raises outside delivery reports: fatal and authentication errors end
    /// the run; everything else is a transient condition it retries itself.
    private func handle(_ error: KafkaProducerHandle.ClientError, _ engine: DeliveryEngine) -> SinkError? {
        switch error.code {
        case RD_KAFKA_RESP_ERR__FATAL:
            let reason = producer.fatalError ?? error.reason
            return SinkError(.permanent, "the Kafka producer hit a fatal error: \(reason); restart spout, it resumes from the slot")
        case RD_KAFKA_RESP_ERR__AUTHENTICATION:
            return SinkError(.permanent, "Kafka authentication failed: \(error.reason); check the sasl.* and ssl.* properties")
        default:
            var reason = "\(error.reason) (\(KafkaProducerHandle.name(error.code)))"
            // issue 15: a TLS failure at the first connection is a configuration problem: stop
            // at start with it; later (a broker back with a bad certificate) it is an outage.
            if let fix = Self.tlsFix(error) {
                reason += "; " + fix
                if !producer.reachedBrokers {
                    return SinkError(.permanent, "kafka: cannot connect to the brokers over TLS: \(reason)")
                }
            }
            engine.unavailable(reason, warning: Self.warning(reason))
            return nil
        }
    }

    /// What fixes a TLS failure librdkafka reports (`_SSL`, or a handshake cut short), in
    /// spout's option names; nil for other errors.
    static func tlsFix(_ error: KafkaProducerHandle.ClientError) -> String? {
        let text = error.reason.lowercased()
        guard error.code == RD_KAFKA_RESP_ERR__SSL || text.contains("ssl handshake failed") || text.contains("in state ssl_handshake") else { return nil }
        if text.contains("plaintext") || text.contains("wrong version number") || text.contains("packet length too long") {
            return "the broker does not speak TLS on this port: check the port in --sink, or the broker's listeners and --kafka-property security.protocol"
        }
        if !text.contains("ssl handshake failed"), text.contains("disconnected") {
            // librdkafka's first word on it, before "connecting to a PLAINTEXT broker listener?".
            return "the broker closed the connection during the TLS handshake: it does not speak TLS on this port (check the port in --sink "
                + "and --kafka-property security.protocol), or it requires a client certificate (--sink-cert-file, --sink-key-file)"
        }
        if text.contains("certificate has expired") || text.contains("certificate is not yet valid") {
            return "the broker's TLS certificate has expired (or is not valid yet): renew it on the broker"
        }
        if text.contains("hostname mismatch") || text.contains("ip address mismatch") {
            return "the broker's TLS certificate is not valid for the name spout connects to: connect by a name the certificate lists "
                + "(in --sink and the brokers' advertised listeners)"
        }
        if text.contains("certificate verify failed") || text.contains("could not be verified") || text.contains("unknown ca")
            && !text.contains("alert") {
            return "the broker's TLS certificate is not signed by a CA spout trusts: give that CA with --sink-ca-file"
        }
        if text.contains("certificate required") || text.contains("alert") {
            return "the broker refused the TLS handshake (it may require a client certificate, or refuse ours): "
                + "give one signed by the CA the broker trusts with --sink-cert-file and --sink-key-file"
        }
        return "check --sink-ca-file, --sink-cert-file/--sink-key-file and the ssl.* properties (--kafka-property)"
    }

    /// A retriable error came back (or the message timeout ran out): stop producing, take back
    /// everything librdkafka holds (it reports those as `_PURGE_QUEUE` and `_PURGE_INFLIGHT`),
    /// and produce again after the engine's backoff once librdkafka holds nothing. Left to
    /// librdkafka, messages after a failed one would be written before it is produced again;
    /// producing again from the oldest returned event keeps the order.
    private func beginRecovery(_ engine: DeliveryEngine, because cause: String) {
        guard !recovering else { return }
        recovering = true
        producer.purgeAll()
        let reason = "\(cause); producing again in order after a backoff, once librdkafka has returned everything it held"
        engine.retry(after: reason, warning: Self.warning(reason))
    }

    private static func warning(_ reason: String) -> String {
        "kafka: \(reason); nothing undelivered is confirmed to PostgreSQL meanwhile"
    }

    private static func rejection(code: rd_kafka_resp_err_t, reason: String) -> String {
        var message = "Kafka rejected it: \(reason) (\(KafkaProducerHandle.name(code)))"
        if let hint = KafkaErrorClass.hint(code) { message += "; " + hint }
        return message
    }
}
