import CHiredis
import XCTest
@testable import SpoutCore
@testable import SpoutRedis

/// The one sink URL parser (`SinkURL`), what the Redis sink reads from it (`RedisURL`), and
/// Redis stream entry ids.
final class RedisURLTests: XCTestCase {
    private func parse(_ url: String) throws -> SinkURL { try SinkURL(url, usage: "test://host") }

    func testSinkURLParts() throws {
        let full = try parse("NATS://us%40er:p%3Ass@h1:4222, nats://[::1]:4223,h3/path?a=1&password=x")
        XCTAssertEqual(full.scheme, "nats")
        XCTAssertEqual(full.user, "us@er")
        XCTAssertEqual(full.password, "p:ss")
        XCTAssertEqual(full.servers, [.init(host: "h1", port: 4222), .init(host: "::1", port: 4223), .init(host: "h3", port: nil)])
        XCTAssertEqual(full.path, "path")
        XCTAssertEqual(full.query.map { "\($0.name)=\($0.value)" }, ["a=1", "password=x"])
        XCTAssertEqual(full.description, "nats://us@er:***@h1:4222,[::1]:4223,h3/path?a=1&password=***")
        XCTAssertEqual(full.servers[1].address(defaultPort: 1), "[::1]:4223")
        XCTAssertEqual(full.servers[2].address(defaultPort: 4222), "h3:4222")

        let token = try parse("nats://s3cret@h")
        XCTAssertEqual(token.user, "s3cret")
        XCTAssertNil(token.password)
        XCTAssertEqual(token.description, "nats://***@h")

        let bare = try parse("kafka://h:9092/")
        XCTAssertNil(bare.user)
        XCTAssertEqual(bare.path, "")
        XCTAssertEqual(try parse("redis://:p/w,@h").password, "p/w,", "the userinfo ends at the last @")
    }

    func testSinkURLErrorsHideSecrets() {
        for (url, expected) in [
            ("h:1", "not a sink URL"), ("redis://:s3cret@h:x", "port"), ("redis://:s3cret@h:0", "port"),
            ("redis://:s3cret@h:70000", "port"), ("redis://:s3cret@:1", "host"), ("nats://:s3cret@h1,,h2", "host"),
            ("redis://:s3cret%zz@h", "%-escape"), ("redis://:s3cret@[::1", "]"), ("redis://:s3cret@h#x", "fragment"),
            ("nats://:s3cret@h,kafka://h2", "nats://"),
        ] {
            XCTAssertThrowsError(try parse(url), url) { error in
                guard case let SpoutError.invalidOption(message) = error else { return XCTFail("\(url): \(error)") }
                XCTAssertTrue(message.contains(expected), message)
                XCTAssertFalse(message.contains("s3cret"), message)
                XCTAssertTrue(message.hasSuffix("(expected test://host)"), message)
            }
        }
    }

    func testRedisURL() throws {
        XCTAssertEqual(try RedisURL(parsing: "redis://127.0.0.1"), RedisURL(host: "127.0.0.1"))
        XCTAssertEqual(try RedisURL(parsing: "redis://:pw@h:7000/3"), RedisURL(host: "h", port: 7000, password: "pw", database: 3))
        XCTAssertEqual(try RedisURL(parsing: "redis://u:p%40w@[::1]/"), RedisURL(host: "::1", user: "u", password: "p@w"))
        XCTAssertEqual(try RedisURL(parsing: "redis://[::1]:7000").address, "[::1]:7000")
        XCTAssertEqual(try RedisURL(parsing: "rediss://h"), RedisURL(host: "h", tls: true), "rediss://: TLS, the same default port")
        XCTAssertEqual(try RedisURL(parsing: "REDISS://:pw@redis.example.com:6380/2"),
                       RedisURL(host: "redis.example.com", port: 6380, password: "pw", database: 2, tls: true))
        for (url, expected) in [
            ("nats://h", "not a redis:// or rediss:// URL"), ("rediss://:s3cret@h:x", "port"), ("redis://h?timeout=1", "query"),
            ("redis://h1,h2", "one server"), ("redis://user@h", "no password"), ("redis://u:@h", "empty"),
            ("redis://h/zero", "database"), ("redis://h/-1", "database"),
        ] {
            XCTAssertThrowsError(try RedisURL(parsing: url), url) { error in
                guard case let SpoutError.invalidOption(message) = error else { return XCTFail("\(url): \(error)") }
                XCTAssertTrue(message.contains(expected), message)
            }
        }
    }

    func testEntryIDsOrderAsRedisDoes() {
        XCTAssertEqual(RedisEntryID("22048296-0")?.description, "22048296-0")
        XCTAssertLessThan(RedisEntryID(lsn: 22_048_296, position: 7), RedisEntryID(lsn: 22_048_297, position: 0))
        XCTAssertLessThan(RedisEntryID(lsn: 22_048_296, position: 1), RedisEntryID("22048296-2")!)
        XCTAssertLessThan(RedisEntryID(lsn: 22_048_296, position: 0), RedisEntryID("1796134169928-0")!)
        for malformed in ["", "1", "1-", "-1", "a-1", "1-2-3", "18446744073709551616-0"] {
            XCTAssertNil(RedisEntryID(malformed), malformed)
        }
    }

    /// `RedisCommand.encode` writes exactly what hiredis' `redisFormatCommandArgv` makes.
    func testCommandEncodingIsHiredis() throws {
        let payload = [UInt8](repeating: 0x7B, count: 70_000) + [0, 13, 10, 255]
        let commands: [[[UInt8]]] = [
            [Array("PING".utf8)],
            [Array("XADD".utf8), Array("outbox.event.order".utf8), Array("*".utf8), Array("id".utf8), [], Array("payload".utf8), payload],
            (0..<12).map { Array("argument \($0)".utf8) },
        ]
        for arguments in commands {
            var command = RedisCommand()
            for argument in arguments { command.add(argument) }
            var encoded: [UInt8] = [1, 2] // appends after what the buffer holds
            command.encode(to: &encoded)

            var formatted: UnsafeMutablePointer<CChar>?
            let copies = arguments.map { Data($0) }
            let length = try copies.withPointers { argv, argvlen in
                redisFormatCommandArgv(&formatted, Int32(arguments.count), argv, argvlen)
            }
            let hiredis = try XCTUnwrap(formatted)
            defer { redisFreeCommand(hiredis) }
            XCTAssertEqual(encoded, [1, 2] + Array(UnsafeRawBufferPointer(start: hiredis, count: Int(length))))
        }
    }
}

private extension Array where Element == Data {
    /// argv and argvlen as hiredis takes them, valid inside `body`.
    func withPointers<Result>(_ body: (UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> Result) throws -> Result {
        let buffers = map { data -> UnsafeMutableRawBufferPointer in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(1, data.count), alignment: 1)
            data.copyBytes(to: buffer.bindMemory(to: UInt8.self))
            return buffer
        }
        defer { buffers.forEach { $0.deallocate() } }
        var argv: [UnsafePointer<CChar>?] = buffers.map { $0.baseAddress.map { UnsafePointer($0.assumingMemoryBound(to: CChar.self)) } }
        let argvlen = map(\.count)
        return try argv.withUnsafeMutableBufferPointer { argv in
            try argvlen.withUnsafeBufferPointer { lengths in
                body(try XCTUnwrap(argv.baseAddress), try XCTUnwrap(lengths.baseAddress))
            }
        }
    }
}
