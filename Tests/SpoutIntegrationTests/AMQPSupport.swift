import Foundation
import SpoutAMQP
import SpoutCore
import XCTest

/// The tests' own AMQP client: pika from PyPI (scripts/py-deps), run as `python3` per call.
struct PikaClient {
    struct Message {
        var routingKey: String
        var messageID: String?
        var type: String?
        var contentType: String?
        var deliveryMode: Int?
        var timestamp: Int?
        var headers: [String: Any]
        var body: String

        var header: (String) -> String? { { headers[$0] as? String } }
        var sequence: Int? { ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["seq"] as? Int }
    }

    let url: String
    private let pythonPath: String

    init(_ url: String) throws {
        guard let path = ProcessInfo.processInfo.environment["SPOUT_TEST_PYTHONPATH"], !path.isEmpty else {
            throw XCTSkip("SPOUT_TEST_PYTHONPATH is not set: scripts/py-deps installs pika for these tests (scripts/test exports it)")
        }
        self.url = url
        pythonPath = path
    }

    /// Declares `exchange` (a durable topic exchange, as spout's --amqp-declare does) and the
    /// durable `queue`, bound for each of `keys`.
    /// With `rejectAbove`, the queue holds at most that many messages and refuses more
    /// (`x-overflow: reject-publish`: the broker nacks them).
    func setUp(exchange: String, queue: String, keys: [String], rejectAbove: Int? = nil) throws {
        _ = try run(["setup", exchange, queue, rejectAbove.map(String.init) ?? "-"] + keys)
    }

    /// Publishes one message, mandatory and confirmed: fails when no queue is bound for `routingKey`.
    func publishMandatory(exchange: String, routingKey: String) throws {
        _ = try run(["publish", exchange, routingKey])
    }

    /// Ready messages in `queue`.
    func count(_ queue: String) -> Int {
        (try? run(["count", queue])).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? -1
    }

    /// Takes every message from `queue`, in queue order.
    func drain(_ queue: String) throws -> [Message] {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("spout-pika-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: output) }
        _ = try run(["drain", queue, output.path])
        let items = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: output)) as? [[String: Any]])
        return items.map { item in
            Message(routingKey: item["routing_key"] as? String ?? "", messageID: item["message_id"] as? String, type: item["type"] as? String,
                    contentType: item["content_type"] as? String, deliveryMode: item["delivery_mode"] as? Int,
                    timestamp: item["timestamp"] as? Int, headers: item["headers"] as? [String: Any] ?? [:], body: item["body"] as? String ?? "")
        }
    }

    private func run(_ arguments: [String]) throws -> String {
        let (status, output) = try runCommand("/usr/bin/env", ["PYTHONPATH=\(pythonPath)", "python3", Self.scriptPath, url] + arguments)
        guard status == 0 else { throw XCTSkipFailure("pika \(arguments.first ?? "") failed (status \(status)): \(output)") }
        return output
    }

    private static let scriptPath: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("spout-pika-client-\(getpid()).py").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(script.utf8))
        return path
    }()

    private static let script = #"""
        import json, sys
        import pika
        url, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        if command == "setup":
            exchange, queue, limit, keys = args[0], args[1], args[2], args[3:]
            channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            bounded = {"x-max-length": int(limit), "x-overflow": "reject-publish"} if limit != "-" else None
            channel.queue_declare(queue, durable=True, arguments=bounded)
            for key in keys:
                channel.queue_bind(queue, exchange, routing_key=key)
        elif command == "publish":
            channel.confirm_delivery()
            channel.basic_publish(args[0], args[1], b"{}", mandatory=True)
        elif command == "count":
            print(channel.queue_declare(args[0], passive=True).method.message_count)
        elif command == "drain":
            messages = []
            while True:
                method, properties, body = channel.basic_get(args[0], auto_ack=True)
                if method is None:
                    break
                headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (properties.headers or {}).items()}
                messages.append({"routing_key": method.routing_key, "message_id": properties.message_id, "type": properties.type,
                                 "content_type": properties.content_type, "delivery_mode": properties.delivery_mode,
                                 "timestamp": properties.timestamp, "headers": headers, "body": body.decode("utf-8", "replace")})
            with open(args[1], "w") as output:
                json.dump(messages, output)
        connection.close()
        """#
}

/// Checks at-least-once delivery in order: every id of `idsByKey` arrived, and per key the
/// events arrived first in commit order (an event published again after a crash or an outage
/// may come again later, never before one it followed).
func assertEveryEventInOrderPerKey(_ messages: [PikaClient.Message], idsByKey: [String: [String]],
                                   file: StaticString = #filePath, line: UInt = #line) {
    var firstSeen: [String: [String]] = [:]
    var seen: Set<String> = []
    for message in messages {
        guard let id = message.messageID, let key = message.header(AMQPSink.keyHeader) else {
            return XCTFail("a message without message_id or \(AMQPSink.keyHeader): \(message)", file: file, line: line)
        }
        if seen.insert(id).inserted { firstSeen[key, default: []].append(id) }
    }
    let expected = Set(idsByKey.values.joined())
    XCTAssertEqual(seen.intersection(expected).count, expected.count, "every event arrived at least once", file: file, line: line)
    for (key, ids) in idsByKey {
        XCTAssertEqual(firstSeen[key, default: []].filter(expected.contains), ids, "events of key \(key) in commit order", file: file, line: line)
    }
}
