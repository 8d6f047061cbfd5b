import Foundation
import SpoutCore
import XCTest

/// The PostgreSQL that `make test` (scripts/test) starts. Tests fail, not skip, without it.
enum TestDatabase {
    static func url(_ variable: String = "SPOUT_TEST_DATABASE_URL") throws -> String {
        guard let url = ProcessInfo.processInfo.environment[variable], !url.isEmpty else {
            throw XCTSkipFailure("\(variable) is not set: run the tests with `make test`, which starts PostgreSQL")
        }
        return url
    }

    /// The test server's URL for another database on it.
    static func url(database: String) throws -> String {
        var components = try XCTUnwrap(URLComponents(string: try url()))
        components.path = "/" + database
        return try XCTUnwrap(components.string)
    }

    static func connect() throws -> PostgresConnection { try PostgresConnection(try url()) }

    /// A unique name for this test's table, publication and slot.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(ProcessInfo.processInfo.processIdentifier)_\(UInt32.random(in: 0...UInt32.max))"
    }
}

struct XCTSkipFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension PostgresConnection {
    @discardableResult
    func sql(_ statement: String) throws -> [[String?]] { try query(statement, context: statement) }

    func value(_ statement: String) throws -> String? { try sql(statement).first?.first ?? nil }

    func lsn(_ statement: String) throws -> LSN? { try value(statement).flatMap { LSN($0) } }
}

/// One outbox table with its own publication and slot, dropped at the end of the test.
final class OutboxFixture: @unchecked Sendable {
    let table: String
    let publication: String
    let slot: String
    let admin: PostgresConnection
    let url: String

    init(_ prefix: String = "t", extraColumns: String = "") throws {
        url = try TestDatabase.url()
        admin = try TestDatabase.connect()
        let name = TestDatabase.uniqueName(prefix)
        table = "outbox_\(name)"
        publication = "pub_\(name)"
        slot = "slot_\(name)"
        try admin.sql(Self.createTableSQL(table, extraColumns: extraColumns))
    }

    /// The test outbox table (sql/outbox.sql's columns plus `tenant_id`), in schema public.
    static func createTableSQL(_ table: String, extraColumns: String = "") -> String {
        """
        CREATE TABLE public.\(table) (
          id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
          aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
          payload jsonb NOT NULL, headers jsonb, tenant_id text, created_at timestamptz NOT NULL DEFAULT now()\(extraColumns))
        """
    }

    var arguments: [String] {
        ["--database-url", url, "--table", "public.\(table)", "--publication", publication, "--slot", slot]
    }

    /// Drops the slot (after its walsender is gone), publication and table.
    func tearDown() {
        for _ in 0..<50 {
            let active = (try? admin.value("SELECT active FROM pg_replication_slots WHERE slot_name = '\(slot)'")) ?? nil
            if active != "t" { break }
            usleep(100_000)
        }
        _ = try? admin.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '\(slot)'")
        _ = try? admin.sql("DROP PUBLICATION IF EXISTS \(publication)")
        _ = try? admin.sql("DROP TABLE IF EXISTS public.\(table)")
    }

    var confirmedFlush: LSN? {
        get throws { try admin.lsn("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '\(slot)'") }
    }

    var slotIsActive: Bool {
        get throws { try admin.value("SELECT active FROM pg_replication_slots WHERE slot_name = '\(slot)'") == "t" }
    }

    /// The pid of the walsender streaming the slot (START_REPLICATION done), nil before.
    /// `slotIsActive` is true already while spout creates the slot, and an insert made then
    /// may commit before the slot's consistent point and never be decoded.
    var streamingWalsender: String? {
        get throws {
            try admin.value("""
                SELECT r.pid FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                WHERE s.slot_name = '\(slot)' AND r.state IN ('catchup', 'streaming')
                """)
        }
    }

    func currentLSN() throws -> LSN { try admin.lsn("SELECT pg_current_wal_insert_lsn()") ?? .zero }

    /// Inserts `rows` events in one transaction on `connection`; returns their ids.
    @discardableResult
    func insert(_ connection: PostgresConnection, rows: Int, aggregate: String = "order", key: (Int) -> String = { "\($0)" },
                payload: (Int) -> String = { "{\"n\": \($0)}" }) throws -> [String] {
        var values: [String] = []
        for index in 0..<rows {
            values.append("('\(aggregate)', \(SQL.literal(key(index))), 'Created', \(SQL.literal(payload(index))), '{\"h\": \"v\"}')")
        }
        let rows = try connection.sql("""
            INSERT INTO public.\(table) (aggregate_type, aggregate_id, event_type, payload, headers)
            VALUES \(values.joined(separator: ",")) RETURNING id
            """)
        return rows.compactMap { $0.first ?? nil }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on (the kernel picks it).
func freeLoopbackPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw XCTSkipFailure("socket: \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
    }
    guard bound else { throw XCTSkipFailure("cannot bind a loopback port: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Waits until `condition` holds or `timeout` passes.
func eventually(timeout: TimeInterval = 30, _ message: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line,
                _ condition: () throws -> Bool) rethrows {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(50_000)
    }
    XCTFail("timed out after \(timeout) s: \(message())", file: file, line: line)
}

/// The `spout` executable built beside the tests, run as a child process.
final class SpoutProcess {
    let process = Process()
    let stdoutURL: URL
    let stderrURL: URL

    static var executable: URL {
        if let path = ProcessInfo.processInfo.environment["SPOUT_BIN"] { return URL(fileURLWithPath: path) }
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("spout")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return Bundle.main.bundleURL.appendingPathComponent("spout")
    }

    /// With `stdoutPipe`, stdout is a pipe that nobody reads until `readPipe()`.
    private(set) var pipe: Pipe?

    init(_ arguments: [String], environment: [String: String] = [:], stdoutPipe: Bool = false) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        stdoutURL = directory.appendingPathComponent("stdout")
        stderrURL = directory.appendingPathComponent("stderr")
        FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = Self.executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SPOUT_") }
        env.merge(environment) { $1 }
        process.environment = env
        if stdoutPipe {
            let pipe = Pipe()
            self.pipe = pipe
            process.standardOutput = pipe
        } else {
            process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        }
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// Complete lines written to stdout so far.
    var lines: [Substring] {
        let text = stdout
        let complete = text.hasSuffix("\n") ? Substring(text) : text[..<(text.lastIndex(of: "\n") ?? text.startIndex)]
        return complete.split(separator: "\n")
    }

    /// The JSON events written so far.
    var events: [[String: Any]] {
        lines.compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for exit; returns the status, or nil (after killing it) on timeout.
    @discardableResult
    func waitForExit(timeout: TimeInterval = 60) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning {
            signal(SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    /// Waits for spout to stop on an error: a non-zero exit within `timeout` and exactly one
    /// error line on stderr, which it returns (empty when the checks failed).
    @discardableResult
    func waitForFailure(timeout: TimeInterval, _ message: @autoclosure () -> String = "spout stops",
                        file: StaticString = #filePath, line: UInt = #line) -> String {
        let status = waitForExit(timeout: timeout)
        XCTAssertNotNil(status, message(), file: file, line: line)
        XCTAssertNotEqual(status, 0, file: file, line: line)
        let errorLines = stderr.split(separator: "\n").filter { $0.contains("error") }
        XCTAssertEqual(errorLines.count, 1, stderr, file: file, line: line)
        return String(errorLines.first ?? "")
    }

    /// Runs spout to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 60) throws
        -> (status: Int32?, stdout: String, stderr: String) {
        let child = try SpoutProcess(arguments, environment: environment)
        let status = child.waitForExit(timeout: timeout)
        return (status, child.stdout, child.stderr)
    }

    deinit {
        if process.isRunning { signal(SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(at: stdoutURL.deletingLastPathComponent())
    }
}

/// The commit LSNs (`end_lsn`, what spout confirms) of chosen transactions, read back through
/// a `test_decoding` slot created before them. It lets a test say "the slot stayed before
/// this transaction" exactly, whatever else writes WAL meanwhile.
final class CommitWitness {
    let slot: String
    private let admin: PostgresConnection

    init(_ outbox: OutboxFixture) throws {
        admin = outbox.admin
        slot = "witness_" + outbox.slot
        try admin.sql("SELECT pg_create_logical_replication_slot('\(slot)', 'test_decoding')")
    }

    deinit { _ = try? admin.sql("SELECT pg_drop_replication_slot('\(slot)')") }

    /// Runs `body` in a transaction on `connection`; returns its result and the transaction's id.
    static func transaction<Result>(_ connection: PostgresConnection, _ body: () throws -> Result) throws -> (Result, xid: String) {
        try connection.sql("BEGIN")
        let result = try body()
        let xid = try XCTUnwrap(try connection.value("SELECT (txid_current() % 4294967296)::text"))
        try connection.sql("COMMIT")
        return (result, xid)
    }

    func commitLSN(xid: String) throws -> LSN {
        try XCTUnwrap(try admin.lsn("SELECT lsn FROM pg_logical_slot_peek_changes('\(slot)', NULL, NULL) WHERE data = 'COMMIT \(xid)'"),
                      "no commit of transaction \(xid) in the witness slot")
    }
}

extension SpoutProcess {
    /// User plus system CPU time so far, from /proc (all threads); nil once it is gone.
    var cpuSeconds: Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return nil }
        // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

// issue 12: failover slots
/// The PostgreSQL major version `scripts/test` runs this pass against (SPOUT_TEST_PG_VERSION),
/// 15 when unset. Version-specific tests run in one pass and skip in the other.
enum TestServerVersion {
    static var major: Int { ProcessInfo.processInfo.environment["SPOUT_TEST_PG_VERSION"].flatMap { Int($0) } ?? 15 }

    static func require(atLeast version: Int, for what: String) throws {
        guard major >= version else {
            throw XCTSkip("\(what) needs PostgreSQL \(version)+: it runs in scripts/test's PostgreSQL 18 pass (this pass: \(major))")
        }
    }
}

/// A private server of the project's scripts (scripts/pg-start, scripts/pg-standby), for tests
/// that stop, restart or promote PostgreSQL: never the shared test server.
final class PrivateServer: @unchecked Sendable {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    let name: String
    /// The settings the script wrote to .run/NAME.env (SPOUT_PG_DIR, SPOUT_PG_PORT, SPOUT_PG_BIN…).
    let environment: [String: String]

    /// The superuser URL; on a TLS server (`start(_:tls:)`) with `sslmode=verify-full` and the CA.
    var url: String { (environment["SPOUT_TEST_DATABASE_URL"] ?? "") + tlsParameters }
    /// `?sslmode=verify-full&sslrootcert=…/ca.crt` on a TLS server, else empty.
    var tlsParameters: String {
        guard let directory = environment["SPOUT_PG_TLS_DIR"], !directory.isEmpty else { return "" }
        return "?sslmode=verify-full&sslrootcert=\(directory)/ca.crt"
    }
    var port: String { environment["SPOUT_PG_PORT"] ?? "" }
    var portNumber: Int { Int(port) ?? 0 }

    /// `scripts/pg-start NAME logical VERSION` (the version of this test pass by default).
    static func start(_ name: String, version: Int = TestServerVersion.major) throws -> PrivateServer {
        do { try script("pg-start", [name, "logical", String(version)]) } catch {
            // Once more: a port taken between choosing and binding it, a machine under load.
            _ = try? script("pg-stop", [name])
            try script("pg-start", [name, "logical", String(version)])
        }
        return try PrivateServer(name: name)
    }

    // issue 15: PostgreSQL over TLS
    /// `SPOUT_PG_TLS_DIR=… scripts/pg-start NAME`: `ssl = on` with `certificates`' server
    /// certificate, TCP over TLS only, the role spout logging in with the client certificate.
    static func start(_ name: String, version: Int = TestServerVersion.major, tls certificates: TestCertificates) throws -> PrivateServer {
        let command = ["SPOUT_PG_TLS_DIR=\(certificates.directory.path)", repository.appendingPathComponent("scripts/pg-start").path,
                       name, "logical", String(version)]
        do { try run(["/usr/bin/env"] + command) } catch {
            _ = try? script("pg-stop", [name])
            try run(["/usr/bin/env"] + command)
        }
        return try PrivateServer(name: name)
    }

    /// The superuser over the Unix socket (trust, no TLS), whatever the server's certificate.
    func socketConnection() throws -> PostgresConnection {
        try PostgresConnection("host=\(try XCTUnwrap(environment["SPOUT_PG_DIR"])) port=\(port) user=postgres dbname=postgres")
    }

    /// `scripts/pg-standby PRIMARY NAME`: a physical standby set up for slot synchronization.
    static func standby(of primary: PrivateServer, _ name: String) throws -> PrivateServer {
        try script("pg-standby", [primary.name, name])
        return try PrivateServer(name: name)
    }

    private init(name: String) throws {
        self.name = name
        let file = Self.repository.appendingPathComponent(".run/\(name).env")
        let text = try String(contentsOf: file, encoding: .utf8)
        var environment: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            environment[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        self.environment = environment
    }

    func connect() throws -> PostgresConnection { try PostgresConnection(url) }

    /// `pg_ctl ARGUMENTS` on this server's data directory, as the user that runs it.
    func pgCtl(_ arguments: [String]) throws {
        let bin = try XCTUnwrap(environment["SPOUT_PG_BIN"]), directory = try XCTUnwrap(environment["SPOUT_PG_DIR"])
        var command = ["\(bin)/pg_ctl", "-D", "\(directory)/data"] + arguments
        if getuid() == 0 { command = ["runuser", "-u", "postgres", "--"] + command }
        try Self.run(command)
    }

    /// `pg_ctl restart -m MODE`: every connection ends; the server is back when this returns.
    func restart(mode: String) throws {
        let directory = try XCTUnwrap(environment["SPOUT_PG_DIR"])
        try pgCtl(["restart", "-m", mode, "-w", "-t", "60", "-l", "\(directory)/server.log"])
    }

    /// `scripts/pg-stop NAME`: stops it (if running) and removes its directory.
    func stop() { _ = try? Self.script("pg-stop", [name]) }

    @discardableResult
    static func script(_ script: String, _ arguments: [String]) throws -> String {
        try run([repository.appendingPathComponent("scripts/\(script)").path] + arguments)
    }

    /// Runs a command to completion (`runCommand`); its output on failure is the error.
    @discardableResult
    static func run(_ command: [String]) throws -> String {
        let (status, text) = try runCommand(command[0], Array(command.dropFirst()))
        guard status == 0 else { throw XCTSkipFailure("\(command.joined(separator: " ")) failed (status \(status)): \(text)") }
        return text
    }
}
