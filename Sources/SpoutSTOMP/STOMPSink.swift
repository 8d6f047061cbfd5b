import CoreMetrics
import Foundation
import SpoutCore

/// Publishes events over STOMP 1.2 (RabbitMQ's STOMP plugin, ActiveMQ, Artemis): one `SEND`
/// per event to the destination `--stomp-destination` renders (default `/topic/{topic}`),
/// `persistent:true`, with `receipt` = the event's ticket. The server's `RECEIPT` for it is
/// the acknowledgement (servers answer in order); SENDs are pipelined on one connection.
///
/// An `ERROR` frame refuses a frame and ends the connection: at CONNECT it is a wrong login or
/// virtual host, which stops spout at once. After, a refusal that will not pass (no such
/// exchange or queue, an invalid destination, access refused, too large) is an event's
/// permanent failure (`--on-poison`); any other is retried with backoff. Which event: the one
/// its `receipt-id` names, or the only one in flight. RabbitMQ names none, its RECEIPTs (sent
/// once the message is confirmed) may still be due for events before the refused one, and it
/// may answer a later frame with "Processing error" first; so with several in flight spout
/// resends them one at a time until an ERROR comes with one event on the wire. Events sent after a refused one go out again on a new connection.
///
/// Heart-beats are negotiated (spout offers 10 s both ways): spout sends an EOL when it has
/// written nothing for half the agreed interval, and a server silent for twice its interval
/// counts as a lost connection.
public final class STOMPSink: DeliveryEngine {
    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let adapter = try STOMPAdapter(url: url, options: options, log: log)
        try super.init(adapter: adapter, capacity: options.maxInFlightEvents, log: log, metrics: metrics)
    }

    /// Checks the URL, the destination template and the TLS files without connecting (`--check-config`).
    public static func validate(url: String, options: SinkOptions) throws(SpoutError) {
        let endpoint = try STOMPEndpoint(parsing: url)
        _ = try STOMPDestination(options.stompDestination)
        if endpoint.tls { _ = try TLSClient(options.tls) }
    }
}

/// What the STOMP sink knows about STOMP: the connection and its CONNECT handshake, SEND
/// frames, RECEIPTs and ERRORs, heart-beats. The events, retries and outages are the engine's.
final class STOMPAdapter: DeliveryAdapter {
    private enum Phase {
        case disconnected
        case connecting(TCPSocket, deadline: ContinuousClock.Instant)
        /// CONNECT is out; CONNECTED or ERROR comes next.
        case handshaking(TCPSocket, deadline: ContinuousClock.Instant)
        case ready(TCPSocket)
    }

    static let connectTimeout: Duration = .seconds(5)
    /// Sent events with no RECEIPT for this long: the connection is given up and they go out again.
    static let receiptTimeout: Duration = .seconds(30)
    /// What spout offers in CONNECT's heart-beat header, in ms, both ways.
    static let heartBeatMilliseconds = 10_000
    /// Frames buffered and not yet written: no more SENDs are encoded past this.
    static let maxUnwrittenBytes = 1 << 20
    static let writeBudget: Duration = .milliseconds(20)

    private let endpoint: STOMPEndpoint
    private let destination: STOMPDestination
    private let log: Log
    private let clock = ContinuousClock()

    private var phase: Phase = .disconnected
    private var connections = 0
    /// `stomp+ssl://`: the TLS context every connection uses (nil: plain TCP).
    private let tls: TLSClient?
    /// Whether a CONNECTED ever came: until then a certificate problem stops spout (issue 15).
    private var everConnected = false
    private var decoder = STOMPFrameDecoder()
    private var output: [UInt8] = []
    private var written = 0
    private var readChunk = [UInt8](repeating: 0, count: 64 * 1024)
    /// Agreed in CONNECTED: how often spout must write, and the server's interval (nil: none).
    private var sendEvery: Duration?
    private var expectEvery: Duration?
    private var lastRead = ContinuousClock.now
    private var lastWrite = ContinuousClock.now
    /// When a RECEIPT last arrived, or the first event went out with none outstanding.
    private var lastProgress = ContinuousClock.now
    /// The newest ticket written on this connection.
    private var lastSentTicket: UInt64?
    /// After an ERROR that names no event: events up to this ticket go out one at a time.
    private var isolateThrough: UInt64?
    /// Event header names left out as reserved, each warned about once.
    private var warnedHeaders: Set<String> = []

    init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        endpoint = try STOMPEndpoint(parsing: url)
        destination = try STOMPDestination(options.stompDestination)
        cloudEvents = options.cloudEvents
        self.log = log
        tls = endpoint.tls ? try TLSClient(options.tls) : nil
        output.reserveCapacity(Self.maxUnwrittenBytes + 64 * 1024)
    }

    var sinkName: String { "stomp" }

    var recoveredMessage: String { "the STOMP server at \(endpoint.address) accepts events again" }

    /// `--envelope cloudevents`: `ce-` headers instead of the row's (see `STOMPFrameEncoder.appendSend`).
    private let cloudEvents: CloudEventEnvelope?

    /// CloudEvents carry the commit LSN (`ce-lsn`): the engine hands events over at their commit.
    var needsCommitLSN: Bool { cloudEvents != nil }

    private var hasUnwrittenOutput: Bool { written < output.count }

    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        let wakeup = engine.wakeup
        switch phase {
        case .disconnected:
            wakeup.watch(socket: nil, connection: connections, reading: false, writing: false)
            return nil
        case let .connecting(socket, deadline):
            let interest = socket.connectInterest
            wakeup.watch(socket: socket.descriptor, connection: connections, reading: interest.reading, writing: interest.writing)
            return deadline
        case let .handshaking(socket, deadline):
            wakeup.watch(socket: socket.descriptor, connection: connections, reading: true, writing: hasUnwrittenOutput)
            return deadline
        case let .ready(socket):
            wakeup.watch(socket: socket.descriptor, connection: connections, reading: true, writing: hasUnwrittenOutput)
            if mayEncode(engine) { return clock.now }
            var deadline: ContinuousClock.Instant?
            func earliest(_ instant: ContinuousClock.Instant) { deadline = min(deadline ?? instant, instant) }
            if let sendEvery { earliest(lastWrite + sendEvery / 2) }
            if let expectEvery { earliest(lastRead + expectEvery * 2) }
            if engine.sentCount > 0 { earliest(lastProgress + Self.receiptTimeout) }
            return deadline
        }
    }

    func close(_ engine: DeliveryEngine) {
        if case let .ready(socket) = phase, hasUnwrittenOutput {
            let deadline = clock.now + .seconds(1)
            while clock.now < deadline, hasUnwrittenOutput {
                guard let offset = try? socket.write(output, from: written) else { break }
                written = offset
                if hasUnwrittenOutput { _ = try? socket.waitFor(Int16(POLLOUT), milliseconds: 50) }
            }
        }
        disconnect()
    }

    private func disconnect() {
        phase = .disconnected
        lastSentTicket = nil
        decoder.reset()
        output.removeAll(keepingCapacity: true)
        written = 0
    }

    // MARK: Connection

    /// Waits (bounded) for the first connection so that a wrong login stops spout at once; an
    /// unreachable server is only a warning, retried while running.
    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        let deadline = clock.now + Self.connectTimeout + .seconds(1)
        while clock.now < deadline {
            do { try advance(engine) } catch { throw .sink(error) }
            switch phase {
            case .ready:
                log.debug("connected to the STOMP server at \(endpoint.address)")
                return
            case let .connecting(socket, _):
                _ = try? socket.waitFor(socket.connectEvents, milliseconds: 10)
            case let .handshaking(socket, _):
                _ = try? socket.waitFor(Int16(POLLIN), milliseconds: 10)
            case .disconnected:
                if engine.inOutage { return }
                usleep(10_000)
            }
            if engine.inOutage { return }
        }
    }

    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        for _ in 0..<4 {
            switch phase {
            case .disconnected:
                guard !engine.isBackingOff, !engine.isStopped else { return }
                do {
                    phase = .connecting(try TCPSocket(connectingTo: endpoint.host, port: endpoint.port, tls: tls),
                                        deadline: clock.now + Self.connectTimeout)
                    connections += 1
                } catch {
                    retryConnection(after: error.reason, connected: false, engine)
                    return
                }
            case let .connecting(socket, deadline):
                do {
                    guard try socket.finishConnect() else {
                        if clock.now >= deadline { retryConnection(after: "no answer within \(Self.connectTimeout)", connected: false, engine) }
                        return
                    }
                } catch {
                    try stopIfCertificateProblem(error)
                    retryConnection(after: error.reason, connected: false, engine)
                    return
                }
                decoder.reset()
                output.removeAll(keepingCapacity: true)
                written = 0
                STOMPFrameEncoder.appendConnect(host: endpoint.virtualHost, login: endpoint.user, passcode: endpoint.password,
                                                heartBeat: (Self.heartBeatMilliseconds, Self.heartBeatMilliseconds), to: &output)
                phase = .handshaking(socket, deadline: clock.now + Self.connectTimeout)
            case let .handshaking(socket, deadline):
                let reply: STOMPInbound?
                var closed: TCPSocket.Failure?
                do {
                    try flush(socket, budget: .zero)
                    closed = receive(socket)
                    reply = try decoder.next()
                } catch let error as TCPSocket.Failure {
                    try stopIfCertificateProblem(error)
                    retryConnection(after: error.reason, connected: true, engine)
                    return
                } catch let error as STOMPProtocolError {
                    retryConnection(after: error.reason, connected: true, engine)
                    return
                } catch {
                    retryConnection(after: "\(error)", connected: true, engine)
                    return
                }
                guard let reply else {
                    if let closed {
                        try stopIfCertificateProblem(closed)
                        retryConnection(after: closed.reason, connected: true, engine)
                    } else if clock.now >= deadline { retryConnection(after: "no CONNECTED within \(Self.connectTimeout)", connected: true, engine) }
                    return
                }
                guard case let .frame(frame) = reply, frame.command == "CONNECTED" || frame.command == "ERROR" else {
                    retryConnection(after: "an unexpected frame instead of CONNECTED", connected: true, engine)
                    return
                }
                if frame.command == "ERROR" {
                    disconnect()
                    throw SinkError(.permanent, loginRefused(frame))
                }
                everConnected = true
                negotiate(frame.header("heart-beat"))
                let now = clock.now
                lastRead = now
                lastWrite = now
                lastProgress = now
                phase = .ready(socket)
                engine.reachable()
            case let .ready(socket):
                do {
                    try exchange(on: socket, engine)
                } catch let error as TCPSocket.Failure {
                    retryConnection(after: error.reason, connected: true, engine)
                } catch let error as STOMPProtocolError {
                    retryConnection(after: "protocol error: \(error.reason)", connected: true, engine)
                } catch {
                    retryConnection(after: "\(error)", connected: true, engine)
                }
                return
            }
        }
    }

    /// STOMP 1.2 heart-beating: spout writes at least every max(its offer, what the server
    /// wants); the server promises max(its offer, what spout wants); 0 on either side: none.
    private func negotiate(_ header: String?) {
        let offered = header?.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) ?? 0 } ?? []
        let serverSends = offered.count == 2 ? offered[0] : 0
        let serverWants = offered.count == 2 ? offered[1] : 0
        let ours = Self.heartBeatMilliseconds
        sendEvery = serverWants > 0 ? .milliseconds(max(ours, serverWants)) : nil
        expectEvery = serverSends > 0 ? .milliseconds(max(ours, serverSends)) : nil
    }

    private func loginRefused(_ frame: STOMPFrame) -> String {
        let server = "the STOMP server at \(endpoint.address)"
        let detail = Self.describe(frame)
        let user = endpoint.user.map { "user \"\(Log.escaped($0))\"" } ?? "no login (the URL has no user:password@)"
        return "\(server) refused the CONNECT of \(user) to virtual host \"\(Log.escaped(endpoint.virtualHost))\" (\(detail)): "
            + "fix the user, password or virtual host in --sink (stomp://user:password@\(endpoint.address)/vhost)"
    }

    /// An ERROR frame's `message` header and body, escaped and cut short, for one log line.
    private static func describe(_ frame: STOMPFrame) -> String {
        var text = frame.header("message") ?? "ERROR"
        let body = String(decoding: frame.body.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if !body.isEmpty { text += ": " + body }
        return Log.escaped(Redaction.url(text)).replacingOccurrences(of: "\n", with: " ")
    }

    /// Drops the connection; the next attempt waits the engine's backoff. Everything
    /// unacknowledged goes out again, in order, on the next connection.
    private func retryConnection(after reason: String, connected: Bool, _ engine: DeliveryEngine) {
        disconnect()
        let waiting = engine.queue.unfinishedCount
        let address = endpoint.address
        if connected {
            engine.retry(after: reason, warning: "lost the connection to the STOMP server at \(address) (\(reason)); reconnecting with backoff"
                         + (waiting > 0 ? ", \(waiting) unacknowledged events will be sent again" : ""))
        } else {
            engine.retry(after: reason, warning: "cannot connect to the STOMP server at \(address) (\(reason)); retrying with backoff, events wait and nothing is confirmed until it accepts them")
        }
    }

    // issue 15: TLS
    /// A certificate problem (unknown CA, expired, wrong host, client certificate) before the
    /// first CONNECTED stops spout with its text; later it is an outage like any other.
    private func stopIfCertificateProblem(_ failure: TCPSocket.Failure) throws(SinkError) {
        guard failure.isCertificateProblem, !everConnected else { return }
        disconnect()
        throw SinkError(.permanent, "cannot connect to the STOMP server at \(endpoint.address): \(failure.reason)")
    }

    // MARK: Frames

    /// Reads what the socket holds into the decoder. A closed or failed connection is
    /// returned, not thrown: the ERROR frame a server sends before it closes is decoded first.
    private func receive(_ socket: TCPSocket) -> TCPSocket.Failure? {
        var anything = false
        defer { if anything { lastRead = clock.now } }
        do {
            _ = try socket.read(into: &readChunk) { bytes in
                anything = true
                decoder.append(bytes)
            }
        } catch {
            return error
        }
        return nil
    }

    /// Writes buffered frames, waiting at most `budget` for a full socket.
    private func flush(_ socket: TCPSocket, budget: Duration) throws(TCPSocket.Failure) {
        guard hasUnwrittenOutput else { return }
        let deadline = clock.now + budget
        while true {
            let before = written
            written = try socket.write(output, from: written)
            if written > before { lastWrite = clock.now }
            if !hasUnwrittenOutput {
                output.removeAll(keepingCapacity: true)
                written = 0
                return
            }
            // A socket that never quite catches up: drop what it took, so the buffer stays bounded.
            if written >= Self.maxUnwrittenBytes {
                output.removeSubrange(0..<written)
                written = 0
            }
            let left = deadline - clock.now
            guard left > .zero else { return }
            let milliseconds = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
            _ = try socket.waitFor(Int16(POLLOUT), milliseconds: Int32(clamping: max(1, milliseconds)))
        }
    }

    /// Reads RECEIPTs and ERRORs, encodes waiting events as SENDs, writes, and keeps the
    /// heart-beats; throws when the connection is to be given up.
    private func exchange(on socket: TCPSocket, _ engine: DeliveryEngine) throws {
        let closed = receive(socket)
        var progressed = false
        while let inbound = try decoder.next() {
            switch inbound {
            case let .receipt(id):
                guard let id, engine.state(id) == .sent else { continue }
                engine.delivered(id)
                progressed = true
            case let .frame(frame):
                if frame.command == "ERROR" {
                    refused(frame, engine)
                    return
                }
                // MESSAGE and the like: spout subscribes to nothing; ignored.
            }
        }
        if progressed { lastProgress = clock.now }
        if let closed { throw closed }
        if !engine.isStopped, !engine.isBackingOff { encodeWaiting(engine) }
        try flush(socket, budget: Self.writeBudget)
        let now = clock.now
        if let sendEvery, !hasUnwrittenOutput, now - lastWrite >= sendEvery / 2 {
            STOMPFrameEncoder.appendHeartBeat(to: &output)
            try flush(socket, budget: .zero)
        }
        if let expectEvery, now - lastRead > expectEvery * 2 {
            throw TCPSocket.Failure(reason: "the server sent nothing for \(expectEvery * 2), twice its heart-beat interval")
        }
        if engine.sentCount > 0, now - lastProgress > Self.receiptTimeout {
            throw TCPSocket.Failure(reason: "no RECEIPT within \(Self.receiptTimeout)")
        }
    }

    /// Events wait and may go out now: no backoff, room in the buffer, and none on the wire
    /// while events go one at a time to find a refused one.
    private func mayEncode(_ engine: DeliveryEngine) -> Bool {
        engine.hasWaiting && !engine.isBackingOff && !engine.isStopped && output.count - written < Self.maxUnwrittenBytes
            && (isolateThrough == nil || engine.sentCount == 0)
    }

    private func encodeWaiting(_ engine: DeliveryEngine) {
        var next = engine.nextWaitingTicket()
        guard next != nil else { return }
        let now = clock.now
        if engine.sentCount == 0 { lastProgress = now }
        while let ticket = next, output.count - written < Self.maxUnwrittenBytes {
            if let through = isolateThrough {
                if ticket > through {
                    isolateThrough = nil
                } else if engine.sentCount > 0 {
                    return
                }
            }
            next = engine.waitingTicket(after: ticket)
            guard let event = engine.event(ticket) else { continue }
            let (rendered, dropped) = STOMPFrameEncoder.appendSend(event, receipt: ticket, to: &output, cloudEvents: cloudEvents) { event, bytes in
                destination.append(event, to: &bytes)
            }
            guard rendered else {
                engine.fail(ticket, "--stomp-destination \(destination.text): \(destination.missing(event))")
                // Stopped, or its dead letter waits in its place: that goes out first, next time.
                if engine.isStopped || engine.state(ticket) == .waiting { return }
                continue
            }
            if let dropped, warnedHeaders.insert(dropped).inserted {
                log.warning("event header \"\(Log.escaped(dropped))\" is not passed to STOMP: spout sets that header itself (first seen on event \"\(Log.escaped(event.id))\")")
            }
            engine.markSent(ticket, at: now)
            lastSentTicket = ticket
        }
    }

    /// An ERROR after CONNECTED: the server refused a frame and closes the connection.
    private func refused(_ frame: STOMPFrame, _ engine: DeliveryEngine) {
        let detail = Self.describe(frame)
        let inFlight = engine.sentCount
        let named = frame.header("receipt-id").flatMap { UInt64($0) }.flatMap { engine.state($0) == .sent ? $0 : nil }
            ?? (inFlight == 1 ? oldestSent(engine) : nil)
        let lowered = detail.lowercased()
        let permanent = Self.permanentMarkers.contains { lowered.contains($0) }
        let address = endpoint.address
        let newest = lastSentTicket
        disconnect()
        // RabbitMQ may first answer with a "Processing error" (a later frame on the channel the
        // refusal closed): whatever the text, one event on the wire tells which and why.
        if named == nil, inFlight > 1, let newest {
            isolateThrough = max(isolateThrough ?? 0, newest)
            engine.retry(after: detail, warning: "the STOMP server at \(address) refused one of \(inFlight) events in flight without saying which (\(detail)); "
                         + "sending them again one at a time to find it")
        } else if permanent, let ticket = named {
            let shown = engine.event(ticket).map { event -> String in
                var bytes: [UInt8] = []
                return destination.append(event, to: &bytes) ? " to \"\(Log.escaped(String(decoding: bytes, as: UTF8.self)))\"" : ""
            } ?? ""
            engine.fail(ticket, "the STOMP server at \(address) refused the event\(shown): \(detail)")
            if engine.isStopped { return }
            engine.retry(after: detail, warning: "the STOMP server at \(address) closed the connection after refusing an event (\(detail)); "
                         + "reconnecting, the events sent after it go out again")
        } else if let named {
            engine.refusedTransiently(named, reason: detail,
                                      warning: "the STOMP server at \(address) refused an event (\(detail)); retrying with backoff, nothing is confirmed meanwhile")
        } else {
            engine.retry(after: detail, warning: "the STOMP server at \(address) sent an ERROR (\(detail)); reconnecting with backoff, unacknowledged events will be sent again")
        }
    }

    /// The first event on the wire without a RECEIPT: receipts come in order, so the one an
    /// ERROR without `receipt-id` refused.
    private func oldestSent(_ engine: DeliveryEngine) -> UInt64? {
        let queue = engine.queue
        guard var ticket = queue.oldestUnfinished else { return nil }
        while ticket < queue.endTicket {
            if queue.state(ticket) == .sent { return ticket }
            ticket += 1
        }
        return nil
    }

    /// ERROR texts of refusals that do not pass by themselves (RabbitMQ's and ActiveMQ's words).
    static let permanentMarkers = ["not_found", "unknown destination", "invalid destination", "access_refused", "not authorized",
                                   "precondition_failed", "too large", "invalid header", "illegal destination"]
}
