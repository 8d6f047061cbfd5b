import Foundation
import SpoutCore
import XCTest

/// Configuration mistakes stop spout at startup with one line that names the option, what is
/// wrong and where the value was set; no value makes the process trap.
final class ConfigurationTests: XCTestCase {
    private func configFile(_ lines: [String], extension: String = "yaml") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spout-config-\(UUID().uuidString).\(`extension`)")
        try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Exit 64 and exactly one stderr line containing every expected text.
    @discardableResult
    private func assertUsageError(_ arguments: [String], environment: [String: String] = [:], contains expected: [String],
                                  file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let result = try SpoutProcess.run(arguments, environment: environment, timeout: 30)
        XCTAssertEqual(result.status, 64, "\(arguments) \(environment): \(result.stderr)", file: file, line: line)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr, file: file, line: line)
        for text in expected {
            XCTAssertTrue(result.stderr.contains(text), "stderr lacks \"\(text)\": \(result.stderr)", file: file, line: line)
        }
        return result.stderr
    }

    func testUnknownFileKeysAndVariablesNameTheNearestOption() throws {
        let url = try TestDatabase.url()
        let typo = try configFile(["# spout", "database-url: \(url)", "databse-url: \(url)"])
        try assertUsageError(["status", "--config", typo.path],
                             contains: ["unknown option \"databse-url\" in \(typo.path):3", "did you mean database-url?"])
        let slot = try configFile(["slott: orders"])
        try assertUsageError(["run", "--config", slot.path], contains: ["\"slott\" in \(slot.path):1", "did you mean slot?"])
        // The same in the older name = value format.
        let legacyTypo = try configFile(["# spout", "database-url = \(url)", "databse-url = \(url)"], extension: "conf")
        try assertUsageError(["status", "--config", legacyTypo.path],
                             contains: ["unknown option \"databse-url\" in \(legacyTypo.path):3", "did you mean database-url?"])
        let legacySlot = try configFile(["slott = orders"], extension: "conf")
        try assertUsageError(["run", "--config", legacySlot.path], contains: ["\"slott\" in \(legacySlot.path):1", "did you mean slot?"])
        try assertUsageError(["setup", "--print"], environment: ["SPOUT_SLOTT": "orders"],
                             contains: ["unknown environment variable SPOUT_SLOTT", "did you mean SPOUT_SLOT?"])
        try assertUsageError(["status"], environment: ["SPOUT_KAFKA_PROPERTY": "linger.ms=5"], contains: ["did you mean SPOUT_KAFKA_PROPERTIES?"])
        try assertUsageError(["tail"], environment: ["SPOUT_CONFG": typo.path], contains: ["did you mean SPOUT_CONFIG?"])

        // The project's own tooling variables and the two list-valued ones are fine.
        let fine = try SpoutProcess.run(["status", "--database-url", url, "--slot", "no_such_slot_config"], environment: [
            "SPOUT_TEST_DATABASE_URL": url, "SPOUT_PG_PORT": "1", "SPOUT_BIN": "x", "SPOUT_KAFKA_PROPERTIES": "linger.ms=5"])
        XCTAssertEqual(fine.status, 1, fine.stderr)
        XCTAssertTrue(fine.stderr.contains("\"no_such_slot_config\" does not exist"), fine.stderr)
    }

    /// Every option a subcommand's --help lists (except command switches) is a valid file key.
    func testEveryOptionIsAValidFileKey() throws {
        var names: Set<String> = []
        for command in [["run"], ["tail"], ["setup"], ["status"], ["slot", "list"], ["slot", "drop"]] {
            let help = try SpoutProcess.run(command + ["--help"]).stdout
            let pattern = try NSRegularExpression(pattern: "--([a-z][a-z-]+)")
            for match in pattern.matches(in: help, range: NSRange(help.startIndex..., in: help)) {
                if let range = Range(match.range(at: 1), in: help) { names.insert(String(help[range])) }
            }
        }
        XCTAssertTrue(names.contains("spool-memory-bytes") && names.contains("redis-maxlen") && names.contains("format"), "\(names)")
        // no-failover: the inversion of --failover, which a file writes as `failover: false`.
        let switches: Set<String> = ["help", "json", "print", "report-latency", "check-config", "config", "version", "no-failover"]
        for name in names.subtracting(switches).sorted() {
            for line in ["\(name): x", "\(name) = x"] {
                let file = try configFile([line])
                let result = try SpoutProcess.run(["setup", "--print", "--config", file.path])
                XCTAssertFalse(result.stderr.contains("unknown option"), "\(line): \(result.stderr)")
            }
        }
    }

    func testBadValuesNameWhereTheyWereSet() throws {
        try assertUsageError(["run", "--max-in-flight", "0"], contains: ["--max-in-flight 0 is out of range: use 1 to 10000000"])
        try assertUsageError(["run"], environment: ["SPOUT_MAX_IN_FLIGHT": "0"], contains: ["SPOUT_MAX_IN_FLIGHT=0 is out of range"])
        let file = try configFile(["# limits", "max-in-flight: 0"])
        try assertUsageError(["run", "--config", file.path], contains: ["max-in-flight = 0 (\(file.path):2) is out of range"])
        try assertUsageError(["tail"], environment: ["SPOUT_FORMAT": "yaml"], contains: ["SPOUT_FORMAT=yaml is not a format"])
        try assertUsageError(["setup", "--print", "--log-level", "loud"], contains: ["--log-level loud is not a level"])
        let level = try configFile(["log-level: loud"])
        try assertUsageError(["setup", "--print", "--config", level.path], contains: ["log-level = loud (\(level.path):1)"])
        try assertUsageError(["run"], environment: ["SPOUT_NO_CREATE": "maybe"], contains: ["SPOUT_NO_CREATE=maybe is not a boolean"])
        try assertUsageError(["run"], environment: ["SPOUT_END_LSN": "x/y"], contains: ["SPOUT_END_LSN=x/y is not an LSN"])
        try assertUsageError(["run"], environment: ["SPOUT_REDIS_IDS": "uuid"], contains: ["SPOUT_REDIS_IDS=uuid is not server or lsn"])
        try assertUsageError(["run"], environment: ["SPOUT_TABLE": "a.b.c"], contains: ["SPOUT_TABLE:"])
        try assertUsageError(["run"], environment: ["SPOUT_SINK": "redis://h:0"], contains: ["SPOUT_SINK=redis://h:0"])
        let sink = try configFile(["sink: nats://h:x"])
        try assertUsageError(["run", "--config", sink.path], contains: ["sink in \(sink.path):1"])
        try assertUsageError(["run"], environment: ["SPOUT_KAFKA_PROPERTIES": "linger.ms"], contains: ["SPOUT_KAFKA_PROPERTIES:"])
    }

    func testStdoutTakesNothingAfterTheScheme() throws {
        for url in ["stdout://foo", "stdout://-", "stdout:///dev/null"] {
            try assertUsageError(["run", "--sink", url], contains: ["--sink \(url)", "write just stdout://"])
        }
    }

    /// Each numeric option with values around the integer limits, as a flag and as a
    /// variable: a one-line error naming option, range and source, or a normal start; never
    /// a trap (SIGILL/SIGTRAP) or any other signal.
    func testNumericOptionsNeverTrap() throws {
        let outbox = try OutboxFixture("numeric")
        defer { outbox.tearDown() }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        let ranges: [(option: String, range: ClosedRange<Double>)] = [
            ("max-in-flight", 1...10_000_000), ("max-in-flight-bytes", 1...1_099_511_627_776),
            ("spool-memory-bytes", 65_536...1_099_511_627_776), ("redis-maxlen", 1...9_223_372_036_854_775_807),
            ("shutdown-timeout", 0...86_400),
        ]
        let values = ["0", "-1", "2147483648", "4611686018427387904", "9223372036854775807", "12abc", "9223372036854775808"]
        for (option, range) in ranges {
            let variable = "SPOUT_" + option.uppercased().replacingOccurrences(of: "-", with: "_")
            for value in values {
                // Integers exactly: 9223372036854775807 as a Double rounds up out of Int64.
                let valid = Int64(value).map { range.contains(Double($0)) && (option == "redis-maxlen" || Double($0) < 1e15) } ?? false
                for useFlag in [true, false] {
                    let spout = try SpoutProcess(["run"] + (useFlag ? ["--\(option)", value] : []) + outbox.arguments,
                                                 environment: useFlag ? [:] : [variable: value])
                    let source = useFlag ? "--\(option) \(value)" : "\(variable)=\(value)"
                    eventually("\(source): streaming or exit") { spout.stderr.contains("streaming") || !spout.process.isRunning }
                    if spout.process.isRunning {
                        // Two transactions through the spool and the window: sizes derived from
                        // the option are used, not just parsed.
                        try outbox.insert(outbox.admin, rows: 1)
                        try outbox.insert(outbox.admin, rows: 1)
                        eventually("\(source): two events") { spout.lines.count >= 2 || !spout.process.isRunning }
                        spout.signal(SIGTERM)
                    }
                    let status = spout.waitForExit(timeout: 30)
                    XCTAssertEqual(spout.process.terminationReason, .exit, "\(source): killed by signal \(status ?? -1)")
                    if valid {
                        XCTAssertEqual(status, 0, "\(source): \(spout.stderr)")
                        XCTAssertTrue(spout.stderr.contains("streaming"), "\(source): \(spout.stderr)")
                        // Both of this round's events (a round before may come again: at least once).
                        XCTAssertGreaterThanOrEqual(spout.lines.count, 2, "\(source): both events delivered")
                    } else {
                        XCTAssertEqual(status, 64, "\(source): \(spout.stderr)")
                        XCTAssertEqual(spout.stderr.split(separator: "\n").count, 1, spout.stderr)
                        XCTAssertTrue(spout.stderr.contains(source), "names the source: \(spout.stderr)")
                        XCTAssertTrue(spout.stderr.contains("use \(Int64(range.lowerBound)) to "), "names the range: \(spout.stderr)")
                    }
                    try eventually(timeout: 10, "slot released") { try !outbox.slotIsActive }
                }
            }
        }
    }
}

/// `status --json` is built by the one JSON writer: names with quotes and backslashes stay valid JSON.
final class StatusJSONTests: XCTestCase {
    func testStatusJSONEscapesTheDatabaseName() throws {
        let admin = try TestDatabase.connect()
        let database = "we\"ird\\db_\(ProcessInfo.processInfo.processIdentifier)"
        let slot = TestDatabase.uniqueName("json")
        try admin.sql("CREATE DATABASE \(SQL.identifier(database))")
        defer { _ = try? admin.sql("DROP DATABASE IF EXISTS \(SQL.identifier(database))") }
        var components = try XCTUnwrap(URLComponents(string: try TestDatabase.url()))
        components.percentEncodedPath = "/" + (database.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
        let url = try XCTUnwrap(components.string)
        let weird = try PostgresConnection(url)
        try weird.sql("SELECT pg_create_logical_replication_slot('\(slot)', 'pgoutput')")
        defer { _ = try? admin.sql("SELECT pg_drop_replication_slot('\(slot)')") }

        let status = try SpoutProcess.run(["status", "--json", "--database-url", url, "--slot", slot])
        XCTAssertEqual(status.status, 0, status.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any], status.stdout)
        XCTAssertEqual(object["database"] as? String, database)
        XCTAssertEqual(object["slot"] as? String, slot)
        XCTAssertEqual(object["active"] as? Bool, false)
        XCTAssertNotNil(object["wal_held_bytes"] as? Int)
        XCTAssertTrue(object["active_pid"] is NSNull)
    }
}

/// The YAML config file (swift-configuration's FileProvider), its precedence below SPOUT_*
/// variables and flags, and the older `name = value` files.
final class ConfigFileTests: XCTestCase {
    private func configFile(_ lines: [String], extension: String = "yaml") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spout-config-\(UUID().uuidString).\(`extension`)")
        try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    private func assertLines(_ text: String, _ expected: [String], file: StaticString = #filePath, line: UInt = #line) {
        let lines = Set(text.split(separator: "\n").map(String.init))
        for wanted in expected { XCTAssertTrue(lines.contains(wanted), "no line \"\(wanted)\" in:\n\(text)", file: file, line: line) }
    }

    func testYAMLFileAndPrecedence() throws {
        let file = try configFile([
            "# spout.yaml", "database-url: \"postgresql://spout:yamlSecret1@db/app\"", "slot: from_file", "publication: file_pub",
            "table: shop.outbox", "sink: kafka://broker:9092", "kafka-property:", "  - linger.ms=5", "  - acks=all",
            "max-in-flight: 500", "shutdown-timeout: 2.5", "no-create: true", "topic: \"{aggregate_type}.events\"",
        ])
        let fromFile = try SpoutProcess.run(["run", "--check-config", "--config", file.path])
        XCTAssertEqual(fromFile.status, 0, fromFile.stderr)
        XCTAssertEqual(fromFile.stderr, "", "a YAML file gets no warning")
        assertLines(fromFile.stdout, ["database-url = postgresql://spout:***@db/app", "slot = from_file", "publication = file_pub",
                                      "table = shop.outbox", "sink = kafka://broker:9092", "max-in-flight = 500",
                                      "shutdown-timeout = 2.5 seconds", "no-create = true", "topic = {aggregate_type}.events"])
        XCTAssertFalse(fromFile.stdout.contains("yamlSecret1"), fromFile.stdout)

        let fromEnvironment = try SpoutProcess.run(["run", "--check-config"], environment: [
            "SPOUT_CONFIG": file.path, "SPOUT_SLOT": "from_env", "SPOUT_MAX_IN_FLIGHT": "600"])
        XCTAssertEqual(fromEnvironment.status, 0, fromEnvironment.stderr)
        assertLines(fromEnvironment.stdout, ["slot = from_env", "max-in-flight = 600", "publication = file_pub"])

        let fromFlag = try SpoutProcess.run(["run", "--check-config", "--config", file.path, "--slot", "from_flag", "--no-create"],
                                            environment: ["SPOUT_SLOT": "from_env"])
        XCTAssertEqual(fromFlag.status, 0, fromFlag.stderr)
        assertLines(fromFlag.stdout, ["slot = from_flag", "max-in-flight = 500"])

        // The lifecycle settings (issue 12), checked without a server.
        let lifecycle = try SpoutProcess.run(["run", "--check-config", "--config", file.path, "--on-slot-lost", "recreate",
                                              "--snapshot", "initial", "--reconnect-timeout", "90"], environment: ["SPOUT_FAILOVER": "false"])
        XCTAssertEqual(lifecycle.status, 0, lifecycle.stderr)
        assertLines(lifecycle.stdout, ["on-slot-lost = recreate", "snapshot = initial", "failover = false", "no-standby = false"])
        let badSnapshot = try SpoutProcess.run(["run", "--check-config", "--config", file.path, "--snapshot", "always"])
        XCTAssertEqual(badSnapshot.status, 64, badSnapshot.stderr)
        XCTAssertTrue(badSnapshot.stderr.contains("--snapshot always is not initial or never"), badSnapshot.stderr)

        // Flags of a repeatable option replace the file's list; SPOUT_KAFKA_PROPERTIES too.
        let badItem = try configFile(["sink: kafka://b:9092", "kafka-property:", "  - acks=all", "  - linger.ms"])
        let fileItem = try SpoutProcess.run(["run", "--check-config", "--config", badItem.path])
        XCTAssertEqual(fileItem.status, 64, fileItem.stderr)
        XCTAssertTrue(fileItem.stderr.contains("kafka-property in \(badItem.path):4: \"linger.ms…\" is not name=value"), fileItem.stderr)
        let overridden = try SpoutProcess.run(["run", "--check-config", "--config", badItem.path, "--kafka-property", "acks=all"])
        XCTAssertEqual(overridden.status, 0, overridden.stderr)
        let fromVariable = try SpoutProcess.run(["run", "--check-config", "--config", badItem.path],
                                                environment: ["SPOUT_KAFKA_PROPERTIES": "acks=all linger.ms=5"])
        XCTAssertEqual(fromVariable.status, 0, fromVariable.stderr)
        let single = try configFile(["sink: kafka://b:9092", "kafka-property: linger.ms=5"])
        XCTAssertEqual(try SpoutProcess.run(["run", "--check-config", "--config", single.path]).status, 0)
    }

    /// The example the repository ships is valid and says what it claims.
    func testShippedExampleIsValid() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/spout.yaml")
        let check = try SpoutProcess.run(["run", "--check-config", "--config", example.path])
        XCTAssertEqual(check.status, 0, check.stderr)
        XCTAssertEqual(check.stderr, "")
        assertLines(check.stdout, ["slot = spout_orders", "sink = kafka://broker1:9092,broker2:9092", "no-create = true"])
    }

    /// Values of the wrong shape, files that are no YAML mapping, a missing file: one line each.
    func testYAMLMistakes() throws {
        let cases: [(lines: [String], expected: String)] = [
            (["slot: [a, b]"], "slot in %@:1: give one value"),
            (["# x", "table:", "  schema: public"], "table in %@:2: give one value"),
            (["slot: a", "  b: c"], "%@ is not a YAML mapping"),
            (["slot: a", "databse-url: x"], "unknown option \"databse-url\" in %@:2 — did you mean database-url?"),
        ]
        for (lines, expected) in cases {
            let file = try configFile(lines)
            let result = try SpoutProcess.run(["run", "--config", file.path])
            XCTAssertEqual(result.status, 64, "\(lines): \(result.stderr)")
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
            XCTAssertTrue(result.stderr.contains(expected.replacingOccurrences(of: "%@", with: file.path)), "\(lines): \(result.stderr)")
        }
        let missing = try SpoutProcess.run(["status", "--config", "/nonexistent/spout.yaml"])
        XCTAssertEqual(missing.status, 64)
        XCTAssertTrue(missing.stderr.contains("cannot read the config file /nonexistent/spout.yaml"), missing.stderr)
    }

    /// `name = value` files keep working, with one warning that shows the YAML way; their
    /// errors still name the line.
    func testLegacyFileIsReadWithAWarning() throws {
        let file = try configFile(["# old format", "slot = legacy_slot", "sink = kafka://b:9092", "kafka-property = linger.ms=5",
                                   "kafka-property = acks=all", "max-in-flight = \"700\""], extension: "conf")
        let result = try SpoutProcess.run(["run", "--check-config", "--config", file.path])
        XCTAssertEqual(result.status, 0, result.stderr)
        assertLines(result.stdout, ["slot = legacy_slot", "max-in-flight = 700", "sink = kafka://b:9092"])
        let warnings = result.stderr.split(separator: "\n")
        XCTAssertEqual(warnings.count, 1, result.stderr)
        for text in ["spout: warning: \(file.path) uses the old name = value format", "YAML", "slot: orders"] {
            XCTAssertTrue(result.stderr.contains(text), "lacks \"\(text)\": \(result.stderr)")
        }
        let bad = try configFile(["slot = x", "kafka-property = acks=all", "kafka-property = linger.ms"], extension: "conf")
        let error = try SpoutProcess.run(["run", "--config", bad.path, "--sink", "kafka://b:9092"])
        XCTAssertEqual(error.status, 64, error.stderr)
        XCTAssertTrue(error.stderr.contains("kafka-property in \(bad.path):3"), error.stderr)
    }
}
