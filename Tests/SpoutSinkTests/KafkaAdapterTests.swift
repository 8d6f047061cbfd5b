import CRdKafka
import Foundation
import MetricsTestKit
@testable import SpoutCore
@testable import SpoutKafka
import XCTest

/// The Kafka sink on the delivery engine, against librdkafka's mock cluster in this process:
/// delivery reports acknowledge events; a broker that goes away is an outage the engine
/// reports without taking anything back (librdkafka retries by itself, no duplicates); the
/// sink's own message timeout takes everything back and produces it again, in order, after
/// the engine's backoff.
final class KafkaAdapterTests: XCTestCase {
    /// librdkafka's mock cluster: one broker, topic `t` with one partition (one order to check).
    private final class MockCluster {
        private let client: OpaquePointer
        private let cluster: OpaquePointer
        let bootstrap: String

        init() throws {
            var errorText = [CChar](repeating: 0, count: 512)
            let conf = rd_kafka_conf_new()
            _ = rd_kafka_conf_set(conf, "log_level", "3", &errorText, errorText.count)
            client = try XCTUnwrap(rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errorText, errorText.count))
            cluster = try XCTUnwrap(rd_kafka_mock_cluster_new(client, 1))
            bootstrap = String(cString: try XCTUnwrap(rd_kafka_mock_cluster_bootstraps(cluster)))
            XCTAssertEqual(rd_kafka_mock_topic_create(cluster, "t", 1, 1), RD_KAFKA_RESP_ERR_NO_ERROR)
        }

        deinit {
            rd_kafka_mock_cluster_destroy(cluster)
            rd_kafka_destroy(client)
        }

        func broker(up: Bool) {
            XCTAssertEqual(up ? rd_kafka_mock_broker_set_up(cluster, 1) : rd_kafka_mock_broker_set_down(cluster, 1), RD_KAFKA_RESP_ERR_NO_ERROR)
        }
    }

    private var cluster: MockCluster!
    private var metrics: TestMetrics!
    private var sink: KafkaSink!
    private var delivered: [UInt64] = []
    private var nextTicket: UInt64 = 0

    override func setUpWithError() throws {
        cluster = try MockCluster()
        metrics = TestMetrics()
    }

    override func tearDown() {
        sink?.close()
        sink = nil
        cluster = nil
    }

    private func startSink(_ properties: [(name: String, value: String)] = []) throws {
        var options = SinkOptions()
        options.kafkaProperties = [("reconnect.backoff.max.ms", "200")] + properties
        sink = try KafkaSink(url: "kafka://" + cluster.bootstrap, options: options, log: Log(level: .error), metrics: metrics)
    }

    private func send(_ count: Int) throws {
        for _ in 0..<count {
            let ticket = nextTicket
            nextTicket += 1
            try sink.send(OutboxEvent(id: "e\(ticket)", topic: "t", key: "k", type: nil, payload: Array("{}".utf8), payloadFormat: .json,
                                      headers: [], lsn: .zero, committedAt: PostgresTimestamp(rawValue: 0)), ticket: ticket)
        }
    }

    /// Polls as the relay does (woken by the sink's descriptor) until `done`, for at most 30 s.
    private func poll(until what: String, _ done: () throws -> Bool) throws {
        let wakeup = try XCTUnwrap(sink.wakeupDescriptor)
        let deadline = ContinuousClock.now + .seconds(30)
        while try !done() {
            guard ContinuousClock.now < deadline else { return XCTFail("no \(what) within 30 s") }
            try sink.poll { completion in
                switch completion {
                case let .delivered(ticket): delivered.append(ticket)
                case let .failed(ticket, error): XCTFail("ticket \(ticket) failed: \(error)")
                }
            }
            var ready = pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&ready, 1, 100)
        }
    }

    private func counter(_ label: String) -> Int64 {
        metrics.counters(label: label).first?.totalValue ?? 0
    }

    func testABrokerDownIsAnOutageAndNothingIsTakenBack() throws {
        try startSink()
        try send(10)
        try poll(until: "deliveries") { delivered.count == 10 }

        cluster.broker(up: false)
        try send(10)
        try poll(until: "outage") { counter("spout_sink_outages_total") >= 1 }
        cluster.broker(up: true)
        try poll(until: "deliveries after the outage") { delivered.count == 20 }

        XCTAssertEqual(delivered, Array(0..<20), "each event once, in order")
        XCTAssertEqual(counter("spout_sink_retries_total"), 0, "librdkafka retried by itself; the sink took nothing back")
    }

    func testTheMessageTimeoutTakesEverythingBackAndProducesItAgainInOrder() throws {
        try startSink([("message.timeout.ms", "300")])
        try send(5)
        try poll(until: "deliveries") { delivered.count == 5 }

        cluster.broker(up: false)
        try send(10)
        try poll(until: "a retry after the message timeout") { counter("spout_sink_retries_total") >= 1 }
        cluster.broker(up: true)
        try poll(until: "deliveries after the outage") { delivered.count == 15 }

        XCTAssertEqual(delivered, Array(0..<15), "each event reported once, in order")
        XCTAssertGreaterThanOrEqual(counter("spout_sink_outages_total"), 1)
    }
}
