import Foundation

/// The relay loop: read the slot → decode → map → hand to the sink → confirm what the sink
/// acknowledged. One thread, no per-event task hop; it waits only in `poll(2)` on the
/// database socket, the sink's wakeup and the stop signal.
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

    private let stream: ReplicationStream
    private var mapper: EventMapper
    private let sink: Sink
    /// Verifies that the table and publication did not change; nothing is confirmed past where it verified.
    private let watch: PublicationWatch?
    private let options: Options
    private let log: Log
    private let clock = ContinuousClock()

    public private(set) var tracker: AckTracker
    public private(set) var statistics = Statistics()
    /// Commit → sink acknowledgement, per event (with `recordLatency`).
    public private(set) var latency = LatencyRecorder()
    /// Commit → decoded by spout, per event (with `recordLatency`): the server's share of `latency`.
    public private(set) var decodeLatency = LatencyRecorder()

    // The transaction being received (between Begin and Commit).
    private var transaction: PgOutputMessage.Begin?
    private var skippingTransaction = false

    /// The sink takes events as they are decoded (it does not need their commit LSN): the
    /// window alone bounds what is read, inside a transaction too.
    private let streaming: Bool
    // For a sink that needs the commit LSN: the open transaction's events, and committed
    // events waiting for room in the in-flight window, in ticket order.
    private let spool: EventSpool
    private var nextDispatchTicket: UInt64 = 0
    // Sizes of dispatched events by ticket (a ring as wide as the window) for the byte window.
    private var inFlightSizes: [Int]
    private var inFlightCommitTimes: [PostgresTimestamp]
    private var inFlightBytes = 0
    private var dispatchedUnacknowledged = 0
    /// Tickets the sink reported as failed: out of flight, never acknowledged.
    private var failedTickets: Set<UInt64> = []

    /// The newest transaction read committed this long ago (microseconds), as of its Begin.
    private var behindMicros: Int64 = 0
    /// Messages the last `readAvailable` read.
    private var lastReadCount = 0
    private var reachedEnd = false
    private var replyRequested = false
    private var lastStatusAt: ContinuousClock.Instant
    private var lastSentFlush = LSN.zero
    /// Where the watch last verified the table and publication unchanged: nothing past it is confirmed.
    private var verified: LSN?

    /// The position the last status update confirmed to PostgreSQL.
    public var confirmed: LSN { lastSentFlush }
    private var warnedRename: String?

    /// - Parameter start: where the slot stands (its `confirmed_flush_lsn`, or the temporary slot's consistent point).
    public init(stream: ReplicationStream, mapper: EventMapper, sink: Sink, start: LSN, options: Options, log: Log,
                watch: PublicationWatch? = nil) {
        self.stream = stream
        self.mapper = mapper
        self.sink = sink
        self.watch = watch
        self.options = options
        self.log = log
        tracker = AckTracker(start: max(start, options.startLSN ?? start))
        tracker.followLimit = options.endLSN
        verified = watch?.verified
        inFlightSizes = [Int](repeating: 0, count: max(1, options.maxInFlightEvents))
        inFlightCommitTimes = options.recordLatency
            ? [PostgresTimestamp](repeating: PostgresTimestamp(rawValue: 0), count: inFlightSizes.count) : []
        spool = EventSpool(memoryLimit: options.spoolMemoryBytes)
        streaming = !sink.needsCommitLSN
        lastStatusAt = clock.now - options.statusInterval
        lastSentFlush = start
        if let end = options.endLSN, end <= tracker.confirmed { reachedEnd = true }
    }

    /// Runs until `stop` is requested, `--end-lsn` is reached, or an error. Errors that leave
    /// the connection usable first let the sink finish what it holds and confirm that.
    public func run(until stop: StopSignal) throws(SpoutError) -> Outcome {
        do {
            while true {
                if stop.isRequested {
                    log.info("stopping: waiting up to \(options.shutdownTimeout.secondsText) s for \(dispatchedUnacknowledged + spool.committedCount) acknowledgements")
                    try drain(deadline: clock.now + options.shutdownTimeout)
                    return .stopped
                }
                let read = try readAvailable()
                try dispatch()
                let completed = try pollSink()
                try sendStatusIfDue()
                if reachedEnd, transaction == nil, spool.committedCount == 0, dispatchedUnacknowledged == 0 {
                    try verifyBeforeFinalStatus()
                    try sendStatus()
                    stream.finish()
                    return .reachedEnd
                }
                if read == 0, completed == 0 { try waitForWork(stop: stop) }
            }
        } catch {
            let error = naming(transaction, in: error)
            if case .connectionLost = error { throw error }
            // Deliver and confirm what came before the failure; nothing after it is confirmed.
            try? drain(deadline: clock.now + options.shutdownTimeout)
            throw error
        }
    }

    /// A server error in the middle of a transaction (say, WAL bytes that are not valid in
    /// the client encoding, from an SQL_ASCII database) names that transaction and how to skip
    /// it: the error comes again on every start otherwise.
    private func naming(_ open: PgOutputMessage.Begin?, in error: SpoutError) -> SpoutError {
        guard let open, case let .server(serverError, context) = error else { return error }
        return .server(serverError, while: "\(context) in the transaction that commits at \(open.finalLSN) (xid \(open.xid)); it recurs on "
                       + "every start: fix the cause, or skip that whole transaction (all its events, and only them) with "
                       + "spout run --start-lsn \(open.finalLSN.advanced(by: 1)) and your other options, then deliver its events by hand")
    }

    // MARK: Reading

    /// Whether another event may be handed to the sink now.
    private var dispatchHasRoom: Bool {
        nextDispatchTicket - tracker.acknowledgedBelow < UInt64(inFlightSizes.count)
            && (dispatchedUnacknowledged == 0 || inFlightBytes < options.maxInFlightBytes)
    }

    /// Whether to read the next message. A streaming sink reads while the window has room;
    /// otherwise reading goes on inside a transaction (its events wait in the spool for the
    /// Commit) and stops between transactions while the window is full.
    private var canRead: Bool {
        if reachedEnd { return false }
        if streaming { return dispatchHasRoom }
        return transaction != nil || (tracker.unacknowledged < options.maxInFlightEvents && inFlightBytes < options.maxInFlightBytes)
    }

    /// Reads what libpq has buffered, up to a batch, while `canRead`. Replaying a backlog, it
    /// also reads the socket again (a few times) when the buffer runs dry, rather than
    /// waiting in poll(2) for every few messages.
    private func readAvailable() throws(SpoutError) -> Int {
        var count = 0
        var socketReads = 0
        defer { lastReadCount = count }
        while count < 4096, canRead {
            let gotMessage = try stream.read { (read: ReplicationStream.Read) throws(SpoutError) -> Bool in
                switch read {
                case let .message(bytes):
                    try handle(copyData: bytes)
                    return true
                case .wouldBlock:
                    return false
                case .ended:
                    throw SpoutError.connectionLost(detail: "the server ended replication")
                }
            }
            guard gotMessage else {
                guard isCatchingUp, socketReads < 4 else { break }
                socketReads += 1
                try stream.readSocket()
                continue
            }
            count += 1
        }
        return count
    }

    private func handle(copyData bytes: UnsafeRawBufferPointer) throws(SpoutError) {
        let frame: ReplicationFrame
        do { frame = try ReplicationFrame.decode(bytes) } catch { throw .protocolViolation(error, context: "replication frame") }
        switch frame {
        case let .keepalive(walEnd, _, reply):
            if reply { replyRequested = true }
            // The server waits for WAL: whatever backlog there was is read.
            if transaction == nil { behindMicros = 0 }
            if let end = options.endLSN, transaction == nil, walEnd >= end { reachedEnd = true }
            tracker.observe(walEnd: walEnd)
        case let .xLogData(_, walEnd, _, payloadOffset):
            let payload = UnsafeRawBufferPointer(rebasing: bytes[payloadOffset...])
            let message: PgOutputMessage
            do { message = try PgOutputMessage.decode(payload) } catch {
                throw .protocolViolation(error, context: "pgoutput message at \(walEnd)")
            }
            try handle(message)
            if walEnd != .zero { tracker.observe(walEnd: walEnd) }
        }
    }

    private func handle(_ message: PgOutputMessage) throws(SpoutError) {
        switch message {
        case let .begin(begin):
            // Replay ends before the first transaction whose commit record starts at or after the end.
            if let end = options.endLSN, begin.finalLSN >= end {
                reachedEnd = true
                return
            }
            transaction = begin
            behindMicros = LatencyRecorder.age(of: begin.commitTime, at: LatencyRecorder.nowMicros())
            skippingTransaction = options.startLSN.map { begin.finalLSN < $0 } ?? false
            tracker.transactionBegan()
        case let .relation(relation):
            let isOutbox: Bool
            do { isOutbox = try mapper.register(relation) } catch { throw .invalidOption(error.description) }
            guard isOutbox else { return }
            log.debug("outbox relation \(relation.namespace).\(relation.name) oid \(relation.oid)")
            let name = "\(relation.namespace).\(relation.name)"
            if name != mapper.mapping.table.description, warnedRename != name {
                warnedRename = name
                log.warning("the outbox table \(mapper.mapping.table) (oid \(relation.oid)) is named \(name) in the WAL: it was renamed; "
                            + "spout follows the same table (by oid), and needs --table \(name) on its next start if the name stays")
            }
        case let .insert(insert):
            guard let begin = transaction, !skippingTransaction else { return }
            guard mapper.isOutbox(relationOID: insert.relationOID) else {
                // Every insert the publication sends is an event or an error, never dropped unnoticed.
                let name = mapper.otherRelationName(insert.relationOID) ?? "oid \(insert.relationOID)"
                throw .publicationChanged("an insert into \(name) arrived through the publication in the transaction that commits at \(begin.finalLSN), "
                                          + "but spout maps only the outbox table \(mapper.mapping.table): give spout a publication of its own "
                                          + "(only the outbox table) or remove \(name) from it (ALTER PUBLICATION … DROP TABLE), then restart")
            }
            let event: OutboxEvent?
            do { event = try mapper.event(relationOID: insert.relationOID, row: insert.new, commit: begin) } catch {
                throw .unmappableEvent(error, eventID: mapper.rowID(relationOID: insert.relationOID, row: insert.new),
                                       lsn: begin.finalLSN)
            }
            if let event { try accept(event) }
        case let .message(logical):
            guard logical.prefix == mapper.mapping.messagePrefix else { return }
            guard let begin = transaction else { return try acceptNonTransactional(logical) }
            guard !skippingTransaction else { return }
            let event: OutboxEvent?
            do { event = try mapper.event(message: logical, committedAt: begin.commitTime) } catch {
                throw .unmappableEvent(error, eventID: nil, lsn: begin.finalLSN)
            }
            if let event { try accept(event) }
        case let .commit(commit):
            guard transaction != nil else {
                throw .protocolViolation(.invalidValue(message: "Commit", field: "transaction", value: 0), context: "Commit without Begin")
            }
            let begin = transaction
            transaction = nil
            if streaming {
                _ = tracker.transactionCommitted(endLSN: commit.endLSN, eventCount: 0)
            } else {
                let count = spool.openCount
                spool.commit(endLSN: commit.endLSN, committedAt: begin?.commitTime ?? commit.commitTime)
                _ = tracker.transactionCommitted(endLSN: commit.endLSN, eventCount: count)
            }
            statistics.transactions += 1
            // Every later transaction commits after this one: nothing more can be inside the end.
            if let end = options.endLSN, commit.endLSN >= end { reachedEnd = true }
        case .origin, .type, .update, .delete, .truncate:
            // Updates, deletes and truncates of the outbox (cleanup) are not events.
            break
        case .streamStart, .streamStop, .streamCommit, .streamAbort, .beginPrepare, .prepare, .commitPrepared,
             .rollbackPrepared, .streamPrepare:
            // Spout does not ask for streaming or two-phase; the server sends none of these.
            throw .protocolViolation(.unknownMessageType(0), context: "streamed or two-phase message that spout did not request")
        }
    }

    /// `pg_logical_emit_message(false, …)`: written to the WAL at once, whatever the
    /// transaction around it does (it survives a rollback), and sent by the server outside any
    /// transaction. It is delivered as a transaction of its own, in arrival order, and once
    /// acknowledged its LSN is confirmed. pgoutput's message LSN is where the message record
    /// *ends* (`logicalmsg_decode` queues it at `buf->endptr`): confirming it skips the message
    /// on a restart, while the commit of a transaction around it, which may start exactly
    /// there, is still decoded. One byte further would skip that transaction.
    private func acceptNonTransactional(_ logical: PgOutputMessage.LogicalMessage) throws(SpoutError) {
        if let end = options.endLSN, logical.lsn >= end {
            reachedEnd = true
            return
        }
        if let start = options.startLSN, logical.lsn < start { return }
        let event: OutboxEvent?
        do { event = try mapper.event(message: logical, committedAt: PostgresTimestamp(unixMicroseconds: LatencyRecorder.nowMicros())) } catch {
            throw .unmappableMessage(error, lsn: logical.lsn)
        }
        guard let event else { return }
        tracker.transactionBegan()
        try accept(event)
        if streaming {
            _ = tracker.transactionCommitted(endLSN: logical.lsn, eventCount: 0)
        } else {
            spool.commit(endLSN: logical.lsn, committedAt: event.committedAt)
            _ = tracker.transactionCommitted(endLSN: logical.lsn, eventCount: 1)
        }
        statistics.transactions += 1
    }

    // MARK: Sink

    /// A decoded event: straight to a streaming sink (`canRead` made room), else to the spool.
    private func accept(_ event: OutboxEvent) throws(SpoutError) {
        if options.recordLatency { decodeLatency.record(committedAt: event.committedAt, acknowledgedAt: LatencyRecorder.nowMicros()) }
        guard streaming else {
            try spool.append { sink.spool(event, into: &$0) }
            return
        }
        let ticket = tracker.issueTicket()
        do { try sink.send(event, ticket: ticket) } catch { throw .sink(error) }
        dispatched(size: event.approximateSize, committedAt: event.committedAt)
    }

    /// Hands committed events from the spool to the sink while the window has room.
    private func dispatch() throws(SpoutError) {
        while spool.committedCount > 0, dispatchHasRoom {
            let popped = try spool.popCommitted { (record, commit) throws(SpoutError) in
                do throws(SinkError) { try sink.sendSpooled(record, lsn: commit.endLSN, ticket: nextDispatchTicket) } catch { throw .sink(error) }
                dispatched(size: record.count + 64, committedAt: commit.committedAt)
            }
            guard popped else { break }
        }
    }

    private func dispatched(size: Int, committedAt: PostgresTimestamp) {
        let slot = Int(nextDispatchTicket % UInt64(inFlightSizes.count))
        inFlightSizes[slot] = size
        if options.recordLatency { inFlightCommitTimes[slot] = committedAt }
        inFlightBytes += size
        dispatchedUnacknowledged += 1
        nextDispatchTicket += 1
    }

    private func pollSink() throws(SpoutError) -> Int {
        var completed = 0
        var failure: SinkError?
        let now = options.recordLatency ? LatencyRecorder.nowMicros() : 0
        do {
            try sink.poll { completion in
                switch completion {
                case let .delivered(ticket):
                    guard ticket < nextDispatchTicket, tracker.isUnacknowledged(ticket) else { return }
                    completed += 1
                    dispatchedUnacknowledged -= 1
                    let slot = Int(ticket % UInt64(inFlightSizes.count))
                    inFlightBytes -= inFlightSizes[slot]
                    if options.recordLatency { latency.record(committedAt: inFlightCommitTimes[slot], acknowledgedAt: now) }
                    tracker.acknowledge(ticket)
                    statistics.events += 1
                case let .failed(ticket, error):
                    // Out of flight but never acknowledged: the LSN stays before this event.
                    guard ticket < nextDispatchTicket, tracker.isUnacknowledged(ticket),
                          failedTickets.insert(ticket).inserted else { return }
                    dispatchedUnacknowledged -= 1
                    inFlightBytes -= inFlightSizes[Int(ticket % UInt64(inFlightSizes.count))]
                    if failure == nil { failure = error }
                }
            }
        } catch {
            throw .sink(error)
        }
        if let failure { throw .sink(failure) }
        return completed
    }

    // MARK: Waiting and status

    /// Transactions older than this when read mean a backlog is being replayed.
    static let catchUpMicros: Int64 = 100_000

    /// Replaying a backlog: the newest transaction read was older than `catchUpMicros`.
    private var isCatchingUp: Bool { behindMicros > Self.catchUpMicros }

    private func waitForWork(stop: StopSignal) throws(SpoutError) {
        var others = [stop.descriptor]
        if let wakeup = sink.wakeupDescriptor { others.append(wakeup) }
        let untilStatus = lastStatusAt + options.statusInterval - clock.now
        var timeout = max(.zero, min(untilStatus, .milliseconds(500)))
        // A sink that holds events but has no wakeup descriptor is polled.
        if dispatchedUnacknowledged > 0, sink.wakeupDescriptor == nil { timeout = min(timeout, .milliseconds(1)) }
        let reading = canRead
        if reading, isCatchingUp, lastReadCount < 256 {
            // Replaying a backlog faster than the server sends it: the server sends every
            // message on its own, and waking for each costs more CPU than the messages (on a
            // small machine, CPU the walsender needs). A millisecond's pause lets a batch
            // gather; next to the backlog's age it adds nothing. Live traffic (read within
            // the threshold) is never held back.
            try stream.wait(readingSocket: false, others: others, timeout: min(timeout, .milliseconds(1)))
        }
        try stream.wait(readingSocket: reading, others: others, timeout: timeout)
    }

    /// Status goes out when the server asks, when the confirmable LSN moved (at most every
    /// 10 ms), and at least every `statusInterval` so the walsender never times out.
    private func sendStatusIfDue() throws(SpoutError) {
        try refreshVerified()
        let now = clock.now
        let moved = confirmable != lastSentFlush && now - lastStatusAt >= .milliseconds(10)
        guard replyRequested || moved || now - lastStatusAt >= options.statusInterval else { return }
        try sendStatus()
    }

    /// What may be confirmed: what the sink acknowledged (or the idle position), but never past
    /// where the watch verified that the table and publication were unchanged — rows written
    /// after such a change may never reach the slot, so only the watch can vouch for them.
    var confirmable: LSN { Self.confirmable(acknowledged: tracker.confirmed, verified: verified) }

    static func confirmable(acknowledged: LSN, verified: LSN?) -> LSN {
        verified.map { min(acknowledged, $0) } ?? acknowledged
    }

    /// Before the last status update: one more check, so the idle position it confirms is verified up to now.
    private func verifyBeforeFinalStatus() throws(SpoutError) {
        guard let watch else { return }
        // A status first: the wait below must not let the walsender's timeout run out.
        try sendStatus()
        watch.checkNow(timeout: options.statusInterval * 2)
        try refreshVerified()
    }

    /// The watch's news: a change it found stops the relay; otherwise how far it verified.
    private func refreshVerified() throws(SpoutError) {
        guard let watch else { return }
        if let failure = watch.failure { throw failure }
        verified = watch.verified
    }

    private func sendStatus() throws(SpoutError) {
        let confirmed = confirmable
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let micros = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
        try stream.send(StandbyStatusUpdate(write: max(tracker.received, confirmed), flush: confirmed, apply: confirmed,
                                            sendTime: PostgresTimestamp(unixMicroseconds: micros)))
        replyRequested = false
        lastSentFlush = confirmed
        lastStatusAt = clock.now
    }

    /// Stops reading, lets the sink acknowledge what it holds (until `deadline`), sends a
    /// final status update with what is confirmed, and ends the stream. The final status goes
    /// out even when the sink fails meanwhile; the first failure is rethrown after it.
    private func drain(deadline: ContinuousClock.Instant) throws(SpoutError) {
        var failure: SpoutError?
        // Committed transactions still in the spool go out too: after a poison event, all
        // before it must be confirmed, or skipping just its transaction would skip them too.
        while dispatchedUnacknowledged > 0 || spool.committedCount > 0, clock.now < deadline {
            do {
                try dispatch()
                if try pollSink() == 0 {
                    try sendStatusIfDue()
                    var others: [Int32] = []
                    if let wakeup = sink.wakeupDescriptor { others.append(wakeup) }
                    try stream.wait(readingSocket: false, others: others, timeout: .milliseconds(others.isEmpty ? 1 : 100))
                }
            } catch {
                failure = error
                break
            }
        }
        if dispatchedUnacknowledged + spool.committedCount > 0, failure == nil {
            log.warning("\(dispatchedUnacknowledged + spool.committedCount) events were not acknowledged before the shutdown timeout; they will be sent again on restart")
        }
        if failure == nil {
            do { try verifyBeforeFinalStatus() } catch { failure = error }
        }
        do { try sendStatus() } catch { failure = failure ?? error }
        stream.finish()
        if let failure { throw failure }
    }
}

extension Duration {
    /// Whole milliseconds (rounded down, negative stays negative), for poll(2) timeouts.
    var wholeMilliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }

    /// Whole or fractional seconds, as a person writes them (`30`, `2.5`).
    var secondsText: String {
        let seconds = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return seconds == seconds.rounded() ? String(Int64(seconds)) : String(format: "%.3g", seconds)
    }
}
