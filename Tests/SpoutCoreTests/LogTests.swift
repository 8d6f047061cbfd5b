import Foundation
import InMemoryLogging
import Logging
@testable import SpoutCore
import XCTest

/// `Log` over swift-log: the facade's levels and metadata reach the handler; the handler's
/// text lines are the old format and its JSON lines carry time, level, message, metadata.
final class LogTests: XCTestCase {
    func testFacadePassesLevelsAndMetadataToTheLogger() {
        let handler = InMemoryLogHandler()
        var log = Log(logger: Logger(label: "test") { _ in handler })
        log.level = .info
        log.debug("hidden")
        log.info("streaming", metadata: ["slot": "orders", "lsn": "0/16B3748"])
        log.warning("slow")
        log.error("failed")
        XCTAssertEqual(handler.entries.map(\.message.description), ["streaming", "slow", "failed"])
        XCTAssertEqual(handler.entries.map(\.level), [.info, .warning, .error])
        XCTAssertEqual(handler.entries.first?.metadata["slot"], "orders")
        XCTAssertEqual(handler.entries.first?.metadata["lsn"], "0/16B3748")
        XCTAssertEqual(log.level, .info)
        log.level = .error
        log.warning("quiet now")
        XCTAssertEqual(handler.entries.count, 3)
    }

    func testTextLinesAreTheHumanFormat() {
        XCTAssertEqual(SpoutLogHandler.line(format: .text, level: .info, message: "hello", metadata: ["slot": "s"]), "spout: hello\n")
        XCTAssertEqual(SpoutLogHandler.line(format: .text, level: .warning, message: "careful"), "spout: warning: careful\n")
        XCTAssertEqual(SpoutLogHandler.line(format: .text, level: .error, message: "a\nb\u{1B}[2J"), "spout: error: a\\nb\\u{1B}[2J\n")
    }

    func testJSONLinesParseAndCarryMetadata() throws {
        let time = Date(timeIntervalSince1970: 1_764_607_800.25)  // 2025-12-01T16:50:00.250Z
        let line = SpoutLogHandler.line(format: .json, level: .warning, message: "row \"x\"\nforged",
                                        metadata: ["slot": "orders", "lsn": "0/1", "event_id": .stringConvertible(42)], time: time)
        XCTAssertTrue(line.hasSuffix("}\n"))
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1, "one line")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        XCTAssertEqual(object, ["time": "2025-12-01T16:50:00.250Z", "level": "warning", "message": "row \"x\"\\nforged",
                                "slot": "orders", "lsn": "0/1", "event_id": "42"])
        XCTAssertTrue(line.hasPrefix(#"{"time":"2025-12-01T16:50:00.250Z","level":"warning","message":"#), line)
    }

    func testRFC3339() {
        XCTAssertEqual(SpoutLogHandler.rfc3339(Date(timeIntervalSince1970: 0)), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(SpoutLogHandler.rfc3339(Date(timeIntervalSince1970: 951_782_400.999)), "2000-02-29T00:00:00.999Z")
    }

    func testHandlerWritesOneLinePerMessage() {
        let lines = LockedLines()
        let log = Log(logger: Logger(label: "test") { _ in SpoutLogHandler(format: .json) { lines.append($0) } }, format: .json)
        log.info("one", metadata: ["topic": "orders.created"])
        log.info("two")
        XCTAssertEqual(lines.all.count, 2)
        XCTAssertTrue(lines.all[0].contains(#""topic":"orders.created""#), lines.all[0])
    }
}

private final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}
