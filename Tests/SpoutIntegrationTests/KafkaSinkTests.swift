import Foundation
import SpoutCore
@testable import SpoutKafka
import XCTest

/// The Kafka sink against librdkafka's mock cluster (its own process, the real wire protocol),
/// checked with a librdkafka consumer: every event arrives with its key, value and headers,
/// per-key order holds, outages and broker errors lose nothing, and the slot is confirmed only
/// past what the brokers acknowledged.
final class KafkaSinkTests: XCTestCase {
    private func startSpout(_ outbox: OutboxFixture, _ cluster: KafkaMockCluster, _ extra: [String] = []) throws -> SpoutProcess {
        let spout = try SpoutProcess(["run", "--sink", cluster.sinkURL] + extra + outbox.arguments)
        try eventually("spout streams from the slot; stderr: \(spout.stderr)") { try outbox.streamingWalsender != nil }
        return spout
    }

    /// 1,000 events over two topics, 20 keys, in transactions of 1 to 40 rows: each arrives
    /// once, on its topic, with key = aggregate id, value = the payload, headers = the row's
    /// headers plus id and type; each key's events keep their order.
    func testEveryEventArrivesWithKeyValueAndHeaders() throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.command("create-topic outbox.event.order 4 3")
        try cluster.command("create-topic outbox.event.invoice 2 3")
        let outbox = try OutboxFixture("kafka_all")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--kafka-property", "linger.ms=2"])

        let writer = try TestDatabase.connect()
        var expected: [String: (topic: String, key: String, value: String)] = [:]
        var order: [String: [String]] = [:]
        var sequence = 0
        var lastLSN = LSN.zero
        for transaction in 0..<60 {
            let rows = [1, 7, 40][transaction % 3]
            let aggregate = transaction % 2 == 0 ? "order" : "invoice"
            let base = sequence
            let (ids, after) = try outbox.insertReturningLSN(writer, rows: rows, aggregate: aggregate,
                                                             key: { "\(aggregate)-\((base + $0) % 10)" },
                                                             payload: { "{\"seq\": \(base + $0)}" })
            for (index, id) in ids.enumerated() {
                let key = "\(aggregate)-\((base + index) % 10)"
                expected[id] = ("outbox.event.\(aggregate)", key, "{\"seq\": \(base + index)}")
                order[key, default: []].append(id)
            }
            sequence += rows
            lastLSN = after
        }
        XCTAssertEqual(expected.count, 960)

        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 4), ("outbox.event.invoice", 2)])
        XCTAssertTrue(consumer.waitFor(960, timeout: 90), "got \(consumer.messages.count) of 960; stderr: \(spout.stderr)")
        consumer.poll(seconds: 1)
        try eventually("slot confirmed past the last transaction") { try XCTUnwrap(try outbox.confirmedFlush) >= lastLSN }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        XCTAssertEqual(consumer.messages.count, 960, "every event exactly once (idempotent producer)")
        var partitionOfKey: [String: Int32] = [:]
        for message in consumer.messages {
            guard let id = message.id, let event = expected[id] else { XCTFail("unexpected message \(message)"); continue }
            XCTAssertEqual(message.topic, event.topic)
            XCTAssertEqual(message.key, event.key)
            XCTAssertEqual(message.value, event.value)
            XCTAssertEqual(message.headers.map(\.name), ["h", "id", "type"])
            XCTAssertEqual(message.headers.map(\.value), ["v", id, "Created"])
            if let partition = partitionOfKey[event.key] { XCTAssertEqual(partition, message.partition, "key \(event.key) in one partition") }
            partitionOfKey[event.key] = message.partition
        }
        XCTAssertEqual(Set(consumer.messages.compactMap(\.id)), Set(expected.keys))
        assertPerKeyOrder(consumer.idsByKey, expected: order)
        XCTAssertTrue(consumer.errors.isEmpty, "\(consumer.errors)")
        XCTAssertFalse(spout.stderr.contains("warning"), spout.stderr)
    }

    /// The only broker goes down mid-stream for a few seconds: events committed meanwhile wait
    /// (the slot does not move past them, one warning is logged), then all arrive in order.
    func testBrokerDownMidStreamLosesNothingAndHoldsTheSlot() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 3 1")
        let outbox = try OutboxFixture("kafka_down")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--kafka-property", "reconnect.backoff.max.ms=500"])
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 3)])
        let writer = try TestDatabase.connect()
        var order: [String: [String]] = [:]
        var all = Set<String>()
        var batch = 0
        func insertBatch() throws -> LSN {
            let base = batch * 10
            batch += 1
            let (ids, after) = try outbox.insertReturningLSN(writer, rows: 10, key: { "k\((base + $0) % 6)" })
            for (index, id) in ids.enumerated() { order["k\((base + index) % 6)", default: []].append(id) }
            all.formUnion(ids)
            return after
        }

        var before = LSN.zero
        for _ in 0..<20 { before = try insertBatch() }
        XCTAssertTrue(consumer.waitFor(200), "before the outage: \(consumer.messages.count) of 200; \(spout.stderr)")
        try eventually("slot confirmed before the outage") { try XCTUnwrap(try outbox.confirmedFlush) >= before }

        try cluster.command("broker-down 1")
        usleep(1_000_000)
        // The slot may still follow unrelated WAL, but never reach the commit of the first
        // transaction written while the broker is down (it ends at or before `firstAfter`).
        let firstAfter = try insertBatch()
        for _ in 0..<19 { _ = try insertBatch() }
        for _ in 0..<8 {
            usleep(500_000)
            let confirmed = try XCTUnwrap(try outbox.confirmedFlush)
            XCTAssertLessThan(confirmed, firstAfter, "confirmed events the broker never acknowledged")
        }
        let warnings = spout.stderr.split(separator: "\n").filter { $0.hasPrefix("spout: warning: kafka") }
        XCTAssertEqual(warnings.count, 1, "one warning per outage: \(spout.stderr)")
        try cluster.command("broker-up 1")

        var last = LSN.zero
        for _ in 0..<10 { last = try insertBatch() }
        XCTAssertTrue(consumer.waitFor(all.count, timeout: 90), "after the outage: \(consumer.messages.count) of \(all.count); \(spout.stderr)")
        consumer.poll(seconds: 1)
        try eventually("slot advances after the outage") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        XCTAssertEqual(Set(consumer.messages.compactMap(\.id)), all, "nothing lost")
        assertPerKeyOrder(consumer.idsByKey, expected: order)
        XCTAssertTrue(spout.stderr.contains("acknowledge events again"), spout.stderr)
    }

    /// No broker reachable when spout starts: a warning, events wait, and flow once it is up.
    func testBrokerDownAtStartupIsWaitedFor() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 1 1")
        try cluster.command("broker-down 1")
        let outbox = try OutboxFixture("kafka_startup")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--kafka-property", "reconnect.backoff.max.ms=500"])
        let writer = try TestDatabase.connect()
        let (ids, after) = try outbox.insertReturningLSN(writer, rows: 20, key: { "k\($0 % 3)" })
        try eventually("a warning about the brokers") { spout.stderr.contains("spout: warning: kafka") }
        usleep(1_000_000)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), after)
        XCTAssertTrue(spout.process.isRunning, spout.stderr)

        try cluster.command("broker-up 1")
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 1)])
        XCTAssertTrue(consumer.waitFor(20), "\(consumer.messages.count) of 20; \(spout.stderr)")
        try eventually("slot confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= after }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)
        XCTAssertEqual(consumer.messages.compactMap(\.id), ids, "in order, once")
    }

    /// Produce requests failing with retriable broker errors and dropped connections, and a
    /// librdkafka queue too small for the stream (QUEUE_FULL): nothing lost, no duplicates,
    /// per-key order kept.
    func testRetriableProduceErrorsAndFullQueueLoseNothingAndKeepOrder() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 2 1")
        let outbox = try OutboxFixture("kafka_retry")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--kafka-property", "queue.buffering.max.messages=7",
                                                     "--kafka-property", "retry.backoff.ms=20"])
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 2)])
        let writer = try TestDatabase.connect()
        var order: [String: [String]] = [:]
        var all = Set<String>()
        var last = LSN.zero
        let faults = ["NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS", "_TRANSPORT", "LEADER_NOT_AVAILABLE"]
        for round in 0..<15 {
            try cluster.command("produce-errors 2 \(faults[round % faults.count])")
            let base = round * 40
            let (ids, after) = try outbox.insertReturningLSN(writer, rows: 40, key: { "k\((base + $0) % 5)" })
            for (index, id) in ids.enumerated() { order["k\((base + index) % 5)", default: []].append(id) }
            all.formUnion(ids)
            last = after
            usleep(100_000)
        }
        XCTAssertTrue(consumer.waitFor(all.count, timeout: 90), "\(consumer.messages.count) of \(all.count); \(spout.stderr)")
        consumer.poll(seconds: 1)
        try eventually("slot confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        XCTAssertEqual(Set(consumer.messages.compactMap(\.id)), all, "nothing lost")
        XCTAssertEqual(consumer.messages.count, all.count, "no duplicates")
        assertPerKeyOrder(consumer.idsByKey, expected: order)
    }

    /// A user-set message.timeout.ms makes the sink take events back during an outage
    /// (_MSG_TIMED_OUT): it produces them again itself, in order, once the broker is back.
    func testTimedOutMessagesAreProducedAgainInOrder() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 2 1")
        let outbox = try OutboxFixture("kafka_timeout")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--log-level", "debug", "--kafka-property", "message.timeout.ms=800",
                                                     "--kafka-property", "reconnect.backoff.max.ms=500"])
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 2)])
        let writer = try TestDatabase.connect()
        var order: [String: [String]] = [:]
        var all = Set<String>()
        var last = LSN.zero
        func insertBatch(_ batch: Int) throws {
            let (ids, after) = try outbox.insertReturningLSN(writer, rows: 10, key: { "k\((batch * 10 + $0) % 4)" })
            for (index, id) in ids.enumerated() { order["k\((batch * 10 + index) % 4)", default: []].append(id) }
            all.formUnion(ids)
            last = after
        }
        for batch in 0..<5 { try insertBatch(batch) }
        XCTAssertTrue(consumer.waitFor(50), "before the outage; \(spout.stderr)")
        try cluster.command("broker-down 1")
        try insertBatch(5)
        let firstAfter = last
        for batch in 6..<15 {
            try insertBatch(batch)
            usleep(300_000)
        }
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), firstAfter, "confirmed events the broker never acknowledged")
        try cluster.command("broker-up 1")
        for batch in 15..<20 { try insertBatch(batch) }

        XCTAssertTrue(consumer.waitFor(all.count, timeout: 90), "\(consumer.messages.count) of \(all.count); \(spout.stderr)")
        consumer.poll(seconds: 1)
        try eventually("slot confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= last }
        spout.signal(SIGTERM)
        XCTAssertEqual(spout.waitForExit(), 0, spout.stderr)

        XCTAssertEqual(Set(consumer.messages.compactMap(\.id)), all, "nothing lost")
        assertPerKeyOrder(consumer.idsByKey, expected: order)
        XCTAssertTrue(spout.stderr.contains("(_MSG_TIMED_OUT); producing again in order"), "the retry path ran: \(spout.stderr)")
    }

    /// Left to librdkafka, a message timeout drops the oldest event and the later ones it still
    /// holds are written anyway, after an epoch bump (INTRODUCTION.md, "Message timeout
    /// considerations": 1, 4, 5); produced again, the dropped one would land after them. That
    /// happened whenever the broker came back before the relay served the timeout report and
    /// took the later events back (a loaded machine). Here the relay serves nothing during the
    /// outage at all: the sink itself, not librdkafka, decides when an event waited too long,
    /// so both events arrive in order once the broker is back.
    func testALaterEventNeverOvertakesOneThatWaitedPastTheTimeout() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 1 1")
        var options = SinkOptions()
        options.kafkaProperties = [("message.timeout.ms", "2000"), ("reconnect.backoff.ms", "50"), ("reconnect.backoff.max.ms", "100")]
        let sink = try KafkaSink(url: cluster.sinkURL, options: options, log: Log(level: .error))
        defer { sink.close() }
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 1)])
        func event(_ number: Int) -> OutboxEvent {
            OutboxEvent(id: "e\(number)", topic: "outbox.event.order", key: "k", type: "Created", payload: Array("{\"n\": \(number)}".utf8),
                        payloadFormat: .json, headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0))
        }
        var delivered = Set<UInt64>()
        func pollSink(until tickets: Set<UInt64>) throws {
            let deadline = Date().addingTimeInterval(30)
            while !delivered.isSuperset(of: tickets), Date() < deadline {
                try sink.poll { completion in
                    if case let .delivered(ticket) = completion { delivered.insert(ticket) }
                }
                var descriptor = pollfd(fd: sink.wakeupDescriptor ?? -1, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 50)
            }
            XCTAssertTrue(delivered.isSuperset(of: tickets), "delivered \(delivered.sorted()), expected \(tickets.sorted())")
        }

        try sink.send(event(0), ticket: 0)
        try pollSink(until: [0])
        try cluster.command("broker-down 1")
        try sink.send(event(1), ticket: 1)
        // The outage: event 1 outlives the timeout (librdkafka scans at least every second and
        // on each connection state change), event 2, sent later, does not.
        usleep(1_500_000)
        try sink.send(event(2), ticket: 2)
        usleep(800_000)
        try cluster.command("broker-up 1")
        // Without polling the sink: librdkafka alone decides what the broker gets first.
        XCTAssertTrue(consumer.waitFor(2, timeout: 30), "\(consumer.messages.map(\.id))")
        try pollSink(until: [1, 2])
        XCTAssertTrue(consumer.waitFor(3, timeout: 30), "\(consumer.messages.map(\.id))")
        consumer.poll(seconds: 0.5)
        var seen = Set<String>()
        XCTAssertEqual(consumer.messages.compactMap(\.id).filter { seen.insert($0).inserted }, ["e0", "e1", "e2"], "first appearances in order")
    }

    /// An event larger than message.max.bytes cannot ever be produced: spout stops with one
    /// error line naming its id and topic, exits non-zero, and the slot stays before it.
    func testOversizedEventStopsWithoutConfirmingIt() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 1 1")
        let outbox = try OutboxFixture("kafka_large")
        defer { outbox.tearDown() }
        // The relay waits up to --shutdown-timeout for the failed ticket before it exits.
        let spout = try startSpout(outbox, cluster, ["--shutdown-timeout", "3", "--kafka-property", "message.max.bytes=1000"])
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 1)])
        let writer = try TestDatabase.connect()
        let (good, goodLSN) = try outbox.insertReturningLSN(writer, rows: 5, key: { "k\($0)" })
        XCTAssertTrue(consumer.waitFor(5), spout.stderr)
        try eventually("good events confirmed") { try XCTUnwrap(try outbox.confirmedFlush) >= goodLSN }

        let big = String(repeating: "x", count: 5000)
        let (bad, badLSN) = try outbox.insertReturningLSN(writer, rows: 1, key: { _ in "k0" }, payload: { _ in "{\"big\": \"\(big)\"}" })
        let badID = try XCTUnwrap(bad.first)
        let error = spout.waitForFailure(timeout: 60)
        XCTAssertTrue(error.contains(badID), spout.stderr)
        XCTAssertTrue(error.contains("outbox.event.order"), spout.stderr)
        XCTAssertTrue(error.contains("message.max.bytes"), spout.stderr)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), badLSN, "confirmed past the failed event")

        // The slot still holds it: a run with the stdout sink gets it first.
        let replay = try SpoutProcess(["run"] + outbox.arguments)
        try eventually("the failed event is still in the slot") { replay.events.contains { $0["id"] as? String == badID } }
        replay.signal(SIGTERM)
        XCTAssertEqual(replay.waitForExit(), 0, replay.stderr)
        XCTAssertTrue(Set(replay.events.compactMap { $0["id"] as? String }).isDisjoint(with: good), "good events were confirmed")
        consumer.poll(seconds: 0.5)
        XCTAssertEqual(consumer.messages.count, 5)
    }

    /// A broker that refuses the topic (authorization) is a permanent error too.
    func testBrokerRejectionStopsWithTheEventNamed() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 1 1")
        let outbox = try OutboxFixture("kafka_denied")
        defer { outbox.tearDown() }
        let spout = try startSpout(outbox, cluster, ["--shutdown-timeout", "3"])
        try cluster.command("produce-errors 1 TOPIC_AUTHORIZATION_FAILED")
        let writer = try TestDatabase.connect()
        let (ids, afterLSN) = try outbox.insertReturningLSN(writer, rows: 1, key: { _ in "k" })
        let error = spout.waitForFailure(timeout: 60)
        XCTAssertTrue(error.contains(ids[0]), spout.stderr)
        XCTAssertTrue(error.contains("outbox.event.order"), spout.stderr)
        XCTAssertTrue(error.contains("TOPIC_AUTHORIZATION_FAILED"), spout.stderr)
        XCTAssertLessThan(try XCTUnwrap(try outbox.confirmedFlush), afterLSN)
    }

    /// SIGKILL mid-stream, then a restart: the topic holds every event; an event appears twice
    /// only if its transaction was not confirmed when the first run died.
    func testKillAndRestartLosesNothing() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 3 1")
        // Slow acknowledgements keep events in flight (published, not yet confirmed) at the kill.
        try cluster.command("broker-rtt 1 30")
        let outbox = try OutboxFixture("kafka_kill")
        defer { outbox.tearDown() }
        let consumer = try KafkaTestConsumer(bootstrap: cluster.bootstrap, topics: [("outbox.event.order", 3)])
        let first = try startSpout(outbox, cluster, ["--max-in-flight", "50"])

        // The writer keeps going until after the kill, so the first run dies mid-stream.
        let writer = try OutboxWriter(outbox)
        writer.start(rows: 5, pause: 2_000)
        try eventually("first run delivered some") {
            consumer.poll(seconds: 0.1)
            return consumer.messages.count >= 300
        }
        first.signal(SIGKILL)
        first.waitForExit()
        let confirmedAtCrash = try XCTUnwrap(try outbox.confirmedFlush)
        writer.waitForMore(20)
        try writer.stop()
        let written = writer.transactions
        XCTAssertGreaterThan(try XCTUnwrap(written.last?.after), confirmedAtCrash, "events were left for the second run")

        let second = try startSpout(outbox, cluster)
        let all = Set(writer.ids)
        try eventually(timeout: 90, "second run delivers the rest") {
            consumer.poll(seconds: 0.2)
            return Set(consumer.messages.compactMap(\.id)).isSuperset(of: all)
        }
        consumer.poll(seconds: 0.5)
        second.signal(SIGTERM)
        XCTAssertEqual(second.waitForExit(), 0, second.stderr)

        var counts: [String: Int] = [:]
        for message in consumer.messages { counts[message.id ?? "", default: 0] += 1 }
        XCTAssertEqual(Set(counts.keys), all, "nothing lost, nothing foreign")
        for batch in written where batch.after <= confirmedAtCrash {
            for id in batch.ids { XCTAssertEqual(counts[id], 1, "event \(id) was confirmed before the crash, yet sent again") }
        }
        assertPerKeyOrder(consumer.idsByKey, expected: writer.idsByKey)
    }

    // issue 15: Kafka over TLS
    /// librdkafka's mock cluster has plaintext listeners only, so no live TLS test: a sink set
    /// up for ssl against it must stop at start (not wait forever) with an error that names the
    /// broker and says it does not speak TLS.
    func testTLSAgainstAPlaintextBrokerStopsAtStart() throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.command("create-topic outbox.event.order 1 1")
        let outbox = try OutboxFixture("kafka_tls")
        defer { outbox.tearDown() }
        let certificates = try TestCertificates.shared()
        let spout = try SpoutProcess(["run", "--sink", cluster.sinkURL, "--kafka-property", "security.protocol=ssl",
                                      "--sink-ca-file", certificates.ca, "--shutdown-timeout", "3"] + outbox.arguments)
        let error = spout.waitForFailure(timeout: 60)
        XCTAssertTrue(error.contains(cluster.bootstrap), spout.stderr)
        XCTAssertTrue(error.contains("over TLS"), spout.stderr)
        XCTAssertTrue(error.contains("does not speak TLS"), spout.stderr)

        // spout check says the same, as the sink line's fix.
        let check = try SpoutProcess.run(["check", "--sink", cluster.sinkURL, "--kafka-property", "security.protocol=ssl",
                                          "--sink-ca-file", certificates.ca] + outbox.arguments)
        XCTAssertEqual(check.status, 1, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("cannot connect over TLS"), check.stdout)
        XCTAssertTrue(check.stdout.contains("does not speak TLS"), check.stdout)
    }

    /// Unknown or invalid properties stop spout before it connects anywhere, naming the
    /// property; a secret's value never shows up.
    func testInvalidPropertiesAreRejectedByName() throws {
        let arguments = ["run", "--sink", "kafka://127.0.0.1:9", "--database-url", "postgresql://nobody@127.0.0.1:9/none"]
        let unknown = try SpoutProcess.run(arguments + ["--kafka-property", "no.such.property=1"])
        XCTAssertEqual(unknown.status, 64)
        XCTAssertTrue(unknown.stderr.contains("no.such.property"), unknown.stderr)

        let invalid = try SpoutProcess.run(arguments + ["--kafka-property", "sasl.password=hunter2", "--kafka-property", "linger.ms=soon"])
        XCTAssertEqual(invalid.status, 64)
        XCTAssertTrue(invalid.stderr.contains("linger.ms"), invalid.stderr)
        XCTAssertFalse(invalid.stderr.contains("hunter2"), invalid.stderr)

        let conflicting = try SpoutProcess.run(arguments + ["--kafka-property", "acks=1", "--kafka-property", "sasl.password=hunter2"])
        XCTAssertEqual(conflicting.status, 64)
        XCTAssertTrue(conflicting.stderr.contains("acks"), conflicting.stderr)
        XCTAssertFalse(conflicting.stderr.contains("hunter2"), conflicting.stderr)

        let environment = try SpoutProcess.run(arguments, environment: ["SPOUT_KAFKA_PROPERTIES": "linger.ms=5 bogus.thing=2"])
        XCTAssertEqual(environment.status, 64)
        XCTAssertTrue(environment.stderr.contains("bogus.thing"), environment.stderr)

        let url = try SpoutProcess.run(["run", "--sink", "kafka://user:hunter2@127.0.0.1:9", "--database-url", "postgresql://nobody@127.0.0.1:9/none"])
        XCTAssertEqual(url.status, 64)
        XCTAssertFalse(url.stderr.contains("hunter2"), url.stderr)
    }
}
