import Foundation
@testable import spout
import SpoutCore
import XCTest

/// `--metrics-address`: a scrape of a running spout passes `promtool check metrics`, a real
/// Prometheus server scrapes it, and the README's alert rules pass `promtool check rules`.
final class MetricsTests: XCTestCase {
    static let promtool = "/usr/bin/promtool"
    static let prometheus = "/usr/bin/prometheus"

    static func requirePrometheus() throws {
        for program in [promtool, prometheus] where !FileManager.default.isExecutableFile(atPath: program) {
            throw XCTSkipFailure("\(program) is missing: run scripts/install-deps (Debian's prometheus package)")
        }
    }

    func testScrapePassesPromtoolAndPrometheusScrapesIt() throws {
        try Self.requirePrometheus()
        let outbox = try OutboxFixture("metrics")
        defer { outbox.tearDown() }
        let port = try freeLoopbackPort()
        let spout = try SpoutProcess(["run", "--metrics-address", "127.0.0.1:\(port)"] + outbox.arguments)
        defer { spout.signal(SIGTERM); spout.waitForExit() }
        try eventually("spout streams: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        _ = try outbox.insert(outbox.admin, rows: 5)
        let delivered = "spout_events_delivered_total{sink=\"stdout\",topic=\"outbox.event.order\"} 5"
        var scrape = ""
        eventually("the scrape counts 5 delivered events: \(scrape)") {
            scrape = Self.get(port: port, path: "/metrics")?.body ?? ""
            return scrape.contains(delivered)
        }
        for name in ["spout_confirmed_lsn", "spout_received_lsn", "spout_lag_seconds", "spout_in_flight_events", "spout_in_flight_bytes",
                     "spout_spool_bytes", "spout_commit_to_ack_seconds_bucket", "spout_reconnects_total", "spout_connected{sink=\"stdout\"} 1",
                     "spout_standby{sink=\"stdout\"} 0", "spout_transactions_total", "# HELP spout_events_delivered_total "] {
            XCTAssertTrue(scrape.contains(name), "\(name) missing from:\n\(scrape)")
        }
        // Refreshed every few seconds from its own connection.
        eventually("spout_lag_bytes appears") { Self.get(port: port, path: "/metrics")?.body.contains("spout_lag_bytes{sink=\"stdout\"}") ?? false }

        let check = try Self.execute(Self.promtool, ["check", "metrics"], input: scrape)
        XCTAssertEqual(check.status, 0, "promtool check metrics:\n\(check.output)\n\(scrape)")

        // A Prometheus server of the test's own scrapes spout every second.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-prometheus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("prometheus.yml")
        try """
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: spout
                static_configs:
                  - targets: ["127.0.0.1:\(port)"]
            """.write(to: config, atomically: true, encoding: .utf8)
        let webPort = try freeLoopbackPort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: Self.prometheus)
        server.arguments = ["--config.file=\(config.path)", "--web.listen-address=127.0.0.1:\(webPort)",
                            "--storage.tsdb.path=\(directory.appendingPathComponent("data").path)"]
        let log = directory.appendingPathComponent("prometheus.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        server.standardOutput = try FileHandle(forWritingTo: log)
        server.standardError = try FileHandle(forWritingTo: log)
        server.standardInput = FileHandle.nullDevice
        try server.run()
        defer {
            if server.isRunning { kill(server.processIdentifier, SIGKILL) }
            server.waitUntilExit()
        }
        var answer = ""
        eventually(timeout: 60, "Prometheus reports 5 delivered events: \(answer)\n\((try? String(contentsOf: log, encoding: .utf8)) ?? "")") {
            answer = Self.get(port: webPort, path: "/api/v1/query?query=spout_events_delivered_total")?.body ?? ""
            return answer.contains("\"status\":\"success\"") && answer.contains("\"topic\":\"outbox.event.order\"") && answer.contains(",\"5\"]")
        }
    }

    /// The example alert rules in README.md (the YAML block that starts with `groups:`).
    func testReadmeAlertRulesPassPromtool() throws {
        try Self.requirePrometheus()
        let readme = try String(contentsOf: ComposeTests.repository.appendingPathComponent("README.md"), encoding: .utf8)
        let blocks = readme.components(separatedBy: "```yaml\n").dropFirst().map { $0.components(separatedBy: "```").first ?? "" }
        let rules = try XCTUnwrap(blocks.first { $0.hasPrefix("groups:") }, "README.md has no ```yaml block starting with groups:")
        XCTAssertTrue(rules.contains("spout_lag_seconds") && rules.contains("spout_ready"), rules)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("spout-rules-\(UUID().uuidString).yml")
        try rules.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let check = try Self.execute(Self.promtool, ["check", "rules", file.path])
        XCTAssertEqual(check.status, 0, check.output)
    }

    func testMetricsAddressIsChecked() throws {
        let outbox = try OutboxFixture("metrics_bad")
        defer { outbox.tearDown() }
        let bad = try SpoutProcess.run(["run", "--metrics-address", "localhost"] + outbox.arguments)
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("--metrics-address localhost is not an address: use HOST:PORT"), bad.stderr)
        let range = try SpoutProcess.run(["run", "--unready-after", "-1"] + outbox.arguments)
        XCTAssertNotEqual(range.status, 0)
        XCTAssertTrue(range.stderr.contains("--unready-after -1 is out of range"), range.stderr)
        // A port that is taken: spout says so before it connects.
        let taken = try SpoutProcess(["run", "--metrics-address", "127.0.0.1:0"] + outbox.arguments)
        defer { taken.signal(SIGTERM); taken.waitForExit() }
        var bound = ""
        eventually("the first spout serves metrics: \(taken.stderr)") {
            bound = taken.stderr.split(separator: "\n").first { $0.contains("serving /metrics") }.flatMap { $0.split(separator: "http://").last }.map(String.init) ?? ""
            return !bound.isEmpty
        }
        let second = try SpoutProcess.run(["run", "--metrics-address", bound] + outbox.arguments)
        XCTAssertNotEqual(second.status, 0)
        XCTAssertTrue(second.stderr.contains("cannot serve metrics there"), second.stderr)
    }

    static func get(port: Int, path: String) -> (status: Int, body: String)? {
        guard case let .success(answer) = HealthProbe.get(host: "127.0.0.1", port: port, path: path, timeout: 10) else { return nil }
        return answer
    }

    static func execute(_ program: String, _ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try stdin.fileHandleForWriting.close()
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
