import CRdKafka
import Foundation
import SpoutCore
import XCTest

/// `spout-kafka-mock` (librdkafka's mock cluster: the real Kafka protocol, in memory) as a
/// child process, with its fault-injection commands. Stopped by PID when the test ends.
final class KafkaMockCluster {
    let process = Process()
    let bootstrap: String
    private let commands: FileHandle
    private let answers: FileHandle
    private var pending = Data()
    private let directory: URL

    static var executable: URL {
        if let path = ProcessInfo.processInfo.environment["SPOUT_KAFKA_MOCK_BIN"] { return URL(fileURLWithPath: path) }
        return SpoutProcess.executable.deletingLastPathComponent().appendingPathComponent("spout-kafka-mock")
    }

    init(brokers: Int = 1) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("spout-kafka-mock-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let stderrURL = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let input = Pipe()
        let output = Pipe()
        process.executableURL = Self.executable
        process.arguments = ["--brokers", "\(brokers)"]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
        commands = input.fileHandleForWriting
        answers = output.fileHandleForReading
        var first = ""
        do { first = try Self.readLine(from: answers, buffer: &pending, timeout: 20) } catch {
            process.terminate()
            throw error
        }
        guard first.hasPrefix("BOOTSTRAP ") else {
            process.terminate()
            throw XCTSkipFailure("spout-kafka-mock did not print its bootstrap address: \(first)")
        }
        bootstrap = String(first.dropFirst("BOOTSTRAP ".count))
    }

    /// The sink URL for this cluster.
    var sinkURL: String { "kafka://" + bootstrap }

    /// Runs one fault-injection command; throws on `ERR`.
    @discardableResult
    func command(_ line: String) throws -> String {
        commands.write(Data((line + "\n").utf8))
        let answer = try Self.readLine(from: answers, buffer: &pending, timeout: 10)
        guard answer == "OK" else { throw XCTSkipFailure("spout-kafka-mock \(line): \(answer)") }
        return answer
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    private static func readLine(from handle: FileHandle, buffer: inout Data, timeout: TimeInterval) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                return line
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw XCTSkipFailure("spout-kafka-mock did not answer within \(timeout) s") }
            var descriptor = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, Int32(remaining * 1000)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(handle.fileDescriptor, &chunk, chunk.count)
            guard count > 0 else { throw XCTSkipFailure("spout-kafka-mock exited") }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }
}

/// A librdkafka consumer reading whole topics from the beginning, for checking what arrived.
final class KafkaTestConsumer {
    struct Message {
        var topic: String
        var partition: Int32
        var offset: Int64
        var key: String?
        var value: String
        var headers: [(name: String, value: String)]

        func header(_ name: String) -> String? { headers.last { $0.name == name }?.value }
        /// The event id, from the `id` header.
        var id: String? { header("id") }
    }

    private let handle: OpaquePointer
    private(set) var messages: [Message] = []
    private(set) var errors: [String] = []

    init(bootstrap: String, topics: [(name: String, partitions: Int32)]) throws {
        let conf = rd_kafka_conf_new()
        var errorText = [CChar](repeating: 0, count: 512)
        func text(_ buffer: [CChar]) -> String { String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        let settings = [
            ("bootstrap.servers", bootstrap), ("group.id", "spout-test-\(UUID().uuidString)"),
            ("enable.auto.commit", "false"), ("enable.partition.eof", "false"), ("log_level", "0"),
        ]
        for (name, value) in settings where rd_kafka_conf_set(conf, name, value, &errorText, errorText.count) != RD_KAFKA_CONF_OK {
            throw XCTSkipFailure("consumer property \(name): \(text(errorText))")
        }
        guard let handle = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errorText, errorText.count) else {
            throw XCTSkipFailure("cannot create the test consumer: \(text(errorText))")
        }
        self.handle = handle
        rd_kafka_poll_set_consumer(handle)
        let list = rd_kafka_topic_partition_list_new(Int32(topics.count))
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for topic in topics {
            for partition in 0..<topic.partitions {
                rd_kafka_topic_partition_list_add(list, topic.name, partition).pointee.offset = Int64(RD_KAFKA_OFFSET_BEGINNING)
            }
        }
        let result = rd_kafka_assign(handle, list)
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw XCTSkipFailure("cannot assign the test consumer: \(String(cString: rd_kafka_err2str(result)))")
        }
    }

    deinit {
        _ = rd_kafka_consumer_close(handle)
        rd_kafka_destroy(handle)
    }

    /// Reads what is available (for up to `seconds`); returns how many messages came.
    @discardableResult
    func poll(seconds: Double = 0.5) -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var count = 0
        while Date() < deadline {
            guard let message = rd_kafka_consumer_poll(handle, 100) else { continue }
            defer { rd_kafka_message_destroy(message) }
            let fields = message.pointee
            if fields.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                errors.append(String(cString: rd_kafka_err2str(fields.err)))
                continue
            }
            count += 1
            func text(_ pointer: UnsafeMutableRawPointer?, _ length: Int) -> String? {
                pointer.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: length), as: UTF8.self) }
            }
            var headers: [(name: String, value: String)] = []
            var list: OpaquePointer?
            if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
                var index = 0
                var name: UnsafePointer<CChar>?
                var value: UnsafeRawPointer?
                var size = 0
                while rd_kafka_header_get_all(list, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                    let valueText = value.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self) } ?? ""
                    headers.append((name.map { String(cString: $0) } ?? "", valueText))
                    index += 1
                }
            }
            messages.append(Message(
                topic: fields.rkt.flatMap { rd_kafka_topic_name($0) }.map { String(cString: $0) } ?? "",
                partition: fields.partition, offset: fields.offset,
                key: text(fields.key, fields.key_len), value: text(fields.payload, fields.len) ?? "", headers: headers))
        }
        return count
    }

    /// Polls until `count` messages arrived or `timeout` passed.
    func waitFor(_ count: Int, timeout: TimeInterval = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while messages.count < count, Date() < deadline { poll(seconds: 0.2) }
        return messages.count >= count
    }

    /// Event ids per key in log order (partition order; one key lives in one partition).
    var idsByKey: [String: [String]] {
        var result: [String: [String]] = [:]
        for message in messages.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
            result[message.key ?? "", default: []].append(message.id ?? "")
        }
        return result
    }
}

extension OutboxFixture {
    /// Inserts one transaction and returns its ids with the WAL insert position right after
    /// its commit (at or after the commit's end LSN).
    func insertReturningLSN(_ connection: PostgresConnection, rows: Int, aggregate: String = "order", key: @escaping (Int) -> String,
                            payload: @escaping (Int) -> String = { "{\"n\": \($0)}" }) throws -> (ids: [String], after: LSN) {
        let ids = try insert(connection, rows: rows, aggregate: aggregate, key: key, payload: payload)
        let after = try connection.lsn("SELECT pg_current_wal_insert_lsn()") ?? .zero
        return (ids, after)
    }
}

/// Checks that per key, the first appearance of each event follows insertion order: every key
/// is a list of ids in the order they were inserted. Duplicates (at-least-once) are allowed.
func assertPerKeyOrder(_ consumed: [String: [String]], expected: [String: [String]], file: StaticString = #filePath, line: UInt = #line) {
    for (key, ids) in expected {
        var seen = Set<String>()
        let firstAppearances = (consumed[key] ?? []).filter { seen.insert($0).inserted }
        XCTAssertEqual(firstAppearances, ids, "key \(key): events in a different order or missing", file: file, line: line)
    }
}
