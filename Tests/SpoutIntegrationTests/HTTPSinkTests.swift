import Foundation
import SpoutCore
import XCTest

/// The HTTP webhooks sink through the `spout` executable against Tests/python/webhook_receiver.py
/// (Python's ThreadingHTTPServer with keep-alive), which verifies Standard Webhooks signatures
/// with the `standardwebhooks` package and parses CloudEvents with the SDK's HTTP binding, fails
/// by a script (500s, a stalled request, a 429 with Retry-After, a 400) and logs every request.
final class HTTPSinkTests: XCTestCase {
    static let secret = "whsec_" + Data("spout webhook test secret 0123456789".utf8).base64EncodedString()

    /// One request as the receiver logged it.
    struct Request: Decodable {
        var n: Int
        var status: Status
        var time: Double
        var ids: [String]
        var keys: [String?]
        var signature: String?
        var webhook_id: String?
        var content_type: String?

        enum Status: Decodable, Equatable {
            case code(Int), stalled
            init(from decoder: Decoder) throws {
                let container = try decoder.singleValueContainer()
                if let code = try? container.decode(Int.self) { self = .code(code) } else { self = .stalled }
            }
        }
    }

    /// The receiver process on a free loopback port; its log file.
    final class Receiver {
        let process = Process()
        let port: Int
        let logURL: URL

        init(_ options: [String], port: Int? = nil) throws {
            let pythonPath = try STOMPConsumer.pythonPath
            self.port = try port ?? freeLoopbackPort()
            logURL = FileManager.default.temporaryDirectory.appendingPathComponent("webhooks-\(UUID().uuidString).jsonl")
            FileManager.default.createFile(atPath: logURL.path, contents: nil)
            let script = PrivateServer.repository.appendingPathComponent("Tests/python/webhook_receiver.py").path
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["PYTHONPATH=\(pythonPath)", "python3", script, String(self.port), logURL.path] + options
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.standardError
            try process.run()
            // "listening" once the socket is bound.
            let line = out.fileHandleForReading.availableData
            guard String(decoding: line, as: UTF8.self).contains("listening") else { throw XCTSkipFailure("the webhook receiver did not start") }
        }

        var url: String { "http://127.0.0.1:\(port)/hooks" }

        var requests: [Request] {
            let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Request.self, from: Data($0.utf8)) }
        }

        /// Event ids of the acknowledged requests, in the order they were answered.
        var acknowledged: [String] { requests.filter { $0.status == .code(200) }.flatMap(\.ids) }

        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    private func spout(_ receiver: Receiver, _ outbox: OutboxFixture, _ extra: [String]) throws -> SpoutProcess {
        let spout = try SpoutProcess(["run", "--sink", receiver.url] + extra + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        return spout
    }


    /// 500 events on 4 keep-alive connections, each request signed and verified by the
    /// standardwebhooks package: all arrive once, each key in order; the slot confirms them.
    func testSignedEventsArriveInOrderPerKey() throws {
        let receiver = try Receiver(["--secret", Self.secret])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("http")
        defer { outbox.tearDown() }
        let spout = try spout(receiver, outbox, ["--http-secret", Self.secret, "--http-concurrency", "4"])
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 50, rows: 10)
        try confirmAll(spout, outbox)

        let requests = receiver.requests
        XCTAssertTrue(requests.allSatisfy { $0.signature == "ok" }, "\(requests.filter { $0.signature != "ok" }.prefix(3))")
        XCTAssertEqual(requests.map(\.status), Array(repeating: .code(200), count: requests.count))
        XCTAssertEqual(receiver.acknowledged.count, 500, "each event once")
        XCTAssertEqual(requests.first?.content_type, "application/json")
        XCTAssertEqual(requests.first?.webhook_id, requests.first?.ids.first)
        assertAllInOrder(receiver.acknowledged, writer)
        XCTAssertFalse(spout.stderr.contains(Self.secret), "the secret is never logged")
    }

    /// On one connection, the receiver answers 500 to the first requests, leaves one unanswered past --http-timeout
    /// and answers one 429 with Retry-After: 2. Nothing is lost, each key stays in order, and
    /// no request came within 2 s after the 429.
    func testFailuresStallsAndRetryAfterLoseNothing() throws {
        let receiver = try Receiver(["--fail", "3", "--stall", "12", "--throttle", "25", "--retry-after", "2"])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpfail")
        defer { outbox.tearDown() }
        // One connection: every request after the 429 was sent after spout read it (with more,
        // other connections' requests may be on their way already).
        let spout = try spout(receiver, outbox, ["--http-timeout", "2", "--http-batch", "5", "--http-concurrency", "1"])
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 40, rows: 5)
        try confirmAll(spout, outbox, timeout: 120)

        let requests = receiver.requests
        XCTAssertEqual(requests.filter { $0.status == .code(500) }.count, 3)
        XCTAssertEqual(requests.filter { $0.status == .stalled }.count, 1)
        let throttled = try XCTUnwrap(requests.first { $0.status == .code(429) })
        let after = requests.filter { $0.n > throttled.n }
        XCTAssertFalse(after.isEmpty)
        XCTAssertGreaterThanOrEqual(after.map(\.time).min() ?? 0, throttled.time + 1.9, "Retry-After: 2 was waited")
        XCTAssertTrue(requests.contains { $0.ids.count > 1 }, "batches")
        assertAllInOrder(receiver.acknowledged, writer)
        XCTAssertTrue(spout.stderr.contains("answered 500"), spout.stderr)
    }

    /// A 400 for one event: --on-poison skip passes over it (everything else arrives),
    /// --on-poison stop stops spout with an error naming the status and the receiver's words.
    func testRefusedEventIsPoison() throws {
        let receiver = try Receiver(["--reject", "poison-pill"])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httppoison")
        defer { outbox.tearDown() }
        let spout = try spout(receiver, outbox, ["--on-poison", "skip"])
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 5, rows: 4)
        let poison = try XCTUnwrap(try outbox.admin.value("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
            VALUES ('order', 'k1', 'Bad', '{"note": "poison-pill"}') RETURNING id
            """))
        try writer.write(transactions: 5, rows: 4)
        try confirmAll(spout, outbox)
        XCTAssertEqual(Set(receiver.acknowledged), Set(writer.ids))
        XCTAssertFalse(receiver.acknowledged.contains(poison))
        XCTAssertTrue(spout.stderr.contains("skipped event \"\(poison)\""), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("400"), spout.stderr)
    }

    /// A 400 for a batch that holds one poison event: spout sends the batch's events one at a
    /// time, finds the refused one and skips it (--on-poison skip); all others arrive.
    func testRefusedEventInBatchIsFound() throws {
        let receiver = try Receiver(["--reject", "poison-pill"])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpbatchpoison")
        defer { outbox.tearDown() }
        let spout = try spout(receiver, outbox, ["--on-poison", "skip", "--http-batch", "5", "--http-concurrency", "2"])
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 3, rows: 6)
        // One transaction, one key: the relay hands its events over at the commit, together, so
        // they go in one batch of 5 with the poison event in the middle.
        let rows = try outbox.admin.sql("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
            SELECT 'order', 'k1', CASE WHEN n = 3 THEN 'Bad' ELSE 'Good' END,
                   CASE WHEN n = 3 THEN '{"note": "poison-pill"}' ELSE '{"n": 1}' END::jsonb
            FROM generate_series(1, 5) AS n ORDER BY n RETURNING id, event_type
            """)
        let poison = try XCTUnwrap(rows.first { $0[1] == "Bad" }?[0] ?? nil)
        let good = rows.compactMap { $0[1] == "Good" ? $0[0] : nil }
        try writer.write(transactions: 3, rows: 6)
        try confirmAll(spout, outbox)
        XCTAssertEqual(Set(receiver.acknowledged), Set(writer.ids + good))
        XCTAssertTrue(spout.stderr.contains("skipped event \"\(poison)\""), spout.stderr)
        XCTAssertTrue(spout.stderr.contains("one at a time"), spout.stderr)
        assertAllInOrder(receiver.acknowledged, writer)
    }

    /// --on-poison stop (the default): the 400 stops spout, the error names the status and body.
    func testRefusalStopsSpoutByDefault() throws {
        let receiver = try Receiver(["--reject", "poison-pill"])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpstop")
        defer { outbox.tearDown() }
        let spout = try spout(receiver, outbox, [])
        try outbox.admin.sql("""
            INSERT INTO public.\(outbox.table) (aggregate_type, aggregate_id, event_type, payload)
            VALUES ('order', 'k2', 'Bad', '{"note": "poison-pill"}')
            """)
        let status = spout.waitForExit(timeout: 60)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(spout.stderr.contains("400 Bad Request: receiver says 400"), spout.stderr)
    }

    /// SIGKILL of spout mid-stream and a restart: every event acknowledged at least once, in order per key.
    func testSpoutCrashAndRestartDeliversEverything() throws {
        let receiver = try Receiver([])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpcrash")
        defer { outbox.tearDown() }
        let arguments = ["run", "--sink", receiver.url] + outbox.arguments
        let first = try SpoutProcess(arguments + ["--max-in-flight", "50"])
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 10, pause: 2_000)
        try writer.waitUntilConfirmed(60, outbox)
        first.signal(SIGSTOP)
        first.signal(SIGKILL)
        first.waitForExit()
        writer.waitForMore(20)
        try writer.stop()
        let last = try XCTUnwrap(writer.transactions.last).after
        let second = try SpoutProcess(arguments)
        try eventually(timeout: 90, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)
        assertAllInOrder(receiver.acknowledged, writer)
    }

    /// --envelope cloudevents: binary-mode requests the SDK's HTTP binding parses (ce- headers,
    /// Content-Type = datacontenttype, body = payload); with --http-batch a batch array.
    func testCloudEventsBinaryModeAndBatch() throws {
        let receiver = try Receiver(["--cloudevents"])
        defer { receiver.stop() }
        let outbox = try OutboxFixture("httpce")
        defer { outbox.tearDown() }
        let spout = try spout(receiver, outbox, ["--envelope", "cloudevents"])
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 5, rows: 4)
        try confirmAll(spout, outbox)
        XCTAssertEqual(Set(receiver.acknowledged), Set(writer.ids), "\(receiver.requests.prefix(2))")
        XCTAssertEqual(receiver.requests.first?.content_type, "application/json")

        let batched = try Receiver(["--cloudevents"])
        defer { batched.stop() }
        let outbox2 = try OutboxFixture("httpceb")
        defer { outbox2.tearDown() }
        let spout2 = try self.spout(batched, outbox2, ["--envelope", "cloudevents", "--http-batch", "10", "--http-concurrency", "1"])
        let writer2 = try OutboxWriter(outbox2)
        try writer2.write(transactions: 3, rows: 10)
        try confirmAll(spout2, outbox2)
        XCTAssertEqual(Set(batched.acknowledged), Set(writer2.ids))
        XCTAssertTrue(batched.requests.contains { $0.content_type == "application/cloudevents-batch+json" })
    }

    /// No receiver listens at first: events wait (a warning, nothing confirmed); once one
    /// listens on the port, everything arrives in order and the outage's end is logged.
    func testReceiverDownThenUp() throws {
        let port = try freeLoopbackPort()
        let outbox = try OutboxFixture("httpdown")
        defer { outbox.tearDown() }
        let spout = try SpoutProcess(["run", "--sink", "http://127.0.0.1:\(port)/hooks"] + outbox.arguments)
        try eventually("spout streams from the slot") { try outbox.streamingWalsender != nil }
        let writer = try OutboxWriter(outbox)
        try writer.write(transactions: 10, rows: 5)
        try eventually("the outage warning") { spout.stderr.contains("cannot connect to the HTTP receiver at http://127.0.0.1:\(port)/hooks") }
        let confirmedWhileDown = try outbox.confirmedFlush
        let receiver = try Receiver([], port: port)
        defer { receiver.stop() }
        try confirmAll(spout, outbox)
        XCTAssertLessThan(try XCTUnwrap(confirmedWhileDown), try XCTUnwrap(writer.transactions.first).after, "nothing confirmed while down")
        assertAllInOrder(receiver.acknowledged, writer)
        XCTAssertTrue(spout.stderr.contains("accepts events again after"), spout.stderr)
    }

    /// spout check: a receiver is reachable; a closed port is not.
    func testCheckProbe() throws {
        let receiver = try Receiver([])
        defer { receiver.stop() }
        let ok = try SpoutProcess.run(["check", "--sink", receiver.url, "--database-url", try TestDatabase.url()])
        let reachable = ok.stdout + ok.stderr
        XCTAssertTrue(reachable.contains("answered OPTIONS with 204"), reachable)
        let port = try freeLoopbackPort()
        let failed = try SpoutProcess.run(["check", "--sink", "http://127.0.0.1:\(port)/x", "--database-url", try TestDatabase.url()])
        let down = failed.stdout + failed.stderr
        XCTAssertTrue(down.contains("cannot reach the HTTP receiver"), down)

        // --check-config shows every HTTP setting, the password, secret and header values masked.
        let config = try SpoutProcess.run(["run", "--check-config", "--sink", "http://u:SENTINEL1@127.0.0.1:\(port)/x",
                                           "--http-secret", "whsec_U0VOVElORUwy", "--http-header", "Authorization: Bearer SENTINEL3",
                                           "--http-batch", "10"], environment: ["SPOUT_HTTP_HEADER": "A: b c\nX-Key: SENTINEL4"])
        let report = config.stdout + config.stderr
        XCTAssertEqual(config.status, 0, report)
        XCTAssertFalse(report.contains("SENTINEL") || report.contains("U0VOVElORUwy"), report)
        for line in ["http-batch = 10", "http-timeout = 30.0 seconds", "http-concurrency = 4", "http-secret = ******",
                     "http-header = Authorization: ******"] {
            XCTAssertTrue(report.contains(line), report)
        }
        let environment = try SpoutProcess.run(["run", "--check-config", "--sink", "http://127.0.0.1:\(port)/x"],
                                               environment: ["SPOUT_HTTP_HEADER": "A: b c\nX-Key: SENTINEL4"])
        XCTAssertTrue(environment.stdout.contains("http-header = X-Key: ******"), environment.stdout + environment.stderr)
        XCTAssertFalse((environment.stdout + environment.stderr).contains("SENTINEL"))
    }
}

/// The slot confirms everything written so far; then spout exits 0 on SIGTERM (HTTP and HTTPS tests).
func confirmAll(_ spout: SpoutProcess, _ outbox: OutboxFixture, timeout: TimeInterval = 90) throws {
    let written = try outbox.currentLSN()
    try eventually(timeout: timeout, "the slot confirms everything delivered") { try XCTUnwrap(try outbox.confirmedFlush) >= written }
    spout.signal(SIGTERM)
    XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
}

/// Every event of `writer` among `arrived` (at least once), each key's events first arriving in commit order.
func assertAllInOrder(_ arrived: [String], _ writer: OutboxWriter, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Set(arrived).intersection(writer.ids).count, writer.ids.count, "every event acknowledged", file: file, line: line)
    var first: [String: Int] = [:]
    for (index, id) in arrived.enumerated() where first[id] == nil { first[id] = index }
    for (key, ids) in writer.idsByKey {
        let positions = ids.compactMap { first[$0] }
        XCTAssertEqual(positions, positions.sorted(), "order of key \(key)", file: file, line: line)
    }
}
