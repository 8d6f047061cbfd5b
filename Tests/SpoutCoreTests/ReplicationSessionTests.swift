import MetricsTestKit
@testable import SpoutCore
import XCTest

/// The replication session without a database: the captured pgoutput fixtures (one outbox
/// transaction: Begin, Relation, three Inserts, Commit; logical messages) replayed at
/// chosen LSNs, a fake sink that acknowledges when the test says, and an injected clock.
final class ReplicationSessionTests: XCTestCase {
    // MARK: The fake sink and clock

    struct Driver: ~Copyable {
        var session: ReplicationSession
        /// What the relay's spool would hold.
        var spool: [(event: OutboxEvent, topic: Int32)] = []
        /// What reached the sink, in order.
        var sent: [(event: OutboxEvent, ticket: UInt64)] = []
        var warnings: [String] = []
        var now: ContinuousClock.Instant
        var nowMicros: Int64

        init(start: LSN = LSN(0x1000), configure: (inout ReplicationSession.Configuration) -> Void = { _ in }) {
            var configuration = ReplicationSession.Configuration()
            configure(&configuration)
            now = ContinuousClock().now
            nowMicros = LatencyRecorder.nowMicros()
            session = ReplicationSession(start: start, configuration: configuration, mapper: SessionFixture.mapper(),
                                         verified: nil, now: now)
        }

        mutating func feed(_ message: PgOutputMessage, walEnd: LSN = .zero) throws {
            perform(try session.receive(message, walEnd: walEnd, nowMicros: nowMicros))
        }

        mutating func perform(_ delivery: ReplicationSession.Delivery) {
            switch delivery {
            case .none, .debug: break
            case let .send(event, ticket): sent.append((event, ticket))
            case let .spool(event, topic): spool.append((event, topic))
            case let .warning(text): warnings.append(text)
            case let .poisoned(text, then):
                warnings.append(text)
                perform(then)
            }
        }

        /// One captured transaction (three outbox events), committing at `commit`, read as the
        /// relay reads: only while the session reads.
        mutating func transaction(commit: LSN, relation: Bool = false, inserts: Int = 3) throws {
            let fixture = try SessionFixture.load()
            var begin = fixture.begin
            begin.finalLSN = LSN(commit.rawValue - 0x10)
            begin.commitTime = PostgresTimestamp(unixMicroseconds: nowMicros - 1000)
            var end = fixture.commit
            end.commitLSN = begin.finalLSN
            end.endLSN = commit
            var messages: [(PgOutputMessage, LSN)] = [(.begin(begin), begin.finalLSN)]
            if relation { messages.append((.relation(fixture.relation), .zero)) }
            for index in 0..<inserts { messages.append((.insert(fixture.inserts[index % fixture.inserts.count]), begin.finalLSN)) }
            messages.append((.commit(end), commit))
            for (message, walEnd) in messages {
                guard session.canRead else { return }
                try feed(message, walEnd: walEnd)
            }
        }

        /// What the relay does after reading: committed spooled events to the sink while there is room.
        mutating func dispatch() {
            while session.mayDispatchSpooled {
                var (event, topic) = spool.removeFirst()
                let ticket: UInt64
                (ticket, event.lsn) = session.dispatchSpooled(size: event.approximateSize, topic: topic)
                sent.append((event, ticket))
            }
        }

        mutating func ack(_ tickets: UInt64...) {
            for ticket in tickets { _ = session.completed(.delivered(ticket: ticket), nowMicros: nowMicros) }
        }

        mutating func advance(_ duration: Duration) { now += duration }

        /// Sends the status if due, as the relay does; returns it.
        mutating func statusIfDue() -> ReplicationSession.Status? {
            guard let status = session.statusDue(now: now) else { return nil }
            session.statusSent(status, now: now)
            return status
        }
    }

    // MARK: Ack gating

    func testNothingIsConfirmedPastAnUnacknowledgedEventWhateverTheAckOrder() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try driver.transaction(commit: LSN(0x2000), relation: true)
            try driver.transaction(commit: LSN(0x3000))
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.ticket), [0, 1, 2, 3, 4, 5])
            XCTAssertEqual(driver.session.confirmable, LSN(0x1000), "nothing acknowledged")
            driver.ack(1, 2, 4, 5)
            XCTAssertEqual(driver.session.confirmable, LSN(0x1000), "ticket 0 is still out")
            driver.ack(0)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "the first transaction is whole; ticket 3 holds the second")
            driver.ack(3)
            XCTAssertEqual(driver.session.confirmable, LSN(0x3000))
            driver.ack(3, 99)
            XCTAssertEqual(driver.session.statistics.events, 6, "a repeated or unknown ack counts nothing")
            XCTAssertEqual(driver.session.statistics.transactions, 2)
            driver.session.keepalive(walEnd: LSN(0x4000), replyRequested: false)
            XCTAssertEqual(driver.session.confirmable, LSN(0x4000), "idle: the newest position received")
        }
    }

    func testStreamingSinkGetsEventsAsDecodedAndACommitLSNSinkAfterTheCommit() throws {
        let fixture = try SessionFixture.load()
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            var begin = fixture.begin
            begin.finalLSN = LSN(0x1F00)
            try driver.feed(.begin(begin))
            try driver.feed(.relation(fixture.relation))
            try driver.feed(.insert(fixture.inserts[0]))
            try driver.feed(.insert(fixture.inserts[1]))
            driver.dispatch()
            if streaming {
                XCTAssertEqual(driver.sent.map(\.event.lsn), [.zero, .zero], "streaming: at once, commit LSN unknown")
                XCTAssertTrue(driver.spool.isEmpty)
            } else {
                XCTAssertTrue(driver.sent.isEmpty, "nothing leaves the spool before its Commit")
                XCTAssertEqual(driver.spool.count, 2)
                XCTAssertTrue(driver.session.canRead, "inside a transaction, reading goes on")
            }
            var commit = fixture.commit
            commit.endLSN = LSN(0x2000)
            try driver.feed(.commit(commit))
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.ticket), [0, 1])
            XCTAssertEqual(driver.sent.map(\.event.id), Array(try SessionFixture.ids().prefix(2)))
            if !streaming { XCTAssertEqual(driver.sent.map(\.event.lsn), [LSN(0x2000), LSN(0x2000)], "stamped with the commit LSN") }
        }
    }

    func testFixtureEventsMapAsCaptured() throws {
        var driver = Driver { $0.streaming = true }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertEqual(driver.sent.map(\.event.id), try SessionFixture.ids())
        XCTAssertEqual(driver.sent.map(\.event.topic), ["outbox.order", "outbox.order", "outbox.customer"])
        XCTAssertEqual(driver.sent.map(\.event.key), ["o-1", "o-1", "c-9"])
    }

    // MARK: Replay window

    func testStartLSNSkipsEarlierTransactionsWhole() throws {
        var driver = Driver { $0.streaming = true; $0.startLSN = LSN(0x2500) }
        XCTAssertEqual(driver.session.tracker.confirmed, LSN(0x2500), "the start counts as confirmed")
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertTrue(driver.sent.isEmpty, "committed before the start")
        try driver.transaction(commit: LSN(0x3000))
        XCTAssertEqual(driver.sent.count, 3)
        // A non-transactional message before the start is skipped too.
        try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x2400))))
        XCTAssertEqual(driver.sent.count, 3)
    }

    func testEndLSNStopsBeforeTheFirstTransactionCommittingAtOrAfterIt() throws {
        var driver = Driver { $0.streaming = true; $0.endLSN = LSN(0x2F00) }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertFalse(driver.session.reachedEnd)
        // Its commit record starts at 0x2FF0 ≥ the end: not read, reading ends.
        try driver.transaction(commit: LSN(0x3000))
        XCTAssertTrue(driver.session.reachedEnd)
        XCTAssertEqual(driver.sent.count, 3, "nothing of the transaction past the end")
        XCTAssertFalse(driver.session.canRead)
        XCTAssertFalse(driver.session.isFinished, "three events unacknowledged")
        driver.ack(0, 1, 2)
        XCTAssertTrue(driver.session.isFinished)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2F00), "idle follows what was received up to the end, never past it")
    }

    func testEndLSNReachedByACommitAndByAKeepaliveOutsideTransactions() throws {
        var byCommit = Driver { $0.endLSN = LSN(0x2000) }
        try byCommit.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertTrue(byCommit.session.reachedEnd, "a commit at the end: nothing later can be inside it")
        byCommit.dispatch()
        XCTAssertEqual(byCommit.sent.count, 3, "its own events still go out")

        var byKeepalive = Driver { $0.endLSN = LSN(0x2000) }
        let fixture = try SessionFixture.load()
        var begin = fixture.begin
        begin.finalLSN = LSN(0x17F0)
        try byKeepalive.feed(.begin(begin))
        byKeepalive.session.keepalive(walEnd: LSN(0x5000), replyRequested: false)
        XCTAssertFalse(byKeepalive.session.reachedEnd, "inside a transaction a keepalive does not end the replay")
        var commit = fixture.commit
        commit.endLSN = LSN(0x1800)
        try byKeepalive.feed(.commit(commit))
        byKeepalive.session.keepalive(walEnd: LSN(0x1F00), replyRequested: false)
        XCTAssertFalse(byKeepalive.session.reachedEnd)
        byKeepalive.session.keepalive(walEnd: LSN(0x2000), replyRequested: false)
        XCTAssertTrue(byKeepalive.session.reachedEnd)
        XCTAssertTrue(byKeepalive.session.isFinished)

        let already = Driver(start: LSN(0x3000)) { $0.endLSN = LSN(0x2000) }
        XCTAssertTrue(already.session.isFinished, "the slot already stands past the end")
    }

    // MARK: Status

    func testKeepaliveAskingForAReplyMakesStatusDueAtOnce() throws {
        var driver = Driver()
        XCTAssertEqual(driver.statusIfDue(), ReplicationSession.Status(write: LSN(0x1000), flush: LSN(0x1000)), "the first status is due at once")
        XCTAssertNil(driver.statusIfDue())
        driver.session.keepalive(walEnd: LSN(0x1000), replyRequested: false)
        XCTAssertNil(driver.statusIfDue(), "no reply requested, nothing moved")
        driver.session.keepalive(walEnd: LSN(0x1000), replyRequested: true)
        XCTAssertEqual(driver.statusIfDue(), ReplicationSession.Status(write: LSN(0x1000), flush: LSN(0x1000)))
        XCTAssertNil(driver.statusIfDue(), "answered")
    }

    func testStatusIntervalAndTheTenMillisecondGapWithAnInjectedClock() throws {
        var driver = Driver { $0.streaming = true; $0.statusInterval = .seconds(2) }
        _ = driver.statusIfDue()
        driver.advance(.milliseconds(1999))
        XCTAssertNil(driver.statusIfDue())
        driver.advance(.milliseconds(1))
        XCTAssertNotNil(driver.statusIfDue(), "at least every statusInterval, even with nothing new")
        try driver.transaction(commit: LSN(0x2000), relation: true)
        driver.ack(0, 1, 2)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2000))
        driver.advance(.milliseconds(9))
        XCTAssertNil(driver.statusIfDue(), "moved, but within 10 ms of the last status")
        driver.advance(.milliseconds(1))
        XCTAssertEqual(driver.statusIfDue(), ReplicationSession.Status(write: LSN(0x2000), flush: LSN(0x2000)))
        XCTAssertEqual(driver.session.lastSentFlush, LSN(0x2000))
        // Write reports what was received, flush only what is confirmed.
        try driver.transaction(commit: LSN(0x3000))
        XCTAssertEqual(driver.session.status, ReplicationSession.Status(write: LSN(0x3000), flush: LSN(0x2000)))
    }

    func testWaitTimeoutsFollowStatusTimingAndTheSink() throws {
        var driver = Driver { $0.streaming = true; $0.statusInterval = .seconds(1) }
        _ = driver.statusIfDue()
        driver.advance(.milliseconds(800))
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: true),
                       ReplicationSession.Wait(readingSocket: true, gather: nil, timeout: .milliseconds(200)))
        driver.advance(.milliseconds(900))
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: true).timeout, .zero, "status overdue")
        _ = driver.statusIfDue()
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: true).timeout, .milliseconds(500), "at most half a second")
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: false).timeout, .milliseconds(1),
                       "a sink without a wakeup descriptor that holds events is polled")
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: true).timeout, .milliseconds(500))
    }

    func testABacklogPausesAMillisecondSoMessagesGather() throws {
        var driver = Driver { $0.streaming = true }
        _ = driver.statusIfDue()
        let fixture = try SessionFixture.load()
        var begin = fixture.begin
        begin.commitTime = PostgresTimestamp(unixMicroseconds: driver.nowMicros - 5_000_000)
        try driver.feed(.begin(begin))
        XCTAssertTrue(driver.session.isCatchingUp)
        XCTAssertEqual(driver.session.wait(now: driver.now, sinkHasWakeup: true).gather, .milliseconds(1))
        var commit = fixture.commit
        commit.endLSN = LSN(0x2000)
        try driver.feed(.commit(commit))
        driver.session.keepalive(walEnd: LSN(0x2000), replyRequested: false)
        XCTAssertFalse(driver.session.isCatchingUp, "a keepalive between transactions: the server waits for WAL")
        XCTAssertNil(driver.session.wait(now: driver.now, sinkHasWakeup: true).gather)
    }

    // MARK: Window

    func testEventWindowPausesReadingForAStreamingSink() throws {
        var driver = Driver { $0.streaming = true; $0.maxInFlightEvents = 2 }
        let fixture = try SessionFixture.load()
        try driver.feed(.begin(fixture.begin))
        try driver.feed(.relation(fixture.relation))
        try driver.feed(.insert(fixture.inserts[0]))
        XCTAssertTrue(driver.session.canRead)
        try driver.feed(.insert(fixture.inserts[1]))
        XCTAssertFalse(driver.session.canRead, "two in flight: reading pauses, inside the transaction too")
        XCTAssertFalse(driver.session.wait(now: driver.now, sinkHasWakeup: true).readingSocket)
        driver.ack(1)
        XCTAssertFalse(driver.session.canRead, "the window counts from the oldest unacknowledged ticket")
        driver.ack(0)
        XCTAssertTrue(driver.session.canRead)
    }

    func testByteWindowAllowsOneOversizeEvent() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming; $0.maxInFlightBytes = 10 }
            try driver.transaction(commit: LSN(0x2000), relation: true)
            driver.dispatch()
            XCTAssertEqual(driver.sent.count, 1, "one event over the byte limit goes, alone")
            XCTAssertEqual(driver.session.dispatchedUnacknowledged, 1)
            XCTAssertGreaterThan(driver.session.inFlightBytes, 10)
            XCTAssertFalse(driver.session.canRead)
            if !streaming { XCTAssertEqual(driver.spool.count, 2, "the rest waits in the spool") }
            driver.ack(0)
            XCTAssertEqual(driver.session.inFlightBytes, 0)
            if streaming {
                // A streaming sink read only one insert; the next read goes on.
                XCTAssertTrue(driver.session.canRead)
            } else {
                driver.dispatch()
                XCTAssertEqual(driver.sent.map(\.ticket), [0, 1])
            }
        }
    }

    func testCommitLSNSinkReadsWholeTransactionsAndStopsBetweenThemWhenFull() throws {
        var driver = Driver { $0.streaming = false; $0.maxInFlightEvents = 2 }
        let fixture = try SessionFixture.load()
        try driver.feed(.begin(fixture.begin))
        try driver.feed(.relation(fixture.relation))
        for insert in fixture.inserts + fixture.inserts {
            try driver.feed(.insert(insert))
            XCTAssertTrue(driver.session.canRead, "a transaction is read whole (its events wait in the spool)")
        }
        var commit = fixture.commit
        commit.endLSN = LSN(0x2000)
        try driver.feed(.commit(commit))
        XCTAssertFalse(driver.session.canRead, "six unacknowledged, window of two: no next transaction")
        driver.dispatch()
        XCTAssertEqual(driver.sent.count, 2)
        XCTAssertEqual(driver.session.outstanding, 6)
        driver.ack(0, 1)
        driver.dispatch()
        driver.ack(2, 3)
        driver.dispatch()
        XCTAssertFalse(driver.session.canRead, "two still unacknowledged")
        driver.ack(4)
        XCTAssertTrue(driver.session.canRead, "room in the window: the next transaction may be read")
        XCTAssertEqual(driver.session.confirmable, LSN(0x1000))
        driver.ack(5)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2000))
    }

    // MARK: Failures, stop, drain

    func testFailedTicketStopsTheRelayAndHoldsTheLSNBeforeIt() throws {
        var driver = Driver { $0.streaming = false }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        try driver.transaction(commit: LSN(0x3000))
        try driver.transaction(commit: LSN(0x4000))
        driver.dispatch()
        driver.ack(0, 1, 2)
        _ = driver.session.completed(.failed(ticket: 4, SinkError(.permanent, "too large", eventID: "x")), nowMicros: 0)
        _ = driver.session.completed(.failed(ticket: 5, SinkError(.permanent, "second")), nowMicros: 0)
        XCTAssertEqual(driver.session.takeSinkFailure()?.message, "too large", "the first failure")
        XCTAssertNil(driver.session.takeSinkFailure(), "reported once")
        XCTAssertEqual(driver.session.failedEvents, 2)
        // The relay stops and drains: what came before the failure is delivered and confirmed.
        driver.session.stop(now: driver.now, timeout: .seconds(30))
        XCTAssertFalse(driver.session.canRead)
        XCTAssertTrue(driver.session.isDraining(now: driver.now))
        driver.ack(3, 6, 7, 8)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "never past the failed event's transaction")
        driver.ack(4, 5)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "a failed ticket is never acknowledged later")
        XCTAssertFalse(driver.session.isDraining(now: driver.now), "nothing outstanding")
        XCTAssertEqual(driver.session.statistics.events, 7)
    }

    func testRejectedSendLeavesTheWindowAndIsNeverConfirmed() throws {
        var driver = Driver { $0.streaming = true }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertTrue(driver.session.rejected(1))
        XCTAssertFalse(driver.session.rejected(1))
        XCTAssertNil(driver.session.takeSinkFailure(), "the relay throws the send error itself")
        driver.ack(0, 2)
        XCTAssertEqual(driver.session.outstanding, 0)
        XCTAssertEqual(driver.session.confirmable, LSN(0x1000))
    }

    func testDrainEndsAtItsDeadline() throws {
        var driver = Driver { $0.streaming = false }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertFalse(driver.session.isDraining(now: driver.now), "not stopping")
        driver.session.stop(now: driver.now, timeout: .seconds(5))
        driver.session.stop(now: driver.now + .seconds(60), timeout: .seconds(5))
        XCTAssertEqual(driver.session.outstanding, 3, "committed events in the spool count: they go out while draining")
        driver.dispatch()
        driver.advance(.milliseconds(4999))
        XCTAssertTrue(driver.session.isDraining(now: driver.now))
        driver.advance(.milliseconds(1))
        XCTAssertFalse(driver.session.isDraining(now: driver.now), "a second stop does not extend the deadline")
        XCTAssertEqual(driver.session.status.flush, LSN(0x1000), "the final status confirms nothing unacknowledged")
    }

    // MARK: The watch

    func testWatchCapsConfirmationAndItsFailureStops() throws {
        var driver = Driver { $0.streaming = true }
        try driver.session.watchReported(verified: LSN(0x1800), failure: nil)
        try driver.transaction(commit: LSN(0x2000), relation: true)
        driver.ack(0, 1, 2)
        XCTAssertEqual(driver.session.tracker.confirmed, LSN(0x2000))
        XCTAssertEqual(driver.session.confirmable, LSN(0x1800), "not past where the watch verified")
        XCTAssertEqual(driver.statusIfDue()?.flush, LSN(0x1800))
        try driver.session.watchReported(verified: LSN(0x9000), failure: nil)
        XCTAssertEqual(driver.session.confirmable, LSN(0x2000))
        XCTAssertThrowsError(try driver.session.watchReported(verified: LSN(0x9000), failure: .publicationChanged("dropped"))) {
            XCTAssertEqual(($0 as? SpoutError).map { "\($0)" }, "\(SpoutError.publicationChanged("dropped"))")
        }
        XCTAssertEqual(ReplicationSession.confirmable(acknowledged: LSN(9), verified: LSN(7)), LSN(7))
    }

    // MARK: Logical messages

    func testNonTransactionalMessageIsATransactionOfItsOwn() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming; $0.endLSN = LSN(0x5000) }
            try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x2000))))
            driver.dispatch()
            XCTAssertEqual(driver.sent.count, 1)
            XCTAssertEqual(driver.sent.first?.event.lsn, streaming ? .zero : LSN(0x2000))
            XCTAssertEqual(driver.sent.first?.event.committedAt, PostgresTimestamp(unixMicroseconds: driver.nowMicros),
                           "no commit time on the wire: when it was read")
            XCTAssertEqual(driver.session.statistics.transactions, 1)
            XCTAssertEqual(driver.session.confirmable, LSN(0x1000))
            driver.ack(0)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "its own LSN, once acknowledged")
            try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x5000))))
            XCTAssertTrue(driver.session.reachedEnd, "a message at the end ends the replay")
            XCTAssertEqual(driver.sent.count, 1)
            var other = try SessionFixture.logical(lsn: LSN(0x2100))
            other.prefix = "not-outbox"
            try driver.feed(.message(other))
            XCTAssertEqual(driver.sent.count + driver.spool.count, 1, "another prefix is not an event")
        }
    }

    func testTransactionalMessageBelongsToItsTransaction() throws {
        var driver = Driver { $0.streaming = false }
        let fixture = try SessionFixture.load()
        var message = try SessionFixture.logical(lsn: LSN(0x1F80))
        message.flags = 1
        try driver.feed(.begin(fixture.begin))
        try driver.feed(.message(message))
        XCTAssertEqual(driver.spool.first?.event.committedAt, fixture.begin.commitTime, "the transaction's commit time")
        var commit = fixture.commit
        commit.endLSN = LSN(0x2000)
        try driver.feed(.commit(commit))
        driver.dispatch()
        XCTAssertEqual(driver.sent.map(\.event.lsn), [LSN(0x2000)])
    }

    // MARK: Reconnecting (the server resends everything after the slot's confirmed_flush)

    /// The first `inserts` messages of the captured transaction committing at `commit`, as a
    /// connection that drops in the middle delivers them.
    private func partial(_ driver: inout Driver, commit: LSN, relation: Bool = false, inserts: Int) throws {
        let fixture = try SessionFixture.load()
        var begin = fixture.begin
        begin.finalLSN = LSN(commit.rawValue - 0x10)
        begin.commitTime = PostgresTimestamp(unixMicroseconds: driver.nowMicros - 1000)
        try driver.feed(.begin(begin), walEnd: begin.finalLSN)
        if relation { try driver.feed(.relation(fixture.relation)) }
        for index in 0..<inserts { try driver.feed(.insert(fixture.inserts[index]), walEnd: begin.finalLSN) }
    }

    private func reconnect(_ driver: inout Driver, slotConfirmed: LSN? = nil) {
        driver.session.connectionLost()
        XCTAssertFalse(driver.session.isConnected)
        driver.session.resumed(slotConfirmed: slotConfirmed, now: driver.now)
    }

    func testResumeAfterACommitSkipsWholeTransactionsAlreadyTaken() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try driver.transaction(commit: LSN(0x2000), relation: true)
            try driver.transaction(commit: LSN(0x3000))
            driver.dispatch()
            driver.ack(0, 1, 2)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000))
            reconnect(&driver)
            // The server resends from its confirmed_flush (older than what was taken).
            try driver.transaction(commit: LSN(0x2000), relation: true)
            try driver.transaction(commit: LSN(0x3000))
            driver.dispatch()
            XCTAssertEqual(driver.sent.count, 6, "nothing taken twice (streaming: \(streaming))")
            try driver.transaction(commit: LSN(0x4000))
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.ticket), Array(0..<9), "tickets continue")
            driver.ack(3, 4, 5, 6, 7, 8)
            XCTAssertEqual(driver.session.confirmable, LSN(0x4000))
            XCTAssertEqual(driver.session.statistics.transactions, 3)
        }
    }

    func testResumeMidTransactionSkipsTheEventsTakenAndContinuesIt() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try driver.transaction(commit: LSN(0x2000), relation: true)
            try partial(&driver, commit: LSN(0x3000), inserts: 2)
            reconnect(&driver)
            XCTAssertEqual(driver.session.interrupted?.taken, 2)
            try driver.transaction(commit: LSN(0x2000), relation: true)
            try driver.transaction(commit: LSN(0x3000), relation: true)
            driver.dispatch()
            let ids = try SessionFixture.ids()
            XCTAssertEqual(driver.sent.map(\.event.id), ids + ids, "the third insert only once, after the two taken before")
            if !streaming {
                XCTAssertEqual(driver.sent.map(\.event.lsn), [LSN(0x2000), LSN(0x2000), LSN(0x2000), LSN(0x3000), LSN(0x3000), LSN(0x3000)])
            }
            XCTAssertNil(driver.session.interrupted)
            driver.ack(0, 1, 2, 3, 4)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2000), "the resumed transaction's last event is out")
            driver.ack(5)
            XCTAssertEqual(driver.session.confirmable, LSN(0x3000))
            XCTAssertEqual(driver.session.statistics.transactions, 2)
        }
    }

    func testCutTwiceInOneTransactionStillTakesEachEventOnce() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try partial(&driver, commit: LSN(0x3000), relation: true, inserts: 1)
            reconnect(&driver)
            try partial(&driver, commit: LSN(0x3000), relation: true, inserts: 2)
            reconnect(&driver)
            XCTAssertEqual(driver.session.interrupted?.taken, 2)
            try driver.transaction(commit: LSN(0x3000), relation: true)
            driver.dispatch()
            XCTAssertEqual(driver.sent.map(\.event.id), try SessionFixture.ids())
        }
    }

    func testNonTransactionalMessageAlreadyTakenIsSkipped() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x2000))))
            reconnect(&driver)
            try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x2000))))
            try driver.feed(.message(SessionFixture.logical(lsn: LSN(0x2100))))
            driver.dispatch()
            XCTAssertEqual(driver.sent.count, 2)
            driver.ack(0, 1)
            XCTAssertEqual(driver.session.confirmable, LSN(0x2100))
        }
    }

    func testAcksDuringTheOutageAreConfirmedOnceStreamingAgain() throws {
        var driver = Driver { $0.streaming = true }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        XCTAssertNotNil(driver.statusIfDue())
        driver.session.connectionLost()
        driver.ack(0, 1, 2)
        XCTAssertEqual(driver.session.resumePosition, LSN(0x1000), "what was last confirmed to the server")
        driver.advance(.milliseconds(1))
        driver.session.resumed(slotConfirmed: LSN(0x1000), now: driver.now)
        XCTAssertEqual(driver.statusIfDue()?.flush, LSN(0x2000), "due at once, with the acks of the outage")
    }

    func testAStandbyTakingOverStartsAtTheSlotsPosition() throws {
        var driver = Driver(start: LSN(0x1000)) { $0.streaming = true }
        driver.session.resumed(slotConfirmed: LSN(0x8000), now: driver.now)
        XCTAssertEqual(driver.statusIfDue()?.flush, LSN(0x8000), "idle: what the slot's previous holder confirmed")
    }

    func testAnInterruptedTransactionThatNeverComesAgainIsClosedWithAWarning() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming }
            try partial(&driver, commit: LSN(0x3000), relation: true, inserts: 2)
            reconnect(&driver)
            try driver.transaction(commit: LSN(0x4000))
            driver.dispatch()
            XCTAssertEqual(driver.warnings.count, 1)
            XCTAssertEqual(driver.sent.count, 5)
            driver.ack(0, 1)
            // Its commit record's start: a restart decodes it again, nothing is skipped.
            XCTAssertEqual(driver.session.confirmable, LSN(0x2FF0))
            driver.ack(2, 3, 4)
            XCTAssertEqual(driver.session.confirmable, LSN(0x4000))
        }
    }

    // MARK: Errors (their texts are the product's)

    func testErrorsNameTheirCause() throws {
        var driver = Driver()
        let fixture = try SessionFixture.load()
        try driver.feed(.begin(fixture.begin))
        var other = fixture.relation
        other.oid = 4242
        other.name = "elsewhere"
        try driver.feed(.relation(other))
        var insert = fixture.inserts[0]
        insert.relationOID = 4242
        XCTAssertThrowsError(try driver.feed(.insert(insert))) { error in
            XCTAssertEqual("\(error)", "\(SpoutError.publicationChanged("an insert into public.elsewhere arrived through the publication in the transaction that commits at \(fixture.begin.finalLSN), but spout maps only the outbox table public.fx_outbox: give spout a publication of its own (only the outbox table) or remove public.elsewhere from it (ALTER PUBLICATION … DROP TABLE), then restart"))")
        }
        let server = SpoutError.server(ServerError(sqlState: "22021", message: "invalid byte sequence"), while: "reading")
        guard case let .server(_, context) = driver.session.naming(server) else { return XCTFail("not a server error") }
        XCTAssertEqual(context, "reading in the transaction that commits at \(fixture.begin.finalLSN) (xid \(fixture.begin.xid)); it recurs on every start: fix the cause, or skip that whole transaction (all its events, and only them) with spout run --start-lsn \(fixture.begin.finalLSN.advanced(by: 1)) and your other options, then deliver its events by hand")
        var commit = fixture.commit
        commit.endLSN = LSN(0x2000)
        try driver.feed(.commit(commit))
        XCTAssertThrowsError(try driver.feed(.commit(commit))) { error in
            guard case let .protocolViolation(_, context) = error as? SpoutError else { return XCTFail("\(error)") }
            XCTAssertEqual(context, "Commit without Begin")
        }
        guard case .server(_, "reading") = driver.session.naming(server) else { return XCTFail("outside a transaction the error stays as it is") }
    }

    func testARenamedOutboxWarnsOnce() throws {
        var driver = Driver()
        driver.session = ReplicationSession(start: LSN(0x1000), configuration: driver.session.configuration,
                                            mapper: EventMapper(mapping: SessionFixture.mapper().mapping, outboxOID: 16893),
                                            verified: nil, now: driver.now)
        var renamed = try SessionFixture.load().relation
        renamed.name = "fx_outbox_v2"
        try driver.feed(.relation(renamed))
        try driver.feed(.relation(renamed))
        XCTAssertEqual(driver.warnings, ["the outbox table public.fx_outbox (oid 16893) is named public.fx_outbox_v2 in the WAL: it was renamed; spout follows the same table (by oid), and needs --table public.fx_outbox_v2 on its next start if the name stays"])
    }

    // MARK: Metrics

    func testConnectionMetrics() throws {
        let metrics = TestMetrics()
        let relayMetrics = RelayMetrics(sink: "stdout", factory: metrics)
        relayMetrics.connection(up: true)
        XCTAssertEqual(try metrics.expectGauge("spout_connected", [("sink", "stdout")]).lastValue, 1)
        relayMetrics.connection(up: false)
        XCTAssertEqual(try metrics.expectGauge("spout_connected", [("sink", "stdout")]).lastValue, 0)
        relayMetrics.reconnected()
        relayMetrics.connection(up: true)
        XCTAssertEqual(try metrics.expectCounter("spout_reconnects_total", [("sink", "stdout")]).totalValue, 1)
        XCTAssertEqual(try metrics.expectGauge("spout_connected", [("sink", "stdout")]).lastValue, 1)
    }

    func testMetricsCountPerTopicAndPublishGauges() throws {
        let metrics = TestMetrics()
        let relayMetrics = RelayMetrics(sink: "stdout", factory: metrics)
        var driver = Driver { $0.streaming = false }
        try driver.transaction(commit: LSN(0x2000), relation: true)
        try driver.transaction(commit: LSN(0x3000))
        driver.dispatch()
        driver.ack(0, 1, 2, 3)
        _ = driver.session.completed(.failed(ticket: 5, SinkError(.permanent, "no")), nowMicros: 0)
        relayMetrics.publish(driver.session, confirmed: LSN(0x2000), spoolBytes: 1234)
        XCTAssertEqual(try metrics.expectCounter("spout_events_delivered_total", [("sink", "stdout"), ("topic", "outbox.order")]).totalValue, 3)
        XCTAssertEqual(try metrics.expectCounter("spout_events_delivered_total", [("sink", "stdout"), ("topic", "outbox.customer")]).totalValue, 1)
        XCTAssertEqual(try metrics.expectCounter("spout_events_failed_total", [("sink", "stdout"), ("topic", "outbox.customer")]).totalValue, 1)
        XCTAssertEqual(try metrics.expectCounter("spout_transactions_total", [("sink", "stdout")]).totalValue, 2)
        XCTAssertEqual(try metrics.expectGauge("spout_confirmed_lsn", [("sink", "stdout")]).lastValue, Double(0x2000))
        XCTAssertEqual(try metrics.expectGauge("spout_received_lsn", [("sink", "stdout")]).lastValue, Double(0x3000))
        XCTAssertEqual(try metrics.expectGauge("spout_in_flight_events", [("sink", "stdout")]).lastValue, 1)
        XCTAssertGreaterThan(try XCTUnwrap(try metrics.expectGauge("spout_in_flight_bytes", [("sink", "stdout")]).lastValue), 0)
        XCTAssertEqual(try metrics.expectGauge("spout_spool_bytes", [("sink", "stdout")]).lastValue, 1234)
        // The transactions committed a millisecond before the driver's clock; the ack came at it.
        XCTAssertEqual(try metrics.expectTimer("spout_commit_to_ack_seconds", [("sink", "stdout")]).values, [1_000_000])
        // Published again: only what changed since.
        driver.ack(4)
        relayMetrics.publish(driver.session, confirmed: LSN(0x2000), spoolBytes: 0)
        XCTAssertEqual(try metrics.expectCounter("spout_events_delivered_total", [("sink", "stdout"), ("topic", "outbox.order")]).totalValue, 4)
        XCTAssertEqual(try metrics.expectCounter("spout_transactions_total", [("sink", "stdout")]).totalValue, 2)
        XCTAssertEqual(try metrics.expectGauge("spout_in_flight_events", [("sink", "stdout")]).lastValue, 0)
        XCTAssertEqual(try metrics.expectTimer("spout_commit_to_ack_seconds", [("sink", "stdout")]).values.count, 1,
                       "the same acknowledgement time is not sampled twice")
        driver.nowMicros += 5000
        driver.ack(4)
        relayMetrics.publish(driver.session, confirmed: LSN(0x2000), spoolBytes: 0)
        XCTAssertEqual(try metrics.expectTimer("spout_commit_to_ack_seconds", [("sink", "stdout")]).values.count, 1, "a repeated ack is no news")
    }

    /// `spout_lag_seconds` is the age of the oldest event waiting for the sink: in flight, then
    /// spooled for room in the window; none waiting is 0.
    func testLagIsTheAgeOfTheOldestUnacknowledgedEvent() throws {
        let metrics = TestMetrics()
        let relayMetrics = RelayMetrics(sink: "stdout", factory: metrics)
        var driver = Driver { $0.streaming = false; $0.maxInFlightEvents = 2 }
        XCTAssertNil(driver.session.oldestUnacknowledgedCommit)
        let started = driver.nowMicros
        try driver.transaction(commit: LSN(0x2000), relation: true)
        driver.dispatch()
        XCTAssertEqual(driver.sent.count, 2, "a window of two: the third event waits in the spool")
        XCTAssertEqual(driver.session.oldestUnacknowledgedCommit?.unixMicroseconds, started - 1000)
        relayMetrics.publish(driver.session, confirmed: .zero, spoolBytes: 0)
        let lag = try XCTUnwrap(try metrics.expectGauge("spout_lag_seconds", [("sink", "stdout")]).lastValue)
        XCTAssertGreaterThanOrEqual(lag, 0.001)
        driver.ack(0, 1)
        XCTAssertEqual(driver.session.oldestUnacknowledgedCommit?.unixMicroseconds, started - 1000, "the spooled third event")
        driver.dispatch()
        driver.ack(2)
        XCTAssertNil(driver.session.oldestUnacknowledgedCommit)
        driver.nowMicros += 10_000_000
        try driver.transaction(commit: LSN(0x3000))
        driver.dispatch()
        XCTAssertEqual(driver.session.oldestUnacknowledgedCommit?.unixMicroseconds, started + 10_000_000 - 1000)
        driver.ack(3, 4)
        driver.dispatch()
        driver.ack(5)
        XCTAssertNil(driver.session.oldestUnacknowledgedCommit)
        relayMetrics.publish(driver.session, confirmed: LSN(0x3000), spoolBytes: 0)
        XCTAssertEqual(try metrics.expectGauge("spout_lag_seconds", [("sink", "stdout")]).lastValue, 0)
    }

    func testTopicsPastTheCountedOnesShareOneCounter() throws {
        for streaming in [true, false] {
            var driver = Driver { $0.streaming = streaming; $0.maxInFlightEvents = 5000 }
            let fixture = try SessionFixture.load()
            try driver.feed(.begin(fixture.begin))
            try driver.feed(.relation(fixture.relation))
            for index in 0..<(ReplicationSession.countedTopics + 5) {
                var message = try SessionFixture.logical(lsn: LSN(0x2000))
                message.content = Array(#"{"aggregate_type": "t\#(index)", "payload": 1}"#.utf8)
                message.flags = 1
                try driver.feed(.message(message))
            }
            try driver.feed(.commit(fixture.commit))
            // Spooled events carry their topic (as the session counts it) through the spool.
            driver.dispatch()
            XCTAssertEqual(driver.sent.count, ReplicationSession.countedTopics + 5)
            for (_, ticket) in driver.sent { driver.ack(ticket) }
            XCTAssertEqual(driver.session.topics.count, ReplicationSession.countedTopics + 1)
            XCTAssertEqual(driver.session.topics.last, "_other")
            XCTAssertEqual(driver.session.topics[7], "outbox.t7")
            XCTAssertEqual(driver.session.deliveredPerTopic[7], 1)
            XCTAssertEqual(driver.session.deliveredPerTopic.last, 5)
            XCTAssertEqual(driver.session.deliveredPerTopic.reduce(0, +), ReplicationSession.countedTopics + 5)
            if !streaming { XCTAssertEqual(driver.sent.last?.event.lsn, fixture.commit.endLSN, "the commit LSN") }
        }
    }

    func testSinksNameThemselvesForMetrics() {
        XCTAssertEqual(StdoutSink(descriptor: -1).metricsName, "stdout")
        final class NATSJetStreamTestSink: Sink {
            func send(_: OutboxEvent, ticket _: UInt64) throws(SinkError) {}
            func poll(_: (SinkCompletion) -> Void) throws(SinkError) {}
            var wakeupDescriptor: Int32? { nil }
            func close() {}
        }
        final class HoldingSink: Sink {
            func send(_: OutboxEvent, ticket _: UInt64) throws(SinkError) {}
            func poll(_: (SinkCompletion) -> Void) throws(SinkError) {}
            var wakeupDescriptor: Int32? { nil }
            func close() {}
        }
        XCTAssertEqual(NATSJetStreamTestSink().metricsName, "nats", "the broker its type is named after")
        XCTAssertEqual(HoldingSink().metricsName, "holding")
    }
}

/// The captured outbox transaction (session_outbox.bin) and logical message, decoded.
enum SessionFixture {
    struct Transaction {
        var begin: PgOutputMessage.Begin
        var relation: PgOutputMessage.Relation
        var inserts: [PgOutputMessage.Insert]
        var commit: PgOutputMessage.Commit
    }

    static func load() throws -> Transaction {
        let messages = try Fixtures.records(try Fixtures.bytes("session_outbox.bin")).map { try decodeMessage($0).get() }
        guard messages.count == 6, case let .begin(begin) = messages[0], case let .relation(relation) = messages[1],
              case let .commit(commit) = messages[5] else { throw FixtureError("unexpected session_outbox.bin") }
        let inserts = messages[2...4].compactMap { message -> PgOutputMessage.Insert? in
            if case let .insert(insert) = message { return insert }
            return nil
        }
        return Transaction(begin: begin, relation: relation, inserts: inserts, commit: commit)
    }

    /// The event ids of the three inserts, as captured.
    static func ids() throws -> [String] {
        try load().inserts.map { $0.new.string(at: 0) ?? "" }
    }

    static func logical(lsn: LSN) throws -> PgOutputMessage.LogicalMessage {
        guard case var .message(message) = try decodeMessage(try Fixtures.bytes("message_nontransactional.bin")).get() else {
            throw FixtureError("message_nontransactional.bin is not a message")
        }
        message.lsn = lsn
        // The captured content has no payload member; an outbox message needs one.
        message.content = Array(#"{"aggregate_type": "ping", "payload": {"seq": 7}}"#.utf8)
        return message
    }

    static func mapper() -> EventMapper {
        // The fixture's table; topics by aggregate type.
        let topic = (try? TopicTemplate("outbox.{aggregate_type}")) ?? { fatalError("topic template") }()
        return EventMapper(mapping: OutboxMapping(table: TableName(schema: "public", name: "fx_outbox"), topic: topic))
    }
}
