import CRabbitMQ
import Foundation
import SpoutCore

/// One librabbitmq connection with one channel in confirm mode. It owns the
/// `amqp_connection_state_t` (socket closed and memory freed on deinit) and only moves frames:
/// `open` does the blocking handshake (on the sink's worker thread, bounded by timeouts),
/// `publish` writes one message, `readFrames` hands out what the broker sent without waiting.
/// What the frames mean is `AMQPAdapter`'s business.
///
/// Used by one thread at a time: the worker while it opens the connection, then the relay.
final class AMQPConnection: @unchecked Sendable {
    /// Why a connection could not be opened or broke.
    struct Failure: Error, CustomStringConvertible {
        /// A refusal that a retry would only repeat (wrong password, missing vhost or exchange).
        var permanent: Bool
        var reason: String
        /// The broker's reply code when it refused a step (403, 404, 406, 530…).
        var code: UInt16?
        /// A TLS certificate problem (issue 15): stops spout at the first connection, retried later.
        var certificateProblem = false
        var description: String { reason }

        static func transient(_ reason: String) -> Failure { Failure(permanent: false, reason: reason) }
    }

    /// What one frame from the broker says, for the adapter.
    enum Incoming {
        /// basic.ack: the broker has the message (`multiple`: every one up to `tag`).
        case ack(tag: UInt64, multiple: Bool)
        /// basic.nack: the broker could not take it (an internal error, a queue that rejects
        /// publishes when full).
        case nack(tag: UInt64, multiple: Bool)
        /// basic.return, read whole (its header names the message): no queue took it.
        case returned(messageID: String, code: UInt16, text: String, routingKey: String)
        /// channel.close or connection.close from the broker: the connection is done.
        case closed(channel: Bool, code: UInt16, text: String)
        /// connection.blocked (a memory or disk alarm) / connection.unblocked.
        case blocked(reason: String)
        case unblocked
    }

    static let channel: amqp_channel_t = 1
    static let frameMax: Int32 = 131_072
    /// Heartbeats let both sides notice a dead peer; the adapter calls `readFrames` at least
    /// every half interval, which sends ours when due.
    static let heartbeatSeconds: Int32 = 30

    // Method ids (amqp_framing.h spells them as macros with casts, which Swift does not import).
    static let connectionClose: amqp_method_number_t = 0x000A_0032
    static let connectionBlocked: amqp_method_number_t = 0x000A_003C
    static let connectionUnblocked: amqp_method_number_t = 0x000A_003D
    static let channelClose: amqp_method_number_t = 0x0014_0028
    static let basicReturn: amqp_method_number_t = 0x003C_0032
    static let basicAck: amqp_method_number_t = 0x003C_0050
    static let basicNack: amqp_method_number_t = 0x003C_0078

    private let state: amqp_connection_state_t
    let descriptor: Int32
    /// Negotiated, in seconds; 0: none.
    let heartbeat: Int
    /// A basic.return whose header and body frames are still to come.
    private var pendingReturn: (code: UInt16, text: String, routingKey: String)?
    private var returnedBodyLeft: UInt64 = 0
    private var skippingReturnBody = false

    private init(state: amqp_connection_state_t, descriptor: Int32, heartbeat: Int) {
        self.state = state
        self.descriptor = descriptor
        self.heartbeat = heartbeat
    }

    deinit { amqp_destroy_connection(state) }

    /// Connects, logs in, opens channel 1, checks (or declares) the exchange and selects
    /// publisher confirms. Blocks up to about `timeout` per step.
    /// `tls` (for `amqps://`): how to verify the broker and the client certificate to present.
    static func open(_ url: AMQPURL, tls: SinkTLS?, exchange: String, declare: Bool, timeout: Duration) throws(Failure) -> AMQPConnection {
        guard let state = amqp_new_connection() else { throw .transient("out of memory") }
        var keep = false
        defer { if !keep { amqp_destroy_connection(state) } }
        // issue 15: TLS. The first certificate verification error, kept by OpenSSL's callback.
        let verifyError = UnsafeMutablePointer<CLong>.allocate(capacity: 1)
        verifyError.pointee = 0
        defer { verifyError.deallocate() }
        let secure = url.tls ? tls ?? SinkTLS() : nil
        let socket: OpaquePointer
        if let secure {
            guard let made = amqp_ssl_socket_new(state) else { throw .transient("TLS: OpenSSL cannot make a client context") }
            socket = made
            switch spout_amqp_tls_configure(socket, url.host, secure.caFile, secure.certFile, secure.keyFile,
                                            secure.insecureSkipVerify ? 1 : 0, verifyError) {
            case 0: break
            case 1: throw Failure(permanent: true, reason: TLSClient.caFileUnreadable(secure.caFile ?? ""))
            case 2: throw Failure(permanent: true, reason: "TLS: " + TLSClient.systemCAsUnreadable)
            case 3: throw Failure(permanent: true, reason: TLSClient.certFileUnreadable(secure.certFile ?? ""))
            default: throw Failure(permanent: true, reason: TLSClient.keyFileUnreadable(secure.keyFile ?? ""))
            }
        } else {
            guard let made = amqp_tcp_socket_new(state) else { throw .transient("out of memory") }
            socket = made
        }
        defer { if secure != nil { spout_amqp_tls_forget(socket) } }
        var limit = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        ERR_clear_error()
        let opened = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &limit)
        guard opened == AMQP_STATUS_OK.rawValue else {
            if secure != nil, let problem = tlsProblem(status: opened, verifyError: verifyError.pointee, url: url, tls: secure) { throw problem }
            // librabbitmq closes the socket before returning, which loses connect(2)'s errno.
            if opened == AMQP_STATUS_SOCKET_ERROR.rawValue { throw .transient("connection refused or host unreachable") }
            throw .transient(describe(status: opened))
        }
        amqp_set_handshake_timeout(state, &limit)
        amqp_set_rpc_timeout(state, &limit)

        let login = spout_amqp_login_plain(state, url.vhost, frameMax, heartbeatSeconds, url.user, url.password)
        // TLS 1.3: a server that wants a client certificate says so after the handshake, at the first read.
        if secure != nil, login.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION,
           let problem = tlsProblem(status: login.library_error, verifyError: 0, url: url, tls: secure, handshaking: false) {
            throw problem
        }
        if var failure = failure(of: login, step: "login") {
            switch failure.code {
            case 403:
                failure.reason = "the login of user \"\(url.user)\" was refused (\(failure.reason)): fix the user or password in --sink"
            case 530:
                failure.reason = "vhost \"\(url.vhost)\" does not exist or user \"\(url.user)\" may not use it (\(failure.reason)): "
                    + "create it and grant permissions (rabbitmqctl add_vhost, set_permissions), or fix the vhost in --sink"
            default: break
            }
            throw failure
        }
        amqp_channel_open(state, channel)
        if let failure = failure(of: amqp_get_rpc_reply(state), step: "channel.open") { throw failure }

        let name = Array(exchange.utf8)
        let kind = Array("topic".utf8)
        let declared: Failure? = name.withUnsafeBufferPointer { name in
            kind.withUnsafeBufferPointer { kind in
                let exchangeBytes = amqp_bytes_t(len: name.count, bytes: UnsafeMutableRawPointer(mutating: name.baseAddress))
                let kindBytes = amqp_bytes_t(len: kind.count, bytes: UnsafeMutableRawPointer(mutating: kind.baseAddress))
                // Passive: only looks, so a missing exchange is a clear error instead of one spout made up.
                amqp_exchange_declare(state, channel, exchangeBytes, kindBytes, declare ? 0 : 1, 1, 0, 0, amqp_empty_table)
                return failure(of: amqp_get_rpc_reply(state), step: "exchange.declare")
            }
        }
        if var declared {
            switch declared.code {
            case 404:
                declared.reason = "exchange \"\(exchange)\" does not exist in vhost \"\(url.vhost)\": declare it (a durable topic exchange) or start spout with --amqp-declare"
            case 406:
                declared.reason = "exchange \"\(exchange)\" exists with other settings than a durable topic exchange (\(declared.reason)): "
                    + "delete it or name another with --amqp-exchange"
            case 403:
                declared.reason = "user \"\(url.user)\" may not \(declare ? "declare" : "use") exchange \"\(exchange)\" in vhost \"\(url.vhost)\" (\(declared.reason)): "
                    + "grant configure and write permissions (rabbitmqctl set_permissions)"
            default: break
            }
            throw declared
        }
        amqp_confirm_select(state, channel)
        if let failure = failure(of: amqp_get_rpc_reply(state), step: "confirm.select") { throw failure }

        keep = true
        return AMQPConnection(state: state, descriptor: amqp_get_sockfd(state), heartbeat: Int(amqp_get_heartbeat(state)))
    }

    /// A TLS failure in plain words with the option that fixes it (nil: not a TLS problem).
    private static func tlsProblem(status: Int32, verifyError: CLong, url: AMQPURL, tls: SinkTLS?, handshaking: Bool = true) -> Failure? {
        let prefix = (handshaking ? "TLS handshake with " : "TLS connection to ") + "\(url.address) failed: "
        func problem(_ text: String) -> Failure {
            Failure(permanent: false, reason: prefix + text, certificateProblem: true)
        }
        if verifyError != 0 { return problem(TLSClient.verificationProblem(Int32(verifyError))) }
        var text: UnsafePointer<CChar>?
        let kind = spout_amqp_tls_failure(&text)
        switch kind {
        case 1: return problem(TLSClient.clientCertificateRequired)
        case 2: return problem(TLSClient.handshakeRefused)
        case 3: return problem(TLSClient.clientCertificateRefused(text.map { String(cString: $0) }))
        case 4: return problem("the server does not speak TLS on this port: give its AMQPS port (5671), or amqp:// if it has no TLS")
        default:
            guard handshaking else {
                // The server closed the connection right after the handshake, before answering
                // the protocol header: a TLS 1.3 server refusing the client certificate (its alert
                // is lost when the connection is reset first).
                guard [AMQP_STATUS_SSL_ERROR, AMQP_STATUS_CONNECTION_CLOSED, AMQP_STATUS_SOCKET_ERROR].map(\.rawValue).contains(status) else { return nil }
                return problem(TLSClient.closedAfterHandshake(certificateGiven: tls?.certFile != nil))
            }
            if status == AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue || status == AMQP_STATUS_SSL_ERROR.rawValue {
                return Failure(permanent: false, reason: prefix + (text.map { String(cString: $0) } ?? describe(status: status)))
            }
            return nil
        }
    }

    /// Reads the reply of a synchronous step; nil when it succeeded.
    private static func failure(of reply: amqp_rpc_reply_t, step: String) -> Failure? {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return nil
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            let code: UInt16, text: String
            switch reply.reply.id {
            case connectionClose:
                guard let close = reply.reply.decoded?.assumingMemoryBound(to: amqp_connection_close_t.self).pointee else { fallthrough }
                (code, text) = (close.reply_code, string(close.reply_text))
            case channelClose:
                guard let close = reply.reply.decoded?.assumingMemoryBound(to: amqp_channel_close_t.self).pointee else { fallthrough }
                (code, text) = (close.reply_code, string(close.reply_text))
            default:
                return .transient("\(step): unexpected method 0x\(String(reply.reply.id, radix: 16)) from the broker")
            }
            // 403 ACCESS_REFUSED, 404 NOT_FOUND, 406 PRECONDITION_FAILED, 530 NOT_ALLOWED (vhost):
            // the broker says no, and will say it again. 320 CONNECTION_FORCED and the rest pass.
            return Failure(permanent: [403, 404, 406, 530].contains(code), reason: "\(code) \(text)", code: code)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return .transient("\(step): \(describe(status: reply.library_error))")
        default:
            return .transient("\(step): no reply")
        }
    }

    static func describe(status: Int32) -> String {
        guard let text = amqp_error_string2(status) else { return "error \(status)" }
        var reason = String(cString: text)
        if status == AMQP_STATUS_TCP_ERROR.rawValue || status == AMQP_STATUS_SOCKET_ERROR.rawValue,
           errno != 0, errno != EINPROGRESS, errno != EAGAIN {
            reason += " (\(String(cString: strerror(errno))))"
        }
        return reason
    }

    static func string(_ bytes: amqp_bytes_t) -> String {
        guard let start = bytes.bytes, bytes.len > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: start, count: bytes.len), as: UTF8.self)
    }

    // MARK: Publishing

    /// Bytes the socket takes now without blocking, as far as the kernel tells (nil: the socket
    /// is full). librabbitmq writes a publish whole, waiting as long as it takes, so the relay
    /// only publishes what fits: a broker that stops reading must not hold up its thread.
    var sendSpace: Int? {
        var descriptor = pollfd(fd: self.descriptor, events: Int16(POLLOUT), revents: 0)
        guard Glibc.poll(&descriptor, 1, 0) > 0 else { return nil }
        var buffer: Int32 = 0, unsent: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(self.descriptor, SOL_SOCKET, SO_SNDBUF, &buffer, &length) == 0,
              ioctl(self.descriptor, UInt(TIOCOUTQ), &unsent) == 0 else { return 0 }
        // The kernel doubles SO_SNDBUF for its bookkeeping: half of it is what data may use.
        return max(0, Int(buffer) / 2 - Int(unsent))
    }

    /// Publishes one message on channel 1, mandatory and persistent; returns librabbitmq's status.
    func publish(exchange: amqp_bytes_t, routingKey: amqp_bytes_t, properties: UnsafePointer<amqp_basic_properties_t>, body: amqp_bytes_t) -> Int32 {
        amqp_basic_publish(state, Self.channel, exchange, routingKey, 1, 0, properties, body)
    }

    // MARK: Reading

    /// Whether librabbitmq holds received bytes or frames the socket no longer shows.
    var hasBufferedInput: Bool { amqp_data_in_buffer(state) != 0 || amqp_frames_enqueued(state) != 0 }

    /// Hands every frame the broker sent that is ready now to `handle`, without waiting (up to
    /// `limit` frames per call). Throws when the connection broke.
    func readFrames(limit: Int = 4096, _ handle: (Incoming) -> Void) throws(Failure) {
        var frame = amqp_frame_t()
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        defer { amqp_maybe_release_buffers(state) }
        for _ in 0..<limit {
            let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else { throw .transient(Self.describe(status: status)) }
            if let incoming = interpret(frame) { handle(incoming) }
        }
    }

    private func interpret(_ frame: amqp_frame_t) -> Incoming? {
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            let method = frame.payload.method
            guard let decoded = method.decoded else { return nil }
            switch method.id {
            case Self.basicAck:
                let ack = decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                return .ack(tag: ack.delivery_tag, multiple: ack.multiple != 0)
            case Self.basicNack:
                let nack = decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                return .nack(tag: nack.delivery_tag, multiple: nack.multiple != 0)
            case Self.basicReturn:
                let returned = decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
                pendingReturn = (returned.reply_code, Self.string(returned.reply_text), Self.string(returned.routing_key))
                return nil
            case Self.channelClose:
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return .closed(channel: true, code: close.reply_code, text: Self.string(close.reply_text))
            case Self.connectionClose:
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return .closed(channel: false, code: close.reply_code, text: Self.string(close.reply_text))
            case Self.connectionBlocked:
                return .blocked(reason: Self.string(decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee.reason))
            case Self.connectionUnblocked:
                return .unblocked
            default:
                return nil
            }
        case AMQP_FRAME_HEADER:
            // The returned message's properties: its message_id names the event.
            guard let returned = pendingReturn else { return nil }
            pendingReturn = nil
            returnedBodyLeft = frame.payload.properties.body_size
            skippingReturnBody = returnedBodyLeft > 0
            var messageID = ""
            if let properties = frame.payload.properties.decoded?.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee,
               properties._flags & amqp_flags_t(AMQP_BASIC_MESSAGE_ID_FLAG) != 0 {
                messageID = Self.string(properties.message_id)
            }
            return .returned(messageID: messageID, code: returned.code, text: returned.text, routingKey: returned.routingKey)
        case AMQP_FRAME_BODY:
            if skippingReturnBody {
                let length = UInt64(frame.payload.body_fragment.len)
                returnedBodyLeft = returnedBodyLeft > length ? returnedBodyLeft - length : 0
                skippingReturnBody = returnedBodyLeft > 0
            }
            return nil
        default:
            return nil
        }
    }

    /// Tells the broker spout is leaving (bounded by the RPC timeout) before the socket closes.
    func closeGracefully() {
        var limit = timeval(tv_sec: 1, tv_usec: 0)
        amqp_set_rpc_timeout(state, &limit)
        _ = amqp_channel_close(state, Self.channel, AMQP_REPLY_SUCCESS)
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
    }
}
