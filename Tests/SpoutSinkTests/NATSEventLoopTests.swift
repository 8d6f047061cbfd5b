import CNats
import Foundation
@testable import SpoutCore
@testable import SpoutNATS
import XCTest

/// libnats' event-loop requests on the delivery engine's wakeup (the descriptor the relay
/// waits on for the NATS sink): it follows the read/write requests of the connection that
/// owns the registration, and ignores late callbacks of another.
final class NATSEventLoopTests: XCTestCase {
    private func readable(_ descriptor: Int32) -> Bool {
        var ready = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&ready, 1, 0) == 1
    }

    func testFollowsTheOwnersRequestsOnly() throws {
        let wakeup = try DeliveryWakeup()
        let loop = NATSEventLoop(wakeup: wakeup)
        var pair: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair), 0)
        defer { pair.forEach { close($0) } }

        XCTAssertFalse(readable(wakeup.descriptor), "nothing registered, nothing signalled")
        wakeup.signal()
        XCTAssertTrue(readable(wakeup.descriptor), "the sink's wakeup")
        wakeup.drain()
        XCTAssertFalse(readable(wakeup.descriptor))

        XCTAssertEqual(loop.attach(socket: pair[0], owner: 1), NATS_OK)
        XCTAssertFalse(loop.wantsWrite)
        XCTAssertFalse(readable(wakeup.descriptor), "attached for reading, nothing to read")
        _ = write(pair[1], "x", 1)
        XCTAssertTrue(readable(wakeup.descriptor), "the server sent something")
        var byte: UInt8 = 0
        _ = read(pair[0], &byte, 1)
        XCTAssertFalse(readable(wakeup.descriptor))

        XCTAssertEqual(loop.setWriting(true, owner: 2), NATS_OK)
        XCTAssertFalse(loop.wantsWrite, "another connection's request is ignored")
        XCTAssertEqual(loop.setWriting(true, owner: 1), NATS_OK)
        XCTAssertTrue(loop.wantsWrite)
        XCTAssertTrue(readable(wakeup.descriptor), "libnats has bytes and the socket takes them")
        XCTAssertEqual(loop.setWriting(false, owner: 1), NATS_OK)
        XCTAssertFalse(loop.wantsWrite)
        XCTAssertFalse(readable(wakeup.descriptor))

        XCTAssertEqual(loop.setWriting(true, owner: 1), NATS_OK)
        XCTAssertEqual(loop.detach(owner: 2), NATS_OK)
        XCTAssertTrue(loop.wantsWrite, "a late detach of a replaced connection leaves the owner attached")
        XCTAssertEqual(loop.detach(owner: 1), NATS_OK)
        XCTAssertFalse(loop.wantsWrite)
        XCTAssertFalse(readable(wakeup.descriptor), "the socket is out of the set")
        XCTAssertEqual(loop.setWriting(true, owner: 1), NATS_OK, "callbacks after detach do nothing")
        XCTAssertFalse(loop.wantsWrite)
    }

    func testAttachingAClosedSocketFails() throws {
        let wakeup = try DeliveryWakeup()
        let loop = NATSEventLoop(wakeup: wakeup)
        XCTAssertEqual(loop.attach(socket: 1_000_000, owner: 1), NATS_SYS_ERROR)
        XCTAssertFalse(loop.wantsWrite)
        XCTAssertEqual(loop.setWriting(true, owner: 1), NATS_OK, "nothing attached: nothing to change")
        XCTAssertFalse(loop.wantsWrite)
    }
}
