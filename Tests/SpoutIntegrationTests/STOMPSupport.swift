import Foundation
import SpoutCore
import XCTest

/// A message as a stomp.py consumer received it.
struct STOMPMessage {
    var headers: [String: String]
    var body: String

    var id: String? { headers["spout-event-id"] }
    var key: String? { headers["spout-key"] }
    var seq: Int? { ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["seq"] as? Int }
}

/// Declares and drains durable RabbitMQ queues with stomp.py (PyPI), a client not written here.
enum STOMPConsumer {
    static var pythonPath: String {
        get throws {
            guard let path = ProcessInfo.processInfo.environment["SPOUT_TEST_PYTHONPATH"], !path.isEmpty else {
                throw XCTSkip("SPOUT_TEST_PYTHONPATH is not set: run the tests with scripts/test, which installs stomp.py (scripts/py-deps)")
            }
            return path
        }
    }

    private static let script = #"""
    import json, sys, threading, time
    import stomp

    mode, port, user, password, queue = sys.argv[1:6]
    conn = stomp.Connection([("127.0.0.1", int(port))], vhost="/", auto_decode=False, heartbeats=(0, 0))
    received = []
    ids = set()
    done = threading.Event()
    want = int(sys.argv[6]) if mode == "drain" else 0

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
            received.append({"headers": dict(frame.headers), "body": body.decode("utf-8", "replace")})
            ids.add(frame.headers.get("spout-event-id"))
            if len(ids) >= want:
                done.set()

    conn.set_listener("", Listener())
    conn.connect(user, password, wait=True)
    # /queue/NAME: RabbitMQ declares a durable queue NAME on SUBSCRIBE (and on SEND).
    conn.subscribe(destination="/queue/" + queue, id=1, ack="auto")
    if mode == "drain":
        done.wait(float(sys.argv[7]))
        json.dump(received, open(sys.argv[8], "w"))
    conn.disconnect()
    """#

    private static func run(_ arguments: [String]) throws {
        let directory = FileManager.default.temporaryDirectory
        let scriptURL = directory.appendingPathComponent("spout-stomp-consumer.py")
        try script.write(to: scriptURL, atomically: true, encoding: .utf8)
        let (status, output) = try runCommand("/usr/bin/env", ["PYTHONPATH=\(try pythonPath)", "python3", scriptURL.path] + arguments)
        guard status == 0 else { throw XCTSkipFailure("the stomp.py consumer failed (\(status)): \(output)") }
    }

    /// Declares the durable queue (before spout publishes, so nothing is missed).
    static func declare(_ server: RabbitMQServer, queue: String) throws {
        try run(["declare", String(server.stompPort), "spout", "spout-test-secret", queue])
    }

    /// Consumes the queue until it held `distinct` different events (or `timeout` passed).
    static func drain(_ server: RabbitMQServer, queue: String, distinct: Int, timeout: TimeInterval = 120) throws -> [STOMPMessage] {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("spout-stomp-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: output) }
        try run(["drain", String(server.stompPort), "spout", "spout-test-secret", queue, String(distinct), String(timeout), output.path])
        let list = try JSONSerialization.jsonObject(with: Data(contentsOf: output)) as? [[String: Any]] ?? []
        return list.map { STOMPMessage(headers: $0["headers"] as? [String: String] ?? [:], body: $0["body"] as? String ?? "") }
    }
}

/// Every id at least once, and per key the events' first arrivals in commit order (a crash or
/// an outage may deliver an event again, never one before an earlier one of its key).
func assertAllArrivedInOrder(_ messages: [STOMPMessage], writer: OutboxWriter, file: StaticString = #filePath, line: UInt = #line) {
    let arrived = messages.compactMap(\.id)
    XCTAssertEqual(Set(arrived).intersection(writer.ids).count, writer.ids.count, "every event arrived", file: file, line: line)
    var firstArrival: [String: Int] = [:]
    for (index, id) in arrived.enumerated() where firstArrival[id] == nil { firstArrival[id] = index }
    for (key, ids) in writer.idsByKey {
        let positions = ids.compactMap { firstArrival[$0] }
        XCTAssertEqual(positions, positions.sorted(), "order of key \(key)", file: file, line: line)
    }
}

/// Event ids in the order of their first arrival.
func firstArrivals(_ messages: [STOMPMessage]) -> [String] {
    var seen = Set<String>()
    return messages.compactMap(\.id).filter { seen.insert($0).inserted }
}

extension OutboxWriter {
    /// Waits until more than `count` transactions are written and the slot confirmed the one at `count`.
    func waitUntilConfirmed(_ count: Int, _ outbox: OutboxFixture, file: StaticString = #filePath, line: UInt = #line) throws {
        try eventually("the slot confirms transaction \(count)", file: file, line: line) {
            let transactions = self.transactions
            guard transactions.count > count, let confirmed = try outbox.confirmedFlush else { return false }
            return confirmed >= transactions[count].after
        }
    }
}
