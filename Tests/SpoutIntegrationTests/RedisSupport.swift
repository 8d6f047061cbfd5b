import CHiredis
import Foundation
import SpoutCore
import XCTest

/// A `redis-server` of the test's own: a free 127.0.0.1 port, a temporary directory, the AOF
/// fsynced on every write and no RDB snapshots. `kill()` (SIGKILL) and `start()` again reuse
/// the port and the directory, so the restarted server loads what the killed one persisted.
/// With `tls` it also listens with TLS on `tlsPort` (spout's `rediss://`, `tlsURL`); the plain
/// port stays, for the tests' own `RedisClient`.
final class RedisServer {
    static let executable = "/usr/bin/redis-server"

    /// The server side of TLS (issue 15): its certificate and key, the CA it checks client
    /// certificates against, and whether it requires one (`--tls-auth-clients`).
    struct TLS {
        var certificate: String
        var key: String
        var ca: String
        var requireClientCertificate = false

        /// server.crt for localhost and 127.0.0.1, signed by the tests' CA.
        static func good(_ certificates: TestCertificates, requireClientCertificate: Bool = false) -> TLS {
            TLS(certificate: certificates.server, key: certificates.serverKey, ca: certificates.ca,
                requireClientCertificate: requireClientCertificate)
        }
    }

    let port: Int32
    let tlsPort: Int32
    let directory: URL
    let password: String?
    /// Read at each `start()`: a restart may bring another certificate.
    var tls: TLS?
    private var process: Process?

    /// - Parameter start: `false` leaves the port closed until `start()`.
    init(password: String? = nil, tls: TLS? = nil, start: Bool = true) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.executable) else {
            throw XCTSkipFailure("\(Self.executable) is missing: apt-get install redis-server")
        }
        port = Int32(try freeLoopbackPort())
        tlsPort = tls == nil ? 0 : Int32(try freeLoopbackPort())
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.password = password
        self.tls = tls
        if start { try self.start() }
    }

    /// `rediss://[:password@]HOST:tlsPort`; the certificates are for localhost and 127.0.0.1.
    func tlsURL(host: String = "127.0.0.1") -> String { "rediss://\(password.map { ":\($0)@" } ?? "")\(host):\(tlsPort)" }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    /// `redis://[:password@]127.0.0.1:port`
    var url: String { "redis://\(password.map { ":\($0)@" } ?? "")127.0.0.1:\(port)" }

    var isRunning: Bool { process?.isRunning ?? false }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = [
            "--port", "\(port)", "--bind", tls == nil ? "127.0.0.1" : "127.0.0.1 -::1", "--dir", directory.path,
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", directory.appendingPathComponent("redis.log").path,
        ] + (password.map { ["--requirepass", $0] } ?? []) + (tls.map { tls in
            ["--tls-port", "\(tlsPort)", "--tls-cert-file", tls.certificate, "--tls-key-file", tls.key,
             "--tls-ca-cert-file", tls.ca, "--tls-auth-clients", tls.requireClientCertificate ? "yes" : "no"]
        } ?? [])
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if let client = try? client(), (try? client.command("PING")) == .status("PONG") { return }
            guard process.isRunning else { break }
            usleep(20_000)
        }
        let log = (try? String(contentsOf: directory.appendingPathComponent("redis.log"), encoding: .utf8)) ?? ""
        kill()
        throw XCTSkipFailure("redis-server on port \(port) did not come up:\n\(log.suffix(2000))")
    }

    func signal(_ number: Int32) {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, number)
    }

    /// SIGKILL, as a crash: only what the AOF holds survives.
    func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func client() throws -> RedisClient { try RedisClient(port: port, password: password) }

    /// Whether a client connection holds bytes the server has not read yet: with the server
    /// stopped (SIGSTOP), a command is in flight and unanswered. Read from /proc/net/tcp
    /// (the server's side of each connection, its receive queue).
    var hasUnreadInput: Bool {
        get throws { try hasUnreadInput(onPort: port) }
    }

    /// `hasUnreadInput` for the connections to `port` (`tlsPort`: spout's `rediss://` ones).
    func hasUnreadInput(onPort port: Int32) throws -> Bool {
        let table = try procFile("/proc/net/tcp")
        let local = String(format: "0100007F:%04X", port)
        return table.split(separator: "\n").dropFirst().contains { line in
            let columns = line.split(separator: " ")
            // sl, local_address, rem_address, st (01: established), tx_queue:rx_queue
            guard columns.count > 4, columns[1] == local, columns[3] == "01" else { return false }
            let queues = columns[4].split(separator: ":")
            return queues.count == 2 && (UInt64(queues[1], radix: 16) ?? 0) > 0
        }
    }
}

/// A reply, as the tests look at it.
enum RedisValue: Equatable {
    case string(String)
    case status(String)
    case error(String)
    case integer(Int)
    case array([RedisValue])
    case null

    var text: String? {
        switch self {
        case let .string(text), let .status(text): text
        default: nil
        }
    }
}

/// A stream entry: its id and its fields (each field once in Spout's entries).
struct StreamEntry {
    var id: String
    var fields: [String: String]
    var fieldNames: [String]
}

/// A blocking hiredis connection for the tests' own look at Redis.
final class RedisClient {
    private let context: UnsafeMutablePointer<redisContext>

    init(port: Int32, password: String? = nil) throws {
        guard let context = redisConnectWithTimeout("127.0.0.1", port, timeval(tv_sec: 2, tv_usec: 0)) else {
            throw XCTSkipFailure("redisConnect returned nothing")
        }
        if context.pointee.err != 0 {
            let reason = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            redisFree(context)
            throw XCTSkipFailure("cannot connect to redis on port \(port): \(reason)")
        }
        redisSetTimeout(context, timeval(tv_sec: 10, tv_usec: 0))
        self.context = context
        if let password {
            let reply = try command("AUTH", password)
            guard reply == .status("OK") else { throw XCTSkipFailure("AUTH: \(reply)") }
        }
    }

    deinit { redisFree(context) }

    @discardableResult
    func command(_ arguments: String...) throws -> RedisValue { try command(arguments) }

    func command(_ arguments: [String]) throws -> RedisValue {
        let copies = arguments.compactMap { strdup($0) }
        defer { copies.forEach { free($0) } }
        guard copies.count == arguments.count else { throw XCTSkipFailure("out of memory") }
        var pointers = copies.map { UnsafePointer<CChar>?(UnsafePointer($0)) }
        var lengths = arguments.map { $0.utf8.count }
        let raw = pointers.withUnsafeMutableBufferPointer { argv in
            lengths.withUnsafeMutableBufferPointer { argvlen in
                redisCommandArgv(context, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
            }
        }
        guard let raw else {
            let reason = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw XCTSkipFailure("redis \(arguments.first ?? ""): \(reason)")
        }
        defer { freeReplyObject(raw) }
        return Self.value(raw.assumingMemoryBound(to: redisReply.self))
    }

    private static func value(_ reply: UnsafePointer<redisReply>) -> RedisValue {
        func text() -> String {
            guard let string = reply.pointee.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: string, count: reply.pointee.len), as: UTF8.self)
        }
        switch reply.pointee.type {
        case REDIS_REPLY_STRING: return .string(text())
        case REDIS_REPLY_STATUS: return .status(text())
        case REDIS_REPLY_ERROR: return .error(text())
        case REDIS_REPLY_INTEGER: return .integer(Int(reply.pointee.integer))
        case REDIS_REPLY_ARRAY:
            return .array((0..<reply.pointee.elements).map { index in
                reply.pointee.element[index].map { value(UnsafePointer($0)) } ?? .null
            })
        default: return .null
        }
    }

    /// Every entry of a stream, oldest first.
    func entries(_ stream: String) throws -> [StreamEntry] {
        guard case let .array(items) = try command("XRANGE", stream, "-", "+") else { return [] }
        return items.compactMap { item in
            guard case let .array(parts) = item, parts.count == 2, let id = parts[0].text, case let .array(pairs) = parts[1] else { return nil }
            var fields: [String: String] = [:]
            var names: [String] = []
            for index in stride(from: 0, to: pairs.count - 1, by: 2) {
                guard let name = pairs[index].text, let value = pairs[index + 1].text else { continue }
                fields[name] = value
                names.append(name)
            }
            return StreamEntry(id: id, fields: fields, fieldNames: names)
        }
    }

    /// The keys matching `pattern`, sorted.
    func keys(_ pattern: String) throws -> [String] {
        guard case let .array(items) = try command("KEYS", pattern) else { return [] }
        return items.compactMap(\.text).sorted()
    }

    /// Entries in all streams matching `pattern`.
    func totalLength(_ pattern: String) throws -> Int {
        try keys(pattern).reduce(0) { total, key in
            if case let .integer(length) = try command("XLEN", key) { return total + length }
            return total
        }
    }
}

/// A /proc file read to its end: they report size 0, and Foundation then stops after one page.
func procFile(_ path: String) throws -> String {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { throw XCTSkipFailure("\(path): \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = read(descriptor, &chunk, chunk.count)
        if count < 0, errno == EINTR { continue }
        guard count >= 0 else { throw XCTSkipFailure("\(path): \(String(cString: strerror(errno)))") }
        if count == 0 { return String(decoding: bytes, as: UTF8.self) }
        bytes += chunk[0..<count]
    }
}

/// Writes `transactions` transactions of 5 rows (keys k0…k6, payload {"seq": n}) on a thread;
/// the second half waits for `releaseSecondHalf()`: it is what a stopped Redis leaves
/// unanswered (the restart tests, plain and TLS).
final class HalfHeldWriter {
    let written = LockedBox<Set<String>>([])
    private let secondHalf = DispatchSemaphore(value: 0)
    private var thread: Thread?

    init(_ outbox: OutboxFixture, transactions: Int) {
        let (written, secondHalf) = (written, secondHalf)
        let thread = Thread {
            guard let connection = try? TestDatabase.connect() else { return }
            for index in 0..<transactions {
                if index == transactions / 2 { secondHalf.wait() }
                if let ids = try? outbox.insert(connection, rows: 5, key: { "k\((index * 5 + $0) % 7)" },
                                                payload: { "{\"seq\": \(index * 5 + $0)}" }) {
                    written.mutate { $0.formUnion(ids) }
                }
                usleep(3_000)
            }
        }
        self.thread = thread
        thread.start()
    }

    /// Lets the second half go (again is harmless: call it in a `defer` too).
    func releaseSecondHalf() { secondHalf.signal() }

    var isFinished: Bool { thread?.isFinished ?? true }
}

extension RedisServer {
    /// Once `firstHalf` entries are in Redis (the reply to the first half's last batch went out
    /// with them, so no batch is half-answered), stops Redis, releases the writer's second half,
    /// and kills Redis as soon as a batch of it surely waits in the socket to `port`, unanswered.
    func killWithBatchInFlight(_ writer: HalfHeldWriter, firstHalf: Int, port: Int32) throws {
        var client = try client()
        try eventually("the first half in Redis") { try client.totalLength("*") >= firstHalf }
        signal(SIGSTOP)
        writer.releaseSecondHalf()
        try eventually("a batch in flight to the stopped Redis") { try hasUnreadInput(onPort: port) }
        kill()
    }
}
