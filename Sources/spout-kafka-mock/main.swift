// spout-kafka-mock: hosts librdkafka's mock Kafka cluster (the real wire protocol, in memory)
// in its own process, for tests and demos.
//
// The first stdout line is `BOOTSTRAP host:port[,host:port]`. Then it reads one command per
// line on stdin and answers each with `OK` or `ERR <reason>`:
//
//   ping
//   broker-down ID|-1            disconnect a broker (-1: all) and refuse new connections
//   broker-up ID|-1
//   broker-rtt ID MS             delay the broker's responses
//   produce-errors N CODE        fail the next N Produce requests with CODE
//   create-topic NAME PARTITIONS [REPLICATION]
//   partition-leader TOPIC PARTITION ID
//
// CODE is a librdkafka error name (NOT_LEADER_FOR_PARTITION, _TRANSPORT, ...) or number.
// It exits on EOF or SIGTERM.
import CRdKafka
import Foundation

signal(SIGPIPE, SIG_IGN)

/// One line to stdout, unbuffered: the test reads answers as they come.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("spout-kafka-mock: \(message)\n".utf8))
    exit(64)
}

/// `--brokers N` (default 1).
let brokerCount: Int32 = {
    var count: Int32 = 1
    var arguments = CommandLine.arguments.dropFirst()
    while let argument = arguments.popFirst() {
        switch argument {
        case "--brokers":
            guard let text = arguments.popFirst(), let number = Int32(text), (1...32).contains(number) else {
                fail("--brokers needs a number from 1 to 32")
            }
            count = number
        case "-h", "--help":
            say("usage: spout-kafka-mock [--brokers N]   (prints BOOTSTRAP host:port, then reads commands on stdin)")
            exit(0)
        default:
            fail("unknown argument \(argument): use --brokers N")
        }
    }
    return count
}()

// The cluster needs a client instance for its bookkeeping; this one never connects anywhere.
let conf = rd_kafka_conf_new()
var errorText = [CChar](repeating: 0, count: 512)
func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
// Quiet the "no bootstrap.servers" notice of this placeholder client; errors still show.
_ = rd_kafka_conf_set(conf, "log_level", "3", &errorText, errorText.count)
guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errorText, errorText.count) else {
    fail("cannot create a librdkafka handle: \(text(errorText))")
}
guard let cluster = rd_kafka_mock_cluster_new(handle, brokerCount), let bootstraps = rd_kafka_mock_cluster_bootstraps(cluster) else {
    fail("cannot start the mock cluster")
}
say("BOOTSTRAP \(String(cString: bootstraps))")

/// librdkafka's error names (`_TRANSPORT`, `NOT_LEADER_FOR_PARTITION`) to codes.
let errorCodes: [String: rd_kafka_resp_err_t] = {
    var descriptions: UnsafePointer<rd_kafka_err_desc>?
    var count = 0
    rd_kafka_get_err_descs(&descriptions, &count)
    var codes: [String: rd_kafka_resp_err_t] = [:]
    guard let descriptions else { return codes }
    for index in 0..<count {
        guard let name = descriptions[index].name else { continue }
        codes[String(cString: name)] = descriptions[index].code
    }
    return codes
}()

func errorCode(_ text: Substring) -> rd_kafka_resp_err_t? {
    if let number = Int32(text) { return rd_kafka_resp_err_t(rawValue: number) }
    let name = text.hasPrefix("RD_KAFKA_RESP_ERR_") ? text.dropFirst("RD_KAFKA_RESP_ERR_".count) : text
    return errorCodes[String(name)]
}

func check(_ result: rd_kafka_resp_err_t) -> String {
    result == RD_KAFKA_RESP_ERR_NO_ERROR ? "OK" : "ERR " + String(cString: rd_kafka_err2str(result))
}

/// Runs one command line; returns the answer.
func execute(_ line: Substring) -> String {
    let words = line.split(separator: " ", omittingEmptySubsequences: true)
    guard let command = words.first else { return "ERR empty command" }
    let arguments = Array(words.dropFirst())
    func int32(_ index: Int) -> Int32? { index < arguments.count ? Int32(arguments[index]) : nil }

    switch (command, arguments.count) {
    case ("ping", 0):
        return "OK"
    case ("broker-down", 1):
        guard let id = int32(0) else { return "ERR broker-down needs a broker id" }
        return check(rd_kafka_mock_broker_set_down(cluster, id))
    case ("broker-up", 1):
        guard let id = int32(0) else { return "ERR broker-up needs a broker id" }
        return check(rd_kafka_mock_broker_set_up(cluster, id))
    case ("broker-rtt", 2):
        guard let id = int32(0), let milliseconds = int32(1), milliseconds >= 0 else { return "ERR usage: broker-rtt ID MS" }
        return check(rd_kafka_mock_broker_set_rtt(cluster, id, milliseconds))
    case ("produce-errors", 2):
        guard let count = Int(arguments[0]), count > 0, count <= 100_000 else { return "ERR usage: produce-errors N CODE" }
        guard let code = errorCode(arguments[1]) else { return "ERR unknown error code \(arguments[1])" }
        let codes = [rd_kafka_resp_err_t](repeating: code, count: count)
        // Kafka protocol ApiKey 0 is ProduceRequest.
        rd_kafka_mock_push_request_errors_array(cluster, 0, count, codes)
        return "OK"
    case ("create-topic", 2), ("create-topic", 3):
        guard let partitions = int32(1), partitions > 0 else { return "ERR usage: create-topic NAME PARTITIONS [REPLICATION]" }
        let replication = arguments.count == 3 ? int32(2) : min(3, brokerCount)
        guard let replication, replication > 0 else { return "ERR replication must be a positive number" }
        return check(rd_kafka_mock_topic_create(cluster, String(arguments[0]), partitions, replication))
    case ("partition-leader", 3):
        guard let partition = int32(1), let id = int32(2) else { return "ERR usage: partition-leader TOPIC PARTITION ID" }
        return check(rd_kafka_mock_partition_set_leader(cluster, String(arguments[0]), partition, id))
    default:
        return "ERR unknown command or wrong arguments: \(line)"
    }
}

while let line = readLine() {
    let trimmed = line.trimmingCharacters(in: .whitespaces)
    if trimmed.isEmpty { continue }
    say(execute(Substring(trimmed)))
}

rd_kafka_mock_cluster_destroy(cluster)
rd_kafka_destroy(handle)
