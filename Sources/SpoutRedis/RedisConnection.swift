import SpoutCore
import CHiredis
import Foundation

/// One non-blocking hiredis connection. It owns the `redisContext` (freed, socket closed, on
/// deinit) and only moves bytes: commands are buffered by `append`, written by `write`,
/// replies read by `read` and handed out in order by `withNextReply`. What the replies mean
/// is `RedisStreamSink`'s business.
final class RedisConnection {
    /// An I/O or protocol failure; the connection is unusable afterwards.
    struct Failure: Error {
        var reason: String
    }

    private let context: UnsafeMutablePointer<redisContext>
    /// Commands appended and not yet fully handed to the kernel.
    private(set) var hasUnwrittenOutput = false

    /// Starts a TCP connect without waiting for it (`finishConnect` tells when it is done).
    init(connectingTo host: String, port: Int32) throws(Failure) {
        guard let context = redisConnectNonBlock(host, port) else { throw Failure(reason: "out of memory") }
        if context.pointee.err != 0 {
            let reason = Self.errorText(context)
            redisFree(context)
            throw Failure(reason: reason)
        }
        self.context = context
    }

    deinit { redisFree(context) }

    var descriptor: Int32 { context.pointee.fd }

    /// Whether the non-blocking connect has completed; throws when it failed (refused, unreachable).
    func finishConnect() throws(Failure) -> Bool {
        try SocketStatus.connectFinished(descriptor).mapError { Failure(reason: $0.description) }.get()
    }

    /// Buffers one command (nothing is written yet).
    func append(_ command: inout RedisCommand) throws(Failure) {
        let appended = command.withArguments { count, arguments, lengths in
            redisAppendCommandArgv(context, count, arguments, lengths)
        }
        guard appended == REDIS_OK else { throw Failure(reason: Self.errorText(context)) }
        hasUnwrittenOutput = true
    }

    /// Writes buffered commands until all are written or the socket is full; `true` when all are.
    @discardableResult
    func write() throws(Failure) -> Bool {
        while hasUnwrittenOutput {
            var done: Int32 = 0
            errno = 0
            guard redisBufferWrite(context, &done) == REDIS_OK else { throw Failure(reason: Self.errorText(context)) }
            hasUnwrittenOutput = done == 0
            if hasUnwrittenOutput, errno == EAGAIN || errno == EWOULDBLOCK { return false }
        }
        return true
    }

    /// Waits up to `milliseconds` until the socket is ready for `events`; `true` when it is
    /// (or has an error or hang-up, which the next read or write reports).
    func waitFor(_ events: Int16, milliseconds: Int32) throws(Failure) -> Bool {
        try SocketStatus.wait(descriptor, for: events, milliseconds: milliseconds).mapError { Failure(reason: $0.description) }.get()
    }

    /// Reads what the socket holds (up to 1 MiB per call) into hiredis' reply parser.
    func read() throws(Failure) {
        for _ in 0..<64 {
            guard try waitFor(Int16(POLLIN), milliseconds: 0) else { return }
            guard redisBufferRead(context) == REDIS_OK else { throw Failure(reason: Self.errorText(context)) }
        }
    }

    /// Passes the next complete reply to `body`; `false` when no complete reply is buffered.
    func withNextReply(_ body: (RedisReply) -> Void) throws(Failure) -> Bool {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { throw Failure(reason: Self.errorText(context)) }
        guard let raw else { return false }
        defer { freeReplyObject(raw) }
        body(RedisReply(raw.assumingMemoryBound(to: redisReply.self)))
        return true
    }

    /// Why the context failed, as hiredis describes it (never contains credentials).
    var failureReason: String { Self.errorText(context) }

    private static func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        let text = withUnsafeBytes(of: context.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        if !text.isEmpty { return text }
        return context.pointee.err == REDIS_ERR_EOF ? "the server closed the connection" : "I/O error"
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
    private var pointers: [UnsafePointer<CChar>?] = []
    private var lengths: [Int] = []

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

    /// Calls `body` with argc, argv and argvlen as `redisAppendCommandArgv` takes them.
    fileprivate mutating func withArguments(
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> Int32
    ) -> Int32 {
        var pointers = [UnsafePointer<CChar>?]()
        var lengths = [Int]()
        swap(&pointers, &self.pointers)
        swap(&lengths, &self.lengths)
        defer {
            swap(&pointers, &self.pointers)
            swap(&lengths, &self.lengths)
        }
        pointers.removeAll(keepingCapacity: true)
        lengths.removeAll(keepingCapacity: true)
        guard !ends.isEmpty else { return REDIS_ERR }
        return bytes.withUnsafeBufferPointer { buffer in
            guard let address = buffer.baseAddress else { return REDIS_ERR }
            let base = UnsafeRawPointer(address).assumingMemoryBound(to: CChar.self)
            var start = 0
            for end in ends {
                pointers.append(base + start)
                lengths.append(end - start)
                start = end
            }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    guard let argv = argv.baseAddress, let argvlen = argvlen.baseAddress else { return REDIS_ERR }
                    return body(Int32(ends.count), argv, argvlen)
                }
            }
        }
    }
}
