import SpoutCore
import CHiredis
import Foundation

/// One non-blocking connection to Redis: SpoutCore's `TCPSocket` moves the bytes (plain, or
/// TLS for `rediss://`, the only difference being the socket's `tls:`), hiredis parses the
/// replies (a `redisReader`). Commands are encoded by `RedisCommand` straight into one reused
/// output buffer (RESP arrays of bulk strings, byte for byte what `redisFormatCommandArgv` makes,
/// without its allocation per command) by `append`, written by `write`; replies read by `read`
/// and handed out in order by `withNextReply`. What the replies mean is `RedisStreamSink`'s business.
final class RedisConnection {
    /// An I/O or protocol failure; the connection is unusable afterwards.
    struct Failure: Error {
        var reason: String
        /// A TLS certificate problem (`TCPSocket.Failure.isCertificateProblem`), worded already.
        var isCertificateProblem = false

        init(reason: String, isCertificateProblem: Bool = false) {
            self.reason = reason
            self.isCertificateProblem = isCertificateProblem
        }

        init(_ failure: TCPSocket.Failure) {
            reason = failure.reason
            isCertificateProblem = failure.isCertificateProblem
        }
    }

    private let socket: TCPSocket
    private let reader: UnsafeMutablePointer<redisReader>
    /// Formatted commands; `output[written...]` is not yet handed to the kernel.
    private var output: [UInt8] = []
    private var written = 0
    /// Where `read` puts what the socket holds before the reader takes it.
    private var chunk = [UInt8](repeating: 0, count: 64 * 1024)

    /// Commands appended and not yet fully handed to the kernel.
    var hasUnwrittenOutput: Bool { written < output.count }

    /// Starts a TCP connect without waiting for it (`finishConnect` tells when it and, with
    /// `tls` (`rediss://`), the TLS handshake are done).
    init(connectingTo host: String, port: Int32, tls: TLSClient?) throws(Failure) {
        guard let reader = redisReaderCreate() else { throw Failure(reason: "out of memory") }
        do {
            socket = try TCPSocket(connectingTo: host, port: Int(port), tls: tls)
        } catch {
            redisReaderFree(reader)
            throw Failure(error)
        }
        self.reader = reader
        output.reserveCapacity(64 * 1024)
    }

    deinit { redisReaderFree(reader) }

    var descriptor: Int32 { socket.descriptor }

    /// What to wait for while `finishConnect` is false (a TLS handshake also reads).
    var connectInterest: (reading: Bool, writing: Bool) { socket.connectInterest }

    /// `connectInterest` as poll(2) events.
    var connectEvents: Int16 { socket.connectEvents }

    /// Waits (blocking, up to `timeout`) until the connect and handshake are done; false on timeout.
    func awaitConnected(within timeout: Duration) throws(Failure) -> Bool {
        do { return try socket.awaitConnected(within: timeout) } catch { throw Failure(error) }
    }

    /// Whether the connect (and the TLS handshake) has completed; throws when it failed.
    func finishConnect() throws(Failure) -> Bool {
        do { return try socket.finishConnect() } catch { throw Failure(error) }
    }

    /// Why the connect did not finish within `timeout`: TCP unanswered is an outage; a TLS
    /// handshake the server never answers is a port without TLS (Redis reads the ClientHello as
    /// the start of a command line and waits for its end), which a retry does not fix.
    func connectTimedOut(after timeout: Duration, server: String) -> Failure {
        guard socket.isEncrypted, socket.connectInterest.reading else { return Failure(reason: "no answer within \(timeout)") }
        return Failure(reason: "TLS handshake with \(server) failed: no answer within \(timeout): the server does not speak TLS on this port; "
                       + "give its TLS port (Redis: tls-port), or a redis:// URL if it has no TLS", isCertificateProblem: true)
    }

    /// Buffers one command (nothing is written yet).
    func append(_ command: inout RedisCommand) throws(Failure) {
        guard !command.isEmpty else { throw Failure(reason: "internal error: an empty Redis command") }
        if written == output.count {
            output.removeAll(keepingCapacity: true)
            written = 0
        }
        command.encode(to: &output)
    }

    /// Writes buffered commands until all are written or the socket is full; `true` when all are.
    @discardableResult
    func write() throws(Failure) -> Bool {
        guard hasUnwrittenOutput else { return true }
        do {
            written = try socket.write(output, from: written)
        } catch {
            // A TLS 1.3 server refuses a client certificate after the handshake, with an alert,
            // and closes: the write fails (EPIPE), the alert waits unread and says why.
            if socket.isEncrypted, !error.isCertificateProblem {
                do { try read() } catch { if error.isCertificateProblem { throw error } }
            }
            throw Failure(error)
        }
        if !hasUnwrittenOutput {
            output.removeAll(keepingCapacity: true)
            written = 0
            return true
        }
        // A socket that never quite catches up: drop what it took, so the buffer stays bounded.
        if written >= 1 << 20 {
            output.removeSubrange(0..<written)
            written = 0
        }
        return false
    }

    /// Waits up to `milliseconds` until the socket is ready for `events`; `true` when it is
    /// (or has an error or hang-up, which the next read or write reports).
    func waitFor(_ events: Int16, milliseconds: Int32) throws(Failure) -> Bool {
        do { return try socket.waitFor(events, milliseconds: milliseconds) } catch { throw Failure(error) }
    }

    /// Reads what the socket holds (a bounded amount per call) into hiredis' reply parser.
    func read() throws(Failure) {
        var fed = true
        do {
            _ = try socket.read(into: &chunk) { bytes in
                guard fed, let base = bytes.baseAddress else { return }
                fed = redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count) == REDIS_OK
            }
        } catch {
            throw Failure(error)
        }
        if !fed { throw Failure(reason: Self.errorText(reader)) }
    }

    /// Passes the next complete reply to `body`; `false` when no complete reply is buffered.
    func withNextReply(_ body: (RedisReply) -> Void) throws(Failure) -> Bool {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else { throw Failure(reason: Self.errorText(reader)) }
        guard let raw else { return false }
        defer { freeReplyObject(raw) }
        body(RedisReply(raw.assumingMemoryBound(to: redisReply.self)))
        return true
    }

    /// The reader's error: a reply that breaks the protocol (never contains credentials).
    private static func errorText(_ reader: UnsafeMutablePointer<redisReader>) -> String {
        let text = withUnsafeBytes(of: reader.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        return "protocol error: " + (text.isEmpty ? "an invalid reply" : text)
    }
}

/// A reply from Redis, valid only inside `RedisConnection.withNextReply`.
struct RedisReply {
    enum Kind { case string, array, integer, null, status, error }

    private let reply: UnsafePointer<redisReply>

    fileprivate init(_ reply: UnsafePointer<redisReply>) { self.reply = reply }

    var kind: Kind {
        switch reply.pointee.type {
        case REDIS_REPLY_STRING: .string
        case REDIS_REPLY_ARRAY: .array
        case REDIS_REPLY_INTEGER: .integer
        case REDIS_REPLY_STATUS: .status
        case REDIS_REPLY_ERROR: .error
        default: .null
        }
    }

    /// The text of a string, status or error reply.
    var text: String {
        guard let string = reply.pointee.str else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: string, count: reply.pointee.len), as: UTF8.self)
    }

    /// Whether a status reply says exactly `expected` (`OK`, `QUEUED`), without allocating.
    func isStatus(_ expected: StaticString) -> Bool {
        guard reply.pointee.type == REDIS_REPLY_STATUS, let string = reply.pointee.str,
              reply.pointee.len == expected.utf8CodeUnitCount else { return false }
        return memcmp(string, expected.utf8Start, expected.utf8CodeUnitCount) == 0
    }

    var count: Int { reply.pointee.type == REDIS_REPLY_ARRAY ? reply.pointee.elements : 0 }

    subscript(index: Int) -> RedisReply? {
        guard index >= 0, index < count, let elements = reply.pointee.element, let element = elements[index] else { return nil }
        return RedisReply(element)
    }

    /// In an array of names and values (XINFO's map, an entry's fields), the value after `name`.
    func value(of name: String) -> RedisReply? {
        for index in stride(from: 0, to: count - 1, by: 2) {
            guard let key = self[index], key.kind == .string || key.kind == .status else { continue }
            if key.text == name { return self[index + 1] }
        }
        return nil
    }
}

/// The arguments of one command laid out in one reusable buffer, so building an XADD per
/// event allocates nothing once the buffers have grown.
struct RedisCommand {
    private var bytes: [UInt8] = []
    private var ends: [Int] = []

    init() {
        bytes.reserveCapacity(4096)
    }

    mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
        ends.removeAll(keepingCapacity: true)
    }

    mutating func add(_ argument: StaticString) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: argument.utf8Start, count: argument.utf8CodeUnitCount))
        ends.append(bytes.count)
    }

    mutating func add(_ argument: String) {
        bytes.append(contentsOf: argument.utf8)
        ends.append(bytes.count)
    }

    mutating func add(_ argument: [UInt8]) {
        bytes.append(contentsOf: argument)
        ends.append(bytes.count)
    }

    /// One argument written by `build` straight into the buffer.
    mutating func add(_ build: (inout [UInt8]) -> Void) {
        build(&bytes)
        ends.append(bytes.count)
    }

    var isEmpty: Bool { ends.isEmpty }

    /// Appends the command as Redis reads it: `*<count>\r\n`, then `$<length>\r\n<bytes>\r\n`
    /// per argument (RESP), the bytes `redisFormatCommandArgv` makes for the same arguments.
    func encode(to output: inout [UInt8]) {
        output.append(UInt8(ascii: "*"))
        JSONWriter.appendDecimal(UInt64(ends.count), to: &output)
        output.append(UInt8(ascii: "\r"))
        output.append(UInt8(ascii: "\n"))
        bytes.withUnsafeBufferPointer { buffer in
            var start = 0
            for end in ends {
                output.append(UInt8(ascii: "$"))
                JSONWriter.appendDecimal(UInt64(end - start), to: &output)
                output.append(UInt8(ascii: "\r"))
                output.append(UInt8(ascii: "\n"))
                output.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[start..<end]))
                output.append(UInt8(ascii: "\r"))
                output.append(UInt8(ascii: "\n"))
                start = end
            }
        }
    }
}
