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

    private enum SubjectCheck {
        case ready
        case permanent(String)
        case transient(NATSFailure)
    }

    private let endpoint: NATSEndpoint
    private let createStream: String?
    private let log: Log
    private let wakeup = Wakeup()
    private let loop: NATSEventLoop
    private let publishWindow: Int
    private let clock = ContinuousClock()

    private var connection: NATSConnection?
    /// Events not yet reported delivered, in ticket order; `entries[head...]` are live.
    private var entries: [Entry] = []
    private var head = 0
    /// The next entry to publish; entries before it are published, delivered or failed.
    private var cursor = 0
    private var outstanding = 0
    private var readySubjects: Set<String> = []
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
        createStream = options.natsCreateStream
        self.log = log
        publishWindow = max(1, min(options.maxInFlightEvents, 4096))
        deliveredTickets.reserveCapacity(publishWindow)
        completions.reserveCapacity(publishWindow)
        do { loop = try NATSEventLoop(wakeup: wakeup) } catch {
            throw .sink(SinkError(.permanent, "cannot set up polling for NATS: \(error)"))
        }
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
        collectCompletions()
        checkAckTimeout()
        if let outage, connection == nil, clock.now >= outage.nextAttempt { reconnect() }
        publishWaiting()
        connection?.flush()
        for ticket in deliveredTickets { report(.delivered(ticket: ticket)) }
        deliveredTickets.removeAll(keepingCapacity: true)
        for failure in failures { report(.failed(ticket: failure.ticket, failure.error)) }
        failures.removeAll()
        dropDeliveredHead()
    }

    public func close() {
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
        connection.close()
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
                switch checkSubject(topic, on: connection) {
                case .ready:
                    readySubjects.insert(topic)
                case let .permanent(message):
                    fail(cursor, message)
                    return
                case let .transient(failure):
                    beginOutage(failure.description)
                    return
                }
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

    /// A subject is usable when it is a valid literal subject and a stream captures it
    /// (created or extended with `--nats-create-stream`). Checked once per subject.
    private func checkSubject(_ subject: String, on connection: NATSConnection) -> SubjectCheck {
        if let problem = NATSWireRules.subjectProblem(subject) {
            return .permanent("topic \"\(subject)\" is not a valid NATS subject (\(problem)): change --topic or the values it is built from")
        }
        do {
            if try connection.streamExists(capturing: subject) { return .ready }
            guard let createStream else {
                let suggestion = NATSWireRules.suggestedStreamSubject(for: subject)
                return .permanent("no JetStream stream captures subject \"\(subject)\": create one, e.g. nats stream add OUTBOX --subjects '\(suggestion)' --storage file --defaults, or run spout with --nats-create-stream NAME")
            }
            switch try connection.addSubject(subject, toStream: createStream) {
            case .created: log.info("created JetStream stream \(createStream) (file storage) for subject \(subject)")
            case .extended: log.info("added subject \(subject) to JetStream stream \(createStream)")
            }
            return .ready
        } catch {
            if error.isConnectivityProblem { return .transient(error) }
            if error.status == NATS_NO_RESPONDERS {
                return .permanent("JetStream is not enabled on the NATS server at \(endpoint.redacted): start nats-server with -js")
            }
            if let createStream {
                return .permanent("cannot create or extend JetStream stream \(createStream) to capture subject \"\(subject)\": \(error)")
            }
            return .permanent("cannot look up the JetStream stream for subject \"\(subject)\": \(error)")
        }
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
            connection.close()
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

    private func reconnect() {
        outage?.attempts += 1
        do {
            let connection = try NATSConnection(endpoint: endpoint, maxPendingAcks: publishWindow, loop: loop, wakeup: wakeup)
            self.connection = connection
            outage?.reconnected = true
            log.debug("connected to NATS at \(endpoint.redacted); re-publishing \(entries.count - head) unacknowledged events")
            if entries.count == head, let outage { endOutage(outage) }
        } catch {
            log.debug("NATS reconnect failed: \(error)")
            scheduleNextAttempt()
        }
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
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { wakeup.signal() }
    }
}
