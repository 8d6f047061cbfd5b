import CoreMetrics
import Foundation

/// The relay loop: read the slot → decode → feed the replication session → perform what it
/// answers (hand events to the sink, spool them, send status, wait). One thread, no per-event
/// task hop; it waits only in `poll(2)` on the database socket, the sink's wakeup and the
/// stop signal. The decisions are `ReplicationSession`'s; this is only the IO.
public final class Relay {
    public struct Options: Sendable {
        /// Replay: transactions that committed before this LSN are skipped.
        public var startLSN: LSN?
        /// Replay: stop (successfully) once every transaction committed up to here is confirmed.
        public var endLSN: LSN?
        /// Events handed to the sink and not yet acknowledged, at most.
        public var maxInFlightEvents = 10_000
        /// Bytes of events handed to the sink and not yet acknowledged, at most (one event may exceed it).
        public var maxInFlightBytes = 32 << 20
        /// A status update goes out at least this often, also while the sink is slow.
        public var statusInterval: Duration = .seconds(1)
        /// On stop, how long to wait for the sink to acknowledge what it holds.
        public var shutdownTimeout: Duration = .seconds(30)
        /// Events waiting for their commit or for the sink beyond this many bytes go to a
        /// temporary file, so a huge transaction does not grow memory.
        public var spoolMemoryBytes = 8 << 20
        /// Record commit → acknowledgement latency of every event (`latency`).
        public var recordLatency = false
        /// After a lost connection (with a connector), give up when streaming does not resume
        /// within this long; nil: never. Zero: exit at once with the lost connection's error.
        public var reconnectTimeout: Duration?
        /// Wait while another client streams from the slot (false: fail at once).
        public var standby = true
        /// Poison events: stop, dead-letter or skip them (`--on-poison`; the sink learns it too).
        public var onPoison = PoisonPolicy.stop
        /// Transient refusals of one event before it is poison (`--max-retries`); nil: retry for ever.
        public var maxRetries: Int?

        public init() {}
    }

    public enum Outcome: Sendable, Equatable {
        /// Stopped on request (SIGINT/SIGTERM).
        case stopped
        /// Everything up to `--end-lsn` is delivered and confirmed.
        case reachedEnd
    }

    public struct Statistics: Sendable {
        public var events = 0
        public var transactions = 0
    }

    /// The replication connection; nil while disconnected (or standing by).
    private var stream: ReplicationStream?
    /// Opens the stream again after a lost connection, or when the slot is released; nil: a
    /// lost connection ends the relay (`spout tail`: its temporary slot is gone with it).
    private let connector: ReplicationConnector?
    private let sink: Sink
    /// Verifies that the table and publication did not change; nothing is confirmed past where it verified.
    private let watch: PublicationWatch?
    private let options: Options
    private let log: Log
    private let clock = ContinuousClock()
    private var session: ReplicationSession
    /// Events waiting for their commit or for room in the window (a sink that needs the commit LSN).
    private let spool: EventSpool
    /// The sink, when it encodes events before their commit LSN is known: the spool keeps its bytes.
    private let encoder: (any PreCommitEncoding)?
    private let metrics: RelayMetrics
    /// The watch's count of server shutdowns that the relay let go of its connection for.
    private var handledShutdowns = 0
    /// When the metrics were last brought up to date while disconnected (status updates do it while streaming).
    private var metricsPublishedAt = ContinuousClock.now

    public var tracker: AckTracker { session.tracker }
    public var statistics: Statistics { session.statistics }
    /// Commit → sink acknowledgement, per event (with `recordLatency`).
    public var latency: LatencyRecorder { session.latency }
    /// Commit → decoded by spout, per event (with `recordLatency`): the server's share of `latency`.
    public private(set) var decodeLatency = LatencyRecorder()
    /// The position the last status update confirmed to PostgreSQL.
    public var confirmed: LSN { session.lastSentFlush }
    /// The state `/healthz` and `/readyz` read (issue 13).
    public var health: RelayHealth { metrics.health }

    /// - Parameters:
    ///   - stream: nil when the slot is held by another client: the relay starts as a standby (needs `connector`).
    ///   - start: where the slot stands (its `confirmed_flush_lsn`, or the temporary slot's consistent point).
    public init(stream: ReplicationStream?, mapper: EventMapper, sink: Sink, start: LSN, options: Options, log: Log,
                watch: PublicationWatch? = nil, connector: ReplicationConnector? = nil, metrics: MetricsFactory = MetricsSystem.factory,
                health: RelayHealth = RelayHealth()) {
        self.stream = stream
        self.connector = connector
        self.sink = sink
        self.watch = watch
        self.options = options
        self.log = log
        var configuration = ReplicationSession.Configuration()
        configuration.startLSN = options.startLSN
        configuration.endLSN = options.endLSN
        configuration.maxInFlightEvents = options.maxInFlightEvents
        configuration.maxInFlightBytes = options.maxInFlightBytes
        configuration.statusInterval = options.statusInterval
        configuration.streaming = !sink.needsCommitLSN
        configuration.recordLatency = options.recordLatency
        configuration.onPoison = options.onPoison
        sink.adopt(options.onPoison, maxRetries: options.maxRetries)
        session = ReplicationSession(start: start, configuration: configuration, mapper: mapper, verified: watch?.verified, now: clock.now)
        spool = EventSpool(memoryLimit: options.spoolMemoryBytes)
        encoder = sink as? any PreCommitEncoding
        self.metrics = RelayMetrics(sink: sink.metricsName, factory: metrics, health: health)
        self.metrics.connection(up: stream != nil)
    }

    /// Runs until `stop` is requested, `--end-lsn` is reached, or an error. Errors that leave
    /// the connection usable first let the sink finish what it holds and confirm that.
    public func run(until stop: StopSignal) throws(SpoutError) -> Outcome {
        var lost: SpoutError?
        while true {
            if stream == nil {
                guard try reconnect(after: lost, until: stop) else {
                    try drain()
                    return .stopped
                }
            }
            do {
                return try streamUntilStopped(stop)
            } catch {
                // A connection that broke (or a stop's drain that lost it): stream again, same session.
                if connector != nil, options.reconnectTimeout != .zero, error.isConnectionLoss, !session.isFinished {
                    stream = nil
                    lost = error
                    continue
                }
                let error = session.naming(error)
                if case .connectionLost = error { throw error }
                // Deliver and confirm what came before the failure; nothing after it is confirmed.
                try? drain()
                throw error
            }
        }
    }

    private func streamUntilStopped(_ stop: StopSignal) throws(SpoutError) -> Outcome {
        let others = [stop.descriptor] + sink.wakeupDescriptors // issue 14: several sinks
        guard let stream else { throw .connectionLost(detail: "not connected") }
        do {
            while !stop.isRequested {
                metrics.health.beat()
                let read = try readAvailable()
                try dispatchSpooled()
                let completed = try pollSink()
                try sendStatusIfDue()
                if session.isFinished {
                    try verifyBeforeFinalStatus()
                    try send(session.status)
                    stream.finish()
                    return .reachedEnd
                }
                if read == 0, completed == 0 {
                    let wait = session.wait(now: clock.now, sinkHasWakeup: sink.wakeupDescriptor != nil)
                    if let gather = wait.gather { try stream.wait(readingSocket: false, others: others, timeout: gather) }
                    try stream.wait(readingSocket: wait.readingSocket, others: others, timeout: wait.timeout)
                }
            }
            log.info("stopping: waiting up to \(options.shutdownTimeout.secondsText) s for \(session.outstanding) acknowledgements"
                     + (sink.pendingSummary.map { " (\($0))" } ?? "")) // issue 14: several sinks
            try drain()
            return .stopped
        }
    }

    // MARK: Reconnecting and standing by

    /// Streams again after `lost` (or, with nil, for the first time: the slot is held and this
    /// relay stands by), one attempt after another, while the sink keeps working and its
    /// acknowledgements are recorded. One warning when the outage begins, one line when it
    /// ends. Returns false when a stop was requested first; throws when `reconnectTimeout`
    /// passed or the slot cannot be streamed again (missing, invalidated).
    private func reconnect(after lost: SpoutError?, until stop: StopSignal) throws(SpoutError) -> Bool {
        guard let connector else { throw lost ?? .connectionLost(detail: "not connected") }
        let slot = connector.slot
        let began = clock.now
        var outage = false
        if let lost {
            session.connectionLost()
            metrics.connection(up: false)
            outage = true
            log.warning("lost the connection to PostgreSQL (\(lost.connectionDetail)); reconnecting with backoff"
                        + (options.reconnectTimeout.map { " for up to \($0.secondsText) s" } ?? "")
                        + ", the sink keeps delivering and its acknowledgements are confirmed once streaming again",
                        metadata: ["slot": "\(slot)"])
        }
        var backoff = RetryBackoff(first: .milliseconds(200), ceiling: .seconds(30))
        var random = SystemRandomNumberGenerator()
        var standingBy = false
        var ownEnded = false
        var certificateWarned = false // issue 15: a TLS problem while reconnecting is worth its own warning
        while !stop.isRequested {
            let delay: Duration
            switch try connector.attempt(at: session.resumePosition) {
            case let .streaming(stream, slotConfirmed):
                self.stream = stream
                session.resumed(slotConfirmed: slotConfirmed, now: clock.now)
                // A shutdown the watch saw meanwhile is over: this connection is to a running server.
                handledShutdowns = watch?.serverShutdowns ?? 0
                metrics.connection(up: true)
                let position = max(session.resumePosition, slotConfirmed ?? .zero)
                if standingBy {
                    log.info("taking over slot \"\(slot)\": streaming from \(position) on \(stream.connection.server)",
                             metadata: ["slot": "\(slot)", "lsn": "\(position)"])
                }
                if outage {
                    metrics.reconnected()
                    log.info("recovered the connection to PostgreSQL after \(OutageState.seconds(clock.now - began)) s: streaming from slot "
                             + "\"\(slot)\" at \(position) on \(stream.connection.server)", metadata: ["slot": "\(slot)", "lsn": "\(position)"])
                }
                return true
            case let .held(pid, client):
                guard options.standby else { throw .slotActive(slot: slot, pid: pid, client: client) }
                if !standingBy {
                    standingBy = true
                    metrics.standingBy()
                    log.info("standby: slot \"\(slot)\" is held by pid \(pid) (\(client ?? "unknown client")), taking over when it is released",
                             metadata: ["slot": "\(slot)"])
                }
                backoff.reset()
                delay = .seconds(1)
            case let .releasedOwn(pid):
                // Our previous connection's walsender: the server had not noticed it was gone.
                if !ownEnded { log.debug("ended this spout's previous walsender (server pid \(pid)), which still held slot \"\(slot)\"") }
                ownEnded = true
                delay = .milliseconds(100)
            case let .failed(error):
                if !outage {
                    // Standing by, and the database went away.
                    outage = true
                    metrics.connection(up: false)
                    log.warning("lost the connection to PostgreSQL (\(error.connectionDetail)); reconnecting with backoff", metadata: ["slot": "\(slot)"])
                } else if !certificateWarned, TLSProblem(libpqMessage: error.connectionDetail) != nil {
                    // issue 15: the server came back with a certificate spout refuses (or wants one it lacks).
                    certificateWarned = true
                    log.warning("\(error.connectionDetail); retrying with backoff", metadata: ["slot": "\(slot)"])
                }
                if let timeout = options.reconnectTimeout, clock.now - began >= timeout {
                    throw .reconnectTimedOut(seconds: timeout.secondsText, lastError: error.connectionDetail)
                }
                delay = options.reconnectTimeout.map { min(backoff.next(using: &random), began + $0 - clock.now) }
                    ?? backoff.next(using: &random)
            }
            try keepSinkWorking(for: delay, until: stop)
        }
        if session.outstanding > 0 || !session.isConnected {
            log.info("stopping while disconnected from PostgreSQL: the sink may finish what it holds, but nothing can be confirmed "
                     + "without a connection; the slot keeps the unconfirmed part, which is sent again on the next start")
        }
        return false
    }

    /// While disconnected: the sink goes on delivering (committed spooled events too) and its
    /// acknowledgements are recorded, for `delay` or until a stop request.
    private func keepSinkWorking(for delay: Duration, until stop: StopSignal) throws(SpoutError) {
        let others = [stop.descriptor] + sink.wakeupDescriptors // issue 14: several sinks
        let deadline = clock.now + delay
        while clock.now < deadline, !stop.isRequested {
            metrics.health.beat()
            // No status updates go out: the metrics (in flight, lag, deliveries) are brought up to date here.
            if clock.now - metricsPublishedAt >= .seconds(1) {
                metrics.publish(session, confirmed: session.lastSentFlush, spoolBytes: spool.bytes)
                metricsPublishedAt = clock.now
            }
            try dispatchSpooled()
            if try pollSink() == 0 {
                let poll: Duration = session.dispatchedUnacknowledged > 0 && sink.wakeupDescriptor == nil ? .milliseconds(1) : .milliseconds(100)
                try ReplicationStream.wait(others: others, timeout: min(poll, deadline - clock.now))
            }
        }
    }

    /// Reads what libpq has buffered, up to a batch, while the session reads. Replaying a
    /// backlog, it also reads the socket again (a few times) when the buffer runs dry, rather
    /// than waiting in poll(2) for every few messages.
    private func readAvailable() throws(SpoutError) -> Int {
        guard let stream else { return 0 }
        var count = 0
        var socketReads = 0
        // Once per batch: the session only needs it to tell a backlog from live traffic.
        var nowMicros = LatencyRecorder.nowMicros()
        while count < 4096, session.canRead {
            let gotMessage = try stream.read { (read: ReplicationStream.Read) throws(SpoutError) -> Bool in
                switch read {
                case let .message(bytes):
                    try receive(bytes, nowMicros: nowMicros)
                    return true
                case .wouldBlock:
                    return false
                case .ended:
                    throw SpoutError.connectionLost(detail: "the server ended replication")
                }
            }
            guard gotMessage else {
                guard session.isCatchingUp, socketReads < 4 else { break }
                socketReads += 1
                try stream.readSocket()
                nowMicros = LatencyRecorder.nowMicros()
                continue
            }
            count += 1
        }
        return count
    }

    private func receive(_ bytes: UnsafeRawBufferPointer, nowMicros: Int64) throws(SpoutError) {
        let frame: ReplicationFrame
        do { frame = try ReplicationFrame.decode(bytes) } catch { throw .protocolViolation(error, context: "replication frame") }
        switch frame {
        case let .keepalive(walEnd, _, reply):
            session.keepalive(walEnd: walEnd, replyRequested: reply)
        case let .xLogData(_, walEnd, _, payloadOffset):
            let message: PgOutputMessage
            do { message = try PgOutputMessage.decode(UnsafeRawBufferPointer(rebasing: bytes[payloadOffset...])) } catch {
                throw .protocolViolation(error, context: "pgoutput message at \(walEnd)")
            }
            try perform(session.receive(message, walEnd: walEnd, nowMicros: nowMicros))
        }
    }

    private func perform(_ delivery: ReplicationSession.Delivery) throws(SpoutError) {
        switch delivery {
        case .none: break
        case let .send(event, ticket):
            if options.recordLatency { decodeLatency.record(committedAt: event.committedAt, acknowledgedAt: LatencyRecorder.nowMicros()) }
            try send(event, ticket: ticket)
        case let .spool(event, topic):
            if options.recordLatency { decodeLatency.record(committedAt: event.committedAt, acknowledgedAt: LatencyRecorder.nowMicros()) }
            try keep(event, topic: topic)
        case let .debug(text): log.debug(text)
        case let .warning(text): log.warning(text)
        case let .poisoned(warning, then):
            log.warning(warning)
            try perform(then)
        }
    }

    /// Spools an event until its transaction commits: as the sink's bytes, when it encodes
    /// before the commit LSN is known, so that work overlaps the server's.
    private func keep(_ event: OutboxEvent, topic: Int32) throws(SpoutError) {
        guard let encoder else { return try spool.append(event, tag: topic) }
        try spool.append(tag: topic) { encoder.encode(event, into: &$0) }
    }

    /// Hands committed events from the spool to the sink while the window has room.
    private func dispatchSpooled() throws(SpoutError) {
        while session.mayDispatchSpooled {
            if let encoder {
                let popped = try spool.popRecord { (record, topic) throws(SpoutError) in
                    // In the window: the record's bytes and a little for the sink's part of it.
                    let (ticket, commitLSN) = session.dispatchSpooled(size: record.count + 64, topic: topic)
                    do throws(SinkError) { try encoder.send(encoded: record, commitLSN: commitLSN, ticket: ticket) } catch {
                        session.rejected(ticket)
                        throw .sink(error)
                    }
                }
                if popped { continue }
            } else if var (event, size, topic) = try spool.pop() {
                let ticket: UInt64
                (ticket, event.lsn) = session.dispatchSpooled(size: size, topic: topic)
                try send(event, ticket: ticket)
                continue
            }
            throw .spoolFailed("the event spool lost \(session.spooledCommitted) committed events")
        }
    }

    private func send(_ event: OutboxEvent, ticket: UInt64) throws(SpoutError) {
        do { try sink.send(event, ticket: ticket) } catch {
            session.rejected(ticket)
            throw .sink(error)
        }
    }

    private func pollSink() throws(SpoutError) -> Int {
        var completed = 0
        var now: Int64 = 0
        do {
            try sink.poll { completion in
                if now == 0 { now = LatencyRecorder.nowMicros() }
                if session.completed(completion, nowMicros: now) { completed += 1 }
            }
        } catch {
            throw .sink(error)
        }
        if let failure = session.takeSinkFailure() { throw .sink(failure) }
        return completed
    }

    private func sendStatusIfDue() throws(SpoutError) {
        try refreshVerified()
        if let status = session.statusDue(now: clock.now) { try send(status) }
    }

    private func send(_ status: ReplicationSession.Status) throws(SpoutError) {
        guard let stream else { throw .connectionLost(detail: "not connected") }
        try stream.send(StandbyStatusUpdate(write: status.write, flush: status.flush, apply: status.flush,
                                            sendTime: PostgresTimestamp(unixMicroseconds: LatencyRecorder.nowMicros())))
        session.statusSent(status, now: clock.now)
        metrics.publish(session, confirmed: status.flush, spoolBytes: spool.bytes)
    }

    /// Before the last status update: one more check, so the idle position it confirms is verified up to now.
    private func verifyBeforeFinalStatus() throws(SpoutError) {
        guard let watch else { return }
        // A status first: the wait below must not let the walsender's timeout run out.
        try send(session.status)
        watch.checkNow(timeout: options.statusInterval * 2)
        try refreshVerified()
    }

    /// The watch's news: a change it found stops the relay; otherwise how far it verified.
    private func refreshVerified() throws(SpoutError) {
        guard let watch else { return }
        let shutdowns = watch.serverShutdowns
        if shutdowns != handledShutdowns {
            handledShutdowns = shutdowns
            throw .connectionLost(detail: "PostgreSQL is shutting down: its walsender waits for a confirmation of all WAL, which spout gives "
                                  + "only up to where the outbox table and publication were verified, so spout closed its connection")
        }
        try session.watchReported(verified: watch.verified, failure: watch.failure)
    }

    /// Stops reading, lets the sink acknowledge what it holds (for at most the shutdown
    /// timeout), sends a final status update with what is confirmed, and ends the stream. The
    /// final status goes out even when the sink fails meanwhile; the first failure is rethrown
    /// after it.
    private func drain() throws(SpoutError) {
        session.stop(now: clock.now, timeout: options.shutdownTimeout)
        metrics.health.set(.stopping)
        let others = sink.wakeupDescriptors // issue 14: several sinks
        var failure: SpoutError?
        let stream = self.stream
        // Committed transactions still in the spool go out too: after a poison event, all
        // before it must be confirmed, or skipping just its transaction would skip them too.
        while session.isDraining(now: clock.now) {
            metrics.health.beat()
            do {
                try dispatchSpooled()
                if try pollSink() == 0 {
                    if stream != nil { try sendStatusIfDue() }
                    try ReplicationStream.wait(others: others, timeout: .milliseconds(sink.wakeupDescriptor == nil ? 1 : 100)) // issue 14: several sinks
                }
            } catch {
                failure = error
                break
            }
        }
        if session.outstanding > 0, failure == nil {
            log.warning("\(session.outstanding) events were not acknowledged before the shutdown timeout; they will be sent again on restart"
                        + (sink.pendingSummary.map { " (\($0))" } ?? "")) // issue 14: several sinks
        }
        guard let stream else {
            // Nothing can be confirmed without a connection: the slot keeps it, sent again on the next start.
            if let failure { throw failure }
            return
        }
        if failure == nil {
            do { try verifyBeforeFinalStatus() } catch { failure = error }
        }
        do { try send(session.status) } catch { failure = failure ?? error }
        stream.finish()
        if let failure { throw failure }
    }

}

extension Duration {
    /// Whole milliseconds (rounded down, negative stays negative), for poll(2) timeouts.
    package var wholeMilliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }

    /// The length in seconds, fractions included.
    package var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }

    /// Whole or fractional seconds, as a person writes them (`30`, `2.5`).
    var secondsText: String {
        seconds == seconds.rounded() ? String(Int64(seconds)) : String(format: "%.3g", seconds)
    }
}
