import Foundation
import XCTest
@testable import SpoutCore

/// The engine's wakeup: readable for the relay's POLLIN exactly when the sink has something
/// to do — a deadline passed, its socket ready for what the adapter waits for, a broker
/// callback signalled.
final class DeliveryWakeupTests: XCTestCase {
    private let clock = ContinuousClock()

    private func isReadable(_ wakeup: DeliveryWakeup, within milliseconds: Int32 = 0) -> Bool {
        var descriptor = pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, milliseconds) == 1
    }

    private func socketPair() throws -> (Int32, Int32) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { throw XCTSkip("socketpair failed") }
        return (pair[0], pair[1])
    }

    func testDeadlineWakesOnceThenRearms() throws {
        let wakeup = try DeliveryWakeup()
        XCTAssertFalse(isReadable(wakeup), "nothing to wait for")
        let start = clock.now
        wakeup.arm(start + .milliseconds(50), now: start)
        XCTAssertFalse(isReadable(wakeup))
        XCTAssertTrue(isReadable(wakeup, within: 2000))
        XCTAssertGreaterThanOrEqual(clock.now - start, .milliseconds(45))
        // The sink looked and has nothing due: the expired timer must stop waking the relay.
        wakeup.arm(nil, now: clock.now)
        XCTAssertFalse(isReadable(wakeup, within: 20))
        // A later deadline after an earlier one keeps the earlier (an early wake costs a look).
        let now = clock.now
        wakeup.arm(now + .milliseconds(30), now: now)
        wakeup.arm(now + .seconds(60), now: now)
        XCTAssertTrue(isReadable(wakeup, within: 2000))
        // A deadline already past wakes at once.
        wakeup.arm(clock.now - .seconds(1), now: clock.now)
        XCTAssertTrue(isReadable(wakeup, within: 100))
    }

    func testSocketWakesForWhatTheAdapterWaitsFor() throws {
        let wakeup = try DeliveryWakeup()
        let (ours, server) = try socketPair()
        defer { close(server) }
        // Connecting, or commands waiting: a writable socket wakes the relay, though it polls for POLLIN only.
        wakeup.watch(socket: ours, connection: 1, reading: false, writing: true)
        XCTAssertTrue(isReadable(wakeup))
        wakeup.watch(socket: ours, connection: 1, reading: true, writing: false)
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
        wakeup.watch(socket: next, connection: 2, reading: true, writing: false)
        XCTAssertFalse(isReadable(wakeup))
        XCTAssertEqual(write(nextServer, &byte, 1), 1)
        XCTAssertTrue(isReadable(wakeup, within: 1000), "the new connection's reply")
        wakeup.watch(socket: nil, connection: 2, reading: false, writing: false)
        XCTAssertFalse(isReadable(wakeup), "disconnected: the socket is out of the set")
    }

    func testSignalFromAnotherThreadWakesUntilDrained() throws {
        let wakeup = try DeliveryWakeup()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            for _ in 0..<1000 { wakeup.signal() }
            done.signal()
        }
        thread.start()
        XCTAssertTrue(isReadable(wakeup, within: 2000))
        // Once the thread is done and the pipe drained, nothing is left to wake for.
        done.wait()
        wakeup.drain()
        XCTAssertFalse(isReadable(wakeup))
        // A library that writes to the descriptor itself (librdkafka: one byte).
        var byte: UInt8 = 1
        XCTAssertEqual(write(wakeup.signalDescriptor, &byte, 1), 1)
        XCTAssertTrue(isReadable(wakeup))
        wakeup.drain()
        XCTAssertFalse(isReadable(wakeup))
    }

    func testIncludedDescriptorWakes() throws {
        let wakeup = try DeliveryWakeup()
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]); close(fds[1]) }
        try wakeup.include(fds[0])
        XCTAssertFalse(isReadable(wakeup))
        var byte: UInt8 = 1
        XCTAssertEqual(write(fds[1], &byte, 1), 1)
        XCTAssertTrue(isReadable(wakeup))
    }
}
