import ArgumentParser
import Foundation
import SpoutCore

/// The sink URL and the broker settings that go with it.
struct SinkOptionGroup: ParsableArguments {
    @Option(name: .customLong("sink"), help: ArgumentHelp(
        "Sink URL: stdout://, kafka://host:9092[,host:9092], redis://[:password@]host:6379[/db], nats://host:4222 (default: stdout://). [SPOUT_SINK]",
        valueName: "url"))
    var sinkFlag: String?

    @Option(name: .customLong("kafka-property"), help: ArgumentHelp(
        "A librdkafka property, passed through verbatim; repeatable (e.g. linger.ms=5). [SPOUT_KAFKA_PROPERTIES: name=value items separated by newlines or spaces]",
        valueName: "name=value"))
    var kafkaPropertyFlags: [String] = []

    @Option(name: .customLong("redis-maxlen"), help: ArgumentHelp("Trim each stream with XADD MAXLEN ~ N. [SPOUT_REDIS_MAXLEN]", valueName: "n"))
    var redisMaxLengthFlag: Int?

    @Option(name: .customLong("redis-ids"), help: ArgumentHelp(
        "Stream entry ids: server (*, time-based) or lsn (from the commit LSN: re-published events are rejected, exactly once) (default: server). [SPOUT_REDIS_IDS]",
        valueName: "server|lsn"))
    var redisIDsFlag: String?

    @Option(name: .customLong("nats-create-stream"), help: ArgumentHelp(
        "Create a JetStream stream of this name covering the topics when no stream does. [SPOUT_NATS_CREATE_STREAM]", valueName: "name"))
    var natsCreateStreamFlag: String?

    func makeSink(maxInFlightEvents: Int, log: Log) throws -> Sink {
        var options = SinkOptions()
        options.maxInFlightEvents = maxInFlightEvents
        let fromEnvironment = ProcessInfo.processInfo.environment["SPOUT_KAFKA_PROPERTIES"]?
            .split(whereSeparator: { $0 == "\n" || $0 == " " }).map(String.init) ?? []
        // Flags, else the environment, else the config file's `kafka-property` lines.
        let properties = !kafkaPropertyFlags.isEmpty ? kafkaPropertyFlags
            : !fromEnvironment.isEmpty ? fromEnvironment : Environment.configValues("kafka-property")
        for property in properties {
            guard let equals = property.firstIndex(of: "="), equals != property.startIndex else {
                throw SpoutError.invalidOption("--kafka-property \(property) is not name=value (e.g. --kafka-property linger.ms=5)")
            }
            options.kafkaProperties.append((String(property[..<equals]), String(property[property.index(after: equals)...])))
        }
        if let text = redisMaxLengthFlag.map(String.init) ?? Environment.value("redis-maxlen") {
            guard let length = Int(text), length > 0 else {
                throw SpoutError.invalidOption("--redis-maxlen \(text) must be a positive number")
            }
            options.redisMaxLength = length
        }
        if let text = redisIDsFlag ?? Environment.value("redis-ids") {
            guard let ids = SinkOptions.RedisIDs(rawValue: text) else {
                throw SpoutError.invalidOption("--redis-ids \(text) is not server or lsn")
            }
            options.redisIDs = ids
        }
        options.natsCreateStream = natsCreateStreamFlag ?? Environment.value("nats-create-stream")
        return try SinkURL.makeSink(sinkFlag ?? Environment.value("sink") ?? "stdout://", options: options, log: log)
    }
}
