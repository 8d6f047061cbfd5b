import Foundation
import SpoutCore
import SpoutSinks
import XCTest

/// The Redis Streams sink against real `redis-server` processes (RedisSupport.swift), through
/// the `spout` executable.
final class RedisSinkTests: XCTestCase {
    /// Three topics in transactions of 1 to 50 rows, and a logical message without key or
    /// type: one stream per topic, every event once, its fields, per-key order.
    func testEventsLandInOneStreamPerTopicWithTheirFields() throws {
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_fields")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        let writer = try TestDatabase.connect()
        let aggregates = ["order", "invoice", "customer"]
        var expected: [String: Int] = [:] // event id → seq
        var sequence = 0
        for (index, rows) in [1, 10, 50, 3, 25, 1, 40, 7, 13, 50].enumerated() {
            let aggregate = aggregates[index % 3]
            let base = sequence
            let ids = try outbox.insert(writer, rows: rows, aggregate: aggregate, key: { "k\((base + $0) % 5)" },
                                        payload: { "{\"seq\": \(base + $0), \"aggregate\": \"\(aggregate)\"}" })
            XCTAssertEqual(ids.count, rows)
            for id in ids { expected[id] = -1 }
            sequence += rows
        }
        try writer.sql("SELECT pg_logical_emit_message(true, 'outbox', '{\"aggregate_type\": \"misc\", \"payload\": {\"note\": \"no key\"}}')")
        let written = try outbox.currentLSN()

        let client = try redis.client()
        try eventually("\(sequence + 1) entries, got \((try? client.totalLength("outbox.event.*")) ?? -1)") {
            try client.totalLength("outbox.event.*") >= sequence + 1
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(try outbox.confirmedFlush), written)

        XCTAssertEqual(try client.keys("*"), ["outbox.event.customer", "outbox.event.invoice", "outbox.event.misc", "outbox.event.order"])
        var seen = Set<String>()
        for aggregate in aggregates {
            var lastSequence: [String: Int] = [:]
            for entry in try client.entries("outbox.event.\(aggregate)") {
                XCTAssertEqual(entry.fieldNames, ["id", "type", "key", "payload", "headers"])
                let id = try XCTUnwrap(entry.fields["id"])
                XCTAssertNotNil(expected[id], "unknown event \(id)")
                XCTAssertTrue(seen.insert(id).inserted, "event \(id) twice")
                let payload = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(XCTUnwrap(entry.fields["payload"]).utf8)) as? [String: Any])
                let seq = try XCTUnwrap(payload["seq"] as? Int)
                XCTAssertEqual(payload["aggregate"] as? String, aggregate, "stream per topic")
                let key = try XCTUnwrap(entry.fields["key"])
                XCTAssertEqual(key, "k\(seq % 5)")
                XCTAssertEqual(entry.fields["type"], "Created")
                XCTAssertEqual(entry.fields["headers"], "{\"h\":\"v\"}")
                XCTAssertGreaterThan(seq, lastSequence[key] ?? -1, "order of key \(key)")
                lastSequence[key] = seq
            }
        }
        XCTAssertEqual(seen.count, sequence, "every event exactly once")
        XCTAssertEqual(seen, Set(expected.keys))

        let misc = try client.entries("outbox.event.misc")
        XCTAssertEqual(misc.count, 1)
        XCTAssertEqual(misc.first?.fieldNames, ["id", "payload", "headers"], "no key or type field when the event has none")
        XCTAssertEqual(misc.first?.fields["payload"], "{\"note\": \"no key\"}")
        XCTAssertEqual(misc.first?.fields["headers"], "{}")
        XCTAssertTrue(misc.first?.fields["id"]?.hasPrefix("lsn:") ?? false)
    }

    /// redis-server SIGKILLed in the middle of a stream and restarted on the same port and
    /// directory: nothing is lost, per-key order holds, the slot is not confirmed past what
    /// Redis has not taken, and the outage is one warning.
    func testRedisCrashAndRestartLoseNothing() throws {
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_restart")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }

        // The writer's second half waits for the test: it is what Redis, stopped, leaves unanswered.
        let writing = HalfHeldWriter(outbox, transactions: 300)
        defer { writing.releaseSecondHalf() }
        try redis.killWithBatchInFlight(writing, firstHalf: 750, port: redis.port)

        // A transaction committed while Redis is down: the slot must stay before its commit.
        let witness = try CommitWitness(outbox)
        let probe = try TestDatabase.connect()
        let (probeIDs, probeXID) = try CommitWitness.transaction(probe) {
            try outbox.insert(probe, rows: 1, key: { _ in "probe" }, payload: { _ in "{\"seq\": -1}" })
        }
        writing.written.mutate { $0.formUnion(probeIDs) }
        var confirmedWhileDown: [LSN] = []
        for _ in 0..<15 {
            usleep(100_000)
            confirmedWhileDown.append(try XCTUnwrap(try outbox.confirmedFlush))
        }
        XCTAssertTrue(spout.process.isRunning, spout.stderr)
        let probeCommit = try witness.commitLSN(xid: probeXID)
        for confirmed in confirmedWhileDown {
            XCTAssertLessThan(confirmed, probeCommit, "confirmed past an event Redis does not have")
        }

        try redis.start()
        let client = try redis.client()
        try eventually("writer finished") { writing.isFinished }
        let expected = writing.written.value
        XCTAssertEqual(expected.count, 1501)
        try eventually(timeout: 60, "every event in Redis after the restart") {
            try Set(client.entries("outbox.event.order").compactMap { $0.fields["id"] }).isSuperset(of: expected)
        }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let entries = try client.entries("outbox.event.order")
        let ids = entries.compactMap { $0.fields["id"] }
        XCTAssertTrue(Set(ids).isSuperset(of: expected), "lost \(expected.subtracting(ids).count) events")
        // At least once: an event may appear again (sent, persisted, unacknowledged when Redis
        // died), but first appearances keep every key's order.
        var firstSeen = Set<String>()
        var lastSequence: [String: Int] = [:]
        for entry in entries {
            guard let id = entry.fields["id"], firstSeen.insert(id).inserted, let key = entry.fields["key"], key != "probe" else { continue }
            let payload = try JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any]
            let seq = try XCTUnwrap(payload?["seq"] as? Int)
            XCTAssertGreaterThan(seq, lastSequence[key] ?? -1, "order of key \(key)")
            lastSequence[key] = seq
        }
        let warnings = spout.stderr.split(separator: "\n").filter { $0.contains("warning") }
        XCTAssertEqual(warnings.count, 1, "one warning per outage:\n\(spout.stderr)")
        XCTAssertTrue(warnings.first?.contains("127.0.0.1:\(redis.port)") ?? false, spout.stderr)
        XCTAssertTrue(warnings.first?.contains("unacknowledged events will be sent again") ?? false, spout.stderr)
    }

    /// `--redis-ids lsn`: spout SIGKILLed after a first half of the events, the second half
    /// written while it is down; then a copy of the slot made before the first event (a
    /// restart that confirmed nothing: every event of the first half goes out again, each
    /// already in its stream) and the crashed run's own slot (the second half again): every
    /// stream holds each event exactly once, with the id `<commit LSN>-<position in the transaction>`.
    func testLSNIdsKeepEveryEventExactlyOnce() throws {
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_lsn")
        let copy = outbox.slot + "_copy"
        defer {
            _ = try? outbox.admin.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '\(copy)'")
            outbox.tearDown()
        }
        XCTAssertEqual(try SpoutProcess.run(["setup"] + outbox.arguments).status, 0)
        try outbox.admin.sql("SELECT pg_copy_logical_replication_slot('\(outbox.slot)', '\(copy)')")
        let arguments = ["run", "--sink", redis.url, "--redis-ids", "lsn", "--max-in-flight", "50"]
        var copyArguments = outbox.arguments
        copyArguments[copyArguments.count - 1] = copy

        let writer = try TestDatabase.connect()
        func write(_ transactions: Range<Int>) throws -> Set<String> {
            var ids = Set<String>()
            for index in transactions {
                // Two topics in one transaction: positions count across both.
                ids.formUnion(try CommitWitness.transaction(writer) {
                    try outbox.insert(writer, rows: 4, aggregate: "order", key: { "k\($0 % 3)" },
                                      payload: { "{\"tx\": \(index), \"position\": \($0)}" })
                        + outbox.insert(writer, rows: 2, aggregate: "invoice", key: { "k\($0 % 3)" },
                                        payload: { "{\"tx\": \(index), \"position\": \(4 + $0)}" })
                }.0)
            }
            return ids
        }
        let first = try SpoutProcess(arguments + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        var expected = try write(0..<100)
        let client = try redis.client()
        try eventually("the first half in Redis") { try client.totalLength("*") >= expected.count }
        // Stopped before the kill, so the crash lands where the test says, not mid-write.
        first.signal(SIGSTOP)
        first.signal(SIGKILL)
        first.waitForExit()
        expected.formUnion(try write(100..<200))
        XCTAssertEqual(expected.count, 1200)
        let end = try outbox.currentLSN()

        for (name, slotArguments, slot) in [("the copy of the slot", copyArguments, copy), ("the crashed run's slot", outbox.arguments, outbox.slot)] {
            let run = try SpoutProcess(arguments + slotArguments)
            try eventually(timeout: 60, "\(name) confirms everything") {
                try XCTUnwrap(try outbox.admin.lsn("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '\(slot)'")) >= end
            }
            run.signal(SIGTERM)
            XCTAssertEqual(run.waitForExit(), 0, run.stderr)
            XCTAssertFalse(run.stderr.contains("error"), run.stderr)
            XCTAssertFalse(run.stderr.contains("warning"), run.stderr)
            try checkExactlyOnce(client, expected: expected)
        }
    }

    /// `--redis-ids lsn` on a stream where another writer put an entry with a server id
    /// (milliseconds since 1970, above every LSN id of the test server): spout stops before
    /// writing, with one error naming the stream, its top id, the id it wanted and the way
    /// out, and confirms none of the events.
    func testLSNIdsStopOnAStreamWithForeignEntries() throws {
        let redis = try RedisServer()
        let client = try redis.client()
        guard case let .string(foreign) = try client.command("XADD", "outbox.event.order", "*", "a", "b") else {
            return XCTFail("XADD returned no id")
        }
        let outbox = try OutboxFixture("redis_foreign")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--redis-ids", "lsn"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        let witness = try CommitWitness(outbox)
        var transactions: [(id: String, xid: String)] = []
        for _ in 0..<5 {
            let (ids, xid) = try CommitWitness.transaction(writer) { try outbox.insert(writer, rows: 1) }
            transactions.append((try XCTUnwrap(ids.first), xid))
        }
        let firstCommit = try witness.commitLSN(xid: transactions[0].xid)

        let error = spout.waitForFailure(timeout: 30, "spout stops on the foreign stream")
        for part in ["outbox.event.order", foreign, "\(firstCommit.rawValue)-0", transactions[0].id, "another writer", "--redis-ids server"] {
            XCTAssertTrue(error.contains(part), "\(part) missing in: \(error)")
        }
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), firstCommit, "confirmed an event Redis does not have")
        XCTAssertEqual(try client.command("XLEN", "outbox.event.order"), .integer(1), "nothing written")
    }

    /// `--redis-ids lsn`: an entry of another event at exactly the id spout wants, put there
    /// while spout is stopped (the stream already checked and written to): Redis refuses the
    /// XADD as a duplicate, and spout stops with an error naming both events instead of
    /// confirming an event it never stored.
    func testLSNIdsStopOnAnotherEventAtTheirID() throws {
        let redis = try RedisServer()
        let client = try redis.client()
        let outbox = try OutboxFixture("redis_clash")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--redis-ids", "lsn"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        try outbox.insert(writer, rows: 1)
        let delivered = try outbox.currentLSN()
        try eventually("the first event confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= delivered }

        let witness = try CommitWitness(outbox)
        // Stopped for well under wal_sender_timeout: the entry is there before spout sees the event.
        spout.signal(SIGSTOP)
        let (ids, xid) = try CommitWitness.transaction(writer) { try outbox.insert(writer, rows: 1) }
        let commit = try witness.commitLSN(xid: xid)
        let wanted = "\(commit.rawValue)-0"
        XCTAssertEqual(try client.command("XADD", "outbox.event.order", wanted, "id", "someone-else", "payload", "{}"), .string(wanted))
        spout.signal(SIGCONT)

        let error = spout.waitForFailure(timeout: 30, "spout stops on the clashing entry")
        for part in ["outbox.event.order", wanted, "someone-else", try XCTUnwrap(ids.first), "--redis-ids server"] {
            XCTAssertTrue(error.contains(part), "\(part) missing in: \(error)")
        }
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), commit, "confirmed an event Redis does not have")
        XCTAssertEqual(try client.command("XLEN", "outbox.event.order"), .integer(2))
    }

    /// Redis gone for 30 s while a writer keeps inserting, against a server whose
    /// wal_sender_timeout is 5 s: spout keeps its replication connection (status updates go
    /// on), sleeps until its reconnect deadlines instead of polling (CPU near zero), and
    /// once Redis is back delivers every event exactly once, in commit order.
    func testLongOutageUnderLoadIdlesAndLosesNothing() throws {
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_outage")
        defer { outbox.tearDown() }
        // A small window, so the outage also holds spout back from reading.
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--redis-ids", "lsn", "--max-in-flight", "500"] + outbox.arguments)
        var walsenderPID: String?
        try eventually("spout streams from the slot") {
            walsenderPID = try outbox.streamingWalsender
            return walsenderPID != nil
        }

        let writing = LockedBox(true)
        let written = LockedBox<[String]>([])
        let writer = Thread {
            guard let connection = try? TestDatabase.connect() else { return }
            var sequence = 0
            while writing.value {
                if let ids = try? outbox.insert(connection, rows: 2, key: { "k\((sequence + $0) % 3)" }, payload: { "{\"seq\": \(sequence + $0)}" }) {
                    written.mutate { $0 += ids }
                    sequence += ids.count
                }
                usleep(10_000)
            }
        }
        writer.start()
        defer { writing.mutate { $0 = false } }
        var client = try redis.client()
        try eventually("events reach Redis") { try client.totalLength("*") >= 100 }

        redis.kill()
        let outageStart = Date()
        let cpuBefore = try XCTUnwrap(spout.cpuSeconds)
        // This sleep is the outage; each second looks at spout and its walsender.
        while Date().timeIntervalSince(outageStart) < 30 {
            usleep(1_000_000)
            XCTAssertTrue(spout.process.isRunning, spout.stderr)
            XCTAssertEqual(try outbox.streamingWalsender, walsenderPID, "the walsender timed out or spout reconnected")
        }
        let cpu = try XCTUnwrap(spout.cpuSeconds) - cpuBefore
        let wall = Date().timeIntervalSince(outageStart)
        // Measured: about 0.2 % with the wakeup, 2.3 % with the relay polling the sink every millisecond.
        XCTAssertLessThan(cpu, 0.01 * wall, "spout used \(cpu) s of CPU in a \(wall) s outage")

        try redis.start()
        client = try redis.client()
        writing.mutate { $0 = false }
        try eventually("writer finished") { writer.isFinished }
        let expected = written.value
        try eventually(timeout: 60, "\(expected.count) events after the outage") { try client.totalLength("*") >= expected.count }
        let end = try outbox.currentLSN()
        try eventually("everything confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= end }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(try client.keys("*"), ["outbox.event.order"])
        XCTAssertEqual(try client.entries("outbox.event.order").compactMap { $0.fields["id"] }, expected, "every event once, in commit order")
        XCTAssertEqual(spout.stderr.split(separator: "\n").filter { $0.contains("warning") }.count, 1, spout.stderr)
    }

    private func checkExactlyOnce(_ client: RedisClient, expected: Set<String>, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(try client.keys("*"), ["outbox.event.invoice", "outbox.event.order"], file: file, line: line)
        let entries = try client.entries("outbox.event.invoice") + client.entries("outbox.event.order")
        XCTAssertEqual(entries.count, expected.count, "every event exactly once", file: file, line: line)
        XCTAssertEqual(Set(entries.compactMap { $0.fields["id"] }), expected, file: file, line: line)
        var lsnOfTransaction: [Int: UInt64] = [:]
        for entry in entries {
            let parts = entry.id.split(separator: "-")
            let payload = try JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any]
            guard parts.count == 2, let lsn = UInt64(parts[0]), let position = Int(parts[1]),
                  let transaction = payload?["tx"] as? Int, let expectedPosition = payload?["position"] as? Int else {
                return XCTFail("malformed entry \(entry)", file: file, line: line)
            }
            XCTAssertEqual(position, expectedPosition, "entry id \(entry.id)", file: file, line: line)
            if let known = lsnOfTransaction[transaction] {
                XCTAssertEqual(lsn, known, "one LSN per transaction", file: file, line: line)
            }
            lsnOfTransaction[transaction] = lsn
        }
        XCTAssertEqual(lsnOfTransaction.count, 200, file: file, line: line)
        XCTAssertEqual(Set(lsnOfTransaction.values).count, lsnOfTransaction.count, "one transaction per LSN", file: file, line: line)
    }

    /// requirepass and ACL users: the right password delivers; a wrong or missing one stops
    /// spout with one error line that does not show the password.
    func testPasswordProtectedServer() throws {
        let redis = try RedisServer(password: "s3cret-Pa55")
        let client = try redis.client()
        try client.command("ACL", "SETUSER", "spouter", "on", ">us3r-Pa55", "~*", "+@all")
        let outbox = try OutboxFixture("redis_auth")
        defer { outbox.tearDown() }
        let writer = try TestDatabase.connect()

        for (url, stream) in [(redis.url + "/0", "outbox.event.default"),
                              ("redis://spouter:us3r-Pa55@127.0.0.1:\(redis.port)", "outbox.event.acl")] {
            let spout = try SpoutProcess(["run", "--sink", url] + outbox.arguments)
            try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
            let ids = try outbox.insert(writer, rows: 10, aggregate: String(stream.split(separator: ".").last ?? ""))
            try eventually("10 events in \(stream)") { try client.entries(stream).count >= 10 }
            spout.signal(SIGTERM)
            XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
            XCTAssertEqual(Set(try client.entries(stream).compactMap { $0.fields["id"] }), Set(ids))
        }

        for (url, secret, expectation) in [
            ("redis://:wr0ng-Pa55@127.0.0.1:\(redis.port)", "wr0ng-Pa55", "rejected the user name or password"),
            ("redis://spouter:wr0ng-Pa55@127.0.0.1:\(redis.port)", "wr0ng-Pa55", "rejected the user name or password"),
            ("redis://127.0.0.1:\(redis.port)", "s3cret-Pa55", "requires a password"),
        ] {
            let result = try SpoutProcess.run(["run", "--sink", url] + outbox.arguments, timeout: 30)
            XCTAssertNotNil(result.status)
            XCTAssertNotEqual(result.status, 0)
            let lines = result.stderr.split(separator: "\n")
            XCTAssertEqual(lines.filter { $0.contains("error") }.count, 1, result.stderr)
            XCTAssertTrue(result.stderr.contains(expectation), result.stderr)
            XCTAssertFalse(result.stderr.contains(secret), result.stderr)
            XCTAssertFalse(result.stderr.contains("s3cret"), result.stderr)
        }
    }

    /// `--redis-maxlen` trims each stream with `MAXLEN ~`: the stream keeps its newest entries.
    func testMaxLengthTrimsTheStream() throws {
        let redis = try RedisServer()
        let outbox = try OutboxFixture("redis_maxlen")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url, "--redis-maxlen", "100"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        var last = ""
        for index in 0..<10 {
            last = try outbox.insert(writer, rows: 100, payload: { "{\"seq\": \(index * 100 + $0)}" }).last ?? ""
        }
        let end = try outbox.currentLSN()
        try eventually("all delivered and confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= end }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        let client = try redis.client()
        guard case let .integer(length) = try client.command("XLEN", "outbox.event.order") else { return XCTFail("no stream") }
        XCTAssertGreaterThanOrEqual(length, 100)
        XCTAssertLessThan(length, 400, "trimmed to about 100 (MAXLEN ~ trims whole nodes)")
        XCTAssertEqual(try client.entries("outbox.event.order").last?.fields["id"], last)
    }

    /// Redis out of memory (maxmemory reached, noeviction) refuses the batches: spout warns
    /// once, confirms nothing of them, and delivers them, once and in order, when memory is back.
    func testRefusedWritesAreRetriedInOrder() throws {
        let redis = try RedisServer()
        let client = try redis.client()
        let outbox = try OutboxFixture("redis_oom")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        XCTAssertEqual(try client.command("CONFIG", "SET", "maxmemory", "1"), .status("OK"))

        let writer = try TestDatabase.connect()
        let witness = try CommitWitness(outbox)
        var expected: [String] = []
        var firstXID = ""
        for index in 0..<5 {
            let (ids, xid) = try CommitWitness.transaction(writer) {
                try outbox.insert(writer, rows: 20, key: { "k\($0 % 3)" }, payload: { "{\"seq\": \(index * 20 + $0)}" })
            }
            if index == 0 { firstXID = xid }
            expected += ids
        }
        try eventually("a warning") { spout.stderr.contains("refuses writes") }
        usleep(500_000)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: firstXID))
        XCTAssertEqual(try client.command("EXISTS", "outbox.event.order"), .integer(0))

        XCTAssertEqual(try client.command("CONFIG", "SET", "maxmemory", "0"), .status("OK"))
        try eventually(timeout: 30, "all events once memory is back") { try client.entries("outbox.event.order").count >= 100 }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        let entries = try client.entries("outbox.event.order")
        XCTAssertEqual(Set(entries.compactMap { $0.fields["id"] }), Set(expected))
        XCTAssertEqual(entries.count, 100)
        let sequences = try entries.map { entry in
            try XCTUnwrap((try JSONSerialization.jsonObject(with: Data((entry.fields["payload"] ?? "").utf8)) as? [String: Any])?["seq"] as? Int)
        }
        XCTAssertEqual(sequences, Array(0..<100), "commit order")
        XCTAssertEqual(spout.stderr.split(separator: "\n").filter { $0.contains("warning") }.count, 1, spout.stderr)
    }

    /// A key of another type where the stream should be: spout stops with one error naming
    /// the event and the topic; the slot stays before that event.
    func testKeyOfAnotherTypeStopsSpout() throws {
        let redis = try RedisServer()
        let client = try redis.client()
        try client.command("SET", "outbox.event.blocked", "not a stream")
        let outbox = try OutboxFixture("redis_wrongtype")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try TestDatabase.connect()
        try outbox.insert(writer, rows: 3, aggregate: "fine")
        try eventually("good events delivered") { try client.entries("outbox.event.fine").count == 3 }
        let afterGood = try outbox.currentLSN()
        try eventually("good events confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= afterGood }
        let good = try XCTUnwrap(try outbox.confirmedFlush)
        let witness = try CommitWitness(outbox)
        let (badIDs, badXID) = try CommitWitness.transaction(writer) { try outbox.insert(writer, rows: 1, aggregate: "blocked") }
        let bad = try XCTUnwrap(badIDs.first)

        spout.waitForFailure(timeout: 30)
        XCTAssertTrue(spout.stderr.contains(bad), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("outbox.event.blocked"), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("WRONGTYPE"), spout.stderr)
        let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
        XCTAssertGreaterThanOrEqual(confirmed, good)
        XCTAssertLessThan(confirmed, try witness.commitLSN(xid: badXID), "not confirmed past the refused event")
    }

    /// Redis not there at startup: one warning, events wait unconfirmed, and arrive once it is.
    func testStartsWhileRedisIsDown() throws {
        let redis = try RedisServer(start: false)
        let outbox = try OutboxFixture("redis_down")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", redis.url + "/3"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        try eventually("a warning") { spout.stderr.contains("cannot connect to Redis at 127.0.0.1:\(redis.port)") }
        let writer = try TestDatabase.connect()
        let witness = try CommitWitness(outbox)
        let (ids, xid) = try CommitWitness.transaction(writer) { try outbox.insert(writer, rows: 20) }
        let end = try outbox.currentLSN()
        usleep(500_000)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), try witness.commitLSN(xid: xid))

        try redis.start()
        let client = try redis.client()
        try client.command("SELECT", "3")
        try eventually(timeout: 30, "events arrive in database 3") { try client.entries("outbox.event.order").count == 20 }
        try eventually("confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= end }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(Set(try client.entries("outbox.event.order").compactMap { $0.fields["id"] }), Set(ids))
        XCTAssertEqual(spout.stderr.split(separator: "\n").filter { $0.contains("warning") }.count, 1, spout.stderr)
    }

    /// Malformed URLs are refused before anything connects, without showing the password.
    func testMalformedURLs() {
        for (url, expectation) in [
            ("redis://127.0.0.1:notaport", "port"),
            ("redis://:pa55word@127.0.0.1:6379/zero", "database"),
            ("redis://user@127.0.0.1", "no password"),
            ("redis://:pa55word@:6379", "host"),
            ("redis://127.0.0.1:6379?timeout=1", "query"),
        ] {
            do {
                _ = try SinkRegistry.makeSink(url, options: SinkOptions(), log: Log(level: .error))
                XCTFail("\(url) accepted")
            } catch {
                guard case let .invalidOption(message) = error else { return XCTFail("\(url): \(error)") }
                XCTAssertTrue(message.contains(expectation), message)
                XCTAssertFalse(message.contains("pa55word"), message)
            }
        }
    }
}
