import CRdKafka

/// Publishes events to Kafka through librdkafka: topic = the event's topic, key = its key,
/// value = the payload bytes as stored, headers = the event's headers plus `id` and `type`.
///
/// An event is acknowledged when its delivery report says the brokers accepted it, which with
/// the defaults (`acks=all`, `enable.idempotence=true`) means every in-sync replica wrote it.
/// The per-message opaque carries the ticket, so each report finds its ticket.
///
/// Retries: librdkafka runs with `message.timeout.ms=0` (no timeout), so its idempotent
/// producer retries a down broker, a leader change or a timed-out request for as long as it
/// takes, in order and without duplicates. librdkafka must never give up on a message by
/// itself: when it does (a message timeout, exhausted retries), it bumps the producer epoch
/// and goes on writing the later messages of the partition it still holds, so the failed one,
/// produced again, lands after them (INTRODUCTION.md, "Message timeout considerations": 1, 4,
/// 5). A user's `message.timeout.ms` is therefore the sink's own: when the oldest event
/// librdkafka holds has waited that long, the sink takes everything back (queued and in
/// flight). Then, as after any retriable error, it waits until librdkafka holds nothing and,
/// after an exponential backoff with jitter, produces the returned events again in ticket
/// order, so a later event of a key never overtakes an earlier one (requests that were in
/// flight may still be written, in order: duplicates, never a reordering). Permanent errors
/// (too large, not authorized, invalid topic) fail the event's ticket with its id and topic.
public final class KafkaSink: Sink {
    private let producer: KafkaProducerHandle
    private let log: Log
    private var window: KafkaDeliveryWindow
    /// Permanent errors found when producing, reported on the next `poll`.
    private var rejected: [(ticket: UInt64, error: SinkError)] = []
    /// Set while events came back with retriable errors: nothing is produced until librdkafka
    /// holds nothing and this instant has passed.
    private var resumeAt: ContinuousClock.Instant?
    private var backoff = Backoff()
    /// The user's `message.timeout.ms` in milliseconds, applied by the sink (librdkafka's own stays 0).
    private let messageTimeout: Int?
    /// librdkafka's queue was full: produce again on the next poll.
    private var queueFull = false
    /// A transient problem was logged; cleared (with a note) by the next delivery.
    private var troubled = false
    private let clock = ContinuousClock()
    private let started = ContinuousClock.now

    /// How long `close()` waits for librdkafka to deliver what it still holds.
    /// The relay has already waited (--shutdown-timeout) for acknowledgements by then.
    static let closeFlushMilliseconds: Int32 = 2_000

    public init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        let brokers = try Self.bootstrapServers(url)
        let properties = try Self.properties(bootstrap: brokers, user: options.kafkaProperties)
        messageTimeout = try Self.messageTimeout(options.kafkaProperties)
        producer = try KafkaProducerHandle(properties: properties, log: log)
        self.log = log
        window = KafkaDeliveryWindow(capacity: min(options.maxInFlightEvents, 1 << 16))
        rejected.reserveCapacity(4)
        log.debug("kafka sink: bootstrap \(brokers)")
    }

    // MARK: Configuration

    /// `kafka://host:9092[,host:9092]` → `host:9092,host:9092`.
    static func bootstrapServers(_ url: String) throws(SpoutError) -> String {
        let example = "kafka://host:9092[,host2:9092]"
        guard let schemeEnd = url.range(of: "://") else {
            throw .invalidOption("--sink \(SinkURL.redacted(url)) is not a Kafka URL: use \(example)")
        }
        var rest = Substring(url[schemeEnd.upperBound...])
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        if rest.contains("@") {
            throw .invalidOption("--sink \(SinkURL.redacted(url)): put Kafka credentials in librdkafka properties, not in the URL "
                                 + "(--kafka-property security.protocol=SASL_SSL --kafka-property sasl.mechanisms=PLAIN "
                                 + "--kafka-property sasl.username=... --kafka-property sasl.password=...)")
        }
        if rest.contains("/") || rest.contains("?") || rest.contains("#") {
            throw .invalidOption("--sink \(SinkURL.redacted(url)): a Kafka URL names brokers only (\(example)); "
                                 + "topics come from --topic, settings from --kafka-property")
        }
        let servers = rest.split(separator: ",", omittingEmptySubsequences: false)
        for server in servers {
            guard !server.isEmpty else {
                throw .invalidOption("--sink \(url) lists an empty broker: use \(example)")
            }
            // host, host:port, [v6], [v6]:port
            let portText: Substring?
            if server.hasPrefix("[") {
                guard let close = server.firstIndex(of: "]") else {
                    throw .invalidOption("--sink \(url): broker \"\(server)\" lacks the closing ] of its IPv6 address")
                }
                let after = server[server.index(after: close)...]
                portText = after.isEmpty ? nil : (after.hasPrefix(":") ? after.dropFirst() : after)
            } else if let colon = server.lastIndex(of: ":") {
                guard server[..<colon].firstIndex(of: ":") == nil else {
                    throw .invalidOption("--sink \(url): write IPv6 brokers in brackets, e.g. kafka://[::1]:9092")
                }
                guard colon != server.startIndex else {
                    throw .invalidOption("--sink \(url): broker \"\(server)\" has no host: use \(example)")
                }
                portText = server[server.index(after: colon)...]
            } else {
                portText = nil
            }
            if let portText {
                guard let port = Int(portText), (1...65535).contains(port) else {
                    throw .invalidOption("--sink \(url): broker \"\(server)\" has no valid port (1-65535): use \(example)")
                }
            }
        }
        return servers.joined(separator: ",")
    }

    /// librdkafka's names for its message timeout; the sink applies it itself.
    static let messageTimeoutNames: Set<String> = ["message.timeout.ms", "delivery.timeout.ms"]

    /// spout's defaults, then the user's properties verbatim (so any default can be overridden),
    /// except the message timeout, which stays 0 for librdkafka (see `messageTimeout(_:)`).
    static func properties(bootstrap: String, user: [(name: String, value: String)]) throws(SpoutError) -> [(name: String, value: String)] {
        for (name, value) in user {
            switch name {
            case "delivery.report.only.error" where value.lowercased() == "true":
                throw .invalidOption("--kafka-property delivery.report.only.error=true cannot be used: spout acknowledges events on their delivery reports")
            case "transactional.id":
                throw .invalidOption("--kafka-property transactional.id is not supported: spout uses the idempotent producer, not transactions")
            case "retries" where value.trimmingCharacters(in: .whitespaces) != "2147483647",
                 "message.send.max.retries" where value.trimmingCharacters(in: .whitespaces) != "2147483647":
                // A message librdkafka stops retrying is dropped while the later ones of its
                // partition are still written: produced again, it would land after them.
                throw .invalidOption("--kafka-property \(name) cannot be used: librdkafka must retry until the brokers answer, "
                                     + "or later events overtake the one it gave up on; spout retries transient errors itself, in order")
            default:
                break
            }
        }
        var properties: [(name: String, value: String)] = [
            ("bootstrap.servers", bootstrap),
            ("client.id", "spout"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            // Keys map to the partitions Java clients (Kafka Streams, Connect) pick.
            ("partitioner", "murmur2_random"),
            // No local timeout: a down broker makes events wait (the slot does not advance),
            // never fail; librdkafka keeps retrying in order.
            ("message.timeout.ms", "0"),
            // Idle connections closed by brokers are not trouble worth a warning.
            ("log.connection.close", "false"),
            // Nagle's algorithm can hold a small produce request back until the previous one is
            // acknowledged; at a steady trickle of events that is added latency for nothing.
            ("socket.nagle.disable", "true"),
            // librdkafka holds a message up to linger.ms (its default: 5 ms) to batch it with
            // the next ones. Outbox events mostly come one at a time, and a backlog batches
            // itself while requests are in flight: 1 ms keeps drains as fast and single events
            // 4 ms sooner.
            ("linger.ms", "1"),
        ]
        properties.append(contentsOf: user.filter { !messageTimeoutNames.contains($0.name) })
        // Without idempotence, retries reorder unless one request is in flight at a time.
        let idempotent = user.last { $0.name == "enable.idempotence" }.map { $0.value.lowercased() != "false" } ?? true
        if !idempotent, !user.contains(where: { $0.name == "max.in.flight.requests.per.connection" || $0.name == "max.in.flight" }) {
            properties.append(("max.in.flight.requests.per.connection", "1"))
        }
        return properties
    }

    /// The user's `message.timeout.ms` (or its alias `delivery.timeout.ms`; the last one wins,
    /// as in librdkafka): how long the oldest event librdkafka holds may wait for its
    /// acknowledgement before the sink takes everything back and produces it again in order.
    /// nil (the default, or 0): never, librdkafka retries for as long as it takes.
    static func messageTimeout(_ user: [(name: String, value: String)]) throws(SpoutError) -> Int? {
        guard let (name, value) = user.last(where: { messageTimeoutNames.contains($0.name) }) else { return nil }
        guard let milliseconds = Int(value.trimmingCharacters(in: .whitespaces)), (0...Int(Int32.max)).contains(milliseconds) else {
            throw .invalidOption("--kafka-property \(name)=\(value): expected milliseconds from 0 (no timeout) to 2147483647")
        }
        return milliseconds == 0 ? nil : milliseconds
    }

    // MARK: Sink

    /// Kafka messages do not carry the commit LSN: events go out as they are decoded.
    public var needsCommitLSN: Bool { false }

    public var wakeupDescriptor: Int32? { producer.wakeupDescriptor }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        guard window.append(event, ticket: ticket) else {
            throw SinkError(.permanent, "internal error: ticket \(ticket) out of sequence", eventID: event.id, topic: event.topic)
        }
        if resumeAt == nil, !queueFull { produceWaiting() }
    }

    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        var failure: SinkError?
        // Reports queued after this (purged messages among them) write to the wakeup pipe.
        producer.poll(deliveries: { handle($0, report) }, errors: { error in
            if let problem = handle(error), failure == nil { failure = problem }
        })
        if let failure { throw failure }

        if resumeAt == nil, let timeout = messageTimeout, let since = window.oldestProducedAt, clock.now - since >= .milliseconds(timeout) {
            beginRecovery(because: "an event waited longer than message.timeout.ms=\(timeout) for its acknowledgement (_MSG_TIMED_OUT)")
        }
        if let resume = resumeAt {
            if window.producing == 0, clock.now >= resume {
                resumeAt = nil
                produceWaiting()
            }
        } else if queueFull {
            produceWaiting()
        }
        if !rejected.isEmpty {
            for (ticket, error) in rejected { report(.failed(ticket: ticket, error)) }
            rejected.removeAll(keepingCapacity: true)
        }
    }

    public func close() {
        let left = producer.close(flushTimeoutMilliseconds: Self.closeFlushMilliseconds)
        if left > 0 {
            log.warning("kafka: \(left) messages were not acknowledged by the brokers within \(Self.closeFlushMilliseconds / 1000) s of closing; "
                        + "they are not confirmed and are sent again when spout restarts")
        }
    }

    // MARK: Producing and reports

    /// Hands waiting events to librdkafka in ticket order until one cannot go.
    private func produceWaiting() {
        // The produce time matters only to the sink's message timeout: without one, no clock read.
        let now = messageTimeout == nil ? started : clock.now
        while let ticket = window.nextWaiting(), let event = window.event(ticket) {
            switch producer.produce(event, ticket: ticket) {
            case .queued:
                window.markProducing(ticket, at: now)
                queueFull = false
            case .rejected(RD_KAFKA_RESP_ERR__QUEUE_FULL, _):
                // librdkafka's queue is full (queue.buffering.max.*): its delivery reports free
                // room and wake the relay; produce again from this event then.
                if !queueFull { log.debug("kafka: librdkafka's queue is full (queue.buffering.max.*); producing again as deliveries free room") }
                queueFull = true
                return
            case let .rejected(code, reason):
                if KafkaErrorClass(code) == .retriable {
                    beginRecovery(because: "\(reason) (\(KafkaProducerHandle.name(code)))")
                    return
                }
                _ = window.finish(ticket)
                rejected.append((ticket, failure(event, code: code, reason: reason)))
            }
        }
    }

    private func handle(_ delivery: KafkaProducerHandle.Delivery, _ report: (SinkCompletion) -> Void) {
        guard window.state(delivery.ticket) == .producing else { return }
        if delivery.error == RD_KAFKA_RESP_ERR_NO_ERROR {
            _ = window.finish(delivery.ticket)
            report(.delivered(ticket: delivery.ticket))
            backoff.reset()
            if troubled {
                troubled = false
                log.info("kafka: the brokers acknowledge events again")
            }
            return
        }
        if KafkaErrorClass(delivery.error) == .retriable {
            window.markWaiting(delivery.ticket)
            beginRecovery(because: "\(KafkaProducerHandle.describe(delivery.error)) (\(KafkaProducerHandle.name(delivery.error)))")
            return
        }
        var reason = KafkaProducerHandle.describe(delivery.error)
        if delivery.error == RD_KAFKA_RESP_ERR__FATAL, let fatal = producer.fatalError { reason = fatal }
        if let event = window.finish(delivery.ticket) {
            report(.failed(ticket: delivery.ticket, failure(event, code: delivery.error, reason: reason)))
        }
    }

    /// Errors librdkafka raises outside delivery reports: fatal and authentication errors end
    /// the run; everything else is a transient condition it retries itself.
    private func handle(_ error: KafkaProducerHandle.ClientError) -> SinkError? {
        switch error.code {
        case RD_KAFKA_RESP_ERR__FATAL:
            let reason = producer.fatalError ?? error.reason
            return SinkError(.permanent, "the Kafka producer hit a fatal error: \(reason); restart spout, it resumes from the slot")
        case RD_KAFKA_RESP_ERR__AUTHENTICATION:
            return SinkError(.permanent, "Kafka authentication failed: \(error.reason); check the sasl.* and ssl.* properties")
        default:
            warnOnce("kafka: \(error.reason) (\(KafkaProducerHandle.name(error.code)))")
            return nil
        }
    }

    /// A retriable error came back (or the sink's message timeout ran out): stop producing,
    /// take back everything librdkafka holds (it reports those as `_PURGE_QUEUE` and
    /// `_PURGE_INFLIGHT`, which land here too), and resume after a backoff once librdkafka holds
    /// nothing. Left to librdkafka, messages after a failed one would be written before it is
    /// produced again; producing again from the oldest returned event keeps the order.
    private func beginRecovery(because reason: String) {
        guard resumeAt == nil else { return }
        producer.purgeAll()
        let delay = backoff.next()
        resumeAt = clock.now + delay
        let message = "kafka: \(reason); producing again in order after \(delay) (and once librdkafka has returned everything it held)"
        if troubled { log.debug(message) } else { warnOnce(message) }
    }

    private func warnOnce(_ message: String) {
        guard !troubled else { return }
        troubled = true
        log.warning(message + "; nothing undelivered is confirmed to PostgreSQL meanwhile")
    }

    private func failure(_ event: OutboxEvent, code: rd_kafka_resp_err_t, reason: String) -> SinkError {
        var message = "Kafka rejected it: \(reason) (\(KafkaProducerHandle.name(code)))"
        if let hint = KafkaErrorClass.hint(code) { message += "; " + hint }
        return SinkError(.permanent, message, eventID: event.id, topic: event.topic)
    }

    /// Exponential backoff with jitter: 100 ms doubling to 10 s, each delay drawn from its upper half.
    struct Backoff {
        private var attempt = 0
        mutating func reset() { attempt = 0 }
        mutating func next() -> Duration {
            let ceiling = min(100 << min(attempt, 7), 10_000)
            attempt += 1
            return .milliseconds(Int.random(in: (ceiling / 2)...ceiling))
        }
    }
}
