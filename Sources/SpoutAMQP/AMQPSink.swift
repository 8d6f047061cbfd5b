import CoreMetrics
import CRabbitMQ
import Dispatch
import Foundation
import SpoutCore
import Synchronization

/// Publishes events to an AMQP 0-9-1 broker (RabbitMQ) through librabbitmq: one connection, one
/// channel in confirm mode (`confirm.select`), each event a persistent (`delivery_mode` 2),
/// `mandatory` `basic.publish` to the exchange (`--amqp-exchange`, default `outbox`) with the
/// topic as routing key, `message_id` = event id, `type` = event type, `content_type` from the
/// payload, and a headers table of the row's headers plus `spout-key` (and `spout-source` for
/// events that were not streamed).
///
/// Acknowledgement: the broker's `basic.ack` for the delivery tag (`multiple` covers every tag up
/// to it). A `basic.nack` is a refusal retried like an outage (it counts toward `--max-retries`).
/// An unroutable event comes back as `basic.return` just before its `basic.ack`; the two are
/// paired by the message's `message_id` and the event is poison (`--on-poison`), never a silent
/// drop. A lost or refused connection is an outage: everything unconfirmed is published again
/// on a new connection, in order, after the engine's backoff.
///
/// librabbitmq blocks: the handshake (connect, login, channel, exchange check, confirm.select)
/// runs on a worker thread; publishing and reading confirms happen on the relay thread with
/// non-blocking reads (`amqp_simple_wait_frame_noblock` with a zero timeout) and only into a
/// socket that takes more bytes.
public final class AMQPSink: DeliveryEngine {
    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let adapter = try AMQPAdapter(url: url, options: options, log: log)
        try super.init(adapter: adapter, capacity: options.maxInFlightEvents, log: log, metrics: metrics)
    }

    /// Checks the URL and options without connecting (`--check-config`).
    public static func validate(url: String, options: SinkOptions) throws(SpoutError) {
        // amqps://: the CA, certificate and key files are read now, so a wrong one names its option.
        if try AMQPURL(parsing: url).tls { _ = try TLSClient(options.tls) }
        try AMQPAdapter.checkExchange(options.amqpExchange)
    }

    /// The header carrying the event's key (aggregate id).
    public static let keyHeader = "spout-key"
    /// The header marking events that were not streamed: snapshot, backfill, dead-letter.
    public static let sourceHeader = "spout-source"
}

/// What the AMQP sink knows about AMQP: the connection (opened by its worker), publishing,
/// confirms and returns, and which broker answers are final. Events, retries and outages are
/// the engine's.
final class AMQPAdapter: DeliveryAdapter {
    static let connectTimeout: Duration = .seconds(5)
    /// No confirm for this long while messages are out (and the broker did not say it blocks
    /// publishers): the connection is taken for dead and everything unconfirmed goes again.
    static let confirmTimeout: Duration = .seconds(60)
    /// Per `advance`, before looking at the socket again.
    static let maxBatchEvents = 1024
    static let maxBatchBytes = 1 << 20

    private let url: AMQPURL
    private let exchange: String
    private let declare: Bool
    private let log: Log
    private let clock = ContinuousClock()
    private let worker: AMQPConnectWorker

    private var connection: AMQPConnection?
    private var connecting = false
    /// Connections made so far: tells the wakeup a new socket from an old one with its number.
    private var generation = 0
    /// The tickets published on this connection's channel, by delivery tag.
    private var tags: AMQPDeliveryTags
    /// Returned (unroutable) messages waiting for their basic.ack.
    private var returned: [(messageID: String, code: UInt16, text: String, routingKey: String)] = []
    private var blocked = false
    /// Since when the oldest unconfirmed message waits (reset by every confirm).
    private var waitingSince: ContinuousClock.Instant?
    /// The last publish stopped at a full socket: wait for it to be writable.
    private var socketFull = false
    private let message = AMQPMessage()

    init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        self.url = try AMQPURL(parsing: url)
        try Self.checkExchange(options.amqpExchange)
        if self.url.tls { _ = try TLSClient(options.tls) } // issue 15: the files, checked now
        exchange = options.amqpExchange
        declare = options.amqpDeclare
        self.log = log
        worker = AMQPConnectWorker(url: self.url, tls: options.tls, exchange: exchange, declare: declare, timeout: Self.connectTimeout)
        message.setExchange(exchange)
        message.cloudEvents = options.cloudEvents
        tags = AMQPDeliveryTags(capacity: min(max(options.maxInFlightEvents, 16), 65_536))
    }

    static func checkExchange(_ name: String) throws(SpoutError) {
        if name.utf8.count > 255 { throw .invalidOption("--amqp-exchange \"\(name.prefix(40))…\" is longer than 255 bytes, the most AMQP allows") }
        if name.isEmpty { throw .invalidOption("--amqp-exchange is empty: name a topic exchange (the default exchange cannot route by topic)") }
    }

    var sinkName: String { "amqp" }

    var recoveredMessage: String { "the AMQP broker at \(url.address) accepts events again" }

    /// CloudEvents carry the commit LSN (`ce-lsn`): the engine hands events over at their commit.
    var needsCommitLSN: Bool { message.cloudEvents != nil }

    // MARK: Connection

    /// Waits (bounded) for the first connection, so that a wrong password, vhost or exchange
    /// stops spout at once; an unreachable broker is an outage, retried while running.
    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        worker.attach(engine.wakeup)
        worker.connect()
        connecting = true
        let deadline = clock.now + Self.connectTimeout * 3 + .seconds(1)
        while connecting, clock.now < deadline {
            worker.waitForResult(milliseconds: 50)
            do { try advance(engine) } catch { throw .sink(error) }
            if let failure = startupFailure { throw .sink(failure) }
        }
    }

    /// A permanent refusal seen while starting.
    private var startupFailure: SinkError?
    /// Whether a connection was ever made: until then a certificate problem stops spout (issue 15).
    private var everConnected = false

    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        collectConnectResults(engine)
        guard let connection else {
            if !connecting, !engine.isBackingOff, !engine.isStopped {
                connecting = true
                worker.connect()
            }
            return
        }
        do {
            // Frames read after the connection was dropped (a close, a nack that retries) belong to nothing.
            try connection.readFrames { incoming in if self.connection === connection { handle(incoming, engine) } }
        } catch {
            if self.connection === connection { abandon(engine, reason: error.reason) }
            return
        }
        guard self.connection === connection else { return }
        publishWaiting(on: connection, engine)
        if let waitingSince, !blocked, clock.now - waitingSince > Self.confirmTimeout {
            abandon(engine, reason: "no publisher confirm within \(Self.confirmTimeout)")
        }
    }

    private func collectConnectResults(_ engine: DeliveryEngine) {
        guard let result = worker.takeResult() else { return }
        connecting = false
        switch result {
        case let .success(new):
            connection = new
            everConnected = true
            generation += 1
            tags.reset()
            returned.removeAll()
            blocked = false
            waitingSince = nil
            socketFull = false
            log.debug("connected to the AMQP broker at \(url.described) (heartbeat \(new.heartbeat) s); publishing \(engine.queue.unfinishedCount) unconfirmed events")
            engine.reachable()
        case let .failure(failure):
            if failure.permanent || (failure.certificateProblem && !everConnected) {
                let error = SinkError(.permanent, failure.certificateProblem ? failure.reason : "AMQP broker at \(url.address): \(failure.reason)")
                startupFailure = error
                engine.stop(error)
            } else {
                engine.retry(after: failure.reason, warning: "cannot connect to the AMQP broker at \(url.address) (\(failure.reason)); "
                             + "retrying with backoff, events wait and nothing is confirmed until the broker accepts them")
            }
        }
    }

    /// Drops the connection (what it had unconfirmed is published again on the next) and backs off.
    private func abandon(_ engine: DeliveryEngine, reason: String) {
        let unconfirmed = engine.sentCount
        drop()
        engine.retry(after: reason, warning: "lost the connection to the AMQP broker at \(url.address) (\(reason)); reconnecting with backoff"
                     + (unconfirmed > 0 ? ", \(unconfirmed) unconfirmed events will be published again" : ""))
    }

    private func drop() {
        connection = nil
        tags.reset()
        returned.removeAll()
        blocked = false
        waitingSince = nil
        socketFull = false
    }

    // MARK: Publishing

    private func publishWaiting(on connection: AMQPConnection, _ engine: DeliveryEngine) {
        guard !blocked, !engine.isStopped, !engine.isBackingOff, engine.hasWaiting else { return }
        guard var space = connection.sendSpace else {
            socketFull = true
            return
        }
        socketFull = false
        var events = 0, bytes = 0
        while events < Self.maxBatchEvents, bytes < Self.maxBatchBytes, !engine.isStopped,
              let ticket = engine.nextWaitingTicket(), let event = engine.event(ticket) {
            if let problem = AMQPMessage.problem(event) {
                engine.fail(ticket, problem)
                continue
            }
            // The frames' size, near enough; the first event goes out whatever its size (the
            // socket is writable), so one larger than the socket's buffer is not held back.
            var size = (engine.size(ticket) ?? event.payload.count) + 256
            // amqps://: each frame is a TLS record of its own (and a body one per 16 KiB), up to 29 bytes more each.
            if url.tls { size += 29 * (3 + event.payload.count / 16_384) }
            if size > space, events > 0 {
                socketFull = true
                break
            }
            space -= size
            let status = message.publish(event, on: connection)
            guard status == AMQP_STATUS_OK.rawValue else {
                abandon(engine, reason: "publishing: \(AMQPConnection.describe(status: status))")
                return
            }
            engine.markSent(ticket)
            tags.published(ticket)
            if waitingSince == nil { waitingSince = clock.now }
            events += 1
            bytes += event.payload.count
        }
    }

    // MARK: Confirms

    private func handle(_ incoming: AMQPConnection.Incoming, _ engine: DeliveryEngine) {
        switch incoming {
        case let .ack(tag, multiple):
            confirm(tag, multiple: multiple) { ticket in acknowledged(ticket, engine) }
        case let .nack(tag, multiple):
            var refused: [UInt64] = []
            confirm(tag, multiple: multiple) { refused.append($0) }
            // The first refusal backs off (every sent event waits to be published again); the
            // others only count toward --max-retries. The channel stays: confirms still due for
            // earlier tags acknowledge their events even while those wait to go again.
            var retrying = engine.isBackingOff
            // An event a confirm of its earlier copy acknowledged meanwhile is done: not refused.
            for ticket in refused where engine.state(ticket).map({ $0 != .finished }) ?? false {
                let reason = "the broker refused it (basic.nack)"
                if retrying {
                    _ = engine.refusalExhaustsRetries(ticket, reason: reason)
                } else {
                    engine.refusedTransiently(ticket, reason: reason,
                                              warning: "the AMQP broker at \(url.address) refused an event (basic.nack: a queue that rejects publishes when full, or a broker failure); publishing again with backoff")
                    retrying = engine.isBackingOff
                }
            }
        case let .returned(messageID, code, text, routingKey):
            returned.append((messageID, code, text, routingKey))
        case let .closed(channel, code, text):
            closed(channel: channel, code: code, text: text, engine)
        case let .blocked(reason):
            blocked = true
            engine.unavailable("blocked: \(reason)", warning: "the AMQP broker at \(url.address) blocks publishers (\(reason): a memory or disk alarm); events wait until it unblocks")
        case .unblocked:
            blocked = false
            waitingSince = waitingSince.map { _ in clock.now }
        }
    }

    /// Passes each ticket a confirm covers; the confirm timeout starts again from it.
    private func confirm(_ tag: UInt64, multiple: Bool, _ each: (UInt64) -> Void) {
        tags.confirm(tag, multiple: multiple, each)
        waitingSince = tags.unconfirmed > 0 ? clock.now : nil
    }

    private func acknowledged(_ ticket: UInt64, _ engine: DeliveryEngine) {
        if !returned.isEmpty, let event = engine.event(ticket),
           let index = returned.firstIndex(where: { $0.messageID == event.id && $0.routingKey == event.topic }) {
            let bounce = returned.remove(at: index)
            engine.fail(ticket, "the AMQP broker returned it as unroutable (\(bounce.code) \(bounce.text)): no queue is bound to exchange \"\(exchange)\" "
                        + "for routing key \"\(event.topic)\"; bind a queue for it, or change --topic")
            return
        }
        engine.delivered(ticket)
    }

    private func closed(channel: Bool, code: UInt16, text: String, _ engine: DeliveryEngine) {
        let what = channel ? "closed the channel" : "closed the connection"
        switch code {
        case 404 where channel:
            engine.stop(SinkError(.permanent, "the AMQP broker at \(url.address) \(what) (\(code) \(text)): exchange \"\(exchange)\" no longer exists in vhost \"\(url.vhost)\"; "
                                  + "declare it (a durable topic exchange) or restart spout with --amqp-declare"))
            drop()
        case 403, 406:
            engine.stop(SinkError(.permanent, "the AMQP broker at \(url.address) \(what) (\(code) \(text))"))
            drop()
        default:
            // 320 CONNECTION_FORCED (the broker shuts down) and the like: reconnect.
            abandon(engine, reason: "the broker \(what): \(code) \(text)")
        }
    }

    // MARK: Waiting

    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        let wakeup = engine.wakeup
        guard let connection else {
            wakeup.watch(socket: nil, connection: generation, reading: false, writing: false)
            return !connecting && !engine.isBackingOff && !engine.isStopped ? clock.now : nil
        }
        wakeup.watch(socket: connection.descriptor, connection: generation, reading: true,
                     writing: socketFull && engine.hasWaiting && !blocked && !engine.isBackingOff)
        let now = clock.now
        if connection.hasBufferedInput { return now }
        if engine.hasWaiting, !socketFull, !blocked, !engine.isStopped, !engine.isBackingOff { return now }
        var deadline: ContinuousClock.Instant?
        if connection.heartbeat > 0 { deadline = now + .seconds(max(1, connection.heartbeat / 2)) }
        if let waitingSince, !blocked {
            let timeout = waitingSince + Self.confirmTimeout
            deadline = deadline.map { min($0, timeout) } ?? timeout
        }
        return deadline
    }

    func close(_ engine: DeliveryEngine) {
        worker.shutDown()
        guard let connection else { return }
        connection.closeGracefully()
        drop()
    }
}

/// Opens connections on a thread of its own: librabbitmq's handshake blocks (connect, login,
/// channel, exchange, confirm.select), and the relay thread must keep answering PostgreSQL.
/// The result is picked up by the adapter after the wakeup it signals.
final class AMQPConnectWorker: Sendable {
    private struct State {
        var result: Result<AMQPConnection, AMQPConnection.Failure>?
        var wakeup: DeliveryWakeup?
        var shutDown = false
    }

    private let url: AMQPURL
    private let tls: SinkTLS
    private let exchange: String
    private let declare: Bool
    private let timeout: Duration
    private let queue = DispatchQueue(label: "spout.amqp.connect")
    private let state = Mutex(State())
    private let arrived = DispatchSemaphore(value: 0)

    init(url: AMQPURL, tls: SinkTLS, exchange: String, declare: Bool, timeout: Duration) {
        self.url = url
        self.tls = tls
        self.exchange = exchange
        self.declare = declare
        self.timeout = timeout
    }

    func attach(_ wakeup: DeliveryWakeup) { state.withLock { $0.wakeup = wakeup } }

    func connect() {
        queue.async { [self] in
            let result: Result<AMQPConnection, AMQPConnection.Failure>
            do throws(AMQPConnection.Failure) {
                result = .success(try AMQPConnection.open(url, tls: tls, exchange: exchange, declare: declare, timeout: timeout))
            } catch {
                result = .failure(error)
            }
            let wakeup = state.withLock { state -> DeliveryWakeup? in
                guard !state.shutDown else { return nil }
                state.result = result
                return state.wakeup
            }
            arrived.signal()
            wakeup?.signal()
        }
    }

    func takeResult() -> Result<AMQPConnection, AMQPConnection.Failure>? {
        state.withLock { state in
            defer { state.result = nil }
            return state.result
        }
    }

    /// Waits up to `milliseconds` for a connect to finish (at start only).
    func waitForResult(milliseconds: Int) {
        _ = arrived.wait(timeout: .now() + .milliseconds(milliseconds))
    }

    /// A connection finished after this is closed, not handed over.
    func shutDown() { state.withLock { $0.shutDown = true } }
}
