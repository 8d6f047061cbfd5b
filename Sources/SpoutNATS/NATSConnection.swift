import SpoutCore
import CNats
import Foundation

/// A publishing connection and an admin connection to the same NATS servers. Both share
/// the endpoint's options; neither reconnects by itself — a lost connection closes, and the
/// sink opens a new pair and re-publishes in ticket order — so nothing published after a
/// loss can overtake what the loss swallowed.
///
/// The publishing connection runs in libnats' external event-loop mode on the relay thread
/// (`NATSEventLoop`): a publish is a core NATS publish whose reply subject is this
/// connection's PubAck inbox followed by the event's ticket, the stream answers there, and
/// a synchronous subscription holds the PubAcks until `receive` takes them. No libnats
/// thread and no thread hop is involved per event. (libnats' own async JetStream publish
/// keeps a hash of every message, parses each PubAck as full JSON and delivers it on its own
/// thread: several times the CPU per event.) JetStream API requests (stream lookup and
/// creation) wait for their reply, which a single-threaded loop cannot read while it waits,
/// so they go over the admin connection, whose reader is a libnats thread.
///
/// Threads: `NATSAdminWorker` opens and closes connections and makes the JetStream API
/// requests; the relay thread publishes, flushes and receives in between. The two sides use
/// disjoint handles and state, and the sink hands a connection to `close` only after it has
/// `detach`ed it and stopped publishing on it.
final class NATSConnection: @unchecked Sendable {
    struct Completion: Sendable {
        var ticket: UInt64
        /// nil: the stream stored the message (a PubAck, possibly flagged duplicate).
        var failure: NATSFailure?
    }

    /// How long a PubAck may take before the publish counts as failed (transient).
    static let ackTimeoutMilliseconds: Int64 = 10_000
    /// Connect timeout per server, and the wait for JetStream API requests.
    static let connectTimeoutMilliseconds: Int64 = 2_000
    static let requestTimeoutMilliseconds: Int64 = 5_000
    /// Publishes are written out once this many bytes wait, and at the end of every relay round.
    static let flushBytes = 64 << 10

    let events: NATSConnectionEvents
    private var closure: UnsafeMutableRawPointer?
    private var publisherOptions: OpaquePointer?
    private var adminOptions: OpaquePointer?
    private var publisher: OpaquePointer?
    private var admin: OpaquePointer?
    private var jetStream: OpaquePointer?
    private var ackSubscription: OpaquePointer?
    /// `_INBOX.<unique>.`: a PubAck's subject is this followed by the ticket, in decimal.
    private var replyPrefix: [UInt8] = []
    private var unflushedBytes = 0
    /// The loop's write requests may belong to a newer connection by now: never act on them.
    private var detached = false
    /// Messages done with, destroyed together: libnats frees each on its collector thread and
    /// wakes that thread when it sleeps, so one by one costs a thread wakeup per message.
    private var spent: [OpaquePointer] = []
    /// TLS: libnats waits inside SSL_read/SSL_write for a socket that is not ready, so the
    /// relay reads and writes only when the socket is (issue 15).
    private let secure: Bool

    init(endpoint: NATSEndpoint, maxPendingAcks: Int, loop: NATSEventLoop) throws(NATSFailure) {
        events = NATSConnectionEvents(loop: loop)
        closure = NATSCallbackRegistry.register(events)
        secure = endpoint.secure
        do {
            try open(endpoint: endpoint, maxPendingAcks: maxPendingAcks)
        } catch {
            close()
            throw NATSTLS.explained(error, endpoint)
        }
    }

    deinit { close() }

    private func makeOptions(_ endpoint: NATSEndpoint, name: String) throws(NATSFailure) -> OpaquePointer? {
        var options: OpaquePointer?
        try check(natsOptions_Create(&options))
        do {
            var servers = endpoint.servers.map { strdup($0) }
            defer { servers.forEach { free($0) } }
            try servers.withUnsafeMutableBufferPointer { buffer throws(NATSFailure) in
                try buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) { rebound throws(NATSFailure) in
                    try check(natsOptions_SetServers(options, rebound.baseAddress, Int32(rebound.count)))
                }
            }
            switch endpoint.credentials {
            case .none: break
            case let .user(user, password): try check(natsOptions_SetUserInfo(options, user, password))
            case let .token(token): try check(natsOptions_SetToken(options, token))
            }
            try check(natsOptions_SetName(options, name))
            try check(natsOptions_SetNoRandomize(options, true))
            try check(natsOptions_SetAllowReconnect(options, false))
            try check(natsOptions_SetTimeout(options, Self.connectTimeoutMilliseconds))
            // An idle connection to a vanished server is noticed within about 15 s.
            try check(natsOptions_SetPingInterval(options, 5_000))
            try check(natsOptions_SetMaxPingsOut(options, 2))
            try NATSTLS.configure(options, endpoint) // issue 15: TLS
        } catch {
            natsOptions_Destroy(options)
            throw error
        }
        return options
    }

    private func open(endpoint: NATSEndpoint, maxPendingAcks: Int) throws(NATSFailure) {
        adminOptions = try makeOptions(endpoint, name: "spout-admin")
        // Without a deadline a server that stopped reading would block the admin worker, and
        // every reconnect queued behind it, for good.
        try check(natsOptions_SetWriteDeadline(adminOptions, Self.connectTimeoutMilliseconds))
        try check(natsConnection_Connect(&admin, adminOptions))
        var jsOptions = jsOptions()
        try check(jsOptions_Init(&jsOptions))
        jsOptions.Wait = Self.requestTimeoutMilliseconds
        try check(natsConnection_JetStream(&jetStream, admin, &jsOptions))

        publisherOptions = try makeOptions(endpoint, name: "spout")
        // The event loop is this connection's registry key; the callbacks find it there.
        try check(natsOptions_SetEventLoop(publisherOptions, closure, NATSCallbacks.attach, NATSCallbacks.read,
                                           NATSCallbacks.write, NATSCallbacks.detach))
        // With an external loop, "as soon as possible" only asks the loop for a write event;
        // `flush` writes. (Otherwise libnats waits for a flusher thread it does not start.)
        try check(natsOptions_SetSendAsap(publisherOptions, true))
        // TLS: SSL_write finishes a started record even when the socket fills; a server that
        // stopped reading must not hold the relay thread longer than this.
        if endpoint.secure { try check(natsOptions_SetWriteDeadline(publisherOptions, Self.connectTimeoutMilliseconds)) }
        try check(natsOptions_SetClosedCB(publisherOptions, NATSCallbacks.closed, closure))
        try check(natsOptions_SetErrorHandler(publisherOptions, NATSCallbacks.error, closure))
        try check(natsConnection_Connect(&publisher, publisherOptions))

        var unique: UnsafeMutablePointer<CChar>?
        try check(natsInbox_Create(&unique))
        defer { natsInbox_Destroy(unique) }
        guard let unique else { throw NATSFailure(status: NATS_NO_MEMORY) }
        let prefix = String(cString: unique) + "."
        replyPrefix = Array(prefix.utf8)
        try check(natsConnection_SubscribeSync(&ackSubscription, publisher, prefix + "*"))
        // The sink keeps at most `maxPendingAcks` publishes outstanding: their PubAcks always fit.
        try check(natsSubscription_SetPendingLimits(ackSubscription, Int32(clamping: max(65_536, 2 * maxPendingAcks)), -1))
        flush()
    }

    /// Takes the socket out of the relay's wait set and silences libnats' callbacks, at once:
    /// an abandoned connection must not wake the relay while another thread closes it.
    func detach() {
        guard let closure, !detached else { return }
        detached = true
        NATSCallbackRegistry.remove(closure)
        // A no-op when a newer connection owns the loop already.
        _ = events.loop.detach(owner: Int(bitPattern: closure))
    }

    /// Frees the handles. Unacknowledged messages are dropped; the sink publishes them again.
    func close() {
        guard closure != nil else { return }
        // With libnats' buffer empty, closing does not wait for a PONG (500 ms) that only
        // the loop's thread could read. (After `detach` nothing is written any more.)
        flush()
        detach()
        closure = nil
        // The connection before its subscription: a closed connection queues no UNSUB.
        if let publisher { natsConnection_Destroy(publisher) }
        if let ackSubscription { natsSubscription_Destroy(ackSubscription) }
        // The context before the connection it uses (nats.h, natsConnection_JetStream).
        if let jetStream { jsCtx_Destroy(jetStream) }
        if let admin { natsConnection_Destroy(admin) }
        if let publisherOptions { natsOptions_Destroy(publisherOptions) }
        if let adminOptions { natsOptions_Destroy(adminOptions) }
        ackSubscription = nil
        jetStream = nil
        publisher = nil
        admin = nil
        publisherOptions = nil
        adminOptions = nil
    }

    var maxPayload: Int {
        guard let publisher else { return 0 }
        return Int(natsConnection_GetMaxPayload(publisher))
    }

    // MARK: Reading and writing (the event loop)

    /// Writes what libnats holds for the server, as far as the socket takes it; the rest goes
    /// when the loop reports the socket writable. A write error closes the connection, which
    /// `receive` reports.
    func flush() {
        unflushedBytes = 0
        destroySpent()
        guard let publisher, !detached, events.loop.wantsWrite else { return }
        if secure, !NATSTLS.ready(events.loop.socket, Int16(POLLOUT)) { return }
        natsConnection_ProcessWriteEvent(publisher)
    }

    private func destroySpent() {
        for message in spent { natsMsg_Destroy(message) }
        spent.removeAll(keepingCapacity: true)
    }

    /// Reads what the server sent (a few socket reads at most) and moves the PubAcks into
    /// `completions`, in arrival order. Returns why the connection is unusable, if it is: the
    /// sink then re-publishes on a new one. "No responders" comes without its subject (libnats'
    /// synchronous subscription drops it), so it cannot name a ticket.
    func receive(into completions: inout [Completion]) -> NATSFailure? {
        guard let publisher, let ackSubscription else { return NATSFailure(status: NATS_CONNECTION_CLOSED) }
        flush()
        for _ in 0..<8 {
            if !secure || NATSTLS.ready(events.loop.socket, Int16(POLLIN)) { natsConnection_ProcessReadEvent(publisher) }
            var taken = 0
            while true {
                var message: OpaquePointer?
                let status = natsSubscription_NextMsg(&message, ackSubscription, 0)
                guard status == NATS_OK, let message else {
                    if status == NATS_TIMEOUT { break }
                    if natsConnection_IsClosed(publisher) { return closedFailure(publisher) }
                    if status == NATS_SLOW_CONSUMER {
                        return NATSFailure(status: status, text: "PubAcks arrived faster than spout took them and some were dropped")
                    }
                    return NATSFailure(status: status)
                }
                spent.append(message)
                taken += 1
                guard let subject = natsMsg_GetSubject(message), let ticket = PubAck.ticket(subject: subject) else { continue }
                let length = Int(natsMsg_GetDataLength(message))
                let data = natsMsg_GetData(message).map { UnsafeRawBufferPointer(start: $0, count: length) }
                    ?? UnsafeRawBufferPointer(start: nil, count: 0)
                completions.append(Completion(ticket: ticket, failure: PubAck.failure(data)))
            }
            if taken == 0 { break }
        }
        destroySpent()
        if natsConnection_IsClosed(publisher) { return closedFailure(publisher) }
        return nil
    }

    private func closedFailure(_ connection: OpaquePointer) -> NATSFailure {
        NATSFailure(status: NATS_CONNECTION_CLOSED, text: Self.lostText(connection))
    }

    /// "the connection was lost (why)", from the closed connection's last error.
    static func lostText(_ connection: OpaquePointer) -> String {
        var text: UnsafePointer<CChar>?
        let status = natsConnection_GetLastError(connection, &text)
        let detail = status == NATS_OK ? nil : text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status))
        return "the connection was lost" + (detail.map { " (\($0))" } ?? "")
    }

    // MARK: Publishing

    /// Publishes one event; its PubAck arrives in `inbox` under `ticket`. Subject = topic,
    /// `Nats-Msg-Id` = event id (the stream drops re-sends within its duplicate window),
    /// `Spout-Key` and `Spout-Event-Type`, then the event's own headers. In the CloudEvents
    /// envelope (not for dead letters): `Nats-Msg-Id`, then the NATS binding's `ce-*` headers,
    /// `ce-datacontenttype` among them, values percent-encoded as the binding requires.
    /// - Returns: whether an event header named `Nats-…` was left out.
    func publish(_ event: OutboxEvent, ticket: UInt64, cloudEvents: CloudEventEnvelope? = nil) throws(NATSFailure) -> Bool {
        guard let connection = publisher else { throw NATSFailure(status: NATS_CONNECTION_CLOSED) }
        guard event.payload.count <= Int(Int32.max) else { throw NATSFailure(status: NATS_MAX_PAYLOAD) }
        var message: OpaquePointer?
        var reply = replyPrefix
        JSONWriter.appendDecimal(ticket, to: &reply)
        reply.append(0)
        let created = reply.withUnsafeBytes { reply in
            event.payload.withUnsafeBytes { payload in
                natsMsg_Create(&message, event.topic, reply.baseAddress?.assumingMemoryBound(to: CChar.self),
                               payload.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(payload.count))
            }
        }
        try check(created)
        var droppedReserved = false
        do {
            try check(natsMsgHeader_Set(message, "Nats-Msg-Id", NATSWireRules.headerValue(event.id)))
            if let cloudEvents, event.source != .deadLetter {
                try cloudEvents.forEachAttribute(of: event) { (name, value) throws(NATSFailure) in
                    try check(natsMsgHeader_Set(message, "ce-" + name, CloudEventEnvelope.percentEncodedHeaderValue(value)))
                }
                try check(natsMsgHeader_Set(message, "ce-datacontenttype", CloudEventEnvelope.contentType(of: event)))
            } else {
                if let key = event.key { try check(natsMsgHeader_Set(message, NATSJetStreamSink.keyHeader, NATSWireRules.headerValue(key))) }
                if let type = event.type { try check(natsMsgHeader_Set(message, NATSJetStreamSink.typeHeader, NATSWireRules.headerValue(type))) }
                if let source = event.source.marker { try check(natsMsgHeader_Set(message, NATSJetStreamSink.sourceHeader, source)) }
                for header in event.headers {
                    let name = NATSWireRules.headerName(header.name)
                    if name.isEmpty { continue }
                    if NATSWireRules.isReservedHeader(name) {
                        droppedReserved = true
                        continue
                    }
                    try check(natsMsgHeader_Add(message, name, NATSWireRules.headerValue(header.value)))
                }
            }
        } catch {
            natsMsg_Destroy(message)
            throw error
        }
        // Copied into the connection's buffer: the message is ours to free either way.
        let status = natsConnection_PublishMsg(connection, message)
        if let message { spent.append(message) }
        if status != NATS_OK {
            if natsConnection_IsClosed(connection) { throw closedFailure(connection) }
            throw NATSFailure(status: status)
        }
        unflushedBytes += event.payload.count + reply.count + event.topic.utf8.count + 64
        if unflushedBytes >= Self.flushBytes { flush() }
        return droppedReserved
    }

    // MARK: Streams

    /// Fails with NATS_NO_RESPONDERS when the server has no JetStream.
    func checkJetStream() throws(NATSFailure) {
        guard let jetStream else { throw NATSFailure(status: NATS_CONNECTION_CLOSED) }
        var info: UnsafeMutablePointer<jsAccountInfo>?
        var code = jsErrCode(0)
        let status = js_GetAccountInfo(&info, jetStream, nil, &code)
        if let info { jsAccountInfo_Destroy(info) }
        if status != NATS_OK { throw NATSFailure(status: status, errorCode: Int(code.rawValue)) }
    }

    /// Whether some stream captures `subject`.
    func streamExists(capturing subject: String) throws(NATSFailure) -> Bool {
        guard let jetStream else { throw NATSFailure(status: NATS_CONNECTION_CLOSED) }
        var names: UnsafeMutablePointer<jsStreamNamesList>?
        var code = jsErrCode(0)
        var options = jsOptions()
        jsOptions_Init(&options)
        let status = subject.withCString { filter in
            options.Stream.Info.SubjectsFilter = filter
            return js_StreamNames(&names, jetStream, &options, &code)
        }
        if let names { jsStreamNamesList_Destroy(names) }
        switch status {
        case NATS_OK: return true
        case NATS_NOT_FOUND: return false
        default: throw NATSFailure(status: status, errorCode: Int(code.rawValue))
        }
    }

    enum StreamChange { case created, extended }

    /// Creates stream `name` (file storage, server defaults otherwise) capturing `subject`,
    /// or adds `subject` to it when it exists.
    func addSubject(_ subject: String, toStream name: String) throws(NATSFailure) -> StreamChange {
        guard let jetStream else { throw NATSFailure(status: NATS_CONNECTION_CLOSED) }
        var code = jsErrCode(0)
        var info: UnsafeMutablePointer<jsStreamInfo>?
        let lookup = js_GetStreamInfo(&info, jetStream, name, nil, &code)
        defer { if let info { jsStreamInfo_Destroy(info) } }
        var subjects: [UnsafeMutablePointer<CChar>?] = [strdup(subject)]
        defer { subjects.forEach { free($0) } }
        let change: StreamChange
        var config = jsStreamConfig()
        switch lookup {
        case NATS_OK:
            guard let existing = info?.pointee.Config else { throw NATSFailure(status: NATS_ERR, text: "stream \(name) has no configuration") }
            config = existing.pointee
            for index in 0..<Int(config.SubjectsLen) {
                if let old = config.Subjects?[index] { subjects.append(strdup(old)) }
            }
            change = .extended
        case NATS_NOT_FOUND:
            try check(jsStreamConfig_Init(&config))
            config.Storage = js_FileStorage
            change = .created
        default:
            throw NATSFailure(status: lookup, errorCode: Int(code.rawValue))
        }
        let status = name.withCString { name in
            subjects.withUnsafeMutableBufferPointer { buffer in
                buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) { rebound in
                    config.Name = name
                    config.Subjects = rebound.baseAddress
                    config.SubjectsLen = Int32(rebound.count)
                    return change == .created ? js_AddStream(nil, jetStream, &config, nil, &code) : js_UpdateStream(nil, jetStream, &config, nil, &code)
                }
            }
        }
        if status != NATS_OK { throw NATSFailure(status: status, errorCode: Int(code.rawValue)) }
        return change
    }

    private func check(_ status: natsStatus) throws(NATSFailure) {
        if status != NATS_OK { throw NATSFailure(status: status) }
    }
}
