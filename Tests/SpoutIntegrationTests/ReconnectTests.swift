import Foundation
import SpoutCore
import XCTest

/// A lost database connection under steady load: `spout run` (stdout sink, to a file) streams
/// again with the same session. Each disruption: every committed row arrives, none twice,
/// spout never exits, one outage warning and one "recovered" line. The server is this class's
/// own (`scripts/pg-start`), since the tests restart it.
final class ReconnectTests: XCTestCase {
    nonisolated(unsafe) static var server: PrivateServer?
    nonisolated(unsafe) static var startFailure = ""

    override class func setUp() {
        super.setUp()
        do { server = try PrivateServer.start("reconnect-tests") } catch { startFailure = "\(error)" }
    }

    override class func tearDown() {
        server?.stop()
        server = nil
        super.tearDown()
    }

    private func privateServer() throws -> PrivateServer {
        guard let server = Self.server else { throw XCTSkipFailure("scripts/pg-start reconnect-tests did not start a server: \(Self.startFailure)") }
        return server
    }

    static let lostLine = "lost the connection to PostgreSQL ("
    static let recoveredLine = "recovered the connection to PostgreSQL"

    /// Streams under load, calls `disrupt`, and checks what arrives after spout recovered.
    private func survives(prefix: String, throughProxy: Bool = false, file: StaticString = #filePath, line: UInt = #line,
                          _ disrupt: (_ outbox: PrivateOutbox, _ spout: SpoutProcess, _ proxy: CuttableProxy?) throws -> Void) throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: prefix)
        let proxy = throughProxy ? try CuttableProxy(to: server.portNumber) : nil
        let url = proxy.map { "postgresql://postgres@127.0.0.1:\($0.port)/postgres" } ?? server.url
        let spout = try SpoutProcess(outbox.arguments(url: url))
        note("\(prefix): spout started")
        eventually(timeout: 60, "spout streams: \(spout.stderr)", file: file, line: line) { spout.stderr.contains("streaming") }
        let writer = SteadyWriter(url: server.url, table: outbox.table)
        writer.start()
        defer { writer.stop() }
        eventually(timeout: 60, "events flow: \(spout.stderr)", file: file, line: line) { spout.lines.count >= 50 }

        note("\(prefix): events flow, disrupting")
        try disrupt(outbox, spout, proxy)
        note("\(prefix): disrupted")

        eventually(timeout: 120, "spout recovered: \(spout.stderr)", file: file, line: line) {
            !spout.logLines(containing: Self.recoveredLine).isEmpty
        }
        note("\(prefix): recovered")
        writer.waitForMore(100, file: file, line: line)
        writer.stop()
        let committed = try outbox.committedIDs()
        eventually(timeout: 60, "every committed row arrives", file: file, line: line) {
            Set(spout.eventIDs).isSuperset(of: committed)
        }
        XCTAssertTrue(spout.process.isRunning, "spout never exits: \(spout.stderr)", file: file, line: line)
        let delivered = spout.eventIDs
        XCTAssertEqual(duplicates(in: delivered), [], "none twice", file: file, line: line)
        XCTAssertEqual(Set(delivered).count, committed.count, "nothing but the committed rows", file: file, line: line)
        XCTAssertEqual(spout.logLines(containing: Self.lostLine).count, 1, spout.stderr, file: file, line: line)
        XCTAssertEqual(spout.logLines(containing: Self.recoveredLine).count, 1, spout.stderr, file: file, line: line)
        // One warning per outage in all: the publication watch loses its connection too, and stays quiet.
        XCTAssertEqual(spout.logLines(containing: "spout: warning: ").count, 1, spout.stderr, file: file, line: line)
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr, file: file, line: line)
        print("reconnect \(prefix): \(committed.count) events, \(spout.logLines(containing: Self.recoveredLine).first ?? "")")
    }

    func testServerRestartFast() throws {
        try survives(prefix: "fast") { outbox, _, _ in try outbox.server.restart(mode: "fast") }
    }

    func testServerRestartImmediate() throws {
        try survives(prefix: "immediate") { outbox, _, _ in try outbox.server.restart(mode: "immediate") }
    }

    func testWalsenderTerminated() throws {
        try survives(prefix: "terminate") { outbox, _, _ in
            let pid = try XCTUnwrap(try outbox.walsenderPID)
            XCTAssertEqual(try outbox.admin.value("SELECT pg_terminate_backend(\(pid))"), "t")
        }
    }

    /// spout stopped (SIGSTOP) longer than the server's wal_sender_timeout (5 s, pg-start):
    /// the server ends the walsender; continued, spout finds its connection gone.
    func testWalSenderTimeout() throws {
        try survives(prefix: "timeout") { outbox, spout, _ in
            let pid = try XCTUnwrap(try outbox.walsenderPID)
            spout.signal(SIGSTOP)
            eventually(timeout: 60, "the server ended the walsender \(pid) of a silent client") {
                (try? outbox.walsenderPID) == nil
            }
            spout.signal(SIGCONT)
        }
    }

    /// The database unreachable for 20 s: every connection reset, new ones refused; the
    /// writer goes on writing directly.
    func testDatabaseUnreachableFor20Seconds() throws {
        try survives(prefix: "unreachable", throughProxy: true) { _, spout, proxy in
            let proxy = try XCTUnwrap(proxy)
            try proxy.cut()
            eventually(timeout: 30, "spout noticed: \(spout.stderr)") { !spout.logLines(containing: Self.lostLine).isEmpty }
            // The outage's length is the scenario, not a guess at timing.
            Thread.sleep(forTimeInterval: 20)
            XCTAssertTrue(spout.process.isRunning, spout.stderr)
            XCTAssertTrue(spout.logLines(containing: Self.recoveredLine).isEmpty, "nothing to recover to while refused")
            try proxy.open()
        }
    }

    /// Messages name a multi-host URL's hosts with their ports (libpq's lists), never the password.
    func testMultiHostTargetNamesEachHost() {
        XCTAssertEqual(PostgresConnection.describe("postgresql://u:secret@h1:5433,h2:5434/db?target_session_attrs=read-write"),
                       "u@h1:5433,h2:5434/db")
        XCTAssertEqual(PostgresConnection.describe("host=a,b port=6543 dbname=d user=u password=secret"), "u@a:6543,b:6543/d")
        XCTAssertEqual(PostgresConnection.describe("postgresql://u@h1,h2/db"), "u@h1,h2/db")
    }

    /// SIGTERM while the database is unreachable: the sink finishes, spout says nothing could
    /// be confirmed, and exits 0; the slot keeps the unconfirmed part, which comes again.
    func testStopDuringAnOutageExitsCleanly() throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: "stopout")
        let proxy = try CuttableProxy(to: server.portNumber)
        let spout = try SpoutProcess(outbox.arguments(url: "postgresql://postgres@127.0.0.1:\(proxy.port)/postgres"))
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        let admin = try server.connect()
        try admin.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'k', 'Created', '{}')")
        eventually(timeout: 30, "the event arrives") { spout.lines.count == 1 }
        try proxy.cut()
        eventually(timeout: 30, "spout noticed: \(spout.stderr)") { !spout.logLines(containing: Self.lostLine).isEmpty }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
        XCTAssertEqual(spout.logLines(containing: "stopping while disconnected from PostgreSQL").count, 1, spout.stderr)
        try proxy.open()
    }

    /// While disconnected from PostgreSQL no status updates go out, yet the metrics stay current:
    /// events in flight to a stopped Redis when the connection is cut are counted as delivered
    /// (and the lag falls to 0) once Redis answers, before PostgreSQL is back.
    func testMetricsStayCurrentWhileDisconnected() throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: "metricsout")
        let redis = try RedisServer()
        let proxy = try CuttableProxy(to: server.portNumber)
        let port = try freeLoopbackPort()
        let spout = try SpoutProcess(outbox.arguments(url: "postgresql://postgres@127.0.0.1:\(proxy.port)/postgres")
                                     + ["--sink", redis.url, "--metrics-address", "127.0.0.1:\(port)"])
        defer { spout.signal(SIGKILL); spout.waitForExit() }
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        redis.signal(SIGSTOP)
        defer { redis.signal(SIGCONT) }
        let admin = try server.connect()
        for key in 1...5 {
            try admin.sql("INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'k\(key)', 'Created', '{}')")
        }
        let series = "{sink=\"redis\"}"
        var scrape = ""
        eventually(timeout: 60, "5 events wait for the stopped Redis: \(scrape)") {
            scrape = MetricsTests.get(port: port, path: "/metrics")?.body ?? ""
            return scrape.contains("spout_in_flight_events\(series) 5")
        }
        try proxy.cut()
        eventually(timeout: 30, "spout noticed: \(spout.stderr)") { !spout.logLines(containing: Self.lostLine).isEmpty }
        redis.signal(SIGCONT)
        eventually(timeout: 60, "delivered while disconnected: \(scrape)") {
            scrape = MetricsTests.get(port: port, path: "/metrics")?.body ?? ""
            return scrape.contains("spout_events_delivered_total{sink=\"redis\",topic=\"outbox.event.order\"} 5")
                && scrape.contains("spout_in_flight_events\(series) 0") && scrape.contains("spout_lag_seconds\(series) 0")
        }
        XCTAssertTrue(scrape.contains("spout_connected\(series) 0"), scrape)
        XCTAssertTrue(spout.logLines(containing: Self.recoveredLine).isEmpty, "still disconnected: \(spout.stderr)")
        try proxy.open()
        eventually(timeout: 120, "spout recovered: \(spout.stderr)") { !spout.logLines(containing: Self.recoveredLine).isEmpty }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(timeout: 60), 0, spout.stderr)
        XCTAssertEqual(try redis.client().totalLength("outbox.event.*"), 5)
    }

    /// `--reconnect-timeout 0`: today's exit, with today's error, at once.
    func testReconnectTimeoutZeroExitsAtOnce() throws {
        let outbox = try PrivateOutbox(try privateServer(), prefix: "zero")
        let spout = try SpoutProcess(outbox.arguments() + ["--reconnect-timeout", "0"])
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        let pid = try XCTUnwrap(try outbox.walsenderPID)
        try outbox.admin.sql("SELECT pg_terminate_backend(\(pid))")
        let error = spout.waitForFailure(timeout: 30)
        XCTAssertTrue(error.contains("terminating connection") || error.contains("lost the connection"), error)
        XCTAssertTrue(spout.logLines(containing: "reconnecting").isEmpty, spout.stderr)
    }

    /// A short timeout: spout retries, then exits non-zero naming the timeout.
    func testShortReconnectTimeoutExitsWithAClearMessage() throws {
        let server = try privateServer()
        let outbox = try PrivateOutbox(server, prefix: "short")
        let proxy = try CuttableProxy(to: server.portNumber)
        let spout = try SpoutProcess(outbox.arguments(url: "postgresql://postgres@127.0.0.1:\(proxy.port)/postgres")
                                     + ["--reconnect-timeout", "3"])
        eventually(timeout: 60, "spout streams: \(spout.stderr)") { spout.stderr.contains("streaming") }
        try proxy.cut()
        let started = Date()
        let error = spout.waitForFailure(timeout: 60)
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertTrue(error.contains("could not stream again within --reconnect-timeout 3 s"), error)
        XCTAssertGreaterThanOrEqual(elapsed, 2.5, "it retried for the timeout")
        XCTAssertEqual(spout.logLines(containing: Self.lostLine).count, 1, "one warning, then the error: \(spout.stderr)")
        try proxy.open()
    }
}
