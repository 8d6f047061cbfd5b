import CLinux
import CoreMetrics
import Foundation
import SpoutCore

/// POSTs events to an HTTP endpoint (webhooks): each event as the JSON object stdout prints
/// (`Content-Type: application/json`), `--http-batch N` events as one JSON array, or with
/// `--envelope cloudevents` the CloudEvents HTTP binding (binary mode for one event, a
/// `application/cloudevents-batch+json` array for a batch). A 2xx answer acknowledges every
/// event of the request; 408, 429, 5xx, a timeout (`--http-timeout`) or a lost connection are
/// retried with backoff, at the earliest after `Retry-After`; any other status refuses the
/// request for good: its event is a poison event (`--on-poison`); in a batch, spout first
/// sends the batch's events one at a time to find which.
///
/// `--http-concurrency N` requests are in flight at once, each on its own keep-alive
/// connection, one request at a time per connection: an event goes to the connection its key
/// hashes to (events without a key: their id), so the events of one key are never in flight
/// on two connections and arrive in order, while other keys proceed. One request per
/// connection rather than pipelining: a failed or slow request then holds back only its own
/// connection's keys, and a response always belongs to the one request on its connection.
public final class HTTPSink: DeliveryEngine {
    public init(url: String, options: SinkOptions, log: Log, metrics: MetricsFactory = MetricsSystem.factory) throws(SpoutError) {
        let adapter = try HTTPAdapter(url: url, options: options, log: log)
        try super.init(adapter: adapter, capacity: options.maxInFlightEvents, log: log, metrics: metrics)
    }

    /// Checks the URL and the options without connecting (`--check-config`).
    public static func validate(url: String, options: SinkOptions) throws(SpoutError) {
        _ = try HTTPAdapter(url: url, options: options, log: Log())
    }
}

/// What the HTTP sink knows about HTTP: connections, requests, responses and their statuses.
/// The events, retries and outages are the engine's.
final class HTTPAdapter: DeliveryAdapter {
    /// One keep-alive connection and the request on it.
    final class Lane {
        var socket: TCPSocket?
        var connecting = false
        var connectDeadline = ContinuousClock.now
        /// The events of the request on the wire (empty: the lane is free).
        var tickets: [UInt64] = []
        var output: [UInt8] = []
        var body: [UInt8] = []
        var written = 0
        var parser = HTTPResponseParser()
        var sentAt = ContinuousClock.now
        /// Requests sent on this connection, this one included.
        var requests = 0
        /// The descriptor and events registered in the adapter's epoll set.
        var registered: (descriptor: Int32, events: UInt32)?
    }

    static let connectTimeout: Duration = .seconds(5)
    /// The longest `Retry-After` spout honours: a receiver asking for longer is asked again then.
    static let maxRetryAfter: Duration = .seconds(600)
    /// Waiting tickets looked at per dispatch: beyond, events wait for the next one.
    static let scanLimit = 4096

    private let endpoint: HTTPEndpoint
    private let log: Log
    private let clock = ContinuousClock()
    private let batch: Int
    private let timeout: Duration
    private let signer: WebhookSigner?
    private let headPrefix: [UInt8]
    private let cloudEvents: CloudEventEnvelope?
    private var lanes: [Lane]
    private let epoll: Int32
    private var readChunk = [UInt8](repeating: 0, count: 64 * 1024)
    /// No request before this instant (a `Retry-After`).
    private var holdUntil: ContinuousClock.Instant?
    /// After a refused batch: events up to this ticket go one per request, to find the refused one.
    private var isolateThrough: UInt64?
    /// The last dispatch found waiting events but none it could send (their connections busy):
    /// nothing to do until a request finishes or an event arrives.
    private var blocked = false
    /// `dispatch`'s working state, kept to spare it an allocation per call.
    private var wasFree: [Bool] = []
    private var filling: [Bool] = []
    // issue 15: TLS
    /// `https://`: the TLS context every connection uses (nil: plain TCP).
    private let tls: TLSClient?
    /// Whether a response ever came: until then a certificate problem stops spout.
    private var everAnswered = false
    /// A certificate problem before the first response: `advance` stops spout with it.
    private var certificateFailure: SinkError?

    init(url: String, options: SinkOptions, log: Log) throws(SpoutError) {
        endpoint = try HTTPEndpoint(parsing: url)
        self.log = log
        batch = options.httpBatch
        timeout = options.httpTimeout
        cloudEvents = options.cloudEvents
        signer = try options.httpSecret.map { secret throws(SpoutError) in try WebhookSigner(secret: secret) }
        for header in options.httpHeaders {
            guard !header.name.isEmpty, header.name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }) else {
                throw .invalidOption("--http-header: a header name must be printable ASCII without spaces or colons (write 'Name: value')")
            }
            guard !header.value.unicodeScalars.contains(where: { $0.value < 0x20 && $0.value != 0x09 || $0.value == 0x7F }) else {
                throw .invalidOption("--http-header \(header.name): the value has a control character (line breaks are not allowed)")
            }
            if Self.reservedHeaders.contains(header.name.lowercased()) {
                throw .invalidOption("--http-header \(header.name): spout sets this header itself; leave it out")
            }
        }
        headPrefix = Self.headPrefix(endpoint, headers: options.httpHeaders)
        tls = endpoint.tls ? try TLSClient(options.tls) : nil
        lanes = (0..<max(1, options.httpConcurrency)).map { _ in Lane() }
        wasFree = Array(repeating: true, count: lanes.count)
        filling = wasFree
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw .sink(SinkError(.permanent, "epoll_create1: \(String(cString: strerror(errno)))")) }
    }

    deinit { Glibc.close(epoll) }

    static let reservedHeaders: Set<String> = ["host", "content-length", "content-type", "transfer-encoding", "connection",
                                               "webhook-id", "webhook-timestamp", "webhook-signature"]

    var sinkName: String { "http" }

    var recoveredMessage: String { "the HTTP receiver at \(endpoint.shown) accepts events again" }

    /// The JSON body carries the commit LSN, as stdout's line does.
    var needsCommitLSN: Bool { true }

    func start(_ engine: DeliveryEngine) throws(SpoutError) {
        do { try engine.wakeup.include(epoll) } catch { throw .sink(error) }
        // issue 15: with https://, one handshake now: an unknown CA, an expired certificate or a
        // wrong host stops spout at start. An unreachable receiver is left to the first request.
        guard let tls, let lane = lanes.first else { return }
        do {
            let socket = try TCPSocket(connectingTo: endpoint.host, port: endpoint.port, tls: tls)
            guard try socket.awaitConnected(within: Self.connectTimeout) else { return }
            lane.socket = socket
            lane.connecting = false
        } catch {
            if error.isCertificateProblem { throw .sink(SinkError(.permanent, "cannot connect to the HTTP receiver at \(endpoint.shown): \(error.reason)")) }
        }
    }

    func queued(_ engine: DeliveryEngine) { blocked = false }

    func nextDeadline(_ engine: DeliveryEngine) -> ContinuousClock.Instant? {
        var deadline: ContinuousClock.Instant?
        func earliest(_ instant: ContinuousClock.Instant) { deadline = min(deadline ?? instant, instant) }
        for lane in lanes {
            register(lane)
            if lane.socket != nil, lane.connecting { earliest(lane.connectDeadline) }
            if !lane.tickets.isEmpty { earliest(lane.sentAt + timeout) }
        }
        if engine.hasWaiting, !engine.isStopped {
            if let holdUntil {
                earliest(holdUntil)
            } else if !blocked, !engine.isBackingOff, lanes.contains(where: { $0.tickets.isEmpty }) {
                earliest(clock.now)
            }
        }
        return deadline
    }

    func close(_ engine: DeliveryEngine) {
        for lane in lanes { drop(lane) }
    }

    func advance(_ engine: DeliveryEngine) throws(SinkError) {
        for lane in lanes { service(lane, engine) }
        if let certificateFailure { throw certificateFailure }
        if let until = holdUntil, clock.now >= until { holdUntil = nil }
        dispatch(engine)
    }

    // MARK: Connections

    private func drop(_ lane: Lane) {
        if let registered = lane.registered {
            _ = epoll_ctl(epoll, EPOLL_CTL_DEL, registered.descriptor, nil)
            lane.registered = nil
        }
        lane.socket = nil
        lane.connecting = false
        lane.requests = 0
        lane.parser.reset()
    }

    /// Keeps the lane's socket in the epoll set for what it waits for: the connect or an
    /// unwritten request (writable), a response or the server closing an idle connection (readable).
    private func register(_ lane: Lane) {
        guard let socket = lane.socket else { return }
        var events = EPOLLIN.rawValue
        if lane.connecting ? socket.connectInterest.writing : lane.written < lane.output.count { events |= EPOLLOUT.rawValue }
        if let registered = lane.registered, registered.descriptor == socket.descriptor, registered.events == events { return }
        var event = epoll_event(events: events, data: epoll_data_t(fd: socket.descriptor))
        let operation = lane.registered?.descriptor == socket.descriptor ? EPOLL_CTL_MOD : EPOLL_CTL_ADD
        if epoll_ctl(epoll, operation, socket.descriptor, &event) != 0, errno == EEXIST {
            _ = epoll_ctl(epoll, EPOLL_CTL_MOD, socket.descriptor, &event)
        }
        lane.registered = (socket.descriptor, events)
    }

    /// Connects, writes the request, reads the response and acts on it, and times it out.
    private func service(_ lane: Lane, _ engine: DeliveryEngine) {
        guard let socket = lane.socket else { return }
        if lane.connecting {
            do {
                guard try socket.finishConnect() else {
                    if clock.now >= lane.connectDeadline { failed(lane, "no connection within \(Self.connectTimeout)", connected: false, engine) }
                    return
                }
            } catch {
                noteCertificateProblem(error)
                failed(lane, error.reason, connected: false, engine)
                return
            }
            lane.connecting = false
        }
        var closed: String?
        do {
            if lane.written < lane.output.count { lane.written = try socket.write(lane.output, from: lane.written) }
            _ = try socket.read(into: &readChunk) { lane.parser.append($0) }
        } catch {
            noteCertificateProblem(error)
            closed = error.reason
        }
        do {
            while let response = try lane.parser.next() {
                answered(lane, response, engine)
                if lane.socket == nil { return }
            }
        } catch {
            failed(lane, "an invalid response: \(error.reason)", connected: true, engine)
            return
        }
        if let closed {
            if let response = lane.parser.connectionClosed() {
                answered(lane, response, engine)
                drop(lane)
                return
            }
            if lane.tickets.isEmpty {
                drop(lane) // an idle keep-alive connection the server closed
            } else if lane.requests > 1, !lane.parser.hasPartialResponse {
                // The server closed a kept-alive connection as the request went out (its idle
                // timeout): a new connection, once, is not an outage.
                resend(lane, engine)
            } else {
                failed(lane, closed, connected: true, engine)
            }
            return
        }
        if !lane.tickets.isEmpty, clock.now >= lane.sentAt + timeout {
            failed(lane, "no answer within --http-timeout \(timeout)", connected: true, engine)
        }
    }

    /// A certificate problem before any response (a TLS 1.3 server refuses a client
    /// certificate only after the handshake, on the first read) stops spout in `advance`.
    private func noteCertificateProblem(_ failure: TCPSocket.Failure) {
        guard failure.isCertificateProblem, !everAnswered, certificateFailure == nil else { return }
        certificateFailure = SinkError(.permanent, "cannot connect to the HTTP receiver at \(endpoint.shown): \(failure.reason)")
    }

    private func connect(_ lane: Lane) throws(TCPSocket.Failure) {
        drop(lane)
        lane.socket = try TCPSocket(connectingTo: endpoint.host, port: endpoint.port, tls: tls)
        lane.connecting = true
        lane.connectDeadline = clock.now + Self.connectTimeout
    }

    /// The same request on a new connection.
    private func resend(_ lane: Lane, _ engine: DeliveryEngine) {
        do { try connect(lane) } catch {
            failed(lane, error.reason, connected: false, engine)
            return
        }
        lane.written = 0
        lane.requests = 1
        lane.sentAt = clock.now
    }

    /// The request is lost (no connection, a timeout, a broken response): the connection is
    /// dropped and every unacknowledged event goes out again after a backoff, in order.
    private func failed(_ lane: Lane, _ reason: String, connected: Bool, _ engine: DeliveryEngine) {
        drop(lane)
        lane.tickets.removeAll()
        let waiting = engine.queue.unfinishedCount
        if connected {
            engine.retry(after: reason, warning: "lost a request to the HTTP receiver at \(endpoint.shown) (\(reason)); retrying with backoff"
                         + (waiting > 0 ? ", \(waiting) unacknowledged events will be sent again" : ""))
        } else {
            engine.retry(after: reason, warning: "cannot connect to the HTTP receiver at \(endpoint.shown) (\(reason)); retrying with backoff, events wait and nothing is confirmed until it accepts them")
        }
    }

    // MARK: Responses

    private func answered(_ lane: Lane, _ response: HTTPResponse, _ engine: DeliveryEngine) {
        everAnswered = true
        let tickets = lane.tickets
        lane.tickets.removeAll(keepingCapacity: true)
        blocked = false
        if !response.keepAlive { drop(lane) }
        guard let first = tickets.first else {
            // A response to no request: the connection is out of step.
            drop(lane)
            return
        }
        switch response.status {
        case 200..<300:
            for ticket in tickets { engine.delivered(ticket) }
        case 408, 429, 500..<600:
            let detail = response.summary
            if let delay = response.retryAfter.flatMap({ Self.retryAfter($0, now: Date()) }) {
                let until = clock.now + min(delay, Self.maxRetryAfter)
                holdUntil = max(holdUntil ?? until, until)
            }
            let warning = "the HTTP receiver at \(endpoint.shown) answered \(detail); retrying with backoff"
                + (response.retryAfter.map { " (Retry-After: \($0.prefix(40)))" } ?? "") + ", nothing is confirmed meanwhile"
            if !engine.refusalExhaustsRetries(first, reason: detail) || tickets.count > 1 || engine.state(first) == .sent {
                engine.retry(after: detail, warning: warning)
            }
        default:
            let detail = response.summary
            if tickets.count > 1 {
                // Which event the receiver refused: one per request until past this batch.
                isolateThrough = max(isolateThrough ?? 0, tickets[tickets.count - 1])
                engine.retry(after: detail, warning: "the HTTP receiver at \(endpoint.shown) refused a batch of \(tickets.count) events (\(detail)); "
                             + "sending them again one at a time to find the refused one")
            } else {
                engine.fail(first, "the HTTP receiver at \(endpoint.shown) refused the event: \(detail)")
            }
        }
    }

    /// `Retry-After`: a number of seconds or an HTTP-date (RFC 9110 §10.2.3); nil when neither.
    static func retryAfter(_ value: String, now: Date) -> Duration? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int(text) { return seconds >= 0 ? .seconds(seconds) : nil }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: text) else { return nil }
        return .milliseconds(Int(max(0, date.timeIntervalSince(now)) * 1000))
    }

    // MARK: Requests

    /// Gives each free connection the next events that hash to it (a batch of up to
    /// `--http-batch`), in ticket order, and starts their requests.
    private func dispatch(_ engine: DeliveryEngine) {
        guard !engine.isBackingOff, !engine.isStopped, holdUntil == nil, engine.hasWaiting else { return }
        var free = lanes.count { $0.tickets.isEmpty }
        var next = engine.nextWaitingTicket()
        guard free > 0, next != nil else { return }
        for (index, lane) in lanes.enumerated() {
            wasFree[index] = lane.tickets.isEmpty
            filling[index] = wasFree[index]
        }
        var scanned = 0
        while let ticket = next, free > 0, scanned < Self.scanLimit {
            scanned += 1
            next = engine.waitingTicket(after: ticket)
            guard let event = engine.event(ticket) else { continue }
            let index = Self.lane(of: event, among: lanes.count)
            guard filling[index] else { continue }
            let lane = lanes[index]
            lane.tickets.append(ticket)
            let limit = isolateThrough.map { ticket <= $0 } == true ? 1 : batch
            if lane.tickets.count >= limit {
                filling[index] = false
                free -= 1
            }
        }
        if let through = isolateThrough, engine.nextWaitingTicket().map({ $0 > through }) ?? true {
            isolateThrough = nil
        }
        let now = clock.now
        var started = false
        for (index, lane) in lanes.enumerated() where wasFree[index] && !lane.tickets.isEmpty {
            // A connection that failed at once began a backoff: the others wait for it too
            // (their events are not marked sent, so they stay waiting).
            if engine.isBackingOff {
                lane.tickets.removeAll(keepingCapacity: true)
                continue
            }
            start(lane, engine, at: now)
            started = true
        }
        blocked = !started
    }

    private func start(_ lane: Lane, _ engine: DeliveryEngine, at now: ContinuousClock.Instant) {
        encode(lane, engine)
        for ticket in lane.tickets { engine.markSent(ticket, at: now) }
        lane.sentAt = now
        lane.written = 0
        lane.parser.reset()
        if lane.socket == nil {
            do { try connect(lane) } catch {
                failed(lane, error.reason, connected: false, engine)
                return
            }
        }
        lane.requests += 1
        if !lane.connecting, let socket = lane.socket {
            do { lane.written = try socket.write(lane.output, from: 0) } catch { /* the read in the next service reports it */ }
        }
    }

    /// FNV-1a of the key (the id without one): the connection an event goes on.
    static func lane(of event: OutboxEvent, among count: Int) -> Int {
        guard count > 1 else { return 0 }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (event.key ?? event.id).utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return Int(hash % UInt64(count))
    }

    /// The request for the lane's tickets into `lane.output`: the head's fixed part was
    /// encoded once (`headPrefix`), so a request allocates nothing but with a signature.
    private func encode(_ lane: Lane, _ engine: DeliveryEngine) {
        lane.body.removeAll(keepingCapacity: true)
        let single = lane.tickets.count == 1 ? engine.event(lane.tickets[0]) : nil
        var contentType: String
        if let event = single {
            if cloudEvents != nil {
                contentType = CloudEventEnvelope.contentType(of: event)
                lane.body.append(contentsOf: event.payload)
            } else {
                contentType = "application/json"
                StdoutSink.appendJSONLine(event, to: &lane.body)
            }
        } else {
            contentType = cloudEvents != nil ? "application/cloudevents-batch+json" : "application/json"
            lane.body.append(UInt8(ascii: "["))
            for (index, ticket) in lane.tickets.enumerated() {
                guard let event = engine.event(ticket) else { continue }
                if index > 0 { lane.body.append(UInt8(ascii: ",")) }
                if let cloudEvents { cloudEvents.appendStructured(event, to: &lane.body) } else { StdoutSink.appendJSONLine(event, to: &lane.body) }
            }
            lane.body.append(UInt8(ascii: "]"))
        }
        lane.output.removeAll(keepingCapacity: true)
        lane.output.append(contentsOf: headPrefix)
        Self.appendHeader("Content-Type", contentType, to: &lane.output)
        lane.output.append(contentsOf: "Content-Length: ".utf8)
        Self.appendDecimal(lane.body.count, to: &lane.output)
        lane.output.append(contentsOf: "\r\n".utf8)
        if let signer, let first = lane.tickets.first, let event = engine.event(first) {
            // A batch is named by its first event and its size: the same id when it is sent again.
            let id = CloudEventEnvelope.percentEncodedHeaderValue(lane.tickets.count == 1 ? event.id : "\(event.id)+\(lane.tickets.count)")
            let timestamp = Int(Date().timeIntervalSince1970)
            Self.appendHeader("webhook-id", id, to: &lane.output)
            Self.appendHeader("webhook-timestamp", String(timestamp), to: &lane.output)
            Self.appendHeader("webhook-signature", signer.signature(id: id, timestamp: timestamp, body: lane.body), to: &lane.output)
        }
        if let event = single, let cloudEvents {
            cloudEvents.forEachAttribute(of: event) { name, value in
                lane.output.append(contentsOf: "ce-".utf8)
                Self.appendHeader(name, CloudEventEnvelope.percentEncodedHeaderValue(value), to: &lane.output)
            }
        }
        lane.output.append(contentsOf: "\r\n".utf8)
        lane.output.append(contentsOf: lane.body)
    }

    /// `POST <target> HTTP/1.1`, `Host`, `User-Agent`, `Authorization` and `--http-header`s.
    static func headPrefix(_ endpoint: HTTPEndpoint, headers: [(name: String, value: String)]) -> [UInt8] {
        var head: [UInt8] = []
        head.append(contentsOf: "POST \(endpoint.target) HTTP/1.1\r\n".utf8)
        appendHeader("Host", endpoint.hostHeader, to: &head)
        appendHeader("User-Agent", "spout", to: &head)
        if let authorization = endpoint.authorization { appendHeader("Authorization", authorization, to: &head) }
        for header in headers { appendHeader(header.name, header.value, to: &head) }
        return head
    }

    static func appendHeader(_ name: String, _ value: String, to output: inout [UInt8]) {
        output.append(contentsOf: name.utf8)
        output.append(contentsOf: ": ".utf8)
        output.append(contentsOf: value.utf8)
        output.append(contentsOf: "\r\n".utf8)
    }

    static func appendDecimal(_ value: Int, to output: inout [UInt8]) {
        var divisor = 1
        while divisor <= value / 10 { divisor *= 10 }
        var rest = value
        while divisor > 0 {
            output.append(UInt8(ascii: "0") + UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }
}
