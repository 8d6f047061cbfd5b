import Foundation
import SpoutCore
import XCTest

/// DESIGN §4: no password reaches stdout or stderr, whatever the command, the source of the
/// value (flag, SPOUT_* variable, config file) and however malformed the URL.
final class SecretsTests: XCTestCase {
    private let sentinel = "S3ntinelPw"

    private enum Source: CaseIterable { case flag, environment, file, yamlFile, jsonLog }

    /// Runs spout with `option = value` from `source` and fails if the sentinel shows up.
    private func assertNoSentinel(_ command: [String], _ values: [(option: String, value: String)], from source: Source,
                                  extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws {
        var arguments = command + extra
        var environment: [String: String] = [:]
        var configFile: URL?
        switch source {
        case .flag:
            for (option, value) in values { arguments += ["--\(option)", value] }
        case .environment:
            for (option, value) in values {
                let name = option == "kafka-property" ? "SPOUT_KAFKA_PROPERTIES"
                    : "SPOUT_" + option.uppercased().replacingOccurrences(of: "-", with: "_")
                environment[name] = environment[name].map { $0 + " " + value } ?? value
            }
        case .file:
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("spout-secrets-\(UUID().uuidString).conf")
            try values.map { "\($0.option) = \($0.value)" }.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
            configFile = url
            arguments += ["--config", url.path]
        case .yamlFile:
            // Single-quoted YAML scalars take any text ('' for a quote); kafka-property is a list.
            func quoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "''") + "'" }
            var lines: [String] = []
            for (option, value) in values where option != "kafka-property" { lines.append("\(option): \(quoted(value))") }
            let properties = values.filter { $0.option == "kafka-property" }.map { "  - " + quoted($0.value) }
            if !properties.isEmpty { lines += ["kafka-property:"] + properties }
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("spout-secrets-\(UUID().uuidString).yaml")
            try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
            configFile = url
            arguments += ["--config", url.path]
        case .jsonLog:
            // Flags, with every line in JSON (JSONWriter's escaping must not undo the masking).
            for (option, value) in values { arguments += ["--\(option)", value] }
            environment["SPOUT_LOG_FORMAT"] = "json"
        }
        defer { configFile.map { try? FileManager.default.removeItem(at: $0) } }
        let result = try SpoutProcess.run(arguments, environment: environment, timeout: 30)
        let shown = "\(arguments) \(environment)"
        XCTAssertNotNil(result.status, "spout did not exit: \(shown)", file: file, line: line)
        XCTAssertFalse(result.stderr.contains(sentinel), "stderr of \(shown): \(result.stderr)", file: file, line: line)
        XCTAssertFalse(result.stdout.contains(sentinel), "stdout of \(shown): \(result.stdout)", file: file, line: line)
    }

    func testDatabaseURLsInEveryCommand() throws {
        let refused = try freeLoopbackPort()
        let server = try XCTUnwrap(URLComponents(string: try TestDatabase.url()))
        let host = try XCTUnwrap(server.host), port = try XCTUnwrap(server.port)
        let s = sentinel
        let urls = [
            // The test server trusts 127.0.0.1: these connect, and the password is still never shown.
            "postgresql://postgres:\(s)@\(host):\(port)/postgres",
            "host=\(host) port=\(port) user=postgres password=\(s) dbname=postgres",
            "postgresql://postgres@\(host):\(port)/postgres?password=\(s)",
            "postgresql://postgres:\(s)@\(host):\(port)/no_such_database",
            // Refused, unparseable, or misread by libpq.
            "postgresql://spout:\(s)@127.0.0.1:\(refused)/postgres",
            "postgres://x:sek/\(s)@127.0.0.1:\(refused)/db",
            "postgres://postgres:sek/\(s)@\(host):\(port)/postgres",
            "postgres://x:\(s)%zz@127.0.0.1:\(refused)/db",
            "postgres://x:\(s)%00@127.0.0.1:\(refused)/db",
            "postgres://x:\(s)@[::1/db",
            "postgres://x:p?\(s)@[::1/db",
            "postgres://:\(s)@127.0.0.1:notaport/db",
            "postgresql://x@127.0.0.1:\(refused)/db?password=\(s)&y=%zz",
            "host=127.0.0.1 port=\(refused) password='\(s)",
            "host=127.0.0.1 port=\(refused) password = '\(s)' sslpassword=\(s) stray",
            "host=[::1 password=\(s) port=x",
        ]
        let commands = [["run"], ["tail"], ["setup"], ["status"], ["slot", "list"], ["slot", "drop", "no_such_slot_secrets"]]
        // A table that does not exist: run, tail and setup stop before creating anything.
        let safe = ["--table", "public.no_such_table_secrets", "--slot", "no_such_slot_secrets", "--publication", "no_such_pub_secrets"]
        for url in urls {
            for command in commands {
                for source in Source.allCases {
                    let extra = command.first == "slot" ? [] : safe
                    try assertNoSentinel(command, [("database-url", url)], from: source, extra: extra)
                }
            }
        }
    }

    func testSinkURLsAndKafkaProperties() throws {
        let refused = try freeLoopbackPort()
        let s = sentinel
        let database = [("database-url", "postgresql://nobody@127.0.0.1:\(refused)/none")]
        let sinks = [
            "redis://:\(s)@127.0.0.1:\(refused)", "redis://user:\(s)@127.0.0.1:\(refused)/0", "redis://user:\(s)@h:notaport",
            "redis://:\(s)%zz@h", "redis:/:\(s)@h", "rediss://:\(s)@h", "redis://:\(s)@h?x=1", "redis://:\(s)@h/db",
            "nats://user:\(s)@127.0.0.1:\(refused)", "nats://\(s)@127.0.0.1:\(refused)", "nats://u:\(s)@h:notaport",
            "nats://u:\(s)@h,u:\(s)@h2", "nats://\(s)%zz@h", "nats://u:\(s)@[::1", "nats://u:\(s)@h/x",
            "kafka://u:\(s)@127.0.0.1:\(refused)", "kafka://\(s)@h,,x", "kafka:/\(s)@h", "kafka://u:\(s)@h:notaport",
            "stdout://u:\(s)@x", "carrier://u:\(s)@x", "u:\(s)@host", "nats:\(s)@h",
        ]
        for sink in sinks {
            for source in Source.allCases {
                try assertNoSentinel(["run"], database + [("sink", sink)], from: source)
            }
        }
        let kafka = database + [("sink", "kafka://127.0.0.1:\(refused)")]
        let properties: [[String]] = [
            ["sasl.password:\(s)"], ["sasl.password\(s)"], ["sasl.password=\(s)", "linger.ms=soon"],
            ["sasl.password=\(s)", "acks=1"], ["ssl.key.password=\(s)", "no.such.property=1"],
            ["sasl.oauthbearer.client.secret=\(s)", "sasl.mechanisms=NOPE"], ["sasl.username=u", "sasl.password=\(s)", "security.protocol=bogus"],
        ]
        for items in properties {
            for source in Source.allCases {
                try assertNoSentinel(["run"], kafka + items.map { ("kafka-property", $0) }, from: source)
            }
        }
    }

    /// A relay that streams, with the password in its URL: the startup line names the target.
    func testStreamingCommandsNeverShowThePassword() throws {
        let outbox = try OutboxFixture("secret")
        defer { outbox.tearDown() }
        let server = try XCTUnwrap(URLComponents(string: outbox.url))
        let url = "postgresql://postgres:\(sentinel)@\(try XCTUnwrap(server.host)):\(try XCTUnwrap(server.port))/postgres"
        let arguments = ["--table", "public.\(outbox.table)", "--publication", outbox.publication, "--slot", outbox.slot, "--log-level", "debug"]
        for command in [["run", "--sink", "stdout://"], ["tail", "--format", "json"]] {
            let spout = try SpoutProcess(command + arguments, environment: ["SPOUT_DATABASE_URL": url])
            eventually("\(command[0]) streams") { spout.stderr.contains("streaming") || spout.stderr.contains("tailing") || !spout.process.isRunning }
            try outbox.insert(outbox.admin, rows: 1)
            eventually("an event") { spout.lines.count == 1 || !spout.process.isRunning }
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
            XCTAssertTrue(spout.stderr.contains("postgres@"), spout.stderr)
            XCTAssertFalse(spout.stderr.contains(sentinel), spout.stderr)
            XCTAssertFalse(spout.stdout.contains(sentinel))
        }
    }
}
