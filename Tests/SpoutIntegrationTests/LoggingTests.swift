import Foundation
import SpoutCore
import XCTest

/// `--log-format json` (SPOUT_LOG_FORMAT, log-format in the file): one JSON object per stderr
/// line with time, level, message and the call site's metadata; text stays as it was.
final class LoggingTests: XCTestCase {
    private func objects(_ stderr: String, file: StaticString = #filePath, line: UInt = #line) throws -> [[String: Any]] {
        try stderr.split(separator: "\n").map { text in
            let object = try XCTUnwrap(try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                                       "not a JSON object: \(text)", file: file, line: line)
            let time = try XCTUnwrap(object["time"] as? String, "\(text)", file: file, line: line)
            XCTAssertNotNil(time.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression), time, file: file, line: line)
            XCTAssertTrue(["debug", "info", "warning", "error"].contains(object["level"] as? String ?? ""), "\(text)", file: file, line: line)
            XCTAssertNotNil(object["message"] as? String, "\(text)", file: file, line: line)
            return object
        }
    }

    func testRunLogsJSONWithSlotAndLSN() throws {
        let outbox = try OutboxFixture("jsonlog")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--log-format", "json"] + outbox.arguments)
        try eventually("streaming") { spout.stderr.contains("streaming") || !spout.process.isRunning }
        try outbox.insert(outbox.admin, rows: 2)
        try eventually("two events") { spout.lines.count == 2 || !spout.process.isRunning }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let lines = try objects(spout.stderr)
        let streaming = try XCTUnwrap(lines.first { ($0["message"] as? String)?.hasPrefix("streaming ") == true }, spout.stderr)
        XCTAssertEqual(streaming["level"] as? String, "info")
        XCTAssertEqual(streaming["slot"] as? String, outbox.slot)
        XCTAssertNotNil(LSN(streaming["lsn"] as? String ?? ""), "\(streaming)")
        let stopped = try XCTUnwrap(lines.first { ($0["message"] as? String)?.hasPrefix("stopped: delivered 2 events") == true }, spout.stderr)
        XCTAssertEqual(stopped["slot"] as? String, outbox.slot)
        XCTAssertEqual(stopped["events"] as? String, "2")
        let confirmed = try XCTUnwrap(LSN(stopped["lsn"] as? String ?? ""), "\(stopped)")
        try eventually("the slot is released") { try !outbox.slotIsActive }
        XCTAssertEqual(try outbox.confirmedFlush, confirmed)
    }

    /// Errors are JSON too, from the environment or the file, and keep secrets masked.
    func testErrorsAndWarningsInJSON() throws {
        let sentinel = "S3ntinelPw"
        let refused = try freeLoopbackPort()
        let failed = try SpoutProcess.run(["status", "--database-url", "postgresql://spout:\(sentinel)@127.0.0.1:\(refused)/postgres"],
                                          environment: ["SPOUT_LOG_FORMAT": "json"])
        XCTAssertEqual(failed.status, 1, failed.stderr)
        let error = try XCTUnwrap(try objects(failed.stderr).first)
        XCTAssertEqual(error["level"] as? String, "error")
        XCTAssertFalse(failed.stderr.contains(sentinel), failed.stderr)

        let usage = try SpoutProcess.run(["run", "--max-in-flight", "0", "--log-format", "json"])
        XCTAssertEqual(usage.status, 64)
        XCTAssertEqual((try objects(usage.stderr).first)?["message"] as? String, "--max-in-flight 0 is out of range: use 1 to 10000000")

        let legacy = FileManager.default.temporaryDirectory.appendingPathComponent("spout-log-\(UUID().uuidString).conf")
        try "log-format = json\nslot = s\n".write(to: legacy, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: legacy) }
        let warned = try SpoutProcess.run(["run", "--check-config", "--config", legacy.path])
        XCTAssertEqual(warned.status, 0, warned.stderr)
        XCTAssertEqual(try objects(warned.stderr).first?["level"] as? String, "warning")

        let unknown = try SpoutProcess.run(["setup", "--print", "--log-format", "xml"])
        XCTAssertEqual(unknown.status, 64)
        XCTAssertEqual(unknown.stderr, "spout: error: --log-format xml is not a log format: use text or json\n")
    }

    /// The default stays the human format, byte for byte.
    func testTextIsUnchanged() throws {
        let usage = try SpoutProcess.run(["run", "--max-in-flight", "0"])
        XCTAssertEqual(usage.stderr, "spout: error: --max-in-flight 0 is out of range: use 1 to 10000000\n")
        let explicit = try SpoutProcess.run(["run", "--max-in-flight", "0"], environment: ["SPOUT_LOG_FORMAT": "text"])
        XCTAssertEqual(explicit.stderr, usage.stderr)
    }
}
