import Foundation
import XCTest
@testable import SpoutCore

/// One expected message from expected.json. Every field read is recorded, so a test can
/// check at the end that it asserted all of them.
private final class ExpectedFields {
    let values: [String: Any]
    let context: String
    /// Metadata about the capture, not fields of the message.
    private var used: Set<String> = ["tag", "length", "in_stream", "xlogdata"]

    init(_ values: [String: Any], context: String) {
        self.values = values
        self.context = context
    }

    func has(_ key: String) -> Bool { values[key] != nil }

    private func value(_ key: String, file: StaticString, line: UInt) -> Any? {
        used.insert(key)
        guard let value = values[key] else {
            XCTFail("\(context): expected.json has no \(key)", file: file, line: line)
            return nil
        }
        return value
    }

    func int(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> Int64 {
        guard let number = value(key, file: file, line: line) as? NSNumber else {
            XCTFail("\(context): \(key) is not a number", file: file, line: line)
            return Int64.min
        }
        return number.int64Value
    }

    func uint32(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> UInt32 {
        UInt32(truncatingIfNeeded: int(key, file: file, line: line))
    }

    func uint8(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> UInt8 {
        UInt8(truncatingIfNeeded: int(key, file: file, line: line))
    }

    func bool(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        guard let number = value(key, file: file, line: line) as? NSNumber else {
            XCTFail("\(context): \(key) is not a boolean", file: file, line: line)
            return false
        }
        return number.boolValue
    }

    func string(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        guard let text = value(key, file: file, line: line) as? String else {
            XCTFail("\(context): \(key) is not a string", file: file, line: line)
            return ""
        }
        return text
    }

    func lsn(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> LSN {
        let text = string(key, file: file, line: line)
        guard let value = LSN(text) else {
            XCTFail("\(context): \(key) \(text) is not an LSN", file: file, line: line)
            return .zero
        }
        return value
    }

    func array(_ key: String, file: StaticString = #filePath, line: UInt = #line) -> [Any] {
        guard let array = value(key, file: file, line: line) as? [Any] else {
            XCTFail("\(context): \(key) is not an array", file: file, line: line)
            return []
        }
        return array
    }

    /// A timestamp field and its `_iso` companion.
    func assertTimestamp(_ actual: PostgresTimestamp, _ key: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.rawValue, int(key, file: file, line: line), "\(context): \(key)", file: file, line: line)
        XCTAssertEqual(actual.iso8601, string(key + "_iso", file: file, line: line), "\(context): \(key)_iso", file: file, line: line)
    }

    func assertAllUsed(file: StaticString = #filePath, line: UInt = #line) {
        let unused = Set(values.keys).subtracting(used)
        XCTAssertTrue(unused.isEmpty, "\(context): fields not asserted: \(unused.sorted())", file: file, line: line)
    }
}

final class PgOutputDecoderTests: XCTestCase {
    // MARK: - Fixtures

    /// Every fixture on disk has expected values and the other way round.
    func testEveryFixtureHasExpectedValues() throws {
        let expected = try Fixtures.expected()
        let names = try Fixtures.binNames()
        XCTAssertEqual(Set(names), Set(expected.keys.filter { $0.hasSuffix(".bin") }))
        XCTAssertGreaterThanOrEqual(names.count, 38)
    }

    func testDecodesEveryFixture() throws {
        let expected = try Fixtures.expected()
        var tags: Set<String> = []
        for name in try Fixtures.binNames() where name != "session_outbox.bin" {
            let entry = try XCTUnwrap(expected[name] as? [String: Any], name)
            let bytes = try Fixtures.bytes(name)
            XCTAssertEqual(bytes.count, (entry["length"] as? NSNumber)?.intValue, "\(name): length")
            let inStream = (entry["in_stream"] as? Bool) ?? false
            let message = try XCTUnwrap(entry["message"] as? [String: Any], name)
            tags.insert(try XCTUnwrap(message["tag"] as? String))
            switch decodeMessage(bytes, inStream: inStream) {
            case let .success(decoded):
                assertMessage(decoded, matches: message, inStream: inStream, streamXID: entry["stream_xid"], context: name)
            case let .failure(error):
                XCTFail("\(name): \(error)")
            }
        }
        // The fixtures cover every message type of protocol versions 1-3.
        XCTAssertEqual(tags, Set(["B", "C", "O", "R", "Y", "I", "U", "D", "T", "M", "S", "E", "c", "A", "b", "P", "K", "r", "p"]))
    }

    /// The XLogData header each fixture arrived with, rebuilt around the payload: the frame
    /// decodes to those LSNs and the payload decodes in place to the same message.
    func testFixturesInsideXLogDataFrames() throws {
        let expected = try Fixtures.expected()
        for name in try Fixtures.binNames() where name != "session_outbox.bin" {
            let entry = try XCTUnwrap(expected[name] as? [String: Any], name)
            let header = try XCTUnwrap(entry["xlogdata"] as? [String: Any], name)
            let dataStart = lsn(try XCTUnwrap(header["data_start"] as? String))
            let walEnd = lsn(try XCTUnwrap(header["wal_end"] as? String))
            let inStream = (entry["in_stream"] as? Bool) ?? false
            let payload = try Fixtures.bytes(name)
            var frame: [UInt8] = [UInt8(ascii: "w")]
            frame.be64(dataStart.rawValue)
            frame.be64(walEnd.rawValue)
            frame.be64(Int64(848_748_606_977_000))
            frame += payload
            guard case let .success(.xLogData(start, end, sendTime, offset)) = decodeFrame(frame) else {
                XCTFail("\(name): not decoded as XLogData: \(decodeFrame(frame))")
                continue
            }
            XCTAssertEqual(start, dataStart, name)
            XCTAssertEqual(end, walEnd, name)
            XCTAssertEqual(sendTime.rawValue, 848_748_606_977_000, name)
            XCTAssertEqual(offset, 25, name)
            let inPlace: Result<PgOutputMessage, DecodingError> = frame.withUnsafeBytes { buffer in
                do throws(DecodingError) {
                    return .success(try PgOutputMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[offset...]), inStream: inStream))
                } catch { return .failure(error) }
            }
            XCTAssertEqual(inPlace, decodeMessage(payload, inStream: inStream), name)
        }
    }

    func testSessionOutboxRecords() throws {
        let expected = try XCTUnwrap(try Fixtures.expected()["session_outbox.bin"] as? [String: Any])
        let bytes = try Fixtures.bytes("session_outbox.bin")
        XCTAssertEqual(bytes.count, (expected["length"] as? NSNumber)?.intValue)
        let records = try Fixtures.records(bytes)
        let messages = try XCTUnwrap(expected["messages"] as? [[String: Any]])
        XCTAssertEqual(records.count, 6)
        XCTAssertEqual(records.count, (expected["count"] as? NSNumber)?.intValue)
        XCTAssertEqual(records.count, messages.count)
        XCTAssertEqual(messages.compactMap { $0["tag"] as? String }, ["B", "R", "I", "I", "I", "C"])

        var decoded: [PgOutputMessage] = []
        for (index, (record, message)) in zip(records, messages).enumerated() {
            let context = "session_outbox.bin record \(index)"
            XCTAssertEqual(record.count, (message["length"] as? NSNumber)?.intValue, context)
            let inStream = (message["in_stream"] as? Bool) ?? false
            XCTAssertFalse(inStream, context)
            switch decodeMessage(record, inStream: inStream) {
            case let .success(value):
                decoded.append(value)
                assertMessage(value, matches: message, inStream: inStream, streamXID: nil, context: context)
            case let .failure(error):
                XCTFail("\(context): \(error)")
            }
        }
        XCTAssertEqual(decoded.map(Self.tag), ["B", "R", "I", "I", "I", "C"])

        // The inserts reference the relation, and the transaction's LSNs line up.
        guard decoded.count == 6, case let .begin(begin) = decoded[0], case let .relation(relation) = decoded[1],
              case let .commit(commit) = decoded[5]
        else { return XCTFail("unexpected session shape") }
        XCTAssertEqual(begin.finalLSN, commit.commitLSN)
        XCTAssertLessThan(commit.commitLSN, commit.endLSN)
        XCTAssertEqual(begin.commitTime, commit.commitTime)
        XCTAssertEqual(relation.columns.map(\.name), ["id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"])
        for message in decoded[2...4] {
            guard case let .insert(insert) = message else { return XCTFail("not an insert: \(message)") }
            XCTAssertEqual(insert.relationOID, relation.oid)
            XCTAssertEqual(insert.new.columns.count, relation.columns.count)
        }
        if case let .insert(insert) = decoded[4] {
            XCTAssertEqual(insert.new.string(at: 4), "{\"name\": \"Zoë\"}")
        }
    }

    // MARK: - Malformed input

    /// Every fixture with each strict prefix: always a DecodingError, never a trap.
    func testEveryStrictPrefixThrows() throws {
        for (name, bytes, inStream) in try allFixtureMessages() {
            for length in 0..<bytes.count {
                switch decodeMessage(Array(bytes[..<length]), inStream: inStream) {
                case let .success(message):
                    XCTFail("\(name): prefix of \(length)/\(bytes.count) bytes decoded as \(message)")
                case let .failure(error):
                    if length == 0 {
                        XCTAssertEqual(error, .empty, name)
                    } else {
                        switch error {
                        case .truncated, .unterminatedString, .invalidValue: break
                        case .empty, .unknownMessageType, .trailingBytes:
                            XCTFail("\(name): prefix of \(length) bytes threw \(error)")
                        }
                    }
                }
            }
        }
    }

    func testTruncatedErrorDetails() throws {
        let begin = try Fixtures.bytes("begin.bin")
        // Type byte + final_lsn + 1 byte of commit_time.
        XCTAssertEqual(decodeMessage(Array(begin[..<10])),
                       .failure(.truncated(message: "Begin", offset: 8, needed: 8, available: 1)))
        XCTAssertEqual(decodeMessage(Array(begin[..<17])),
                       .failure(.truncated(message: "Begin", offset: 16, needed: 4, available: 0)))
        let origin = try Fixtures.bytes("origin.bin")
        XCTAssertEqual(decodeMessage(Array(origin.dropLast())), .failure(.unterminatedString(message: "Origin", offset: 8)))
    }

    func testTrailingBytesThrow() throws {
        let names: [String: String] = [
            "B": "Begin", "C": "Commit", "O": "Origin", "R": "Relation", "Y": "Type", "I": "Insert", "U": "Update",
            "D": "Delete", "T": "Truncate", "M": "Message", "S": "Stream Start", "E": "Stream Stop", "c": "Stream Commit",
            "A": "Stream Abort", "b": "Begin Prepare", "P": "Prepare", "K": "Commit Prepared", "r": "Rollback Prepared",
            "p": "Stream Prepare",
        ]
        for (name, bytes, inStream) in try allFixtureMessages() {
            let typeName = try XCTUnwrap(names[String(UnicodeScalar(bytes[0]))], name)
            XCTAssertEqual(decodeMessage(bytes + [0], inStream: inStream), .failure(.trailingBytes(message: typeName, count: 1)), name)
            XCTAssertEqual(decodeMessage(bytes + [0x41, 0x42, 0x43], inStream: inStream),
                           .failure(.trailingBytes(message: typeName, count: 3)), name)
        }
    }

    func testUnknownMessageTypes() throws {
        let known = Set("BCORYIUDTMSEcAbPKrp".utf8)
        for byte in UInt8.min...UInt8.max where !known.contains(byte) {
            XCTAssertEqual(decodeMessage([byte]), .failure(.unknownMessageType(byte)))
            XCTAssertEqual(decodeMessage([byte, 0, 0, 0, 0, 0, 0, 0, 0]), .failure(.unknownMessageType(byte)))
        }
        // A real message with its type byte replaced.
        var begin = try Fixtures.bytes("begin.bin")
        begin[0] = UInt8(ascii: "Z")
        XCTAssertEqual(decodeMessage(begin), .failure(.unknownMessageType(0x5A)))
        XCTAssertEqual(decodeMessage([]), .failure(.empty))
        XCTAssertEqual(DecodingError.unknownMessageType(0x5A).description, "unknown message type 'Z'")
        XCTAssertEqual(DecodingError.unknownMessageType(0x01).description, "unknown message type 0x1")
    }

    func testNegativeColumnLengthThrows() {
        for length: Int32 in [-1, -2, Int32.min] {
            var bytes: [UInt8] = []
            bytes.ascii("I"); bytes.be32(UInt32(16384)); bytes.ascii("N"); bytes.be16(1)
            bytes.ascii("t"); bytes.be32(length)
            XCTAssertEqual(decodeMessage(bytes), .failure(.invalidValue(message: "TupleData", field: "column length",
                                                                        value: UInt64(UInt32(bitPattern: length)))))
            bytes[8] = UInt8(ascii: "b")
            XCTAssertEqual(decodeMessage(bytes), .failure(.invalidValue(message: "TupleData", field: "column length",
                                                                        value: UInt64(UInt32(bitPattern: length)))))
        }
        // A huge positive length is a truncation, not a crash or an allocation.
        var bytes: [UInt8] = []
        bytes.ascii("I"); bytes.be32(UInt32(16384)); bytes.ascii("N"); bytes.be16(1)
        bytes.ascii("t"); bytes.be32(Int32.max); bytes += [1, 2, 3]
        XCTAssertEqual(decodeMessage(bytes), .failure(.truncated(message: "Insert", offset: 12, needed: Int(Int32.max), available: 3)))
    }

    func testUnknownTupleKindThrows() {
        for kind in [UInt8(ascii: "x"), UInt8(ascii: "N"), UInt8(ascii: "T"), 0] {
            var bytes: [UInt8] = []
            bytes.ascii("I"); bytes.be32(UInt32(16384)); bytes.ascii("N"); bytes.be16(2)
            bytes.ascii("n"); bytes.append(kind)
            XCTAssertEqual(decodeMessage(bytes), .failure(.invalidValue(message: "TupleData", field: "column kind", value: UInt64(kind))))
        }
    }

    func testUnterminatedStringsThrow() {
        var type: [UInt8] = []
        type.ascii("Y"); type.be32(UInt32(16832)); type += Array("public".utf8)
        XCTAssertEqual(decodeMessage(type), .failure(.unterminatedString(message: "Type", offset: 4)))

        var relation: [UInt8] = []
        relation.ascii("R"); relation.be32(UInt32(1)); relation.cString("public"); relation += Array("outbox".utf8)
        XCTAssertEqual(decodeMessage(relation), .failure(.unterminatedString(message: "Relation", offset: 11)))

        var message: [UInt8] = []
        message.ascii("M"); message.append(1); message.be64(UInt64(0x100)); message += Array("outbox".utf8)
        XCTAssertEqual(decodeMessage(message), .failure(.unterminatedString(message: "Message", offset: 9)))

        var beginPrepare: [UInt8] = []
        beginPrepare.ascii("b"); beginPrepare.be64(UInt64(1)); beginPrepare.be64(UInt64(2)); beginPrepare.be64(Int64(3))
        beginPrepare.be32(UInt32(4)); beginPrepare += Array("gid".utf8)
        XCTAssertEqual(decodeMessage(beginPrepare), .failure(.unterminatedString(message: "Begin Prepare", offset: 28)))
    }

    func testInvalidTupleMarkersThrow() {
        var insert: [UInt8] = []
        insert.ascii("I"); insert.be32(UInt32(1)); insert.ascii("K"); insert.be16(0)
        XCTAssertEqual(decodeMessage(insert), .failure(.invalidValue(message: "Insert", field: "tuple marker", value: 0x4B)))

        var delete: [UInt8] = []
        delete.ascii("D"); delete.be32(UInt32(1)); delete.ascii("N"); delete.be16(0)
        XCTAssertEqual(decodeMessage(delete), .failure(.invalidValue(message: "Delete", field: "tuple marker", value: 0x4E)))

        // An old tuple must be followed by 'N'.
        var update: [UInt8] = []
        update.ascii("U"); update.be32(UInt32(1)); update.ascii("K"); update.be16(0); update.ascii("O"); update.be16(0)
        XCTAssertEqual(decodeMessage(update), .failure(.invalidValue(message: "Update", field: "tuple marker", value: 0x4F)))
    }

    func testInvalidCountsThrow() {
        var message: [UInt8] = []
        message.ascii("M"); message.append(1); message.be64(UInt64(0x100)); message.cString("outbox"); message.be32(Int32(-1))
        XCTAssertEqual(decodeMessage(message), .failure(.invalidValue(message: "Message", field: "content length", value: 0xFFFF_FFFF)))

        var truncate: [UInt8] = []
        truncate.ascii("T"); truncate.be32(Int32(-5)); truncate.append(0)
        XCTAssertEqual(decodeMessage(truncate), .failure(.invalidValue(message: "Truncate", field: "relation count", value: 0xFFFF_FFFB)))
        truncate = []
        truncate.ascii("T"); truncate.be32(Int32(1_000_000)); truncate.append(0); truncate.be32(UInt32(7))
        XCTAssertEqual(decodeMessage(truncate), .failure(.invalidValue(message: "Truncate", field: "relation count", value: 1_000_000)))
    }

    // MARK: - Hand-built messages

    /// R, Y, I, U, D, T and M carry the xid first inside a stream: the same message with an
    /// xid inserted decodes to the same values plus that xid.
    func testStreamedVariantsCarryXID() throws {
        let xid: UInt32 = 0xDEAD_BEEF
        var checked: Set<UInt8> = []
        for (name, bytes, inStream) in try allFixtureMessages() where !inStream && "RYIUDTM".utf8.contains(bytes[0]) {
            guard case let .success(plain) = decodeMessage(bytes) else { XCTFail(name); continue }
            var streamed: [UInt8] = [bytes[0]]
            streamed.be32(xid)
            streamed += bytes[1...]
            guard case let .success(decoded) = decodeMessage(streamed, inStream: true) else {
                XCTFail("\(name): \(decodeMessage(streamed, inStream: true))"); continue
            }
            XCTAssertEqual(decoded, Self.withXID(plain, xid), name)
            XCTAssertNotEqual(decoded, plain, name)
            checked.insert(bytes[0])
        }
        XCTAssertEqual(checked, Set("RYIUDTM".utf8))
    }

    func testStreamAbortWithParallelStreamingFields() {
        var bytes: [UInt8] = []
        bytes.ascii("A"); bytes.be32(UInt32(900)); bytes.be32(UInt32(901)); bytes.be64(UInt64(0x16_B374_D848)); bytes.be64(Int64(762_525_296_789_012))
        XCTAssertEqual(decodeMessage(bytes), .success(.streamAbort(.init(xid: 900, subtransactionXID: 901, abortLSN: lsn("16/B374D848"),
                                                                         abortTime: PostgresTimestamp(rawValue: 762_525_296_789_012)))))
    }

    func testTupleDataAccessors() throws {
        let update = try Fixtures.bytes("update_unchanged_toast.bin")
        guard case let .success(.update(message)) = decodeMessage(update) else { return XCTFail("not an update") }
        XCTAssertNil(message.old)
        XCTAssertEqual(message.new.columns.count, 3)
        XCTAssertEqual(message.new.string(at: 0), "1")
        XCTAssertNil(message.new.bytes(at: 1))
        XCTAssertEqual(message.new.columns[1], .unchangedToast)
        XCTAssertEqual(message.new.string(at: 2), "1")
        XCTAssertNil(message.new.bytes(at: 3))
        XCTAssertNil(message.new.bytes(at: -1))

        let delete = try Fixtures.bytes("delete_key.bin")
        guard case let .success(.delete(deleted)) = decodeMessage(delete) else { return XCTFail("not a delete") }
        XCTAssertEqual(deleted.old.string(at: 0), "2")
        XCTAssertNil(deleted.old.bytes(at: 1))
    }

    // MARK: - Replication frames

    func testXLogDataFrame() {
        var frame: [UInt8] = [UInt8(ascii: "w")]
        frame.be64(UInt64(0x16_B374_D848))
        frame.be64(UInt64(0x16_B374_D900))
        frame.be64(Int64(-1))
        frame += [UInt8(ascii: "E")]
        XCTAssertEqual(decodeFrame(frame), .success(.xLogData(dataStart: lsn("16/B374D848"), walEnd: lsn("16/B374D900"),
                                                              sendTime: PostgresTimestamp(rawValue: -1), payloadOffset: 25)))
        XCTAssertEqual(decodeMessage(Array(frame[25...])), .success(.streamStop))
        // The header alone is a frame with an empty payload.
        XCTAssertEqual(decodeFrame(Array(frame[..<25])), .success(.xLogData(dataStart: lsn("16/B374D848"), walEnd: lsn("16/B374D900"),
                                                                            sendTime: PostgresTimestamp(rawValue: -1), payloadOffset: 25)))
        XCTAssertEqual(decodeFrame(Array(frame[..<24])), .failure(.truncated(message: "XLogData", offset: 16, needed: 8, available: 7)))
        for length in 1..<25 {
            guard case .failure(.truncated) = decodeFrame(Array(frame[..<length])) else {
                XCTFail("XLogData prefix of \(length) bytes: \(decodeFrame(Array(frame[..<length])))"); continue
            }
        }
    }

    func testKeepaliveFrame() {
        func keepalive(_ reply: UInt8) -> [UInt8] {
            var frame: [UInt8] = [UInt8(ascii: "k")]
            frame.be64(UInt64(0x1_0000_0000))
            frame.be64(Int64(848_748_606_977_000))
            frame.append(reply)
            return frame
        }
        XCTAssertEqual(decodeFrame(keepalive(1)), .success(.keepalive(walEnd: lsn("1/0"), sendTime: PostgresTimestamp(rawValue: 848_748_606_977_000),
                                                                     replyRequested: true)))
        XCTAssertEqual(decodeFrame(keepalive(0)), .success(.keepalive(walEnd: lsn("1/0"), sendTime: PostgresTimestamp(rawValue: 848_748_606_977_000),
                                                                     replyRequested: false)))
        XCTAssertEqual(keepalive(0).count, 18)
        XCTAssertEqual(decodeFrame(keepalive(1) + [0]), .failure(.trailingBytes(message: "Primary keepalive", count: 1)))
        for length in 1..<18 {
            guard case .failure(.truncated) = decodeFrame(Array(keepalive(1)[..<length])) else {
                XCTFail("keepalive prefix of \(length) bytes decoded"); continue
            }
        }
        XCTAssertEqual(decodeFrame([]), .failure(.empty))
        XCTAssertEqual(decodeFrame([UInt8(ascii: "r"), 0, 0]), .failure(.unknownMessageType(UInt8(ascii: "r"))))
    }

    func testStandbyStatusUpdateEncoding() {
        let update = StandbyStatusUpdate(write: lsn("16/B374D848"), flush: lsn("1/2"), apply: LSN(0x0102_0304_0506_0708),
                                         sendTime: PostgresTimestamp(rawValue: 762_525_296_789_012), replyRequested: true)
        let bytes = update.encode()
        XCTAssertEqual(StandbyStatusUpdate.size, 34)
        XCTAssertEqual(bytes.count, 34)
        XCTAssertEqual(bytes, [0x72,
                               0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48,
                               0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02,
                               0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                               0x00, 0x02, 0xB5, 0x83, 0x41, 0x72, 0x86, 0x14,
                               0x01])
        let quiet = StandbyStatusUpdate(write: .zero, flush: .zero, apply: .zero, sendTime: PostgresTimestamp(rawValue: -2))
        XCTAssertEqual(quiet.encode(), [0x72] + [UInt8](repeating: 0, count: 24) + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x00])
    }

    // MARK: - LSN and timestamps

    func testLSNParsingAndPrinting() throws {
        let value = try XCTUnwrap(LSN("16/B374D848"))
        XCTAssertEqual(value.rawValue, 0x16_B374_D848)
        XCTAssertEqual(value.description, "16/B374D848")
        XCTAssertEqual(LSN("16/b374d848"), value)
        XCTAssertEqual(LSN("0/0"), .zero)
        XCTAssertEqual(LSN.zero.description, "0/0")
        XCTAssertEqual(LSN("00000000/00000001")?.rawValue, 1)
        XCTAssertEqual(LSN(1).description, "0/1")
        XCTAssertEqual(LSN(0x1_0000_0000).description, "1/0")
        XCTAssertEqual(LSN("FFFFFFFF/FFFFFFFF")?.rawValue, UInt64.max)
        XCTAssertEqual(LSN(UInt64.max).description, "FFFFFFFF/FFFFFFFF")
        XCTAssertEqual(LSN(Substring("x1/2x").dropFirst().dropLast())?.rawValue, 0x1_0000_0002)
        for text in ["0/3E3D1B8", "A/0", "ABCDEF01/23456789", "1/F"] {
            XCTAssertEqual(LSN(text)?.description, text)
        }
        XCTAssertLessThan(try XCTUnwrap(LSN("0/FFFFFFFF")), try XCTUnwrap(LSN("1/0")))
        XCTAssertLessThan(try XCTUnwrap(LSN("9/0")), try XCTUnwrap(LSN("A/0")))

        for invalid in ["", "/", "16", "16/", "/B374D848", "16/B374D848/0", "G/0", "0/G", "123456789/0", "0/123456789",
                        " 1/2", "1/2 ", "1 /2", "-1/2", "1/-2", "-0/0", "0/-0", "+1/2", "1/+2", "１/2", "0x1/2", "1//2", "1/2/"] {
            XCTAssertNil(LSN(invalid), "\(invalid) should not parse")
        }
    }

    func testPostgresTimestampISO8601() {
        let cases: [(Int64, String)] = [
            (0, "2000-01-01T00:00:00.000000Z"),
            (1, "2000-01-01T00:00:00.000001Z"),
            (-1, "1999-12-31T23:59:59.999999Z"),
            (5_183_999_999_999, "2000-02-29T23:59:59.999999Z"),
            (5_184_000_000_000, "2000-03-01T00:00:00.000000Z"),
            (762_525_296_789_012, "2024-02-29T12:34:56.789012Z"),
            (848_748_604_715_658, "2026-11-23T11:30:04.715658Z"),
            (757_479_845_123_456, "2024-01-02T03:04:05.123456Z"),
            (-946_684_800_000_000, "1970-01-01T00:00:00.000000Z"),
            (-946_684_800_999_999, "1969-12-31T23:59:59.000001Z"),
            (-3_150_576_000_000_000, "1900-03-01T00:00:00.000000Z"),
            (-3_150_576_001_000_000, "1900-02-28T23:59:59.000000Z"),
            (3_160_857_600_000_000, "2100-03-01T00:00:00.000000Z"),
            (-12_617_683_200_000_000, "1600-02-29T00:00:00.000000Z"),
            (-31_588_444_800_000_000, "0999-01-01T00:00:00.000000Z"),
            (1_200_798_848_000_000, "2038-01-19T03:14:08.000000Z"),
        ]
        for (raw, text) in cases {
            XCTAssertEqual(PostgresTimestamp(rawValue: raw).iso8601, text, "\(raw)")
        }
        XCTAssertEqual(PostgresTimestamp(unixMicroseconds: 0).rawValue, -946_684_800_000_000)
        XCTAssertEqual(PostgresTimestamp(unixMicroseconds: 0).iso8601, "1970-01-01T00:00:00.000000Z")
        XCTAssertEqual(PostgresTimestamp(rawValue: 42).unixMicroseconds, 946_684_800_000_042)
        XCTAssertLessThan(PostgresTimestamp(rawValue: -1), PostgresTimestamp(rawValue: 0))
    }

    // MARK: - Helpers

    private func allFixtureMessages() throws -> [(name: String, bytes: [UInt8], inStream: Bool)] {
        let expected = try Fixtures.expected()
        var all: [(String, [UInt8], Bool)] = []
        for name in try Fixtures.binNames() {
            if name == "session_outbox.bin" {
                for (index, record) in try Fixtures.records(try Fixtures.bytes(name)).enumerated() {
                    all.append(("\(name)[\(index)]", record, false))
                }
            } else {
                let entry = try XCTUnwrap(expected[name] as? [String: Any], name)
                all.append((name, try Fixtures.bytes(name), (entry["in_stream"] as? Bool) ?? false))
            }
        }
        XCTAssertGreaterThan(all.count, 40)
        return all
    }

    private static func tag(_ message: PgOutputMessage) -> String {
        switch message {
        case .begin: "B"
        case .commit: "C"
        case .origin: "O"
        case .relation: "R"
        case .type: "Y"
        case .insert: "I"
        case .update: "U"
        case .delete: "D"
        case .truncate: "T"
        case .message: "M"
        case .streamStart: "S"
        case .streamStop: "E"
        case .streamCommit: "c"
        case .streamAbort: "A"
        case .beginPrepare: "b"
        case .prepare: "P"
        case .commitPrepared: "K"
        case .rollbackPrepared: "r"
        case .streamPrepare: "p"
        }
    }

    private static func withXID(_ message: PgOutputMessage, _ xid: UInt32) -> PgOutputMessage {
        switch message {
        case var .relation(value): value.xid = xid; return .relation(value)
        case var .type(value): value.xid = xid; return .type(value)
        case var .insert(value): value.xid = xid; return .insert(value)
        case var .update(value): value.xid = xid; return .update(value)
        case var .delete(value): value.xid = xid; return .delete(value)
        case var .truncate(value): value.xid = xid; return .truncate(value)
        case var .message(value): value.xid = xid; return .message(value)
        default: return message
        }
    }

    private func assertMessage(_ message: PgOutputMessage, matches expected: [String: Any], inStream: Bool, streamXID: Any?,
                               context: String, file: StaticString = #filePath, line: UInt = #line) {
        let fields = ExpectedFields(expected, context: context)
        let tag = fields.string("tag")
        XCTAssertEqual(Self.tag(message), tag, "\(context): message type", file: file, line: line)

        /// The xid of a streamed data message; nil outside a stream.
        func assertStreamedXID(_ actual: UInt32?) {
            if inStream {
                XCTAssertEqual(actual, fields.uint32("xid"), "\(context): xid", file: file, line: line)
                XCTAssertNotNil(streamXID, "\(context): in_stream without stream_xid", file: file, line: line)
            } else {
                XCTAssertFalse(fields.has("xid"), "\(context): xid outside a stream", file: file, line: line)
                XCTAssertNil(actual, "\(context): xid outside a stream", file: file, line: line)
            }
        }

        switch message {
        case let .begin(begin):
            XCTAssertEqual(begin.finalLSN, fields.lsn("final_lsn"), context, file: file, line: line)
            fields.assertTimestamp(begin.commitTime, "commit_time", file: file, line: line)
            XCTAssertEqual(begin.xid, fields.uint32("xid"), context, file: file, line: line)
        case let .commit(commit):
            XCTAssertEqual(commit.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(commit.commitLSN, fields.lsn("commit_lsn"), context, file: file, line: line)
            XCTAssertEqual(commit.endLSN, fields.lsn("end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(commit.commitTime, "commit_time", file: file, line: line)
        case let .origin(origin):
            XCTAssertEqual(origin.commitLSN, fields.lsn("origin_lsn"), context, file: file, line: line)
            XCTAssertEqual(origin.name, fields.string("origin_name"), context, file: file, line: line)
        case let .relation(relation):
            assertStreamedXID(relation.xid)
            XCTAssertEqual(relation.oid, fields.uint32("relation_oid"), context, file: file, line: line)
            XCTAssertEqual(relation.namespace, fields.string("namespace"), context, file: file, line: line)
            XCTAssertEqual(relation.name, fields.string("relation_name"), context, file: file, line: line)
            XCTAssertEqual(relation.replicaIdentity, fields.string("replica_identity").utf8.first, context, file: file, line: line)
            let columns = fields.array("columns")
            XCTAssertEqual(relation.columns.count, columns.count, "\(context): column count", file: file, line: line)
            for (index, (actual, expected)) in zip(relation.columns, columns).enumerated() {
                guard let dictionary = expected as? [String: Any] else {
                    XCTFail("\(context): column \(index)", file: file, line: line); continue
                }
                let column = ExpectedFields(dictionary, context: "\(context) column \(index)")
                let flags = column.uint8("flags")
                XCTAssertEqual(actual.flags, flags, column.context, file: file, line: line)
                XCTAssertEqual(actual.isKey, flags & 1 == 1, column.context, file: file, line: line)
                XCTAssertEqual(actual.name, column.string("name"), column.context, file: file, line: line)
                XCTAssertEqual(actual.typeOID, column.uint32("type_oid"), column.context, file: file, line: line)
                XCTAssertEqual(actual.typeModifier, Int32(column.int("typmod")), column.context, file: file, line: line)
                column.assertAllUsed(file: file, line: line)
            }
        case let .type(type):
            assertStreamedXID(type.xid)
            XCTAssertEqual(type.oid, fields.uint32("type_oid"), context, file: file, line: line)
            XCTAssertEqual(type.namespace, fields.string("namespace"), context, file: file, line: line)
            XCTAssertEqual(type.name, fields.string("type_name"), context, file: file, line: line)
        case let .insert(insert):
            assertStreamedXID(insert.xid)
            XCTAssertEqual(insert.relationOID, fields.uint32("relation_oid"), context, file: file, line: line)
            assertTuple(insert.new, fields.array("new"), context: "\(context) new", file: file, line: line)
        case let .update(update):
            assertStreamedXID(update.xid)
            XCTAssertEqual(update.relationOID, fields.uint32("relation_oid"), context, file: file, line: line)
            if fields.has("old_kind") {
                XCTAssertEqual(update.old?.kind.rawValue, fields.string("old_kind").utf8.first, context, file: file, line: line)
                if let old = update.old {
                    assertTuple(old.tuple, fields.array("old"), context: "\(context) old", file: file, line: line)
                }
            } else {
                XCTAssertFalse(fields.has("old"), context, file: file, line: line)
                XCTAssertNil(update.old, "\(context): old tuple", file: file, line: line)
            }
            assertTuple(update.new, fields.array("new"), context: "\(context) new", file: file, line: line)
        case let .delete(delete):
            assertStreamedXID(delete.xid)
            XCTAssertEqual(delete.relationOID, fields.uint32("relation_oid"), context, file: file, line: line)
            XCTAssertEqual(delete.oldKind.rawValue, fields.string("old_kind").utf8.first, context, file: file, line: line)
            assertTuple(delete.old, fields.array("old"), context: "\(context) old", file: file, line: line)
        case let .truncate(truncate):
            assertStreamedXID(truncate.xid)
            XCTAssertEqual(truncate.options, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(truncate.options & 1 != 0, fields.bool("cascade"), context, file: file, line: line)
            XCTAssertEqual(truncate.options & 2 != 0, fields.bool("restart_identity"), context, file: file, line: line)
            XCTAssertEqual(truncate.relationOIDs, fields.array("relation_oids").compactMap { ($0 as? NSNumber)?.uint32Value },
                           context, file: file, line: line)
        case let .message(logical):
            assertStreamedXID(logical.xid)
            XCTAssertEqual(logical.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(logical.isTransactional, fields.bool("transactional"), context, file: file, line: line)
            XCTAssertEqual(logical.lsn, fields.lsn("lsn"), context, file: file, line: line)
            XCTAssertEqual(logical.prefix, fields.string("prefix"), context, file: file, line: line)
            XCTAssertEqual(logical.content.count, Int(fields.int("content_len")), context, file: file, line: line)
            XCTAssertEqual(logical.content, Array(fields.string("content").utf8), context, file: file, line: line)
        case let .streamStart(start):
            XCTAssertEqual(start.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(start.isFirstSegment, fields.int("first_segment") == 1, context, file: file, line: line)
        case .streamStop:
            break
        case let .streamCommit(commit):
            XCTAssertEqual(commit.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(commit.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(commit.commitLSN, fields.lsn("commit_lsn"), context, file: file, line: line)
            XCTAssertEqual(commit.endLSN, fields.lsn("end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(commit.commitTime, "commit_time", file: file, line: line)
        case let .streamAbort(abort):
            XCTAssertEqual(abort.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(abort.subtransactionXID, fields.uint32("subxid"), context, file: file, line: line)
            XCTAssertNil(abort.abortLSN, context, file: file, line: line)
            XCTAssertNil(abort.abortTime, context, file: file, line: line)
        case let .beginPrepare(prepare):
            XCTAssertEqual(prepare.prepareLSN, fields.lsn("prepare_lsn"), context, file: file, line: line)
            XCTAssertEqual(prepare.endLSN, fields.lsn("end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(prepare.prepareTime, "prepare_time", file: file, line: line)
            XCTAssertEqual(prepare.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(prepare.gid, fields.string("gid"), context, file: file, line: line)
        case let .prepare(prepare), let .streamPrepare(prepare):
            XCTAssertEqual(prepare.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(prepare.prepareLSN, fields.lsn("prepare_lsn"), context, file: file, line: line)
            XCTAssertEqual(prepare.endLSN, fields.lsn("end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(prepare.prepareTime, "prepare_time", file: file, line: line)
            XCTAssertEqual(prepare.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(prepare.gid, fields.string("gid"), context, file: file, line: line)
        case let .commitPrepared(commit):
            XCTAssertEqual(commit.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(commit.commitLSN, fields.lsn("commit_lsn"), context, file: file, line: line)
            XCTAssertEqual(commit.endLSN, fields.lsn("end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(commit.commitTime, "commit_time", file: file, line: line)
            XCTAssertEqual(commit.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(commit.gid, fields.string("gid"), context, file: file, line: line)
        case let .rollbackPrepared(rollback):
            XCTAssertEqual(rollback.flags, fields.uint8("flags"), context, file: file, line: line)
            XCTAssertEqual(rollback.prepareEndLSN, fields.lsn("prepare_end_lsn"), context, file: file, line: line)
            XCTAssertEqual(rollback.rollbackEndLSN, fields.lsn("rollback_end_lsn"), context, file: file, line: line)
            fields.assertTimestamp(rollback.prepareTime, "prepare_time", file: file, line: line)
            fields.assertTimestamp(rollback.rollbackTime, "rollback_time", file: file, line: line)
            XCTAssertEqual(rollback.xid, fields.uint32("xid"), context, file: file, line: line)
            XCTAssertEqual(rollback.gid, fields.string("gid"), context, file: file, line: line)
        }
        fields.assertAllUsed(file: file, line: line)
    }

    private func assertTuple(_ tuple: TupleData, _ expected: [Any], context: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(tuple.columns.count, expected.count, "\(context): column count", file: file, line: line)
        for (index, (actual, expectedColumn)) in zip(tuple.columns, expected).enumerated() {
            guard let dictionary = expectedColumn as? [String: Any] else {
                XCTFail("\(context): column \(index)", file: file, line: line); continue
            }
            let column = ExpectedFields(dictionary, context: "\(context) column \(index)")
            switch column.string("kind") {
            case "n":
                XCTAssertEqual(actual, .null, column.context, file: file, line: line)
                XCTAssertNil(tuple.bytes(at: index), column.context, file: file, line: line)
            case "u":
                XCTAssertEqual(actual, .unchangedToast, column.context, file: file, line: line)
                XCTAssertNil(tuple.bytes(at: index), column.context, file: file, line: line)
            case "t":
                guard case let .text(range) = actual else {
                    XCTFail("\(column.context): \(actual) is not text", file: file, line: line); continue
                }
                let text = column.string("text")
                XCTAssertEqual(range.count, Int(column.int("len")), column.context, file: file, line: line)
                XCTAssertEqual(Array(tuple.storage[range]), Array(text.utf8), column.context, file: file, line: line)
                XCTAssertEqual(tuple.string(at: index), text, column.context, file: file, line: line)
            case "b":
                guard case let .binary(range) = actual else {
                    XCTFail("\(column.context): \(actual) is not binary", file: file, line: line); continue
                }
                XCTAssertEqual(range.count, Int(column.int("len")), column.context, file: file, line: line)
                XCTAssertEqual(tuple.bytes(at: index).map(Array.init), hexBytes(column.string("hex")), column.context,
                               file: file, line: line)
            case let kind:
                XCTFail("\(column.context): unknown kind \(kind)", file: file, line: line)
            }
            column.assertAllUsed(file: file, line: line)
        }
        XCTAssertNil(tuple.bytes(at: expected.count), "\(context): past the last column", file: file, line: line)
    }
}
