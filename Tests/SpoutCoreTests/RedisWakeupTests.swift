import Foundation
import XCTest
@testable import SpoutCore

/// The Redis sink's wakeup: readable for the relay's POLLIN exactly when the sink has
/// something to do — a deadline passed, its socket ready for what the sink waits for.
final class RedisWakeupTests: XCTestCase {
    private let clock = ContinuousClock()

    private func isReadable(_ wakeup: RedisWakeup, within milliseconds: Int32 = 0) -> Bool {
        var descriptor = pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, milliseconds) == 1
    }

    private func socketPair() throws -> (Int32, Int32) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { throw XCTSkip("socketpair failed") }
        return (pair[0], pair[1])
    }

    func testDeadlineWakesOnceThenRearms() throws {
        let wakeup = try RedisWakeup()
        XCTAssertFalse(isReadable(wakeup), "nothing to wait for")
        let start = clock.now
        wakeup.watch(socket: nil, connection: 0, reading: false, writing: false, until: start + .milliseconds(50), now: start)
        XCTAssertFalse(isReadable(wakeup))
        XCTAssertTrue(isReadable(wakeup, within: 2000))
        XCTAssertGreaterThanOrEqual(clock.now - start, .milliseconds(45))
        // The sink looked and has nothing due: the expired timer must stop waking the relay.
        wakeup.watch(socket: nil, connection: 0, reading: false, writing: false, until: nil, now: clock.now)
        XCTAssertFalse(isReadable(wakeup, within: 20))
        // A later deadline after an earlier one keeps the earlier (an early wake costs a look).
        let now = clock.now
        wakeup.watch(socket: nil, connection: 0, reading: false, writing: false, until: now + .milliseconds(30), now: now)
        wakeup.watch(socket: nil, connection: 0, reading: false, writing: false, until: now + .seconds(60), now: now)
        XCTAssertTrue(isReadable(wakeup, within: 2000))
        // A deadline already past wakes at once.
        wakeup.watch(socket: nil, connection: 0, reading: false, writing: false, until: clock.now - .seconds(1), now: clock.now)
        XCTAssertTrue(isReadable(wakeup, within: 100))
    }

    func testSocketWakesForWhatTheSinkWaitsFor() throws {
        let wakeup = try RedisWakeup()
        let (ours, server) = try socketPair()
        defer { close(server) }
        // Connecting, or commands waiting: a writable socket wakes the relay, though it polls for POLLIN only.
        wakeup.watch(socket: ours, connection: 1, reading: false, writing: true, until: nil, now: clock.now)
        XCTAssertTrue(isReadable(wakeup))
        wakeup.watch(socket: ours, connection: 1, reading: true, writing: false, until: nil, now: clock.now)
        XCTAssertFalse(isReadable(wakeup), "waiting for a reply")
        var byte: UInt8 = 43
        XCTAssertEqual(write(server, &byte, 1), 1)
        XCTAssertTrue(isReadable(wakeup, within: 1000), "a reply arrived")
        XCTAssertEqual(read(ours, &byte, 1), 1)
        XCTAssertFalse(isReadable(wakeup))

        // The connection closes; the next one may get the same descriptor number.
        close(ours)
        let (next, nextServer) = try socketPair()
        defer { close(next); close(nextServer) }
        wakeup.watch(socket: next, connection: 2, reading: true, writing: false, until: nil, now: clock.now)
        XCTAssertFalse(isReadable(wakeup))
        XCTAssertEqual(write(nextServer, &byte, 1), 1)
        XCTAssertTrue(isReadable(wakeup, within: 1000), "the new connection's reply")
        wakeup.watch(socket: nil, connection: 2, reading: false, writing: false, until: nil, now: clock.now)
        XCTAssertFalse(isReadable(wakeup), "disconnected: the socket is out of the set")
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
}
