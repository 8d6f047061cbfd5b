import Glibc

/// One non-blocking TCP connection (Glibc sockets) for the sinks that need no client library
/// (STOMP, HTTP). It owns the descriptor (closed on deinit) and only moves bytes; the
/// protocols are the sinks' own.
package final class TCPSocket {
    /// An I/O failure; the connection is unusable afterwards.
    package struct Failure: Error {
        package var reason: String

        package init(reason: String) { self.reason = reason }
    }

    package let descriptor: Int32

    /// Resolves `host` (blocking, as libpq and hiredis do) and starts a TCP connect to its
    /// first address without waiting for it (`finishConnect` tells when it is done).
    package init(connectingTo host: String, port: Int) throws(Failure) {
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
            if connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                descriptor = fd
                return
            }
            lastError = String(cString: strerror(errno))
            close(fd)
        }
        throw Failure(reason: lastError)
    }

    deinit { close(descriptor) }

    /// Whether the non-blocking connect has completed; throws when it failed (refused, unreachable).
    package func finishConnect() throws(Failure) -> Bool {
        try SocketStatus.connectFinished(descriptor).mapError { Failure(reason: $0.description) }.get()
    }

    /// Writes from `bytes[offset...]` what the socket takes; returns the new offset.
    /// MSG_NOSIGNAL: a connection the server closed is an error here, not a SIGPIPE.
    package func write(_ bytes: [UInt8], from offset: Int) throws(Failure) -> Int {
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
}
