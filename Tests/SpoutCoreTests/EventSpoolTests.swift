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

    private func pop(_ spool: EventSpool) throws -> OutboxEvent? {
        var out: OutboxEvent?
        var decodeFailed = false
        let popped = try spool.popCommitted { record, commit in
            out = SpooledEvent.decode(record, lsn: commit.endLSN)
            decodeFailed = out == nil
        }
        XCTAssertFalse(decodeFailed, "a spooled record did not decode")
        XCTAssertEqual(popped, out != nil || decodeFailed)
        return out
    }

    /// Interleaved appends, commits and pops through the file keep every event, in order,
    /// with its own transaction's LSN, and open events are never popped.
    func testOrderAndLSNsSurviveSpillingToDisk() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        var expected: [OutboxEvent] = []
        var popped: [OutboxEvent] = []
        var next = 0
        var lsn: UInt64 = 1000
        // Transactions of varying size, some far above the memory limit (≈ 150 bytes/event),
        // some events far above the file's read size.
        for (round, size) in [1, 5, 3000, 1, 0, 7000, 2, 1200, 1, 1, 9000].enumerated() {
            var open: [OutboxEvent] = []
            for _ in 0..<size {
                let e = event(next, payloadSize: next % 997 == 0 ? 200_000 : 100)
                next += 1
                try spool.append { SpooledEvent.encode(e, into: &$0) }
                open.append(e)
                if next % 7 == 0, let out = try pop(spool) { popped.append(out) }
            }
            XCTAssertEqual(spool.openCount, size)
            lsn += 100
            spool.commit(endLSN: LSN(lsn), committedAt: PostgresTimestamp(rawValue: 0))
            expected += open.map { var stamped = $0; stamped.lsn = LSN(lsn); return stamped }
            if round % 3 == 0 { while let out = try pop(spool) { popped.append(out) } }
        }
        while let out = try pop(spool) { popped.append(out) }
        XCTAssertEqual(spool.committedCount, 0)
        XCTAssertEqual(popped.count, expected.count)
        for (out, want) in zip(popped, expected) where out != want {
            XCTFail("\(out.id) came out as \(out), expected \(want)")
            break
        }
    }

    func testNothingIsPoppedBeforeCommit() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        for index in 0..<2000 { try spool.append { SpooledEvent.encode(event(index), into: &$0) } }
        XCTAssertNil(try pop(spool))
        spool.commit(endLSN: LSN(42), committedAt: PostgresTimestamp(rawValue: 7))
        var commit: EventSpool.Commit?
        XCTAssertTrue(try spool.popCommitted { _, c in commit = c })
        XCTAssertEqual(commit?.endLSN, LSN(42))
        XCTAssertEqual(commit?.committedAt, PostgresTimestamp(rawValue: 7))
        XCTAssertEqual(spool.committedCount, 1999)
    }

    /// Records are the sink's own bytes, empty ones included.
    func testRecordsAreOpaqueBytes() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        let records: [[UInt8]] = (0..<5000).map { index in Array(repeating: UInt8(index % 256), count: index % 50) }
        for record in records { try spool.append { $0.append(contentsOf: record) } }
        spool.commit(endLSN: LSN(1), committedAt: PostgresTimestamp(rawValue: 0))
        var out: [[UInt8]] = []
        while try spool.popCommitted({ record, _ in out.append(Array(record)) }) {}
        XCTAssertEqual(out, records)
    }

    /// Commit times come from the wire: any value gives an age, never a trap.
    func testAgeOfNonsenseCommitTimesSaturates() {
        let now = LatencyRecorder.nowMicros()
        XCTAssertEqual(LatencyRecorder.age(of: PostgresTimestamp(rawValue: Int64.min), at: now), Int64.max)
        XCTAssertLessThan(LatencyRecorder.age(of: PostgresTimestamp(rawValue: Int64.max), at: now), 0)
        XCTAssertEqual(LatencyRecorder.age(of: PostgresTimestamp(unixMicroseconds: now - 5), at: now), 5)
    }

    func testDamagedRecordsDoNotDecode() {
        var bytes: [UInt8] = []
        SpooledEvent.encode(event(3), into: &bytes)
        bytes.withUnsafeBytes { XCTAssertEqual(SpooledEvent.decode($0, lsn: LSN(9))?.id, "id-3") }
        for cut in [0, 1, 5, bytes.count / 2, bytes.count - 1] {
            bytes[..<cut].withUnsafeBytes { XCTAssertNil(SpooledEvent.decode(UnsafeRawBufferPointer($0), lsn: .zero), "cut at \(cut)") }
        }
        var longer = bytes
        longer.append(0)
        longer.withUnsafeBytes { XCTAssertNil(SpooledEvent.decode($0, lsn: .zero)) }
    }
}
