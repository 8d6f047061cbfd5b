import COpenSSL
import Glibc

/// One non-blocking TCP connection (Glibc sockets), optionally TLS (OpenSSL, issue 15), for the
/// sinks that own their sockets (Redis, STOMP, HTTP). It owns the descriptor (closed on deinit)
/// and only moves bytes; the protocols are the sinks' own. Plain and TLS are one type with one
/// interface: the sinks do not know which they have.
package final class TCPSocket {
    /// An I/O failure; the connection is unusable afterwards.
    package struct Failure: Error {
        package var reason: String
        /// A TLS handshake or verification failure a retry cannot fix (an unknown CA, an expired
        /// certificate, a wrong host name, a client certificate missing or refused, no TLS on
        /// the port): the sinks stop spout when it happens at their first connection.
        package var isCertificateProblem = false

        package init(reason: String, isCertificateProblem: Bool = false) {
            self.reason = reason
            self.isCertificateProblem = isCertificateProblem
        }
    }

    package let descriptor: Int32
    /// `host:port`, for messages.
    package let peer: String
    /// The TLS session (nil: plain TCP).
    private let ssl: OpaquePointer?
    private var tcpConnected = false
    private var handshaken = false
    /// What the handshake waits for: the server's bytes (true) or room to write (false).
    private var handshakeWantsRead = false
    /// A close or failure met after reading data: the next read throws it.
    private var pendingFailure: Failure?

    /// Resolves `host` (blocking, as libpq and hiredis do) and starts a TCP connect to its
    /// first address without waiting for it (`finishConnect` tells when it and, with `tls`,
    /// the handshake are done). With `tls` the server's certificate must be valid for `host`.
    package convenience init(connectingTo host: String, port: Int, tls: TLSClient? = nil) throws(Failure) {
        let descriptor = try Self.connect(to: host, port: port)
        var ssl: OpaquePointer?
        if let tls {
            ssl = tls.session(descriptor: descriptor, host: host)
            if ssl == nil {
                close(descriptor)
                throw Failure(reason: "TLS: OpenSSL cannot make a session (\(TLSClient.openSSLError()))")
            }
        }
        self.init(descriptor: descriptor, peer: host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)", ssl: ssl)
    }

    private init(descriptor: Int32, peer: String, ssl: OpaquePointer?) {
        self.descriptor = descriptor
        self.peer = peer
        self.ssl = ssl
    }

    /// Whether the connection is TLS.
    package var isEncrypted: Bool { ssl != nil }

    /// What to wait for while `finishConnect` is false: writable while TCP connects, then what
    /// the TLS handshake needs.
    package var connectInterest: (reading: Bool, writing: Bool) {
        guard tcpConnected, ssl != nil, !handshaken else { return (false, true) }
        return (handshakeWantsRead, !handshakeWantsRead)
    }

    /// `connectInterest` as poll(2) events.
    package var connectEvents: Int16 {
        let interest = connectInterest
        return Int16(interest.reading ? POLLIN : 0) | Int16(interest.writing ? POLLOUT : 0)
    }

    private static func connect(to host: String, port: Int) throws(Failure) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            throw Failure(reason: "cannot resolve \(host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let address = entry {
            entry = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = String(cString: strerror(errno)); continue }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                return fd
            }
            lastError = String(cString: strerror(errno))
            close(fd)
        }
        throw Failure(reason: lastError)
    }

    deinit {
        if let ssl { SSL_free(ssl) }
        close(descriptor)
    }

    /// Whether the non-blocking connect, and with TLS the handshake, has completed; throws when
    /// it failed (refused, unreachable, a certificate problem).
    package func finishConnect() throws(Failure) -> Bool {
        if !tcpConnected {
            guard try SocketStatus.connectFinished(descriptor).mapError({ Failure(reason: $0.description) }).get() else { return false }
            tcpConnected = true
        }
        guard let ssl, !handshaken else { return true }
        ERR_clear_error()
        errno = 0
        let result = SSL_connect(ssl)
        if result == 1 {
            handshaken = true
            return true
        }
        let savedErrno = errno
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ: handshakeWantsRead = true
        case SSL_ERROR_WANT_WRITE: handshakeWantsRead = false
        case let code: throw tlsFailure(code, savedErrno, handshaking: true)
        }
        return false
    }

    /// Waits (blocking, up to `timeout`) until `finishConnect` is true: for probes and a sink's
    /// first connection. False on timeout; throws what `finishConnect` throws.
    package func awaitConnected(within timeout: Duration) throws(Failure) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while try !finishConnect() {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            let (seconds, attoseconds) = left.components
            _ = try waitFor(connectEvents, milliseconds: Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)))
        }
        return true
    }

    private func tlsFailure(_ code: Int32, _ savedErrno: Int32, handshaking: Bool) -> Failure {
        guard let ssl else { return Failure(reason: String(cString: strerror(savedErrno))) }
        let (reason, certificateProblem) = TLSClient.failure(ssl, code: code, savedErrno: savedErrno, peer: peer, handshaking: handshaking)
        return Failure(reason: reason, isCertificateProblem: certificateProblem)
    }

    /// Writes from `bytes[offset...]` what the socket takes; returns the new offset.
    /// MSG_NOSIGNAL: a connection the server closed is an error here, not a SIGPIPE.
    package func write(_ bytes: [UInt8], from offset: Int) throws(Failure) -> Int {
        if let ssl { return try write(bytes, from: offset, ssl) }
        var offset = offset
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                return Glibc.send(descriptor, base + offset, buffer.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent > 0 {
                offset += sent
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                break
            } else if errno != EINTR {
                throw Failure(reason: String(cString: strerror(errno)))
            }
        }
        return offset
    }

    /// Reads what the socket holds into `chunk`, passing each piece to `body`; throws when the
    /// server closed the connection. Returns whether anything was read.
    package func read(into chunk: inout [UInt8], _ body: (UnsafeRawBufferPointer) -> Void) throws(Failure) -> Bool {
        if let ssl { return try read(into: &chunk, ssl, body) }
        var any = false
        for _ in 0..<64 {
            let count = chunk.withUnsafeMutableBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return -1 }
                return recv(descriptor, base, buffer.count, Int32(MSG_DONTWAIT))
            }
            if count > 0 {
                any = true
                chunk.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
                if count < chunk.count { break }
            } else if count == 0 {
                throw Failure(reason: "the server closed the connection")
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                break
            } else if errno != EINTR {
                throw Failure(reason: String(cString: strerror(errno)))
            }
        }
        return any
    }

    /// Waits up to `milliseconds` until the socket is ready for `events`; `true` when it is
    /// (or has an error or hang-up, which the next read or write reports).
    package func waitFor(_ events: Int16, milliseconds: Int32) throws(Failure) -> Bool {
        try SocketStatus.wait(descriptor, for: events, milliseconds: milliseconds).mapError { Failure(reason: $0.description) }.get()
    }

    // MARK: TLS

    /// SSL_write in partial-write mode: a retry after WANT_WRITE passes the same bytes from the
    /// same offset (the buffer may have moved or grown, which the mode allows).
    private func write(_ bytes: [UInt8], from offset: Int, _ ssl: OpaquePointer) throws(Failure) -> Int {
        var offset = offset
        while offset < bytes.count {
            ERR_clear_error()
            errno = 0
            let sent = bytes.withUnsafeBytes { buffer -> Int32 in
                guard let base = buffer.baseAddress else { return 0 }
                return SSL_write(ssl, base + offset, Int32(clamping: buffer.count - offset))
            }
            if sent > 0 {
                offset += Int(sent)
                continue
            }
            let savedErrno = errno
            switch SSL_get_error(ssl, sent) {
            case SSL_ERROR_WANT_WRITE, SSL_ERROR_WANT_READ: return offset
            case let code: throw tlsFailure(code, savedErrno, handshaking: false)
            }
        }
        return offset
    }

    /// SSL_read until OpenSSL has nothing more (a short read is not the end under TLS: records
    /// are read one at a time), so that nothing decrypted stays buffered unseen by poll(2).
    private func read(into chunk: inout [UInt8], _ ssl: OpaquePointer, _ body: (UnsafeRawBufferPointer) -> Void) throws(Failure) -> Bool {
        if let pendingFailure { throw pendingFailure }
        var any = false
        for _ in 0..<4096 {
            ERR_clear_error()
            errno = 0
            let count = chunk.withUnsafeMutableBytes { buffer -> Int32 in
                guard let base = buffer.baseAddress else { return -1 }
                return SSL_read(ssl, base, Int32(clamping: buffer.count))
            }
            if count > 0 {
                any = true
                chunk.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[..<Int(count)])) }
                continue
            }
            let savedErrno = errno
            let failure: Failure
            switch SSL_get_error(ssl, count) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return any
            case SSL_ERROR_ZERO_RETURN: failure = Failure(reason: "the server closed the connection")
            case let code: failure = tlsFailure(code, savedErrno, handshaking: false)
            }
            // What came before the close (a response, then `Connection: close`) is handed over
            // first; the next read reports the close.
            guard any else { throw failure }
            pendingFailure = failure
            return true
        }
        return any
    }
}
