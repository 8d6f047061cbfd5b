import SpoutCore
import CoreMetrics
import Foundation

/// Publishes events to Redis Streams (`redis://`, or TLS with `rediss://`; see `RedisConnection`):
/// one stream per topic (the stream key is the topic), one entry per event with the fields `id`,
/// `type`, `key`, `payload` (the bytes as stored) and `headers` (a JSON object); `type` and
/// `key` are left out when the event has none. With `--envelope cloudevents` the fields are the CloudEvents attributes named as in the
/// Kafka binding (`ce_specversion`, `ce_id`, …, `content-type`) and `payload`.
///
/// Entries go out in `MULTI` … `EXEC` batches on one non-blocking connection, many XADDs per
/// batch and one batch in flight. Redis discards a whole transaction when it refuses one of
/// its commands at queue time (OOM, LOADING, BUSY, MISCONF, NOPERM…), so a batch that is
/// retried never lands behind a later one: per-key order survives every retry, and a stream
/// never holds an event without the events before it. The reply to EXEC (sent after the AOF
/// is written, and fsynced with `appendfsync always`) acknowledges the batch's tickets.
///
/// With `--redis-ids lsn` a re-sent event finds its entry id taken, and Redis refuses the
/// XADD. That refusal only says the stream's top id is at or above it; another writer,
/// server-generated ids or a database restored to older LSNs cause the same. So a refused
/// event counts as delivered only when the stream holds its own event (`id` field) at that
/// id; the sink looks (XINFO STREAM, XRANGE id id) once per stream before its first XADD
/// there, and for every refused XADD: a stream that holds something else stops the sink.
///
/// Lost connections, refused connects and refused batches are retried by the delivery engine
/// (exponential backoff and jitter, one warning per outage), resending everything
/// unacknowledged in order. This class only builds the engine with its `RedisStreamAdapter`.
public final class RedisStreamSink: DeliveryEngine {
    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let adapter = try RedisStreamAdapter(url: url, options: options, log: log)
        try super.init(adapter: adapter, capacity: options.maxInFlightEvents, log: log, metrics: metrics)
    }

    /// Checks the URL and, for `rediss://`, the TLS files without connecting (`--check-config`).
    public static func validate(url: String, options: SinkOptions) throws(SpoutError) {
        let url = try RedisURL(parsing: url)
        if url.tls { _ = try TLSClient(options.tls) }
    }
}

/// What the Redis sink knows about Redis: the connection and its handshake, MULTI/EXEC
/// batches of XADDs, their replies, the stream checks of `--redis-ids lsn`, and which error
/// replies pass by themselves. The events, retries and outages are the engine's.
final class RedisStreamAdapter: DeliveryAdapter {
    private enum Phase {
        /// No connection; the next attempt starts when the engine's backoff allows.
        case disconnected
        case connecting(RedisConnection, deadline: ContinuousClock.Instant)
        /// AUTH, SELECT and PING are out; their replies come in this order.
        case handshaking(RedisConnection, awaiting: [HandshakeStep], deadline: ContinuousClock.Instant)
        case ready(RedisConnection)
    }

    private enum HandshakeStep: String {
        case auth = "AUTH", select = "SELECT", ping = "PING"
    }

    /// The MULTI … EXEC in flight: the events of `batchTickets`.
    private struct Batch {
        var count: Int
        /// Replies before EXEC's still to come: MULTI's, then one per XADD.
        var queuedRepliesLeft: Int
        /// The first XADD that Redis refused to queue, by offset in the batch.
        var refused: (offset: Int, message: String)?
        var deadline: ContinuousClock.Instant
    }

    /// What became of one XADD of an executed batch that had refusals.
    private enum Outcome {
        case stored
        /// Refused as at or below the stream's top id: stored before, if the stream says so.
        case taken
        case refused(message: String)
    }

    /// Looks at the streams of some entries (`--redis-ids lsn`): for each, `XINFO STREAM` (its
    /// top id) then `XRANGE key id id` (what is at the entry's id). At most one of `batch`
    /// and `checks` is in flight; both name entries by their offset in `batchTickets`.
    private struct StreamChecks {
        enum Purpose {
            /// Before the first XADD to each of these streams.
            case firstWrite
            /// Redis refused these XADDs of the batch in flight as taken.
            case takenIDs(count: Int, outcomes: [Outcome])
        }
        var purpose: Purpose
        /// The entries looked at, by offset in `batchTickets`.
        var offsets: [Int]
        var sent = false
        /// Replies handled: two per offset.
        var replies = 0
        /// XINFO STREAM of the stream being looked at: its last generated id (nil: no such
        /// stream) and the highest id deleted from it (XDEL, trimming; Redis 7 and newer).
        var topID: String?
        var deletedUpTo: String?
        /// XINFO STREAM was refused for good: the verdict once its XRANGE reply is read too.
        var refusal: String?
        /// One per offset answered.
        var verdicts: [Verdict] = []
        var deadline: ContinuousClock.Instant
    }

    static let maxBatchEvents = 1024
    static let maxBatchBytes = 1 << 20
    static let connectTimeout: Duration = .seconds(5)
    static let replyTimeout: Duration = .seconds(30)
    /// How long one `poll` may wait for the socket to take buffered commands.
    static let writeBudget: Duration = .milliseconds(20)

    private let url: RedisURL
    private let lsnIDs: Bool
    /// `--envelope cloudevents`: entries hold `ce_*` fields (dead letters stay as they are).
    private let cloudEvents: CloudEventEnvelope?
    private let maxLength: [UInt8]?
    private let log: Log
    private let clock = ContinuousClock()
    /// `rediss://`: the TLS context every connection uses (nil: plain TCP).
    private let tls: TLSClient?
    /// Whether a handshake ever completed: until then a certificate problem stops spout (issue 15).
    private var everConnected = false
    /// The certificate problem last warned about in this outage (see `retryConnection`).
    private var warnedCertificateProblem: String?

    private var phase: Phase = .disconnected
    /// Connections made so far: tells the wakeup a new socket from an old one with its number.
    private var connections = 0
    private var batch: Batch?
    private var checks: StreamChecks?
    /// The events of the next batch, then of the batch in flight, in ticket order.
    private var batchTickets: [UInt64] = []
    /// Streams looked at before their first XADD (`--redis-ids lsn`).
    private var checkedStreams: Set<String> = []
    private var command = RedisCommand()

    init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        self.url = try RedisURL(parsing: url)
        if let length = options.redisMaxLength, length <= 0 {
            throw .invalidOption("--redis-maxlen \(length) must be a positive number")
        }
        lsnIDs = options.redisIDs == .lsn
        cloudEvents = options.cloudEvents
        maxLength = options.redisMaxLength.map { Array(String($0).utf8) }
        self.log = log
        // TLS options with no TLS sink at all get one warning at start (SinkOptionGroup).
        tls = self.url.tls ? try TLSClient(options.tls) : nil
        batchTickets.reserveCapacity(Self.maxBatchEvents)
        Self.ignoreBrokenPipes()
    }

    var sinkName: String { "redis" }

    var recoveredMessage: String { "Redis at \(url.address) accepts events again" }

    /// Only `--redis-ids lsn` builds entry ids from the commit LSN, and only the CloudEvents
    /// envelope carries it (`ce_lsn`); otherwise events go out as they are decoded.
    var needsCommitLSN: Bool { lsnIDs || cloudEvents != nil }

    /// Points the wakeup at what `poll` waits for next: the socket (writable while connecting
    /// or while commands wait to be written, readable for replies); returns the next deadline.
    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        let wakeup = engine.wakeup
        switch phase {
        case .disconnected:
            wakeup.watch(socket: nil, connection: connections, reading: false, writing: false)
            return nil
        case let .connecting(connection, deadline):
            let interest = connection.connectInterest
            wakeup.watch(socket: connection.descriptor, connection: connections, reading: interest.reading, writing: interest.writing)
            return deadline
        case let .handshaking(connection, _, deadline):
            wakeup.watch(socket: connection.descriptor, connection: connections, reading: true, writing: connection.hasUnwrittenOutput)
            return deadline
        case let .ready(connection):
            wakeup.watch(socket: connection.descriptor, connection: connections, reading: true, writing: connection.hasUnwrittenOutput)
            if let deadline = batch?.deadline ?? checks?.deadline { return deadline }
            // Events wait and nothing is in flight: poll has work at once.
            return engine.hasWaiting && !engine.isBackingOff ? clock.now : nil
        }
    }

    func close(_ engine: DeliveryEngine) {
        if case let .ready(connection) = phase, connection.hasUnwrittenOutput {
            let deadline = clock.now + .seconds(1)
            while clock.now < deadline, (try? connection.write()) == false {
                _ = try? connection.waitFor(Int16(POLLOUT), milliseconds: 50)
            }
        }
        phase = .disconnected
        batch = nil
        checks = nil
    }

    // MARK: Connection

    /// Waits (bounded) for the first connection so that a wrong password or database stops
    /// spout at once; an unreachable server is only a warning, retried while running.
    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        let deadline = clock.now + Self.connectTimeout + .seconds(1)
        while clock.now < deadline {
            do { try advance(engine) } catch { throw .sink(error) }
            if case .ready = phase {
                log.debug("connected to Redis at \(url.address)")
                return
            }
            if engine.inOutage { return }
            switch phase {
            case let .connecting(connection, _):
                _ = try? connection.waitFor(connection.connectEvents, milliseconds: 10)
            case let .handshaking(connection, _, _):
                _ = try? connection.waitFor(Int16(POLLIN), milliseconds: 10)
            default:
                usleep(10_000)
            }
        }
    }

    /// Moves the connection on as far as it goes without waiting (at most a short bounded
    /// wait for a full socket), reporting to the engine what EXEC replies acknowledged.
    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        for _ in 0..<4 {
            switch phase {
            case .disconnected:
                guard !engine.isBackingOff else { return }
                do {
                    phase = .connecting(try RedisConnection(connectingTo: url.host, port: url.port, tls: tls),
                                        deadline: clock.now + Self.connectTimeout)
                    connections += 1
                } catch {
                    retryConnection(after: error.reason, connected: false, engine)
                    return
                }
            case let .connecting(connection, deadline):
                let failure: RedisConnection.Failure
                do throws(RedisConnection.Failure) {
                    if try connection.finishConnect() {
                        try startHandshake(connection)
                        continue
                    }
                    guard clock.now >= deadline else { return }
                    failure = connection.connectTimedOut(after: Self.connectTimeout, server: url.address)
                } catch {
                    failure = error
                }
                try stopIfCertificateProblem(failure)
                retryConnection(after: failure.reason, connected: false, engine, certificateProblem: failure.isCertificateProblem)
                return
            case let .handshaking(connection, awaiting, deadline):
                let remaining: [HandshakeStep]
                do {
                    remaining = try continueHandshake(on: connection, awaiting: awaiting)
                } catch {
                    switch error {
                    case let .lost(failure):
                        try stopIfCertificateProblem(failure)
                        retryConnection(after: failure.reason, connected: true, engine, certificateProblem: failure.isCertificateProblem)
                        return
                    case let .transient(reason):
                        retryConnection(after: reason, connected: true, engine)
                        return
                    case let .permanent(message):
                        // Closes the connection; the engine stops the sink with this error.
                        phase = .disconnected
                        throw SinkError(.permanent, message)
                    }
                }
                if remaining.isEmpty {
                    phase = .ready(connection)
                    everConnected = true
                    warnedCertificateProblem = nil
                    engine.reachable()
                } else if clock.now >= deadline {
                    retryConnection(after: "no reply to \(remaining[0].rawValue) within \(Self.connectTimeout)", connected: true, engine)
                    return
                } else {
                    phase = .handshaking(connection, awaiting: remaining, deadline: deadline)
                    return
                }
            case let .ready(connection):
                do { try exchange(on: connection, engine) } catch { retryConnection(after: error.reason, connected: true, engine) }
                return
            }
        }
    }

    /// AUTH and SELECT when the URL asks for them, and a PING that proves the server answers.
    private func startHandshake(_ connection: RedisConnection) throws(RedisConnection.Failure) {
        var steps: [HandshakeStep] = []
        if let password = url.password {
            command.reset()
            command.add("AUTH")
            if let user = url.user { command.add(user) }
            command.add(password)
            try connection.append(&command)
            steps.append(.auth)
        }
        if url.database != 0 {
            command.reset()
            command.add("SELECT")
            command.add(String(url.database))
            try connection.append(&command)
            steps.append(.select)
        }
        command.reset()
        command.add("PING")
        try connection.append(&command)
        steps.append(.ping)
        batch = nil
        checks = nil
        phase = .handshaking(connection, awaiting: steps, deadline: clock.now + Self.connectTimeout)
    }

    private enum HandshakeFailure: Error {
        case permanent(String)
        /// Redis answered with an error a retry may get past (LOADING…).
        case transient(String)
        /// The connection failed (a TLS 1.3 server refuses a client certificate here, after the handshake).
        case lost(RedisConnection.Failure)
    }

    /// Writes the handshake, reads its replies; returns the steps still unanswered.
    private func continueHandshake(on connection: RedisConnection, awaiting: [HandshakeStep]) throws(HandshakeFailure) -> [HandshakeStep] {
        var remaining = awaiting[...]
        var refusal: HandshakeFailure?
        do {
            try connection.write()
            try connection.read()
            while let step = remaining.first, refusal == nil,
                  try connection.withNextReply({ refusal = check($0, answering: step) }) {
                remaining = remaining.dropFirst()
            }
        } catch {
            throw .lost(error)
        }
        if let refusal { throw refusal }
        return Array(remaining)
    }

    private func check(_ reply: RedisReply, answering step: HandshakeStep) -> HandshakeFailure? {
        guard reply.kind == .error else { return nil }
        let text = reply.text
        let server = "Redis at \(url.address)"
        if RedisErrorReply.isTransient(text) { return .transient("\(step.rawValue): \(text)") }
        if text.hasPrefix("NOAUTH") {
            return .permanent("\(server) requires a password (\(text)): give it in the URL, redis://:password@\(url.address) or redis://user:password@\(url.address)")
        }
        switch step {
        case .auth:
            if text.contains("without any password configured") || text.contains("no password is set") {
                return .permanent("\(server) has no password set, yet --sink gives one (\(text)): remove it from the URL")
            }
            return .permanent("\(server) rejected the user name or password (\(text)): fix them in --sink")
        case .select:
            return .permanent("\(server) cannot select database \(url.database) (\(text)): use a number below its \"databases\" setting")
        case .ping:
            return .permanent("\(server) refused PING (\(text))")
        }
    }

    // issue 15: TLS
    /// A certificate problem (unknown CA, expired, wrong host, client certificate, no TLS on
    /// the port) before the first handshake completed stops spout with its text; later it is
    /// an outage like any other (retried, the same text in the warning).
    private func stopIfCertificateProblem(_ failure: RedisConnection.Failure) throws(SinkError) {
        guard failure.isCertificateProblem, !everConnected else { return }
        phase = .disconnected
        batch = nil
        checks = nil
        throw SinkError(.permanent, "cannot connect to Redis at \(url.address): \(failure.reason)")
    }

    /// Drops the connection; the next attempt waits the engine's backoff. Everything
    /// unacknowledged goes out again, in order, on the next connection.
    /// A certificate problem met during an outage that began otherwise (Redis restarted with a
    /// bad certificate: first the lost connection) gets a warning of its own, once per text.
    private func retryConnection(after reason: String, connected: Bool, _ engine: DeliveryEngine, certificateProblem: Bool = false) {
        batch = nil
        checks = nil
        phase = .disconnected
        let waiting = engine.queue.unfinishedCount
        let address = url.address
        if certificateProblem, warnedCertificateProblem != reason {
            // Outside an outage the engine's warning below carries the reason.
            if engine.inOutage { log.warning("cannot connect to Redis at \(address): \(reason); retrying with backoff") }
            warnedCertificateProblem = reason
        }
        if connected {
            engine.retry(after: reason, warning: "lost the connection to Redis at \(address) (\(reason)); reconnecting with backoff"
                         + (waiting > 0 ? ", \(waiting) unacknowledged events will be sent again" : ""))
        } else {
            engine.retry(after: reason, warning: "cannot connect to Redis at \(address) (\(reason)); retrying with backoff, events wait and nothing is confirmed until Redis accepts them")
        }
    }

    // MARK: Batches

    /// Reads and handles replies, sends the next batch when none is in flight, and writes.
    private func exchange(on connection: RedisConnection, _ engine: DeliveryEngine) throws(RedisConnection.Failure) {
        try connection.read()
        var protocolError: String?
        while !engine.isStopped, protocolError == nil,
              try connection.withNextReply({ protocolError = handle($0, engine) }) {}
        if let protocolError { throw RedisConnection.Failure(reason: protocolError) }
        guard !engine.isStopped else { return }
        if batch == nil, checks == nil, !engine.isBackingOff, gatherBatch(engine) {
            if lsnIDs, let unchecked = firstWritesToUncheckedStreams(engine) {
                checks = StreamChecks(purpose: .firstWrite, offsets: unchecked, deadline: clock.now + Self.replyTimeout)
            } else {
                try sendBatch(on: connection, engine)
            }
        }
        if let pending = checks, !pending.sent { try sendChecks(pending, on: connection, engine) }
        let deadline = clock.now + Self.writeBudget
        while try !connection.write() {
            let left = deadline - clock.now
            guard left > .zero else { break }
            _ = try connection.waitFor(Int16(POLLOUT), milliseconds: Int32(clamping: max(1, left.wholeMilliseconds)))
        }
        if let deadline = batch?.deadline ?? checks?.deadline, clock.now >= deadline {
            throw RedisConnection.Failure(reason: "no reply within \(Self.replyTimeout)")
        }
    }

    /// Puts the waiting events the next batch takes into `batchTickets`; false when none wait.
    private func gatherBatch(_ engine: DeliveryEngine) -> Bool {
        batchTickets.removeAll(keepingCapacity: true)
        var bytes = 0
        var next = engine.nextWaitingTicket()
        while let ticket = next, batchTickets.count < Self.maxBatchEvents, batchTickets.isEmpty || bytes < Self.maxBatchBytes {
            bytes += engine.size(ticket) ?? 0
            batchTickets.append(ticket)
            next = engine.waitingTicket(after: ticket)
        }
        return !batchTickets.isEmpty
    }

    /// The event of the batch's entry at `offset`; nil only if the engine no longer holds it.
    private func entry(_ offset: Int, _ engine: DeliveryEngine) -> DeliveryQueue.Entry? {
        offset < batchTickets.count ? engine.entry(batchTickets[offset]) : nil
    }

    private func sendBatch(on connection: RedisConnection, _ engine: DeliveryEngine) throws(RedisConnection.Failure) {
        command.reset()
        command.add("MULTI")
        try connection.append(&command)
        let now = clock.now
        for ticket in batchTickets {
            guard let event = engine.event(ticket) else { throw RedisConnection.Failure(reason: "internal error: event \(ticket) is gone") }
            try appendXADD(event, position: engine.position(ticket) ?? 0, on: connection)
            engine.markSent(ticket, at: now)
        }
        command.reset()
        command.add("EXEC")
        try connection.append(&command)
        batch = Batch(count: batchTickets.count, queuedRepliesLeft: batchTickets.count + 1, refused: nil, deadline: now + Self.replyTimeout)
    }

    /// `position`: the event's in its transaction (`DeliveryQueue.Entry.position`), for `--redis-ids lsn`.
    private func appendXADD(_ event: OutboxEvent, position: UInt32, on connection: RedisConnection) throws(RedisConnection.Failure) {
        command.reset()
        command.add("XADD")
        command.add(event.topic)
        if let maxLength {
            command.add("MAXLEN")
            command.add("~")
            command.add(maxLength)
        }
        if lsnIDs {
            addEntryID(lsn: event.lsn, position: position)
        } else {
            command.add("*")
        }
        if let cloudEvents, event.source != .deadLetter {
            cloudEvents.forEachAttribute(of: event) { name, value in
                command.add { bytes in
                    bytes.append(contentsOf: "ce_".utf8)
                    bytes.append(contentsOf: name.utf8)
                }
                command.add(value)
            }
            command.add("content-type")
            command.add(CloudEventEnvelope.contentType(of: event))
            command.add("payload")
            command.add(event.payload)
            try connection.append(&command)
            return
        }
        command.add("id")
        command.add(event.id)
        if let type = event.type {
            command.add("type")
            command.add(type)
        }
        if let key = event.key {
            command.add("key")
            command.add(key)
        }
        if let source = event.source.marker {
            command.add("source")
            command.add(source)
        }
        command.add("payload")
        command.add(event.payload)
        command.add("headers")
        command.add { bytes in
            bytes.append(UInt8(ascii: "{"))
            for (index, header) in event.headers.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                JSONWriter.appendString(header.name, to: &bytes)
                bytes.append(UInt8(ascii: ":"))
                JSONWriter.appendString(header.value, to: &bytes)
            }
            bytes.append(UInt8(ascii: "}"))
        }
        try connection.append(&command)
    }

    /// `<commit LSN>-<position in the transaction>`, the entry id of `--redis-ids lsn`.
    private func addEntryID(of entry: DeliveryQueue.Entry) {
        addEntryID(lsn: entry.event.lsn, position: entry.position)
    }

    private func addEntryID(lsn: LSN, position: UInt32) {
        command.add { bytes in
            JSONWriter.appendDecimal(lsn.rawValue, to: &bytes)
            bytes.append(UInt8(ascii: "-"))
            JSONWriter.appendDecimal(UInt64(position), to: &bytes)
        }
    }

    /// Handles one reply of the batch or checks in flight; returns a reason to drop the
    /// connection when the reply makes no sense there.
    private func handle(_ reply: RedisReply, _ engine: DeliveryEngine) -> String? {
        if checks != nil { return handleCheck(reply, engine) }
        guard var current = batch else { return "a reply arrived with no command in flight" }
        guard current.queuedRepliesLeft == 0 else {
            let index = current.count + 1 - current.queuedRepliesLeft // 0: MULTI, then the XADDs
            current.queuedRepliesLeft -= 1
            batch = current
            if reply.kind == .error {
                let text = reply.text
                if index == 0 {
                    // Without MULTI the XADDs would run one by one: stop or start over.
                    if RedisErrorReply.isTransient(text) { return "MULTI: \(text)" }
                    engine.stop(SinkError(.permanent, "Redis at \(url.address) refused MULTI: \(text)\(RedisErrorReply.hint(text, url: url))"))
                    return nil
                }
                if current.refused == nil { batch?.refused = (index - 1, text) }
                return nil
            }
            return reply.isStatus(index == 0 ? "OK" : "QUEUED") ? nil : "unexpected reply to \(index == 0 ? "MULTI" : "XADD")"
        }
        batch = nil
        switch reply.kind {
        case .array where reply.count == current.count:
            acknowledge(current, reply, engine)
        case .error:
            let text = reply.text
            // "EXECABORT Transaction discarded because of: OOM …", or "… because of previous errors."
            let reason = text.range(of: "because of: ").map { String(text[$0.upperBound...]) } ?? current.refused?.message ?? text
            if RedisErrorReply.isTransient(reason) {
                // Nothing of the batch ran; it goes out again, whole, after a backoff. A reply
                // refusing one XADD (OOM: this entry does not fit now) counts against that
                // event's --max-retries; an aborted EXEC alone is the server's state, not the event's.
                let warning = "Redis at \(url.address) refuses writes (\(reason)); retrying with backoff, nothing is confirmed meanwhile"
                if let offset = current.refused?.offset, offset < batchTickets.count {
                    engine.refusedTransiently(batchTickets[offset], reason: reason, warning: warning)
                } else {
                    engine.retry(after: reason, warning: warning)
                }
            } else {
                let offset = current.refused?.offset ?? 0
                if offset < batchTickets.count { engine.fail(batchTickets[offset], reason) }
            }
        case .null:
            // An aborted transaction (nothing ran): send it again.
            engine.retry(after: "EXEC aborted", warning: "Redis at \(url.address) aborted a batch; sending it again with backoff")
        default:
            return "unexpected reply to EXEC"
        }
        return nil
    }

    private func acknowledge(_ batch: Batch, _ results: RedisReply, _ engine: DeliveryEngine) {
        guard (0..<batch.count).contains(where: { results[$0]?.kind == .error }) else {
            for ticket in batchTickets { engine.delivered(ticket) }
            return
        }
        var outcomes: [Outcome] = []
        var taken: [Int] = []
        for offset in 0..<batch.count {
            guard let result = results[offset], result.kind == .error else {
                outcomes.append(.stored)
                continue
            }
            let text = result.text
            if lsnIDs, RedisErrorReply.isTakenID(text) {
                outcomes.append(.taken)
                taken.append(offset)
            } else {
                outcomes.append(.refused(message: "Redis refused the entry: \(text)\(RedisErrorReply.hint(text, url: url))"))
            }
        }
        if taken.isEmpty {
            settle(outcomes, engine)
        } else {
            // Sent by `exchange` once the replies are read; the entries stay until they are answered.
            checks = StreamChecks(purpose: .takenIDs(count: batch.count, outcomes: outcomes), offsets: taken,
                                  deadline: clock.now + Self.replyTimeout)
        }
    }

    /// Reports a batch with refusals, entry by entry; the first refusal stops the sink.
    private func settle(_ outcomes: [Outcome], _ engine: DeliveryEngine) {
        for (offset, outcome) in outcomes.enumerated() where offset < batchTickets.count {
            let ticket = batchTickets[offset]
            switch outcome {
            case .stored:
                engine.delivered(ticket)
            case let .refused(message):
                engine.fail(ticket, message)
            case .taken:
                // Only checks resolve these; an unresolved one is never delivered.
                engine.fail(ticket, "entry id taken")
            }
        }
    }

    // MARK: Stream checks (`--redis-ids lsn`)

    /// The first entry of each stream the batch writes to and no check has looked at yet,
    /// by offset in `batchTickets`; nil when there is none (the usual case).
    private func firstWritesToUncheckedStreams(_ engine: DeliveryEngine) -> [Int]? {
        var offsets: [Int]?
        var seen: Set<String> = []
        for offset in batchTickets.indices {
            guard let topic = entry(offset, engine)?.event.topic else { continue }
            guard !checkedStreams.contains(topic), seen.insert(topic).inserted else { continue }
            offsets = (offsets ?? []) + [offset]
        }
        return offsets
    }

    private func sendChecks(_ pending: StreamChecks, on connection: RedisConnection, _ engine: DeliveryEngine) throws(RedisConnection.Failure) {
        for offset in pending.offsets {
            guard let entry = entry(offset, engine) else { throw RedisConnection.Failure(reason: "internal error: a checked event is gone") }
            command.reset()
            command.add("XINFO")
            command.add("STREAM")
            command.add(entry.event.topic)
            try connection.append(&command)
            command.reset()
            command.add("XRANGE")
            command.add(entry.event.topic)
            addEntryID(of: entry)
            addEntryID(of: entry)
            try connection.append(&command)
        }
        checks?.sent = true
    }

    private func handleCheck(_ reply: RedisReply, _ engine: DeliveryEngine) -> String? {
        guard var current = checks, current.sent, current.replies < current.offsets.count * 2 else {
            return "a reply arrived with no command in flight"
        }
        guard let entry = entry(current.offsets[current.replies / 2], engine) else { return "a checked event is gone" }
        let isInfo = current.replies % 2 == 0
        if reply.kind == .error {
            let text = reply.text
            if isInfo, text.contains("no such key") {
                current.topID = nil
                current.deletedUpTo = nil
            } else if RedisErrorReply.isTransient(text) {
                return "\(isInfo ? "XINFO STREAM" : "XRANGE"): \(text)"
            } else {
                // A check that cannot run must not let a taken id pass as delivered: the event
                // fails (with --on-poison, the checks of the others go on and are resolved).
                let refusal = current.refusal ?? ("Redis refused \(isInfo ? "XINFO STREAM" : "XRANGE"), which --redis-ids lsn needs to tell its own entries "
                                                  + "from others': \(text)\(RedisErrorReply.hint(text, url: url))")
                if isInfo { current.refusal = refusal } else { current.verdicts.append(.foreign(refusal)) }
                current.refusal = isInfo ? refusal : nil
            }
        } else if let refusal = current.refusal {
            // The XRANGE after a refused XINFO STREAM.
            current.verdicts.append(.foreign(refusal))
            current.refusal = nil
        } else if isInfo {
            guard reply.kind == .array else { return "unexpected reply to XINFO STREAM" }
            current.topID = reply.value(of: "last-generated-id")?.text
            current.deletedUpTo = reply.value(of: "max-deleted-entry-id")?.text
        } else {
            guard reply.kind == .array else { return "unexpected reply to XRANGE" }
            current.verdicts.append(verdict(on: entry, topID: current.topID, deletedUpTo: current.deletedUpTo, atID: reply[0]))
        }
        current.replies += 1
        checks = current
        if current.replies == current.offsets.count * 2 {
            checks = nil
            resolve(current, engine)
        }
        return nil
    }

    private enum Verdict {
        /// The stream holds this very event at its id: it was stored before.
        case holdsEvent
        /// The stream's ids are all below the event's: an XADD will store it.
        case below
        /// Anything else: the error that stops the sink.
        case foreign(String)
    }

    /// What the stream of `entry` holds, from its XINFO (`topID` nil: no such stream) and
    /// what XRANGE found at the entry's id.
    private func verdict(on entry: DeliveryQueue.Entry, topID: String?, deletedUpTo: String?, atID found: RedisReply?) -> Verdict {
        let wanted = RedisEntryID(lsn: entry.event.lsn.rawValue, position: entry.position)
        let there: String
        if let found {
            let holder = found[1]?.value(of: cloudEvents == nil || entry.event.source == .deadLetter ? "id" : "ce_id")?.text
            if holder == entry.event.id { return .holdsEvent }
            there = holder.map { "its entry at \(wanted) is event \"\($0)\"" } ?? "its entry at \(wanted) is not a Spout event"
        } else {
            guard let topID else { return .below }
            if let top = RedisEntryID(topID), top < wanted { return .below }
            there = "it has no entry at \(wanted)"
        }
        let stream = entry.event.topic
        var message = "stream \"\(stream)\" has ids up to \(topID ?? "?"), at or above \(wanted) (the id --redis-ids lsn gives this event), and \(there): "
            + "its entries come from another writer, from server-generated ids, or from a database restored or recreated with lower LSNs; "
            + "write to a fresh stream (delete or rename \"\(stream)\", or route the topic elsewhere with --topic), or use --redis-ids server"
        if found == nil, let deletedUpTo, let deleted = RedisEntryID(deletedUpTo), wanted <= deleted {
            // A consumer's XDEL or MAXLEN trimming may have removed the event's own entry; nothing left tells.
            message += " (entries up to \(deletedUpTo) were deleted or trimmed from it: if this event's entry was one of them, it was delivered, "
                + "and --redis-ids server gets past it, publishing it once more)"
        }
        return .foreign(message)
    }

    private func resolve(_ done: StreamChecks, _ engine: DeliveryEngine) {
        switch done.purpose {
        case .firstWrite:
            for (offset, verdict) in zip(done.offsets, done.verdicts) {
                guard let entry = entry(offset, engine) else { continue }
                if case let .foreign(message) = verdict { return engine.fail(entry.ticket, message) }
                checkedStreams.insert(entry.event.topic)
            }
        case .takenIDs(_, var outcomes):
            for (offset, verdict) in zip(done.offsets, done.verdicts) {
                switch verdict {
                case .holdsEvent: outcomes[offset] = .stored
                case let .foreign(message): outcomes[offset] = .refused(message: message)
                case .below:
                    // Refused as taken, yet nothing is there now (the stream was deleted meanwhile?): never counted as stored.
                    guard let entry = entry(offset, engine) else { continue }
                    outcomes[offset] = .refused(message: "Redis refused entry id \(RedisEntryID(lsn: entry.event.lsn.rawValue, position: entry.position)) "
                                                + "in stream \"\(entry.event.topic)\" as taken, yet holds nothing there now: if something deletes entries or the stream, stop it, then restart spout")
                }
            }
            settle(outcomes, engine)
        }
    }

    /// A write to a connection the server closed raises SIGPIPE unless the writer says
    /// MSG_NOSIGNAL (a TLS library may not); the default action would end the process instead
    /// of letting the sink reconnect.
    private static func ignoreBrokenPipes() {
        var current = sigaction()
        guard sigaction(SIGPIPE, nil, &current) == 0, current.__sigaction_handler.sa_handler == nil else { return }
        signal(SIGPIPE, SIG_IGN)
    }

}
