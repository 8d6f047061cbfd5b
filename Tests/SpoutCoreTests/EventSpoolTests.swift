@testable import SpoutCore
import XCTest

final class EventSpoolTests: XCTestCase {
    private func event(_ index: Int, payloadSize: Int = 100) -> OutboxEvent {
        OutboxEvent(id: "id-\(index)", topic: "topic.\(index % 3)", key: index % 2 == 0 ? "k\(index)" : nil,
                    type: index % 5 == 0 ? nil : "Type\(index)",
                    payload: Array(repeating: UInt8(index % 251), count: payloadSize), payloadFormat: index % 3 == 0 ? .binary : .json,
                    headers: index % 4 == 0 ? [] : [.init(name: "h\(index)", value: "v\"\(index)")],
                    lsn: .zero, committedAt: PostgresTimestamp(rawValue: Int64(index) * 1_000_000))
    }

    /// Interleaved appends, commits and pops through the file keep every event, in order,
    /// stamped with its own transaction's LSN, and open events are never popped.
    func testOrderAndLSNsSurviveSpillingToDisk() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        var expected: [(id: String, lsn: LSN, event: OutboxEvent)] = []
        var popped: [OutboxEvent] = []
        var next = 0
        var lsn: UInt64 = 1000
        // Transactions of varying size, some far above the memory limit (≈ 230 bytes/event).
        for (round, size) in [1, 5, 3000, 1, 0, 7000, 2, 1200, 1, 1].enumerated() {
            var open: [OutboxEvent] = []
            for _ in 0..<size {
                let e = event(next)
                next += 1
                try spool.append(e)
                open.append(e)
                if next % 7 == 0, let out = try spool.popCommitted() { popped.append(out) }
            }
            XCTAssertEqual(spool.openCount, size)
            lsn += 100
            spool.commit(endLSN: LSN(lsn))
            expected += open.map { ($0.id, LSN(lsn), $0) }
            if round % 3 == 0 { while let out = try spool.popCommitted() { popped.append(out) } }
        }
        while let out = try spool.popCommitted() { popped.append(out) }
        XCTAssertEqual(spool.committedCount, 0)
        XCTAssertEqual(popped.count, expected.count)
        for (out, want) in zip(popped, expected) {
            var stamped = want.event
            stamped.lsn = want.lsn
            XCTAssertEqual(out, stamped)
        }
    }

    func testNothingIsPoppedBeforeCommit() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        for index in 0..<2000 { try spool.append(event(index)) }
        XCTAssertNil(try spool.popCommitted())
        spool.commit(endLSN: LSN(42))
        XCTAssertEqual(try spool.popCommitted()?.lsn, LSN(42))
        XCTAssertEqual(spool.committedCount, 1999)
    }
}
