import Foundation
import SpoutCore
import XCTest

/// Two `spout run` processes on one slot: one streams, the other waits as a standby and takes
/// over when the first dies. On a server of this class's own (the kills leave walsenders
/// behind for a moment; nothing else should see them).
final class StandbyTests: XCTestCase {
    nonisolated(unsafe) static var server: PrivateServer?
    nonisolated(unsafe) static var startFailure = ""

    override class func setUp() {
        super.setUp()
        do { server = try PrivateServer.start("standby-tests") } catch { startFailure = "\(error)" }
    }

    override class func tearDown() {
        server?.stop()
        server = nil
        super.tearDown()
    }

    private func privateServer() throws -> PrivateServer {
        guard let server = Self.server else { throw XCTSkipFailure("scripts/pg-start standby-tests did not start a server: \(Self.startFailure)") }
        return server
    }

    /// kill -9 the active instance five times in a row, restarting it each time (so the roles
    /// swap): the standby takes over, nothing is lost, duplicates only across instances (the
    /// killed one's unconfirmed events), none within one instance's output.
    func testStandbyTakesOverFiveKillsInARow() throws {
        let outbox = try PrivateOutbox(try privateServer(), prefix: "standby")
        var active = try SpoutProcess(outbox.arguments())
        eventually(timeout: 60, "the first instance streams: \(active.stderr)") { active.stderr.contains("streaming") }
        var standby = try SpoutProcess(outbox.arguments())
        eventually(timeout: 60, "the second instance stands by: \(standby.stderr)") { !standby.logLines(containing: "standby: slot").isEmpty }
        XCTAssertEqual(standby.logLines(containing: "standby: slot").count, 1)
        XCTAssertTrue(standby.logLines(containing: "standby: slot").first?.contains("is held by pid") ?? false, standby.stderr)
        let writer = SteadyWriter(url: outbox.server.url, table: outbox.table)
        writer.start()
        defer { writer.stop() }
        var finished: [SpoutProcess] = []
        var takeovers: [(line: Double, event: Double)] = []
        for round in 1...5 {
            eventually(timeout: 60, "round \(round): the active instance delivers") { active.lines.count >= 20 }
            let before = standby.lines.count
            active.signal(SIGKILL)
            let killed = Date()
            active.process.waitUntilExit()
            var tookOver: Double?
            var firstEvent: Double?
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, tookOver == nil || firstEvent == nil {
                if tookOver == nil, !standby.logLines(containing: "taking over slot").isEmpty { tookOver = Date().timeIntervalSince(killed) }
                if firstEvent == nil, standby.lines.count > before { firstEvent = Date().timeIntervalSince(killed) }
                usleep(5_000)
            }
            let line = try XCTUnwrap(tookOver, "round \(round): the standby took over: \(standby.stderr)")
            let event = try XCTUnwrap(firstEvent, "round \(round): events flow from the new active instance")
            takeovers.append((line, event))
            XCTAssertEqual(standby.logLines(containing: "taking over slot").count, 1, standby.stderr)
            finished.append(active)
            // The killed one comes back and stands by; the roles swap.
            active = standby
            standby = try SpoutProcess(outbox.arguments())
            eventually(timeout: 60, "round \(round): the restarted instance stands by: \(standby.stderr)") {
                !standby.logLines(containing: "standby: slot").isEmpty
            }
        }
        writer.waitForMore(50)
        writer.stop()
        let committed = try outbox.committedIDs()
        let everyone = finished + [active, standby]
        eventually(timeout: 60, "every committed row arrives in one output or another") {
            Set(everyone.flatMap(\.eventIDs)).isSuperset(of: committed)
        }
        for instance in everyone {
            XCTAssertEqual(duplicates(in: instance.eventIDs), [], "none twice within one instance's output")
        }
        let all = everyone.flatMap(\.eventIDs)
        print("standby: \(committed.count) events, \(all.count - Set(all).count) delivered again after the 5 kills")
        for (round, takeover) in takeovers.enumerated() {
            print(String(format: "standby takeover %d: kill → \"taking over\" %.3f s, → first event %.3f s", round + 1, takeover.line, takeover.event))
        }
        let slowest = takeovers.map(\.line).max() ?? 0
        XCTAssertLessThan(slowest, 2.0, "takeover within 2 s of the kill: \(takeovers)")
        active.signal(SIGTERM)
        standby.signal(SIGTERM)
        XCTAssertEqual(active.waitForExit(timeout: 60), 0, active.stderr)
        XCTAssertEqual(standby.waitForExit(timeout: 60), 0, "a standby stops on request: \(standby.stderr)")
    }

    /// `--no-standby`: today's error, at once.
    func testNoStandbyFailsWithTheSlotInUseMessage() throws {
        let outbox = try PrivateOutbox(try privateServer(), prefix: "nostandby")
        let active = try SpoutProcess(outbox.arguments())
        eventually(timeout: 60, "the first instance streams: \(active.stderr)") { active.stderr.contains("streaming") }
        let second = try SpoutProcess(outbox.arguments() + ["--no-standby"])
        let error = second.waitForFailure(timeout: 30)
        XCTAssertTrue(error.contains("replication slot \"\(outbox.slot)\" is in use by \"spout run host="), error)
        XCTAssertTrue(second.logLines(containing: "standby: slot").isEmpty, second.stderr)
        active.signal(SIGTERM)
        XCTAssertEqual(active.waitForExit(timeout: 60), 0, active.stderr)
    }
}
