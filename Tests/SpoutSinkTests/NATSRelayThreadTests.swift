import Foundation
@testable import SpoutCore
@testable import SpoutNATS
import XCTest

/// The NATS sink's `poll` runs on the relay thread, which owes PostgreSQL a status update
/// every second: it must never wait for the network, however the server misbehaves.
final class NATSRelayThreadTests: XCTestCase {
    /// A "server" that accepts TCP connections (the kernel completes them into the listen
    /// backlog) but never says a word, like a hung nats-server: each connect attempt takes
    /// the whole connect timeout (2 s). Reconnecting goes on meanwhile, off the relay thread.
    func testPollDoesNotWaitForAHungServer() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(listener, 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 64) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        XCTAssertTrue(listening, String(cString: strerror(errno)))

        // Connecting at startup may block (the relay has not started): it times out into an outage.
        let sink = try NATSJetStreamSink(url: "nats://127.0.0.1:\(UInt16(bigEndian: address.sin_port))", options: SinkOptions(),
                                         log: Log(level: .error))
        defer { sink.close() }
        let wakeup = try XCTUnwrap(sink.wakeupDescriptor)
        let clock = ContinuousClock()
        let end = clock.now + .seconds(3)
        var longest = Duration.zero
        var polls = 0
        while clock.now < end {
            let started = clock.now
            try sink.poll { _ in XCTFail("nothing was sent") }
            longest = max(longest, clock.now - started)
            polls += 1
            // As the relay does: sleep until the sink's wakeup or the next status update.
            var ready = pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&ready, 1, 1000)
        }
        // The rule is the status interval (1 s); connecting to the hung server would block for its 2 s timeout.
        XCTAssertLessThan(longest, .seconds(1), "a poll waited for the hung server")
        // Reconnect attempts wake the relay (backoff deadlines, failed connects), but it sleeps in between.
        XCTAssertLessThan(polls, 120, "the relay was woken \(polls) times in 3 s")
    }
}
