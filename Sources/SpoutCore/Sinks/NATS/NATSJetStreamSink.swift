import CNats
import Foundation

/// Publishes events to NATS JetStream: subject = topic, payload = the event's payload,
/// `Nats-Msg-Id` = event id, `Spout-Key` = key, `Spout-Event-Type` = type, then the event's
/// headers. An event counts as delivered when its stream's PubAck arrives.
///
/// Publishing is asynchronous with at most `publishWindow` PubAcks outstanding. Every event
/// stays here until acknowledged. A transient failure (connection lost, no PubAck in time,
/// the stream not answering) ends the connection: nothing more goes out on it, the sink
/// reconnects with exponential backoff and jitter and re-publishes every unacknowledged
/// event in ticket order. Whatever the server stored before the failure is a prefix of what
/// was sent on that connection, so re-sending keeps per-subject order, and the stream's
/// duplicate window (keyed by `Nats-Msg-Id`) drops the re-sends that had landed.
///
/// Reconnecting, stream look-ups and closing an abandoned connection can each block for
/// seconds; they run on `NATSAdminWorker`'s thread, so the relay keeps answering PostgreSQL.
/// Publishing waits at the first event whose subject is still being looked up.
public final class NATSJetStreamSink: Sink {
    /// Header carrying the event's key (aggregate id), when it has one.
    public static let keyHeader = "Spout-Key"
    /// Header carrying the event's type, when it has one.
    public static let typeHeader = "Spout-Event-Type"

    private enum State { case waiting, published, delivered, failed }

    private struct Entry {
        var event: OutboxEvent
        var ticket: UInt64
        var state: State
        /// When it was last published (its PubAck is due within the ack timeout).
        var publishedAt: ContinuousClock.Instant?
    }

    private struct Outage {
        var started: ContinuousClock.Instant
        var attempts = 0
        var nextAttempt: ContinuousClock.Instant
        var reconnected = false
    }

    private let endpoint: NATSEndpoint
    private let log: Log
    private let wakeup = Wakeup()
    private let loop: NATSEventLoop
    private let worker: NATSAdminWorker
    private let publishWindow: Int
    private let clock = ContinuousClock()

    private var connection: NATSConnection?
    /// Numbers the connections, so a stream look-up answered for an abandoned one is ignored.
    private var generation = 0
    /// A reconnect is under way on the worker.
    private var connecting = false
    /// The subject the worker is looking up; publishing waits at the first event that needs it.
    private var checkingSubject: String?
    /// Events not yet reported delivered, in ticket order; `entries[head...]` are live.
    private var entries: [Entry] = []
    private var head = 0
    /// The next entry to publish; entries before it are published, delivered or failed.
    private var cursor = 0
    private var outstanding = 0
    private var readySubjects: Set<String> = []
    /// Subjects no stream captures (or that cannot get one), with the error for their events.
    private var rejectedSubjects: [String: String] = [:]
    private var workResults: [NATSAdminWorker.Result] = []
    private var completions: [NATSConnection.Completion] = []
    private var deliveredTickets: [UInt64] = []
    private var failures: [(ticket: UInt64, error: SinkError)] = []
    private var outage: Outage?
    private var warnedReservedHeader = false
    /// The last error the server sent on this connection outside any reply (e.g. a
    /// permissions violation): the likely reason a PubAck never came.
    private var serverError: String?

    public init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        endpoint = try NATSEndpoint(url)
        if let name = options.natsCreateStream {
            guard !name.isEmpty, !name.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F || ".*>/\\".utf8.contains($0) }) else {
                throw .invalidOption("--nats-create-stream \"\(name)\" is not a JetStream stream name: use letters, digits, - and _ (no '.', '*', '>', '/', spaces)")
            }
        }
        self.log = log
        publishWindow = max(1, min(options.maxInFlightEvents, 4096))
        deliveredTickets.reserveCapacity(publishWindow)
        completions.reserveCapacity(publishWindow)
        do { loop = try NATSEventLoop(wakeup: wakeup) } catch {
            throw .sink(SinkError(.permanent, "cannot set up polling for NATS: \(error)"))
        }
        worker = NATSAdminWorker(endpoint: endpoint, createStream: options.natsCreateStream, maxPendingAcks: publishWindow,
                                 loop: loop, wakeup: wakeup)
        // Before the relay runs, blocking is harmless, and a wrong password or a server without
        // JetStream stops spout at once with its own message.
        do {
            let connection = try NATSConnection(endpoint: endpoint, maxPendingAcks: publishWindow, loop: loop, wakeup: wakeup)
            try connection.checkJetStream()
            self.connection = connection
        } catch {
            switch error.status {
            case NATS_CONNECTION_AUTH_FAILED:
                throw .sink(SinkError(.permanent, "NATS at \(endpoint.redacted) rejected the credentials (\(error)): fix the user and password or token in --sink"))
            case NATS_NO_RESPONDERS:
                throw .sink(SinkError(.permanent, "JetStream is not enabled on the NATS server at \(endpoint.redacted): start nats-server with -js (or a jetstream block in its configuration)"))
            default:
                guard error.isConnectivityProblem else {
                    throw .sink(SinkError(.permanent, "cannot use NATS at \(endpoint.redacted): \(error)"))
                }
                // The broker may come up after spout (docker compose): wait for it like for any outage.
                beginOutage(error.description)
            }
        }
    }

    deinit { close() }

    /// NATS messages do not carry the commit LSN: events go out as they are decoded.
    public var needsCommitLSN: Bool { false }

    public var wakeupDescriptor: Int32? { loop.descriptor }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws(SinkError) {
        entries.append(Entry(event: event, ticket: ticket, state: .waiting, publishedAt: nil))
        publishWaiting()
    }

    public func poll(_ report: (SinkCompletion) -> Void) throws(SinkError) {
        wakeup.drain()
        collectWorkResults()
        collectCompletions()
        checkAckTimeout()
        if let outage, connection == nil, !connecting, clock.now >= outage.nextAttempt {
            self.outage?.attempts += 1
            connecting = true
            worker.connect()
        }
        publishWaiting()
        connection?.flush()
        for ticket in deliveredTickets { report(.delivered(ticket: ticket)) }
        deliveredTickets.removeAll(keepingCapacity: true)
        for failure in failures { report(.failed(ticket: failure.ticket, failure.error)) }
        failures.removeAll()
        dropDeliveredHead()
    }

    public func close() {
        worker.shutDown()
        guard let connection else { return }
        // Bounded: PubAcks still on their way are worth a short wait, not a hang.
        let deadline = clock.now + .seconds(2)
        while outstanding > 0, self.connection != nil, clock.now < deadline {
            wakeup.drain()
            collectCompletions()
            if outstanding > 0 {
                var ready = pollfd(fd: loop.descriptor, events: Int16(POLLIN), revents: 0)
                _ = Glibc.poll(&ready, 1, 5)
            }
        }
        connection.flush()
        connection.detach()
        worker.closeWhenIdle(connection, timeout: .seconds(6))
        self.connection = nil
    }

    // MARK: Publishing

    /// Publishes waiting entries in ticket order while the PubAck window has room. Stops at
    /// a permanently failed entry: nothing after it goes out.
    private func publishWaiting() {
        while let connection, outstanding < publishWindow, cursor < entries.count {
            switch entries[cursor].state {
            case .delivered, .published:
                cursor += 1
                continue
            case .failed:
                // Nothing after a permanently failed event goes out, and the relay stops: fail
                // what waits behind it now, rather than leave the relay's shutdown to time out.
                for later in (cursor + 1)..<entries.count where entries[later].state == .waiting {
                    entries[later].state = .failed
                    let event = entries[later].event
                    failures.append((entries[later].ticket, SinkError(.permanent, "not published: an earlier event failed permanently",
                                                                       eventID: event.id, topic: event.topic)))
                }
                return
            case .waiting:
                break
            }
            let topic = entries[cursor].event.topic
            if !readySubjects.contains(topic) {
                if let problem = rejectedSubjects[topic] {
                    fail(cursor, problem)
                    return
                }
                if let problem = NATSWireRules.subjectProblem(topic) {
                    fail(cursor, "topic \"\(topic)\" is not a valid NATS subject (\(problem)): change --topic or the values it is built from")
                    return
                }
                if checkingSubject == nil {
                    checkingSubject = topic
                    worker.checkSubject(topic, on: connection, generation: generation)
                }
                return
            }
            do {
                if try connection.publish(entries[cursor].event, ticket: entries[cursor].ticket), !warnedReservedHeader {
                    warnedReservedHeader = true
                    log.warning("event headers named Nats-… are not passed to NATS (they would steer the server); first seen on event \"\(entries[cursor].event.id)\"")
                }
            } catch {
                switch error.status {
                case NATS_MAX_PAYLOAD:
                    fail(cursor, "the message (\(entries[cursor].event.payload.count) bytes of payload plus headers) exceeds the NATS server's max_payload of \(connection.maxPayload) bytes: raise max_payload in the nats-server configuration")
                case NATS_NO_SERVER_SUPPORT:
                    fail(cursor, "the NATS server does not support message headers, which spout needs (Nats-Msg-Id): use nats-server 2.2 or newer")
                case NATS_INVALID_SUBJECT:
                    fail(cursor, "cannot publish to NATS: \(error)")
                default:
                    // The connection's trouble, not the event's: publish it again on a new one.
                    beginOutage(error.description)
                }
                return
            }
            entries[cursor].state = .published
            entries[cursor].publishedAt = clock.now
            outstanding += 1
            cursor += 1
        }
    }

    /// Adopts what the worker finished: a new connection, a failed reconnect, a stream look-up.
    private func collectWorkResults() {
        worker.takeResults(into: &workResults)
        for result in workResults {
            switch result {
            case let .connected(new):
                connecting = false
                connection = new
                generation += 1
                outage?.reconnected = true
                log.debug("connected to NATS at \(endpoint.redacted); re-publishing \(entries.count - head) unacknowledged events")
                if entries.count == head, let outage { endOutage(outage) }
            case let .connectFailed(failure):
                connecting = false
                log.debug("NATS reconnect failed: \(failure)")
                scheduleNextAttempt()
            case let .subjectChecked(subject, check, checkedOn):
                checkingSubject = nil
                // Asked on an abandoned connection: the new one asks again.
                guard checkedOn == generation, connection != nil else { continue }
                switch check {
                case let .ready(note):
                    readySubjects.insert(subject)
                    if let note { log.info(note) }
                case let .permanent(message):
                    rejectedSubjects[subject] = message
                case let .transient(failure):
                    beginOutage(failure.description)
                }
            }
        }
        workResults.removeAll(keepingCapacity: true)
    }

    private func fail(_ index: Int, _ message: String) {
        entries[index].state = .failed
        let event = entries[index].event
        failures.append((entries[index].ticket, SinkError(.permanent, message, eventID: event.id, topic: event.topic)))
    }

    // MARK: Acknowledgements

    /// JetStream errors that no retry can fix for this message.
    private static let permanentErrorCodes: Set<Int> = [
        Int(JSStreamMessageExceedsMaximumErr.rawValue), Int(JSStreamNotMatchErr.rawValue), Int(JSStreamSealedErr.rawValue),
        Int(JSStreamWrongLastMsgIDErr.rawValue), Int(JSStreamWrongLastSequenceErr.rawValue), Int(JSStreamSequenceNotMatchErr.rawValue),
    ]

    private func collectCompletions() {
        guard let connection else { return }
        let broken = connection.receive(into: &completions)
        let (closedReason, asyncError) = connection.events.take()
        if let asyncError { serverError = asyncError }
        var transient: String?
        for completion in completions {
            guard let index = index(of: completion.ticket), entries[index].state == .published else { continue }
            outstanding -= 1
            guard let failure = completion.failure else {
                entries[index].state = .delivered
                deliveredTickets.append(completion.ticket)
                if let outage, outage.reconnected { endOutage(outage) }
                continue
            }
            let event = entries[index].event
            if failure.status == NATS_ERR, Self.permanentErrorCodes.contains(failure.errorCode) {
                fail(index, "JetStream rejected the event: \(failure)")
                continue
            }
            entries[index].state = .waiting
            // A PubAck names a JetStream error; "no responders" never gets here (`receive`
            // reports it without a ticket, as `broken`).
            if transient == nil { transient = "JetStream did not store an event on subject \"\(event.topic)\": \(failure)" }
        }
        completions.removeAll(keepingCapacity: true)
        if transient == nil, let broken {
            if broken.status == NATS_NO_RESPONDERS {
                // The PubAck that says so carries no subject: look every stream up again.
                readySubjects.removeAll()
                rejectedSubjects.removeAll()
                transient = "no JetStream stream answered a publish (was a stream deleted?)"
            } else {
                transient = broken.description
            }
        }
        if let reason = transient ?? closedReason { beginOutage(reason) }
    }

    /// The oldest outstanding publish has waited longer than the ack timeout: the server or
    /// the stream is stuck (or the PubAck was lost). Re-publishing on a new connection is safe:
    /// the stream drops duplicates by `Nats-Msg-Id`.
    private func checkAckTimeout() {
        guard connection != nil, outstanding > 0 else { return }
        var index = head
        while index < cursor, entries[index].state != .published { index += 1 }
        guard index < cursor, let publishedAt = entries[index].publishedAt,
              clock.now - publishedAt > .milliseconds(NATSConnection.ackTimeoutMilliseconds) else { return }
        beginOutage("no PubAck for subject \"\(entries[index].event.topic)\" within \(NATSConnection.ackTimeoutMilliseconds / 1000) s"
                    + (serverError.map { " (server said: \($0))" } ?? ""))
    }

    private func index(of ticket: UInt64) -> Int? {
        // The ticket comes from a PubAck subject (the network): no arithmetic that can trap.
        guard head < entries.count, ticket >= entries[head].ticket else { return nil }
        let offset = ticket - entries[head].ticket
        guard offset < UInt64(entries.count - head) else { return nil }
        let guess = head + Int(offset)
        if entries[guess].ticket == ticket { return guess }
        // Tickets from the relay are consecutive; this is only a fallback.
        var low = head, high = entries.count - 1
        while low <= high {
            let middle = (low + high) / 2
            if entries[middle].ticket == ticket { return middle }
            if entries[middle].ticket < ticket { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }

    private func dropDeliveredHead() {
        while head < entries.count, entries[head].state == .delivered { head += 1 }
        // After an outage the cursor restarts at the old head, which may just have been delivered.
        cursor = max(cursor, head)
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            cursor = 0
            head = 0
        } else if head >= 1024, head * 2 >= entries.count {
            entries.removeFirst(head)
            cursor -= head
            head = 0
        }
    }

    // MARK: Outages

    /// Abandons the connection: every unacknowledged event goes back to waiting and is
    /// published again, in ticket order, on the next connection.
    private func beginOutage(_ reason: String) {
        if let connection {
            connection.detach()
            worker.close(connection)
            self.connection = nil
        }
        serverError = nil
        for index in head..<entries.count where entries[index].state == .published { entries[index].state = .waiting }
        outstanding = 0
        cursor = head
        let now = clock.now
        if outage == nil {
            log.warning("NATS at \(endpoint.redacted) is unavailable: \(reason); retrying with backoff (events wait, and the slot is not confirmed past them until JetStream stores them)")
            outage = Outage(started: now, nextAttempt: now)
        } else {
            log.debug("NATS still unavailable: \(reason)")
            outage?.reconnected = false
        }
        scheduleNextAttempt()
    }

    private func endOutage(_ ended: Outage) {
        let elapsed = (clock.now - ended.started).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) * 1e-18
        log.info("NATS at \(endpoint.redacted) is back after \(String(format: "%.1f", seconds)) s")
        outage = nil
    }

    /// Exponential backoff from 100 ms to 5 s with equal jitter; the wakeup fires when the
    /// next attempt is due so the relay polls then.
    private func scheduleNextAttempt() {
        guard var outage else { return }
        let ceiling = min(5.0, 0.1 * pow(2.0, Double(min(outage.attempts, 16))))
        let delay = ceiling / 2 + Double.random(in: 0...(ceiling / 2))
        outage.nextAttempt = clock.now + .milliseconds(Int(delay * 1000))
        self.outage = outage
        let wakeup = self.wakeup
        // Not on the worker's queue: a job blocked there would hold the wakeup back.
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { wakeup.signal() }
    }
}
