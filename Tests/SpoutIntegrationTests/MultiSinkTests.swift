import Foundation
import SpoutCore
import XCTest

// issue 14: several sinks
/// Several sinks in one run (`--sink NAME=URL` more than once, `--route`), through the `spout`
/// executable: events routed by a `destination` column, one sink down for a while, unknown
/// routes under `--on-poison`, and the startup error without `--route`.
final class MultiSinkTests: XCTestCase {
    /// Inserts one transaction of `rows` events for `destination` (NULL when nil) on `connection`,
    /// keys k0…k4 and a running `seq` in the payload; returns the ids.
    @discardableResult
    private func insert(_ outbox: OutboxFixture, _ connection: PostgresConnection, rows: Int, destination: String?,
                        sequence: inout Int) throws -> [String] {
        var values: [String] = []
        for _ in 0..<rows {
            let destinationValue = destination.map { SQL.literal($0) } ?? "NULL"
            values.append("('order', 'k\(sequence % 5)', 'Created', '{\"seq\": \(sequence)}', \(destinationValue))")
            sequence += 1
        }
        return try connection.sql("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload, destination)
            VALUES \(values.joined(separator: ",")) RETURNING id
            """).compactMap { $0.first ?? nil }
    }

    /// Every entry of every stream of `redis`: each id once, `seq` rising per key.
    private func checkedIDs(_ redis: RedisServer, file: StaticString = #filePath, line: UInt = #line) throws -> Set<String> {
        let client = try redis.client()
        var seen = Set<String>()
        var lastSequence: [String: Int] = [:]
        for entry in try client.entries("outbox.event.order") {
            let id = try XCTUnwrap(entry.fields["id"])
            XCTAssertTrue(seen.insert(id).inserted, "event \(id) twice", file: file, line: line)
            let payload = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(XCTUnwrap(entry.fields["payload"]).utf8)) as? [String: Any])
            let seq = try XCTUnwrap(payload["seq"] as? Int)
            let key = try XCTUnwrap(entry.fields["key"])
            XCTAssertGreaterThan(seq, lastSequence[key] ?? -1, "order of key \(key)", file: file, line: line)
            lastSequence[key] = seq
        }
        return seen
    }

    /// Two Redis servers, events routed by a `destination` column (NULL: --default-route). The
    /// second server is killed while events for both keep coming: the first goes on receiving
    /// its events, the slot stays before the first event the dead one has not acknowledged
    /// (checked in pg_replication_slots while it is down), and after its restart everything
    /// arrives, each event once (lsn ids), per-key order kept, in the right server only.
    func testTwoRedisSinksOneDownForAWhileLoseNothing() throws {
        let redisA = try RedisServer(), redisB = try RedisServer()
        let outbox = try OutboxFixture("multi_down", extraColumns: ", destination text")
        defer { outbox.tearDown() }
        let witness = try CommitWitness(outbox)
        let port = try freeLoopbackPort()
        let spout = try SpoutProcess(["run", "--sink", "a=" + redisA.url, "--sink", "b=" + redisB.url, "--route", "{destination}",
                                      "--default-route", "a", "--redis-ids", "lsn", "--metrics-address", "127.0.0.1:\(port)"] + outbox.arguments)
        defer { if spout.process.isRunning { spout.signal(SIGKILL) } }
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try TestDatabase.connect()
        var sequence = 0
        var expectedA = Set<String>(), expectedB = Set<String>()
        for round in 0..<4 {
            expectedA.formUnion(try insert(outbox, writer, rows: 10 + round, destination: "a", sequence: &sequence))
            expectedB.formUnion(try insert(outbox, writer, rows: 7 + round, destination: "b", sequence: &sequence))
            expectedA.formUnion(try insert(outbox, writer, rows: 3, destination: nil, sequence: &sequence))
        }
        let clientA = try redisA.client(), clientB = try redisB.client()
        try eventually("the first events in both: \(spout.stderr)") {
            try clientA.totalLength("*") >= expectedA.count && clientB.totalLength("*") >= expectedB.count
        }
        let beforeOutage = try outbox.currentLSN()
        try eventually("confirmed up to the outage") { try XCTUnwrap(try outbox.confirmedFlush) >= beforeOutage }

        redisB.kill()
        // B's events first, then A's: A gets its own, the slot must not pass B's.
        var (ids, xid) = try CommitWitness.transaction(writer) { try insert(outbox, writer, rows: 5, destination: "b", sequence: &sequence) }
        expectedB.formUnion(ids)
        let firstUnacknowledged = try witness.commitLSN(xid: xid)
        for _ in 0..<5 {
            expectedA.formUnion(try insert(outbox, writer, rows: 4, destination: "a", sequence: &sequence))
            expectedB.formUnion(try insert(outbox, writer, rows: 2, destination: "b", sequence: &sequence))
        }
        try eventually("sink a keeps receiving while b is down") { try clientA.totalLength("*") >= expectedA.count }
        // Statuses go out every second; A acknowledged all after B's first unacknowledged event.
        (ids, xid) = try CommitWitness.transaction(writer) { try insert(outbox, writer, rows: 1, destination: "a", sequence: &sequence) }
        expectedA.formUnion(ids)
        let lastA = try witness.commitLSN(xid: xid)
        try eventually("sink a has the last of its events") { try clientA.totalLength("*") >= expectedA.count }
        // Two status updates after sink a acknowledged its last event (pg_stat_replication's
        // reply_time passes a moment taken after it): neither confirmed past b's first event.
        for _ in 0..<2 {
            let moment = try XCTUnwrap(try outbox.admin.value("SELECT clock_timestamp()::text"))
            try eventually("a status update from spout") {
                try outbox.admin.value("""
                    SELECT (r.reply_time > '\(moment)'::timestamptz)::text FROM pg_stat_replication r
                    JOIN pg_replication_slots s ON r.pid = s.active_pid WHERE s.slot_name = '\(outbox.slot)'
                    """) == "true"
            }
            let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
            XCTAssertLessThan(confirmed, firstUnacknowledged, "confirmed past an event sink b has not acknowledged")
            XCTAssertLessThan(confirmed, lastA)
        }
        // The metrics say which sink holds the slot.
        func inFlight(_ sink: String, in scrape: String) -> Double? {
            let prefix = "spout_in_flight_events{sink=\"\(sink)\"} "
            return scrape.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
        }
        var scrape = ""
        try eventually("b's in-flight events in /metrics: \(scrape)") {
            scrape = MetricsTests.get(port: port, path: "/metrics")?.body ?? ""
            return (inFlight("b", in: scrape) ?? 0) > 0 && inFlight("a", in: scrape) == 0
        }

        try redisB.start()
        let restartedB = try redisB.client()
        try eventually(timeout: 90, "every event of b after its restart") { try restartedB.totalLength("*") >= expectedB.count }
        let written = try outbox.currentLSN()
        try eventually(timeout: 30, "everything confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        XCTAssertEqual(try checkedIDs(redisA), expectedA, "sink a: its events, each once")
        XCTAssertEqual(try checkedIDs(redisB), expectedB, "sink b: its events, each once")
    }

    /// An event routed to a sink that does not exist is poison: `skip` logs and passes it (the
    /// others arrive and the slot moves past it); `stop` (the default) stops spout with the
    /// route in the error, after confirming what came before, and not past it.
    func testUnknownRouteUnderSkipAndStop() throws {
        let outbox = try OutboxFixture("multi_poison", extraColumns: ", destination text")
        defer { outbox.tearDown() }
        let writer = try TestDatabase.connect()
        let witness = try CommitWitness(outbox)
        var sequence = 0
        let base = ["run", "--sink", "a=stdout://", "--sink", "b=stdout://", "--route", "{destination}"] + outbox.arguments

        let skipping = try SpoutProcess(base + ["--on-poison", "skip"])
        defer { if skipping.process.isRunning { skipping.signal(SIGKILL) } }
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        var good = try insert(outbox, writer, rows: 2, destination: "a", sequence: &sequence)
        let poison = try insert(outbox, writer, rows: 1, destination: "nowhere", sequence: &sequence)
        let unrouted = try insert(outbox, writer, rows: 1, destination: nil, sequence: &sequence)
        good += try insert(outbox, writer, rows: 2, destination: "b", sequence: &sequence)
        let written = try outbox.currentLSN()
        try eventually("the routed events on stdout") { skipping.events.count >= good.count }
        try eventually("confirmed past the skipped events") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
        skipping.signal(SIGTERM)
        XCTAssertEqual(skipping.waitForExit(), 0, skipping.stderr)
        XCTAssertEqual(Set(skipping.events.compactMap { $0["id"] as? String }), Set(good))
        XCTAssertTrue(skipping.stderr.contains("skipped event \"\(poison[0])\""), skipping.stderr)
        XCTAssertTrue(skipping.stderr.contains("route \"nowhere\""), skipping.stderr)
        XCTAssertTrue(skipping.stderr.contains("skipped event \"\(unrouted[0])\""), skipping.stderr)

        let stopping = try SpoutProcess(base)
        defer { if stopping.process.isRunning { stopping.signal(SIGKILL) } }
        try eventually("spout streams from the slot again") { try outbox.streamingWalsender != nil }
        let before = try insert(outbox, writer, rows: 2, destination: "b", sequence: &sequence)
        let (bad, xid) = try CommitWitness.transaction(writer) { try insert(outbox, writer, rows: 1, destination: "elsewhere", sequence: &sequence) }
        let badCommit = try witness.commitLSN(xid: xid)
        let error = stopping.waitForFailure(timeout: 60)
        XCTAssertTrue(error.contains(bad[0]) && error.contains("\"elsewhere\""), error)
        XCTAssertEqual(Set(stopping.events.compactMap { $0["id"] as? String }), Set(before))
        let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
        XCTAssertLessThan(confirmed, badCommit, "confirmed past the poison event")
        XCTAssertGreaterThanOrEqual(confirmed, written)
    }

    /// Several sinks need --route: a startup error before anything connects; --check-config
    /// shows each sink (secrets masked) and the route.
    func testSeveralSinksWithoutRouteIsAStartupError() throws {
        let (status, _, stderr) = try SpoutProcess.run(["run", "--sink", "a=stdout://", "--sink", "b=redis://:hunter22@127.0.0.1:1",
                                                        "--database-url", "postgresql://127.0.0.1:1/none"])
        XCTAssertEqual(status, 64, stderr)
        XCTAssertTrue(stderr.contains("2 sinks (a, b) need --route"), stderr)
        XCTAssertFalse(stderr.contains("hunter22"), stderr)

        let (shown, stdout, errors) = try SpoutProcess.run(["run", "--check-config", "--sink", "a=stdout://", "--sink", "b=redis://:hunter22@127.0.0.1:1",
                                                            "--route", "{destination}", "--default-route", "b"])
        XCTAssertEqual(shown, 0, errors)
        XCTAssertTrue(stdout.contains("sink = a=stdout://\nsink = b=redis://:***@127.0.0.1:1\n"), stdout)
        XCTAssertTrue(stdout.contains("route = {destination}\ndefault-route = b"), stdout)
        XCTAssertFalse(stdout.contains("hunter22"), stdout)
    }

    /// `spout check` with several sinks: each sink's lines, prefixed with its name.
    func testCheckPrintsEachSink() throws {
        let outbox = try OutboxFixture("multi_check", extraColumns: ", destination text")
        defer { outbox.tearDown() }
        let (status, stdout, stderr) = try SpoutProcess.run(["check", "--sink", "a=stdout://", "--sink", "b=stdout://", "--route", "{destination}"]
                                                            + outbox.arguments)
        XCTAssertEqual(status, 0, stdout + stderr)
        XCTAssertTrue(stdout.contains("→ a=stdout://, b=stdout://"), stdout)
        XCTAssertTrue(stdout.contains("✓ a sink "), stdout)
        XCTAssertTrue(stdout.contains("✓ b sink "), stdout)
    }

    /// A stop while one sink is down: the log names the sink that holds the oldest
    /// unacknowledged event, and nothing past it is confirmed.
    func testStopNamesTheSinkHoldingTheSlot() throws {
        let redisA = try RedisServer(), redisB = try RedisServer(start: false)
        let outbox = try OutboxFixture("multi_stop", extraColumns: ", destination text")
        defer { outbox.tearDown() }
        let witness = try CommitWitness(outbox)
        let port = try freeLoopbackPort()
        let spout = try SpoutProcess(["run", "--sink", "a=" + redisA.url, "--sink", "b=" + redisB.url, "--route", "{destination}",
                                      "--shutdown-timeout", "1", "--metrics-address", "127.0.0.1:\(port)"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        var sequence = 0
        let (_, xid) = try CommitWitness.transaction(writer) { try insert(outbox, writer, rows: 2, destination: "b", sequence: &sequence) }
        let heldByB = try witness.commitLSN(xid: xid)
        try insert(outbox, writer, rows: 3, destination: "a", sequence: &sequence)
        let clientA = try redisA.client()
        try eventually("sink a has its events") { try clientA.totalLength("*") >= 3 }
        try eventually("b holds its events") {
            (MetricsTests.get(port: port, path: "/metrics")?.body ?? "").contains("spout_in_flight_events{sink=\"b\"} 2")
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertTrue(spout.stderr.contains("sink \"b\" holds the oldest unacknowledged event; in flight per sink: a 0, b 2"), spout.stderr)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), heldByB)
    }
}

