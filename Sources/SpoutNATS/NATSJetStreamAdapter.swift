import SpoutCore
import CNats
import Foundation

/// What the NATS sink knows about JetStream, plugged into the delivery engine: publishing,
/// PubAcks, stream look-ups and what each failure means. The engine holds the events in
/// ticket order, backs off, and reports outages.
///
/// Publishing is asynchronous with at most `publishWindow` PubAcks outstanding. A transient
/// failure (connection lost, no PubAck in time, the stream not answering) ends the
/// connection: nothing more goes out on it, the engine puts every unacknowledged event back
/// to waiting, and after its backoff the adapter reconnects and publishes them again in ticket
/// order. Whatever the server stored before the failure is a prefix of what was sent on that
/// connection, so re-sending keeps per-subject order, and the stream's duplicate window (keyed
/// by `Nats-Msg-Id`) drops the re-sends that had landed.
///
/// Reconnecting, stream look-ups and closing an abandoned connection can each block for
/// seconds; they run on `NATSAdminWorker`'s thread, so the relay keeps answering PostgreSQL.
/// Publishing waits at the first event whose subject is still being looked up.
final class NATSJetStreamAdapter: DeliveryAdapter {
    let sinkName = "nats"
    /// NATS messages carry the commit LSN only in the CloudEvents envelope (`ce-lsn`); without
    /// it events go out as they are decoded.
    var needsCommitLSN: Bool { cloudEvents != nil }
    /// `--envelope cloudevents`: the NATS binding's binary mode.
    private let cloudEvents: CloudEventEnvelope?
    var recoveredMessage: String { "NATS at \(endpoint.redacted) is back" }

    private let endpoint: NATSEndpoint
    private let log: Log
    private let publishWindow: Int

    /// The engine's wakeup, made here first: libnats' callbacks and the worker signal it.
    let wakeup: DeliveryWakeup
    private let loop: NATSEventLoop
    private let worker: NATSAdminWorker
    private var connection: NATSConnection?
    /// Numbers the connections, so a stream look-up answered for an abandoned one is ignored.
    private var generation = 0
    /// A reconnect is under way on the worker.
    private var connecting = false
    private var closed = false
    /// The subject the worker is looking up; publishing waits at the first event that needs it.
    private var checkingSubject: String?
    private var readySubjects: Set<String> = []
    /// Subjects no stream captures (or that cannot get one), with the error for their events.
    private var rejectedSubjects: [String: String] = [:]
    private var workResults: [NATSAdminWorker.Result] = []
    private var completions: [NATSConnection.Completion] = []
    private var warnedReservedHeader = false
    /// The last error the server sent on this connection outside any reply (e.g. a
    /// permissions violation): the likely reason a PubAck never came.
    private var serverError: String?

    init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        endpoint = try Self.endpoint(url, options: options)
        if let name = options.natsCreateStream {
            guard !name.isEmpty, !name.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F || ".*>/\\".utf8.contains($0) }) else {
                throw .invalidOption("--nats-create-stream \"\(name)\" is not a JetStream stream name: use letters, digits, - and _ (no '.', '*', '>', '/', spaces)")
            }
        }
        self.log = log
        cloudEvents = options.cloudEvents
        publishWindow = max(1, min(options.maxInFlightEvents, 4096))
        completions.reserveCapacity(publishWindow)
        do { wakeup = try DeliveryWakeup() } catch { throw .sink(error) }
        loop = NATSEventLoop(wakeup: wakeup)
        worker = NATSAdminWorker(endpoint: endpoint, createStream: options.natsCreateStream, maxPendingAcks: publishWindow, loop: loop)
    }

    /// The endpoint with the TLS settings; for `tls://` the CA, certificate and key files are
    /// read now (TLSClient), so a wrong file is a start error naming its option (issue 15).
    static func endpoint(_ url: String, options: SinkOptions) throws(SpoutError) -> NATSEndpoint {
        var endpoint = try NATSEndpoint(url)
        endpoint.tls = options.tls
        if endpoint.secure { _ = try TLSClient(options.tls) }
        return endpoint
    }

    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        // Before the relay runs, blocking is harmless, and a wrong password or a server without
        // JetStream stops spout at once with its own message.
        do {
            let connection = try NATSConnection(endpoint: endpoint, maxPendingAcks: publishWindow, loop: loop)
            try connection.checkJetStream()
            self.connection = connection
        } catch {
            switch error.status {
            case NATS_CONNECTION_AUTH_FAILED:
                throw .sink(SinkError(.permanent, "NATS at \(endpoint.redacted) rejected the credentials (\(error)): fix the user and password or token in --sink"))
            case NATS_NO_RESPONDERS:
                throw .sink(SinkError(.permanent, "JetStream is not enabled on the NATS server at \(endpoint.redacted): start nats-server with -js (or a jetstream block in its configuration)"))
            default:
                // A certificate problem at the first connection stops spout; later it is an outage (issue 15).
                if error.certificateProblem { throw .sink(SinkError(.permanent, error.description)) }
                guard error.isConnectivityProblem else {
                    throw .sink(SinkError(.permanent, "cannot use NATS at \(endpoint.redacted): \(error)"))
                }
                // The broker may come up after spout (docker compose): wait for it like for any outage.
                abandonConnection(engine, error.description)
            }
        }
    }

    func queued(_ engine: DeliveryEngine) {
        publishWaiting(engine)
    }

    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        guard !closed else { return }
        collectWorkResults(engine)
        collectCompletions(engine)
        checkAckTimeout(engine)
        if connection == nil, !connecting, !engine.isBackingOff {
            connecting = true
            worker.connect()
        }
        publishWaiting(engine)
        connection?.flush()
    }

    /// The oldest outstanding publish's PubAck timeout. The socket is watched by `NATSEventLoop`
    /// as libnats asks; worker results and a closed connection signal the wakeup.
    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        guard connection != nil, let sentAt = engine.queue.oldestSentAt else { return nil }
        return sentAt + .milliseconds(NATSConnection.ackTimeoutMilliseconds) + .milliseconds(1)
    }

    func close(_ engine: DeliveryEngine) {
        guard !closed else { return }
        closed = true
        worker.shutDown()
        guard let connection else { return }
        // Bounded: PubAcks still on their way are worth a short wait, not a hang.
        let deadline = ContinuousClock.now + .seconds(2)
        while engine.queue.sentCount > 0, self.connection != nil, ContinuousClock.now < deadline {
            // An expired retry timer would keep the wakeup readable: the wait below would spin.
            wakeup.arm(nil, now: engine.now)
            wakeup.drain()
            collectCompletions(engine)
            if engine.queue.sentCount > 0 {
                var ready = pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)
                _ = Glibc.poll(&ready, 1, 5)
            }
        }
        connection.flush()
        connection.detach()
        worker.closeWhenIdle(connection, timeout: .seconds(6))
        self.connection = nil
    }

    // MARK: Publishing

    /// Publishes waiting events in ticket order while the PubAck window has room. A
    /// permanently failed event stops the engine: nothing after it goes out.
    private func publishWaiting(_ engine: DeliveryEngine) {
        while let connection, !engine.isStopped, engine.sentCount < publishWindow, let ticket = engine.nextWaitingTicket(),
              let event = engine.event(ticket) {
            let topic = event.topic
            if !readySubjects.contains(topic) {
                if let problem = rejectedSubjects[topic] {
                    engine.fail(ticket, problem)
                    return
                }
                if let problem = NATSWireRules.subjectProblem(topic) {
                    engine.fail(ticket, "topic \"\(topic)\" is not a valid NATS subject (\(problem)): change --topic or the values it is built from")
                    return
                }
                if checkingSubject == nil {
                    checkingSubject = topic
                    worker.checkSubject(topic, on: connection, generation: generation)
                }
                return
            }
            do {
                if try connection.publish(event, ticket: ticket, cloudEvents: cloudEvents), !warnedReservedHeader {
                    warnedReservedHeader = true
                    log.warning("event headers named Nats-… are not passed to NATS (they would steer the server); first seen on event \"\(event.id)\"")
                }
            } catch {
                switch error.status {
                case NATS_MAX_PAYLOAD:
                    engine.fail(ticket, "the message (\(event.payload.count) bytes of payload plus headers) exceeds the NATS server's max_payload of \(connection.maxPayload) bytes: raise max_payload in the nats-server configuration")
                case NATS_NO_SERVER_SUPPORT:
                    engine.fail(ticket, "the NATS server does not support message headers, which spout needs (Nats-Msg-Id): use nats-server 2.2 or newer")
                case NATS_INVALID_SUBJECT:
                    engine.fail(ticket, "cannot publish to NATS: \(error)")
                default:
                    // The connection's trouble, not the event's: publish it again on a new one.
                    abandonConnection(engine, error.description)
                }
                return
            }
            engine.markSent(ticket)
        }
    }

    /// Adopts what the worker finished: a new connection, a failed reconnect, a stream look-up.
    private func collectWorkResults(_ engine: DeliveryEngine) {
        worker.takeResults(into: &workResults)
        for result in workResults {
            switch result {
            case let .connected(new):
                connecting = false
                connection = new
                generation += 1
                log.debug("connected to NATS at \(endpoint.redacted); re-publishing \(engine.queue.unfinishedCount) unacknowledged events")
                engine.reachable()
            case let .connectFailed(failure):
                connecting = false
                engine.retry(after: "NATS reconnect failed: \(failure)", warning: self.warning(failure.description))
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
                    abandonConnection(engine, failure.description)
                }
            }
        }
        workResults.removeAll(keepingCapacity: true)
    }

    // MARK: Acknowledgements

    /// JetStream errors that no retry can fix for this message.
    private static let permanentErrorCodes: Set<Int> = [
        Int(JSStreamMessageExceedsMaximumErr.rawValue), Int(JSStreamNotMatchErr.rawValue), Int(JSStreamSealedErr.rawValue),
        Int(JSStreamWrongLastMsgIDErr.rawValue), Int(JSStreamWrongLastSequenceErr.rawValue), Int(JSStreamSequenceNotMatchErr.rawValue),
    ]

    private func collectCompletions(_ engine: DeliveryEngine) {
        guard let connection else { return }
        let broken = connection.receive(into: &completions)
        let (closedReason, asyncError) = connection.events.take()
        if let asyncError { serverError = asyncError }
        var transient: String?
        var transientTicket: UInt64?
        var transientCount = 0
        for completion in completions {
            // The ticket comes from a PubAck subject (the network): only one published and
            // unacknowledged counts.
            guard engine.state(completion.ticket) == .sent else { continue }
            guard let failure = completion.failure else {
                engine.delivered(completion.ticket)
                continue
            }
            if failure.status == NATS_ERR, Self.permanentErrorCodes.contains(failure.errorCode) {
                engine.fail(completion.ticket, "JetStream rejected the event: \(failure)")
                continue
            }
            // A PubAck names a JetStream error; "no responders" never gets here (`receive`
            // reports it without a ticket, as `broken`).
            transientCount += 1
            if transient == nil, let event = engine.event(completion.ticket) {
                transient = "JetStream did not store an event on subject \"\(event.topic)\": \(failure)"
                transientTicket = completion.ticket
            }
        }
        // One event's PubAck error (a stream leader election, say) counts against its
        // --max-retries; past them it is poison and the connection stays. A lost connection or
        // "no responders" (below) is an outage and counts for no event.
        if transientCount == 1, let ticket = transientTicket, let reason = transient,
           engine.refusalExhaustsRetries(ticket, reason: reason) {
            transient = nil
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
        if let reason = transient ?? closedReason { abandonConnection(engine, reason) }
    }

    /// The oldest outstanding publish has waited longer than the ack timeout: the server or
    /// the stream is stuck (or the PubAck was lost). Re-publishing on a new connection is safe:
    /// the stream drops duplicates by `Nats-Msg-Id`.
    private func checkAckTimeout(_ engine: DeliveryEngine) {
        guard connection != nil, let sentAt = engine.queue.oldestSentAt,
              engine.now - sentAt > .milliseconds(NATSConnection.ackTimeoutMilliseconds) else { return }
        var ticket = engine.queue.oldestTicket
        while ticket < engine.queue.endTicket, engine.queue.state(ticket) != .sent { ticket += 1 }
        let topic = engine.entry(ticket)?.event.topic ?? ""
        abandonConnection(engine, "no PubAck for subject \"\(topic)\" within \(NATSConnection.ackTimeoutMilliseconds / 1000) s"
                          + (serverError.map { " (server said: \($0))" } ?? ""))
    }

    // MARK: Lost connections

    /// Gives up the connection (closed off the relay thread); the engine puts every
    /// unacknowledged event back to waiting and backs off before the next connect.
    private func abandonConnection(_ engine: DeliveryEngine, _ reason: String) {
        if let connection {
            connection.detach()
            worker.close(connection)
            self.connection = nil
        }
        serverError = nil
        engine.retry(after: "NATS still unavailable: \(reason)", warning: self.warning(reason))
    }

    private func warning(_ reason: String) -> String {
        "NATS at \(endpoint.redacted) is unavailable: \(reason); retrying with backoff (events wait, and the slot is not confirmed past them until JetStream stores them)"
    }
}
