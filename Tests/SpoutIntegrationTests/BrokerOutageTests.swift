import Foundation
import SpoutCore
import XCTest

/// A broker down for 30 s while a writer keeps inserting, with the test server's
/// wal_sender_timeout of 5 s: spout keeps its replication connection (it sends status while
/// it waits), sleeps instead of spinning, and afterwards delivers every event as its sink
/// promises. NATS and Kafka go down together, so the suite waits out one outage, not two.
final class BrokerOutageTests: XCTestCase {
    func testNATSAndKafkaDownThirtySecondsUnderLoad() throws {
        XCTAssertEqual(try TestDatabase.connect().value("SHOW wal_sender_timeout"), "5s")
        // A window that fills early in the outage: then spout has nothing to do but wait.
        let window = ["--max-in-flight", "1000"]

        let nats = try NATSServer()
        let client = try JetStreamTestClient(nats.url)
        try client.addStream("OUTBOX", subjects: ["outbox.event.>"])
        let natsOutbox = try OutboxFixture("outage_nats")
        defer { natsOutbox.tearDown() }
        let natsSpout = try SpoutProcess(["run", "--sink", nats.url] + window + natsOutbox.arguments)

        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 3 1")
        let kafkaOutbox = try OutboxFixture("outage_kafka")
        defer { kafkaOutbox.tearDown() }
        let kafkaSpout = try SpoutProcess(["run", "--sink", cluster.sinkURL, "--kafka-property", "reconnect.backoff.max.ms=1000"]
                                          + window + kafkaOutbox.arguments)
        try eventually("spout streams from both slots") { try natsOutbox.streamingWalsender != nil && kafkaOutbox.streamingWalsender != nil }
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 3)])

        // About 250 events a second each.
        let natsWriter = try OutboxWriter(natsOutbox)
        let kafkaWriter = try OutboxWriter(kafkaOutbox)
        natsWriter.start(rows: 5, pause: 20_000)
        kafkaWriter.start(rows: 5, pause: 20_000)
        eventually("events flowing to NATS") { client.count("OUTBOX") >= 200 }
        XCTAssertTrue(consumer.waitFor(200), "events flowing to Kafka; \(kafkaSpout.stderr)")

        let natsWatch = try RelayWatch(natsSpout, natsOutbox)
        let kafkaWatch = try RelayWatch(kafkaSpout, kafkaOutbox)
        // NATS hangs first (connects and stream requests get no answer, each up to its
        // timeout), then is gone (connects refused).
        nats.pause()
        try cluster.command("broker-down 1")
        // The transaction after the one a writer may be committing now starts after the brokers went down.
        let firstAfterDown = (nats: natsWriter.transactions.count + 1, kafka: kafkaWriter.transactions.count + 1)
        // A subject spout has not used yet: its stream must be looked up from a hung server.
        let newSubject = try natsOutbox.insert(natsOutbox.admin, rows: 1, aggregate: "invoice", key: { _ in "i" },
                                               payload: { _ in "{\"seq\": 0}" })
        try RelayWatch.sample([natsWatch, kafkaWatch], for: 15)
        nats.kill()
        try RelayWatch.sample([natsWatch, kafkaWatch], for: 15)
        natsWatch.checkOutage("NATS")
        kafkaWatch.checkOutage("Kafka")
        // Committed after the brokers went down, so never acknowledged during the outage.
        let natsHeld = try XCTUnwrap(natsWriter.transactions.dropFirst(firstAfterDown.nats).first)
        let kafkaHeld = try XCTUnwrap(kafkaWriter.transactions.dropFirst(firstAfterDown.kafka).first)
        XCTAssertLessThan(try XCTUnwrap(try natsOutbox.confirmedFlush), natsHeld.after, "NATS: confirmed what the broker never had")
        XCTAssertLessThan(try XCTUnwrap(try kafkaOutbox.confirmedFlush), kafkaHeld.after, "Kafka: confirmed what the broker never had")

        try nats.start()
        try cluster.command("broker-up 1")
        natsWriter.waitForMore(20)
        kafkaWriter.waitForMore(20)
        try natsWriter.stop()
        try kafkaWriter.stop()

        let natsIDs = natsWriter.ids
        let natsLast = try XCTUnwrap(natsWriter.transactions.last).after
        eventually(timeout: 90, "\(natsIDs.count + 1) events in NATS, got \(client.count("OUTBOX")); \(natsSpout.stderr)") {
            client.count("OUTBOX") >= UInt64(natsIDs.count + 1)
        }
        try eventually("NATS: the slot confirms everything delivered") { try XCTUnwrap(try natsOutbox.confirmedFlush) >= natsLast }
        natsSpout.signal(SIGTERM)
        XCTAssertEqual(natsSpout.waitForExit(), 0, natsSpout.stderr)
        assertStoredOnceInOrder(try client.messages("OUTBOX"), ids: natsIDs + newSubject)

        let kafkaIDs = kafkaWriter.ids
        let kafkaLast = try XCTUnwrap(kafkaWriter.transactions.last).after
        XCTAssertTrue(consumer.waitFor(kafkaIDs.count, timeout: 90), "Kafka: \(consumer.messages.count) of \(kafkaIDs.count); \(kafkaSpout.stderr)")
        consumer.poll(seconds: 1)
        try eventually("Kafka: the slot confirms everything delivered") { try XCTUnwrap(try kafkaOutbox.confirmedFlush) >= kafkaLast }
        kafkaSpout.signal(SIGTERM)
        XCTAssertEqual(kafkaSpout.waitForExit(), 0, kafkaSpout.stderr)
        XCTAssertEqual(Set(consumer.messages.compactMap(\.id)), Set(kafkaIDs), "Kafka: nothing lost")
        XCTAssertEqual(consumer.messages.count, kafkaIDs.count, "Kafka: no duplicates (idempotent producer)")
        assertPerKeyOrder(consumer.idsByKey, expected: kafkaWriter.idsByKey)
    }
}

/// Watches a running spout through an outage: it sends status updates every second as
/// always (the walsender sees replies no older than `maxReplyAge`), its walsender keeps the
/// same connection (no "replication timeout"), and it sleeps rather than polls.
final class RelayWatch {
    /// The status interval is 1 s: three is a relay held up, not one descheduled for a moment.
    static let maxReplyAge = 3.0

    let spout: SpoutProcess
    let outbox: OutboxFixture
    let walsender: String
    let cpuAtStart: Double
    let startedAt: Date
    /// The oldest the walsender's last reply from spout was at any sample.
    private(set) var oldestReply = 0.0

    init(_ spout: SpoutProcess, _ outbox: OutboxFixture) throws {
        self.spout = spout
        self.outbox = outbox
        walsender = try XCTUnwrap(try Self.walsender(outbox), "the slot has a walsender")
        cpuAtStart = try XCTUnwrap(spout.cpuSeconds, "spout's CPU time")
        startedAt = Date()
    }

    /// Samples how old the walsender's last reply from each spout is, every 100 ms for `seconds`.
    static func sample(_ watches: [RelayWatch], for seconds: TimeInterval) throws {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            for watch in watches {
                let age = try watch.outbox.admin.value("""
                    SELECT extract(epoch FROM clock_timestamp() - reply_time) FROM pg_stat_replication WHERE pid = \(watch.walsender)
                    """).flatMap(Double.init) ?? .infinity
                watch.oldestReply = max(watch.oldestReply, age)
            }
            usleep(100_000)
        }
    }

    /// spout ran all along, on the same walsender, using under 1 % of a CPU. Measured here:
    /// waiting for the next status update or the backoff deadline costs about 0.3 %, a relay
    /// that polls every millisecond about 2 %.
    func checkOutage(_ name: String, file: StaticString = #filePath, line: UInt = #line) {
        let wall = Date().timeIntervalSince(startedAt)
        let cpu = (spout.cpuSeconds ?? .infinity) - cpuAtStart
        XCTAssertTrue(spout.process.isRunning, "\(name): spout kept running: \(spout.stderr)", file: file, line: line)
        XCTAssertLessThan(oldestReply, Self.maxReplyAge, "\(name): spout stopped sending status updates for a while", file: file, line: line)
        XCTAssertEqual(try Self.walsender(outbox), walsender, "\(name): the walsender kept its connection", file: file, line: line)
        let timeouts = TestDatabase.serverLog.split(separator: "\n").filter {
            $0.contains("[\(walsender)]") && $0.contains("terminating walsender process due to replication timeout")
        }
        XCTAssertEqual(timeouts, [], "\(name): the walsender timed out", file: file, line: line)
        XCTAssertLessThan(cpu, 0.01 * wall, "\(name): spout used \(cpu) s of CPU in \(wall) s of outage", file: file, line: line)
        print("\(name) outage: spout used \(String(format: "%.3f", cpu)) s CPU in \(String(format: "%.1f", wall)) s; "
              + "the oldest status update was \(String(format: "%.1f", oldestReply)) s old")
    }

    private static func walsender(_ outbox: OutboxFixture) throws -> String? {
        try outbox.admin.value("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")
    }
}


extension TestDatabase {
    /// The test server's log (scripts/pg-start writes it to $SPOUT_PG_DIR/server.log); empty if unreadable.
    static var serverLog: String {
        guard let directory = ProcessInfo.processInfo.environment["SPOUT_PG_DIR"] else { return "" }
        return (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
    }
}
