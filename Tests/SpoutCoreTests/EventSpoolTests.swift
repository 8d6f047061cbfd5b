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

    /// Interleaved appends and pops through the file keep every event, in order, whole.
    func testOrderSurvivesSpillingToDisk() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        var expected: [OutboxEvent] = []
        var popped: [OutboxEvent] = []
        var next = 0
        // Runs of varying size, some far above the memory limit (≈ 150 bytes/event), some
        // events far above the file's read size.
        for (round, size) in [1, 5, 3000, 1, 0, 7000, 2, 1200, 1, 1, 9000].enumerated() {
            for _ in 0..<size {
                let e = event(next, payloadSize: next % 997 == 0 ? 200_000 : 100)
                next += 1
                try spool.append(e)
                expected.append(e)
                if next % 7 == 0, let out = try spool.pop()?.event { popped.append(out) }
            }
            XCTAssertEqual(spool.count, expected.count - popped.count)
            XCTAssertGreaterThan(spool.bytes, spool.count > 0 ? 0 : -1)
            if round % 3 == 0 { while let out = try spool.pop()?.event { popped.append(out) } }
        }
        while let out = try spool.pop()?.event { popped.append(out) }
        XCTAssertEqual(spool.count, 0)
        XCTAssertEqual(spool.bytes, 0)
        XCTAssertEqual(popped.count, expected.count)
        for (out, want) in zip(popped, expected) where out != want {
            XCTFail("\(out.id) came out as \(out), expected \(want)")
            break
        }
    }

    /// Within the memory limit events stay values; past it the rest is encoded, and the
    /// memory part is used again once the encoded part drained.
    func testMemoryThenFileThenMemory() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        let perEvent = event(0).approximateSize
        let inMemory = (1 << 16) / perEvent
        for index in 0..<inMemory * 3 { try spool.append(event(index)) }
        XCTAssertEqual(spool.count, inMemory * 3)
        for index in 0..<inMemory * 2 { XCTAssertEqual(try spool.pop()?.event.id, "id-\(index)") }
        try spool.append(event(100_000))
        for index in inMemory * 2..<inMemory * 3 { XCTAssertEqual(try spool.pop()?.event.id, "id-\(index)") }
        XCTAssertEqual(try spool.pop()?.event.id, "id-100000")
        XCTAssertNil(try spool.pop()?.event)
        // One event larger than the whole limit is kept too.
        let huge = event(7, payloadSize: 1 << 17)
        try spool.append(huge)
        XCTAssertEqual(try spool.pop()?.event, huge)
    }

    /// A sink's records (`PreCommitEncoding`) through memory and the file: every record, in
    /// order, byte for byte, with its tag.
    func testRecordsKeepOrderBytesAndTags() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        func record(_ index: Int) -> [UInt8] {
            Array("record \(index);".utf8) + Array(repeating: UInt8(index % 251), count: index % 997 == 0 ? 200_000 : index % 300)
        }
        var popped: [(bytes: [UInt8], tag: Int32)] = []
        func pop() throws -> Bool {
            try spool.popRecord { bytes, tag in popped.append((Array(bytes), tag)) }
        }
        var next = 0
        for (round, size) in [1, 5, 3000, 1, 0, 7000, 2, 1200, 1, 1, 9000].enumerated() {
            for _ in 0..<size {
                let index = next
                try spool.append(tag: Int32(index % 5) - 1) { $0.append(contentsOf: record(index)) }
                next += 1
                if next % 7 == 0 { _ = try pop() }
            }
            XCTAssertEqual(spool.count, next - popped.count)
            if round % 3 == 0 { while try pop() {} }
        }
        while try pop() {}
        XCTAssertEqual(spool.count, 0)
        XCTAssertEqual(spool.bytes, 0)
        XCTAssertEqual(popped.count, next)
        for (index, out) in popped.enumerated() where out.bytes != record(index) || out.tag != Int32(index % 5) - 1 {
            XCTFail("record \(index) came out as \(out.bytes.prefix(20)) tagged \(out.tag)")
            break
        }
    }

    /// Events keep their tags through memory and the file too.
    func testEventsKeepTheirTags() throws {
        let spool = EventSpool(memoryLimit: 1 << 16)
        for index in 0..<2000 { try spool.append(event(index), tag: Int32(index)) }
        for index in 0..<2000 {
            let out = try XCTUnwrap(try spool.pop())
            XCTAssertEqual(out.event.id, "id-\(index)")
            XCTAssertEqual(out.tag, Int32(index))
        }
        XCTAssertNil(try spool.pop())
    }

    /// The stdout sink writes the same lines whether it gets events with their LSN or encodes
    /// them before their commit (`PreCommitEncoding`) and gets the LSN afterwards.
    func testStdoutLinesAreTheSameEncodedBeforeTheCommit() throws {
        for format in StdoutSink.Format.allCases {
            func written(_ deliver: (StdoutSink, OutboxEvent, UInt64) throws -> Void) throws -> [UInt8] {
                let path = FileManager.default.temporaryDirectory.appendingPathComponent("spout-stdout-\(UUID().uuidString)").path
                let descriptor = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o600)
                XCTAssertGreaterThanOrEqual(descriptor, 0)
                defer { close(descriptor); unlink(path) }
                let sink = StdoutSink(descriptor: descriptor, format: format)
                var acknowledged: [UInt64] = []
                for index in 0..<50 {
                    var event = event(index)
                    event.lsn = LSN(UInt64(0x1_0000_0000) + UInt64(index / 7) * 0x100)
                    try deliver(sink, event, UInt64(index))
                    try sink.poll { if case let .delivered(ticket) = $0 { acknowledged.append(ticket) } }
                }
                XCTAssertEqual(acknowledged, Array(0..<50))
                return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            }
            let direct = try written { sink, event, ticket in try sink.send(event, ticket: ticket) }
            let encoded = try written { sink, event, ticket in
                var withoutLSN = event
                withoutLSN.lsn = .zero
                var record: [UInt8] = []
                sink.encode(withoutLSN, into: &record)
                try record.withUnsafeBytes { try sink.send(encoded: $0, commitLSN: event.lsn, ticket: ticket) }
            }
            XCTAssertFalse(direct.isEmpty)
            XCTAssertEqual(direct, encoded, "\(format)")
        }
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
