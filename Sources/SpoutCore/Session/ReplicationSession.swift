/// The replication session: what the relay knows between the slot and the sink, as a pure
/// state machine (postgres-nio's shape). No IO, no clock reads, no logging: time comes in as
/// an input, and the relay performs what the session answers.
///
/// Inputs: a keepalive, a decoded pgoutput message (with its XLogData `walEnd`), a committed
/// event leaving the spool, a sink completion, the publication watch's news, a clock tick
/// (status and wait), a stop request, the connection lost and resumed. Answers: hand an event to the sink with its ticket, or
/// spool it until its transaction commits; read or pause reading (`canRead`, `wait`); send a
/// status update with the write/flush LSN; finish at the end LSN; fail with an error.
///
/// It owns the open transaction, the replay window (`startLSN` skip, `endLSN` finish), the
/// in-flight window (events and bytes), the ack tracker, status timing, catch-up detection
/// and the cap by the watch's verified position.
///
/// Not copyable: the relay keeps it in a class, where reading a copyable struct's property
/// may copy the whole struct (every array and dictionary in it retained and released) per
/// message; a noncopyable one is only ever borrowed or modified in place.
public struct ReplicationSession: ~Copyable {
    public struct Configuration: Sendable {
        /// Replay: transactions that committed before this LSN are skipped.
        public var startLSN: LSN?
        /// Replay: finish once every transaction committed up to here is confirmed.
        public var endLSN: LSN?
        public var maxInFlightEvents = 10_000
        public var maxInFlightBytes = 32 << 20
        public var statusInterval: Duration = .seconds(1)
        /// The sink takes events as they are decoded (it does not need their commit LSN).
        public var streaming = false
        /// Record commit → acknowledgement latency of every event (`latency`).
        public var recordLatency = false
        /// What happens to a row that cannot be mapped (`--on-poison`).
        public var onPoison = PoisonPolicy.stop

        public init() {}
    }

    /// What the relay does with one decoded message.
    public enum Delivery {
        case none
        /// Hand the event to the sink now, with this ticket (a streaming sink: `lsn` is zero).
        case send(OutboxEvent, ticket: UInt64)
        /// Keep the event in the spool until `dispatchSpooled` gives it a ticket and its commit
        /// LSN; `topic` (the session's index of its topic) goes back to `dispatchSpooled` with it.
        case spool(OutboxEvent, topic: Int32)
        case debug(String)
        case warning(String)
        /// A poison event (`--on-poison`): log the warning, then do what follows (its dead letter).
        indirect case poisoned(warning: String, then: Delivery)
    }

    /// A standby status update to send.
    public struct Status: Equatable, Sendable {
        public var write: LSN
        public var flush: LSN
    }

    /// How to wait when there is nothing to do.
    public struct Wait: Equatable, Sendable {
        /// Wait for the database socket too (false: reading is paused).
        public var readingSocket: Bool
        /// Before the wait, pause this long without reading, so a backlog's messages gather.
        public var gather: Duration?
        public var timeout: Duration
    }

    public let configuration: Configuration
    public private(set) var mapper: EventMapper
    public private(set) var tracker: AckTracker
    public private(set) var statistics = Relay.Statistics()
    /// Commit → sink acknowledgement, per event (with `recordLatency`).
    public private(set) var latency = LatencyRecorder()

    // The transaction being received (between Begin and Commit).
    public private(set) var transaction: PgOutputMessage.Begin?
    private var skippingTransaction = false
    public private(set) var reachedEnd = false
    private var warnedRename: String?

    // Reconnecting: the server resends every transaction after the slot's confirmed_flush, so
    // what was already taken is recognised and skipped (see `connectionLost`).
    /// Begin.finalLSN of the newest transaction received whole (its Commit arrived).
    private var lastCommitFinal: LSN?
    /// The newest non-transactional message taken (its record's end).
    private var lastMessageLSN: LSN?
    /// Events taken from the open transaction so far.
    private var takenInTransaction = 0
    /// A transaction received again whole after a reconnect: none of it is taken.
    private var replaying = false
    /// The transaction that was open when the connection dropped, and how many of its events
    /// were taken: when its Begin comes again, that many are skipped and the rest continue it.
    public private(set) var interrupted: (begin: PgOutputMessage.Begin, taken: Int)?
    /// Events of a resumed transaction still to skip (taken before the connection dropped).
    private var skipInTransaction = 0
    /// Whether a connection streams now (false between `connectionLost` and `resumed`).
    public private(set) var isConnected = true

    // Spooled events (a sink that needs the commit LSN): those of the open transaction, and
    // committed ones waiting for room, with their transactions' commit LSNs and times in order.
    private var spooledOpen = 0
    public private(set) var spooledCommitted = 0
    private var spooledCommits: [(remaining: Int, endLSN: LSN, committedAt: PostgresTimestamp)] = []
    private var spooledCommitsHead = 0

    // The in-flight window: sizes (and commit times, topics) of dispatched events by ticket,
    // in rings as wide as the window.
    private var nextDispatchTicket: UInt64 = 0
    private var inFlightSizes: [Int]
    private var inFlightCommitTimes: [PostgresTimestamp]
    private var inFlightTopics: [Int32]
    public private(set) var inFlightBytes = 0
    public private(set) var dispatchedUnacknowledged = 0
    /// Tickets the sink reported as failed: out of flight, never acknowledged.
    private var failedTickets: Set<UInt64> = []
    /// The first failure the sink reported and the relay has not yet taken.
    private var sinkFailure: SinkError?
    private var sinkFailureTaken = false
    public private(set) var failedEvents = 0
    /// The same by topic (as delivered events are counted); failures are rare and end the run.
    public private(set) var failedPerTopic: [String: Int] = [:]
    /// Poison events passed over (`--on-poison skip`) and dead-lettered, by their topic
    /// (`PoisonPolicy.unmappedTopic` when they have none): rare, so a dictionary is fine.
    public private(set) var skippedPerTopic: [String: Int] = [:]
    public private(set) var deadLetteredPerTopic: [String: Int] = [:]
    /// The commit time of the event acknowledged last, and when: a sample of commit → ack
    /// latency for metrics, without a clock read or a histogram per event.
    public private(set) var newestAcknowledged: (committedAt: PostgresTimestamp, acknowledgedAt: Int64)?

    // Events delivered per topic, for metrics: topics by index as first dispatched.
    public private(set) var topics: [String] = []
    public private(set) var deliveredPerTopic: [Int] = []
    private var topicIndex: [String: Int32] = [:]
    private var lastTopic = ""
    private var lastTopicIndex: Int32 = -1

    /// The newest transaction read committed this long ago (microseconds), as of its Begin.
    private var behindMicros: Int64 = 0
    private var replyRequested = false
    private var lastStatusAt: ContinuousClock.Instant
    /// The flush position of the last status update.
    public private(set) var lastSentFlush: LSN
    /// Where the watch last verified the table and publication unchanged: nothing past it is confirmed.
    public private(set) var verified: LSN?
    /// Stopping: nothing more is read; what the sink holds drains until this deadline.
    public private(set) var drainDeadline: ContinuousClock.Instant?

    /// - Parameters:
    ///   - start: where the slot stands (its `confirmed_flush_lsn`, or the temporary slot's consistent point).
    ///   - verified: where the watch verified, if there is one.
    public init(start: LSN, configuration: Configuration, mapper: EventMapper, verified: LSN?, now: ContinuousClock.Instant) {
        self.configuration = configuration
        self.mapper = mapper
        self.verified = verified
        tracker = AckTracker(start: max(start, configuration.startLSN ?? start))
        tracker.followLimit = configuration.endLSN
        let width = max(1, configuration.maxInFlightEvents)
        inFlightSizes = [Int](repeating: 0, count: width)
        inFlightTopics = [Int32](repeating: -1, count: width)
        inFlightCommitTimes = [PostgresTimestamp](repeating: PostgresTimestamp(rawValue: 0), count: width)
        lastStatusAt = now - configuration.statusInterval
        lastSentFlush = start
        if let end = configuration.endLSN, end <= tracker.confirmed { reachedEnd = true }
    }

    // MARK: Reading

    /// Whether another event may be handed to the sink now.
    var dispatchHasRoom: Bool {
        nextDispatchTicket - tracker.acknowledgedBelow < UInt64(inFlightSizes.count)
            && (dispatchedUnacknowledged == 0 || inFlightBytes < configuration.maxInFlightBytes)
    }

    /// Whether to read the next message. A streaming sink reads while the window has room;
    /// otherwise reading goes on inside a transaction (its events wait in the spool for the
    /// Commit) and stops between transactions while the window is full.
    public var canRead: Bool {
        if reachedEnd || drainDeadline != nil { return false }
        if configuration.streaming { return dispatchHasRoom }
        return transaction != nil
            || (tracker.unacknowledged < configuration.maxInFlightEvents && inFlightBytes < configuration.maxInFlightBytes)
    }

    /// Transactions older than this when read mean a backlog is being replayed.
    static let catchUpMicros: Int64 = 100_000

    /// Replaying a backlog: the newest transaction read was older than `catchUpMicros`.
    public var isCatchingUp: Bool { behindMicros > Self.catchUpMicros }

    /// A primary keepalive.
    public mutating func keepalive(walEnd: LSN, replyRequested reply: Bool) {
        if reply { replyRequested = true }
        // The server waits for WAL: whatever backlog there was is read.
        if transaction == nil { behindMicros = 0 }
        if let end = configuration.endLSN, transaction == nil, interrupted == nil, walEnd >= end { reachedEnd = true }
        tracker.observe(walEnd: walEnd)
    }

    /// A pgoutput message from XLogData ending at `walEnd`; `nowMicros` is the wall clock
    /// (Unix microseconds) as the relay read it.
    public mutating func receive(_ message: PgOutputMessage, walEnd: LSN, nowMicros: Int64) throws(SpoutError) -> Delivery {
        let delivery = try handle(message, nowMicros: nowMicros)
        if walEnd != .zero { tracker.observe(walEnd: walEnd) }
        return delivery
    }

    private mutating func handle(_ message: PgOutputMessage, nowMicros: Int64) throws(SpoutError) -> Delivery {
        switch message {
        case let .begin(begin):
            // Sent again after a reconnect, and received whole before: none of it is taken again.
            if let last = lastCommitFinal, begin.finalLSN <= last {
                replaying = true
                return .none
            }
            var answer = Delivery.none
            if let open = interrupted {
                interrupted = nil
                if begin.finalLSN == open.begin.finalLSN {
                    // The transaction that was open when the connection dropped: its first
                    // events were taken, the rest continue it (tracker and spool kept it open).
                    transaction = begin
                    takenInTransaction = open.taken
                    skipInTransaction = open.taken
                    return .none
                }
                // It never comes again (another instance confirmed it while this one waited,
                // or a failover lost it): close it where its commit record starts, which a
                // restart decodes again, so confirming it skips nothing.
                committed(endLSN: open.begin.finalLSN, committedAt: open.begin.commitTime)
                answer = .warning("the transaction that was open when the connection dropped (commit at \(open.begin.finalLSN)) was not "
                                + "sent again after reconnecting; its \(open.taken) events already handed over stay delivered")
            }
            // Replay ends before the first transaction whose commit record starts at or after the end.
            if let end = configuration.endLSN, begin.finalLSN >= end {
                reachedEnd = true
                return answer
            }
            takenInTransaction = 0
            skipInTransaction = 0
            transaction = begin
            behindMicros = LatencyRecorder.age(of: begin.commitTime, at: nowMicros)
            skippingTransaction = configuration.startLSN.map { begin.finalLSN < $0 } ?? false
            tracker.transactionBegan()
            return answer
        case let .relation(relation):
            let isOutbox: Bool
            do { isOutbox = try mapper.register(relation) } catch { throw .invalidOption(error.description) }
            guard isOutbox else { return .none }
            let name = "\(relation.namespace).\(relation.name)"
            if name != mapper.mapping.table.description, warnedRename != name {
                warnedRename = name
                return .warning("the outbox table \(mapper.mapping.table) (oid \(relation.oid)) is named \(name) in the WAL: it was renamed; "
                                + "spout follows the same table (by oid), and needs --table \(name) on its next start if the name stays")
            }
            return .debug("outbox relation \(relation.namespace).\(relation.name) oid \(relation.oid)")
        case let .insert(insert):
            guard !replaying, let begin = transaction, !skippingTransaction else { return .none }
            guard mapper.isOutbox(relationOID: insert.relationOID) else {
                // Every insert the publication sends is an event or an error, never dropped unnoticed.
                let name = mapper.otherRelationName(insert.relationOID) ?? "oid \(insert.relationOID)"
                throw .publicationChanged("an insert into \(name) arrived through the publication in the transaction that commits at \(begin.finalLSN), "
                                          + "but spout maps only the outbox table \(mapper.mapping.table): give spout a publication of its own "
                                          + "(only the outbox table) or remove \(name) from it (ALTER PUBLICATION … DROP TABLE), then restart")
            }
            let event: OutboxEvent?
            do { event = try mapper.event(relationOID: insert.relationOID, row: insert.new, commit: begin) } catch {
                let id = mapper.rowID(relationOID: insert.relationOID, row: insert.new)
                guard configuration.onPoison != .stop else { throw .unmappableEvent(error, eventID: id, lsn: begin.finalLSN) }
                return poisoned(error, id: id, row: mapper.rowColumns(relationOID: insert.relationOID, row: insert.new),
                                lsn: begin.finalLSN, committedAt: begin.commitTime)
            }
            guard let event else { return .none }
            return accept(event)
        case let .message(logical):
            guard logical.prefix == mapper.mapping.messagePrefix, !replaying else { return .none }
            guard let begin = transaction else { return try acceptNonTransactional(logical, nowMicros: nowMicros) }
            guard !skippingTransaction else { return .none }
            let event: OutboxEvent?
            do { event = try mapper.event(message: logical, committedAt: begin.commitTime) } catch {
                guard configuration.onPoison != .stop else { throw .unmappableEvent(error, eventID: nil, lsn: begin.finalLSN) }
                return poisoned(error, id: nil, row: Self.columns(of: logical), lsn: begin.finalLSN, committedAt: begin.commitTime)
            }
            guard let event else { return .none }
            return accept(event)
        case let .commit(commit):
            if replaying {
                replaying = false
                return .none
            }
            guard let begin = transaction else {
                throw .protocolViolation(.invalidValue(message: "Commit", field: "transaction", value: 0), context: "Commit without Begin")
            }
            transaction = nil
            lastCommitFinal = begin.finalLSN
            // The events' commit time is the Begin's, which the mapper gave them.
            committed(endLSN: commit.endLSN, committedAt: begin.commitTime)
            // Every later transaction commits after this one: nothing more can be inside the end.
            if let end = configuration.endLSN, commit.endLSN >= end { reachedEnd = true }
            return .none
        case .origin, .type, .update, .delete, .truncate:
            // Updates, deletes and truncates of the outbox (cleanup) are not events.
            return .none
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
    private mutating func acceptNonTransactional(_ logical: PgOutputMessage.LogicalMessage, nowMicros: Int64) throws(SpoutError) -> Delivery {
        if let end = configuration.endLSN, logical.lsn >= end {
            reachedEnd = true
            return .none
        }
        if let start = configuration.startLSN, logical.lsn < start { return .none }
        // Taken before the connection dropped, and sent again.
        if let last = lastMessageLSN, logical.lsn <= last { return .none }
        lastMessageLSN = logical.lsn
        var event: OutboxEvent?
        var warning: String?
        let committedAt = PostgresTimestamp(unixMicroseconds: nowMicros)
        do { event = try mapper.event(message: logical, committedAt: committedAt) } catch {
            switch configuration.onPoison {
            case .stop: throw .unmappableMessage(error, lsn: logical.lsn)
            case .skip:
                skippedPerTopic[PoisonPolicy.unmappedTopic, default: 0] += 1
                return .warning("skipped the non-transactional logical message at \(logical.lsn) (--on-poison skip): \(error)")
            case let .deadLetter(topic):
                deadLetteredPerTopic[PoisonPolicy.unmappedTopic, default: 0] += 1
                warning = "dead-lettered the non-transactional logical message at \(logical.lsn) to \"\(topic)\" (--on-poison dead-letter): \(error)"
                event = DeadLetter.event(unmappable: Self.columns(of: logical), id: nil, error: error.description, lsn: logical.lsn,
                                         position: 0, committedAt: committedAt, topic: topic)
            }
        }
        guard let event else { return .none }
        tracker.transactionBegan()
        let delivery = accept(event)
        committed(endLSN: logical.lsn, committedAt: committedAt)
        return warning.map { .poisoned(warning: $0, then: delivery) } ?? delivery
    }

    /// A row that cannot be mapped (`--on-poison` is not `stop`): passed over with a warning,
    /// or its dead letter takes its place (and its ticket, in order).
    private mutating func poisoned(_ error: MappingError, id: String?, row: [(name: String, value: String?)],
                                   lsn: LSN, committedAt: PostgresTimestamp) -> Delivery {
        let what = "outbox event \(id.map { "\"\($0)\"" } ?? "(id unreadable)") in the transaction that commits at \(lsn)"
        switch configuration.onPoison {
        case .stop:
            return .none
        case .skip:
            // Counted as taken, so that the same row sent again after a reconnect is recognised.
            guard takeFromTransaction() else { return .none }
            skippedPerTopic[PoisonPolicy.unmappedTopic, default: 0] += 1
            return .warning("skipped \(what) (--on-poison skip): \(error)")
        case let .deadLetter(topic):
            let letter = DeadLetter.event(unmappable: row, id: id, error: error.description, lsn: lsn, position: takenInTransaction,
                                          committedAt: committedAt, topic: topic)
            let delivery = accept(letter)
            if case .none = delivery { return .none }
            deadLetteredPerTopic[PoisonPolicy.unmappedTopic, default: 0] += 1
            return .poisoned(warning: "dead-lettered \(what) to \"\(topic)\" (--on-poison dead-letter): \(error)", then: delivery)
        }
    }

    /// A logical message's parts, for its dead letter.
    private static func columns(of message: PgOutputMessage.LogicalMessage) -> [(name: String, value: String?)] {
        [("prefix", message.prefix), ("content", String(decoding: message.content, as: UTF8.self))]
    }

    /// One more event of the open transaction, unless it was taken before the connection
    /// dropped (false: skip it).
    private mutating func takeFromTransaction() -> Bool {
        guard transaction != nil else { return true }
        if skipInTransaction > 0 {
            skipInTransaction -= 1
            return false
        }
        takenInTransaction += 1
        return true
    }

    /// A decoded event: straight to a streaming sink (`canRead` made room), else to the spool.
    private mutating func accept(_ event: OutboxEvent) -> Delivery {
        guard takeFromTransaction() else { return .none }
        let topic = index(ofTopic: event.topic)
        guard configuration.streaming else {
            spooledOpen += 1
            return .spool(event, topic: topic)
        }
        let ticket = tracker.issueTicket()
        dispatched(size: event.approximateSize, topic: topic, committedAt: event.committedAt)
        return .send(event, ticket: ticket)
    }

    private mutating func committed(endLSN: LSN, committedAt: PostgresTimestamp) {
        if configuration.streaming {
            _ = tracker.transactionCommitted(endLSN: endLSN, eventCount: 0)
        } else {
            let count = spooledOpen
            spooledOpen = 0
            if count > 0 {
                spooledCommits.append((count, endLSN, committedAt))
                spooledCommitted += count
            }
            _ = tracker.transactionCommitted(endLSN: endLSN, eventCount: count)
        }
        statistics.transactions += 1
    }

    // MARK: The sink

    /// Whether the oldest committed event in the spool may go to the sink now.
    public var mayDispatchSpooled: Bool { spooledCommitted > 0 && dispatchHasRoom }

    /// The oldest committed event left the spool (`mayDispatchSpooled` was true), `size` bytes
    /// of the window, with the `topic` its `.spool` gave: its ticket and its commit LSN.
    public mutating func dispatchSpooled(size: Int, topic: Int32) -> (ticket: UInt64, commitLSN: LSN) {
        let commit = spooledCommits[spooledCommitsHead]
        spooledCommits[spooledCommitsHead].remaining -= 1
        if spooledCommits[spooledCommitsHead].remaining == 0 {
            spooledCommitsHead += 1
            if spooledCommitsHead == spooledCommits.count {
                spooledCommits.removeAll(keepingCapacity: true)
                spooledCommitsHead = 0
            } else if spooledCommitsHead >= 4096, spooledCommitsHead * 2 > spooledCommits.count {
                spooledCommits.removeFirst(spooledCommitsHead)
                spooledCommitsHead = 0
            }
        }
        spooledCommitted -= 1
        let ticket = nextDispatchTicket
        dispatched(size: size, topic: topic, committedAt: commit.committedAt)
        return (ticket, commit.endLSN)
    }

    private mutating func dispatched(size: Int, topic: Int32, committedAt: PostgresTimestamp) {
        let slot = Int(nextDispatchTicket % UInt64(inFlightSizes.count))
        inFlightSizes[slot] = size
        inFlightTopics[slot] = topic
        inFlightCommitTimes[slot] = committedAt
        inFlightBytes += size
        dispatchedUnacknowledged += 1
        nextDispatchTicket += 1
    }

    /// Topics counted one by one; past this many (a template over ids, say) the rest share
    /// `otherTopics`, so neither memory nor the metrics' cardinality grows without bound.
    static let countedTopics = 1000
    static let otherTopics = "_other"

    /// Events of one topic usually come in runs: the last topic is checked before the table.
    private mutating func index(ofTopic topic: String) -> Int32 {
        if topic == lastTopic, lastTopicIndex >= 0 { return lastTopicIndex }
        let index: Int32
        if let known = topicIndex[topic] {
            index = known
        } else if topics.count < Self.countedTopics {
            index = Int32(truncatingIfNeeded: topics.count)
            topics.append(topic)
            deliveredPerTopic.append(0)
            topicIndex[topic] = index
        } else {
            if topics.count == Self.countedTopics {
                topics.append(Self.otherTopics)
                deliveredPerTopic.append(0)
            }
            index = Int32(truncatingIfNeeded: Self.countedTopics)
        }
        lastTopic = topic
        lastTopicIndex = index
        return index
    }

    /// The sink reported a ticket's outcome at `nowMicros` (wall clock, read once per poll).
    /// Returns whether it acknowledged an event in flight.
    public mutating func completed(_ completion: SinkCompletion, nowMicros: Int64) -> Bool {
        switch completion {
        case let .delivered(ticket):
            // A failed ticket stays failed: nothing is confirmed past it, whatever a sink says later.
            guard ticket < nextDispatchTicket, tracker.isUnacknowledged(ticket),
                  failedTickets.isEmpty || !failedTickets.contains(ticket) else { return false }
            dispatchedUnacknowledged -= 1
            let slot = Int(ticket % UInt64(inFlightSizes.count))
            inFlightBytes -= inFlightSizes[slot]
            if configuration.recordLatency { latency.record(committedAt: inFlightCommitTimes[slot], acknowledgedAt: nowMicros) }
            newestAcknowledged = (inFlightCommitTimes[slot], nowMicros)
            let topic = Int(inFlightTopics[slot])
            if topic >= 0, topic < deliveredPerTopic.count { deliveredPerTopic[topic] += 1 }
            tracker.acknowledge(ticket)
            statistics.events += 1
            return true
        case let .failed(ticket, error):
            if rejected(ticket), sinkFailure == nil { sinkFailure = error }
            return false
        }
    }

    /// The sink failed `ticket` (reported, or refused in `send`, when the relay stops with that
    /// error): out of flight but never acknowledged, so the LSN stays before this event.
    /// Returns whether the ticket was in flight.
    @discardableResult
    public mutating func rejected(_ ticket: UInt64) -> Bool {
        guard ticket < nextDispatchTicket, tracker.isUnacknowledged(ticket), failedTickets.insert(ticket).inserted else { return false }
        dispatchedUnacknowledged -= 1
        let slot = Int(ticket % UInt64(inFlightSizes.count))
        inFlightBytes -= inFlightSizes[slot]
        failedEvents += 1
        let topic = Int(inFlightTopics[slot])
        failedPerTopic[topic >= 0 && topic < topics.count ? topics[topic] : PoisonPolicy.unmappedTopic, default: 0] += 1
        return true
    }

    /// The first failure the sink reported, once: the relay stops with it (after delivering and
    /// confirming what came before). Failures after it (events behind it that were never
    /// published) are its consequence and do not cut the drain short.
    public mutating func takeSinkFailure() -> SinkError? {
        guard !sinkFailureTaken, let sinkFailure else { return nil }
        sinkFailureTaken = true
        return sinkFailure
    }

    /// Events the sink holds or that wait in the spool, committed.
    public var outstanding: Int { dispatchedUnacknowledged + spooledCommitted }

    // MARK: The watch

    /// The publication watch's news: a change it found stops the relay; otherwise how far it verified.
    public mutating func watchReported(verified: LSN?, failure: SpoutError?) throws(SpoutError) {
        if let failure { throw failure }
        self.verified = verified
    }

    // MARK: Status and waiting

    /// What may be confirmed: what the sink acknowledged (or the idle position), but never past
    /// where the watch verified that the table and publication were unchanged — rows written
    /// after such a change may never reach the slot, so only the watch can vouch for them.
    public var confirmable: LSN { Self.confirmable(acknowledged: tracker.confirmed, verified: verified) }

    static func confirmable(acknowledged: LSN, verified: LSN?) -> LSN {
        verified.map { min(acknowledged, $0) } ?? acknowledged
    }

    /// Status goes out when the server asks, when the confirmable LSN moved (at most every
    /// 10 ms), and at least every `statusInterval` so the walsender never times out.
    public func statusDue(now: ContinuousClock.Instant) -> Status? {
        let moved = confirmable != lastSentFlush && now - lastStatusAt >= .milliseconds(10)
        guard replyRequested || moved || now - lastStatusAt >= configuration.statusInterval else { return nil }
        return status
    }

    /// The status update to send now, due or not (before waiting on the watch, and the last one).
    public var status: Status {
        let confirmed = confirmable
        return Status(write: max(tracker.received, confirmed), flush: confirmed)
    }

    /// The commit time of the oldest event not yet acknowledged (in flight, or committed and
    /// spooled for room in the window); nil when none waits. `spout_lag_seconds` is its age.
    public var oldestUnacknowledgedCommit: PostgresTimestamp? {
        let oldest = tracker.acknowledgedBelow
        if oldest < nextDispatchTicket { return inFlightCommitTimes[Int(oldest % UInt64(inFlightCommitTimes.count))] }
        if spooledCommitsHead < spooledCommits.count { return spooledCommits[spooledCommitsHead].committedAt }
        return nil
    }

    /// The relay sent `status` at `now`.
    public mutating func statusSent(_ status: Status, now: ContinuousClock.Instant) {
        replyRequested = false
        lastSentFlush = status.flush
        lastStatusAt = now
    }

    /// Replay reached `endLSN` and everything before it is confirmed or about to be.
    public var isFinished: Bool {
        reachedEnd && transaction == nil && interrupted == nil && spooledCommitted == 0 && dispatchedUnacknowledged == 0
    }

    /// How to wait when a round read and completed nothing. `sinkHasWakeup`: the sink signals
    /// completions on a descriptor.
    public func wait(now: ContinuousClock.Instant, sinkHasWakeup: Bool) -> Wait {
        let untilStatus = lastStatusAt + configuration.statusInterval - now
        var timeout = max(.zero, min(untilStatus, .milliseconds(500)))
        // A sink that holds events but has no wakeup descriptor is polled.
        if dispatchedUnacknowledged > 0, !sinkHasWakeup { timeout = min(timeout, .milliseconds(1)) }
        let reading = canRead
        // Replaying a backlog faster than the server sends it: the server sends every
        // message on its own, and waking for each costs more CPU than the messages (on a
        // small machine, CPU the walsender needs). A millisecond's pause lets a batch
        // gather; next to the backlog's age it adds nothing. Live traffic (read within
        // the threshold) is never held back.
        let gather: Duration? = reading && isCatchingUp ? min(timeout, .milliseconds(1)) : nil
        return Wait(readingSocket: reading, gather: gather, timeout: timeout)
    }

    // MARK: Reconnecting

    /// The connection to the server broke. What was taken stays: the window, the tracker and
    /// the spool (the sink keeps acknowledging); a transaction cut off in the middle is kept
    /// open, to be continued when the server sends it again.
    public mutating func connectionLost() {
        isConnected = false
        replyRequested = false
        replaying = false
        if let open = transaction {
            // Skipped events of a resumed transaction were counted when first taken.
            interrupted = (open, takenInTransaction)
            transaction = nil
            skipInTransaction = 0
            takenInTransaction = 0
        }
    }

    /// Streaming again from the slot, which the server says is confirmed up to `slotConfirmed`:
    /// it resends every transaction after that; what was taken before is skipped (`receive`).
    /// A status update is due at once, with whatever the sink acknowledged meanwhile.
    public mutating func resumed(slotConfirmed: LSN?, now: ContinuousClock.Instant) {
        isConnected = true
        // Nothing of ours outstanding (a standby taking over): the slot's position is confirmed already.
        if let slotConfirmed { tracker.observe(walEnd: slotConfirmed) }
        lastStatusAt = now - configuration.statusInterval
    }

    /// Where to ask the server to start streaming after a reconnect: what this session last
    /// confirmed (the server starts at its slot's position when that is further).
    public var resumePosition: LSN { lastSentFlush }

    // MARK: Stopping

    /// Stop requested (or a failure that leaves the connection usable): nothing more is read,
    /// and what the sink holds may drain until `now + timeout`.
    public mutating func stop(now: ContinuousClock.Instant, timeout: Duration) {
        if drainDeadline == nil { drainDeadline = now + timeout }
    }

    /// Draining and something is still outstanding, before the deadline.
    public func isDraining(now: ContinuousClock.Instant) -> Bool {
        guard let drainDeadline else { return false }
        return outstanding > 0 && now < drainDeadline
    }

    /// A server error in the middle of a transaction (say, WAL bytes that are not valid in
    /// the client encoding, from an SQL_ASCII database) names that transaction and how to skip
    /// it: the error comes again on every start otherwise.
    public func naming(_ error: SpoutError) -> SpoutError {
        guard let open = transaction, case let .server(serverError, context) = error else { return error }
        return .server(serverError, while: "\(context) in the transaction that commits at \(open.finalLSN) (xid \(open.xid)); it recurs on "
                       + "every start: fix the cause, or skip that whole transaction (all its events, and only them) with "
                       + "spout run --start-lsn \(open.finalLSN.advanced(by: 1)) and your other options, then deliver its events by hand")
    }
}
