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

    @Option(name: .customLong("redis-maxlen"), parsing: .unconditional, help: ArgumentHelp(
        "Trim each stream with XADD MAXLEN ~ N; N from \(Limits.redisMaxLength.lowerBound) to \(Limits.redisMaxLength.upperBound). [SPOUT_REDIS_MAXLEN]",
        valueName: "n"))
    var redisMaxLengthFlag: String?

    @Option(name: .customLong("redis-ids"), help: ArgumentHelp(
        "Stream entry ids: server (*, time-based) or lsn (from the commit LSN: re-published events are rejected, exactly once) (default: server). [SPOUT_REDIS_IDS]",
        valueName: "server|lsn"))
    var redisIDsFlag: String?

    @Option(name: .customLong("nats-create-stream"), help: ArgumentHelp(
        "Create a JetStream stream of this name covering the topics when no stream does. [SPOUT_NATS_CREATE_STREAM]", valueName: "name"))
    var natsCreateStreamFlag: String?

    /// The options alone, checked: run validates them all before it connects anywhere.
    func options(maxInFlightEvents: Int) throws -> SinkOptions {
        var options = SinkOptions()
        options.maxInFlightEvents = maxInFlightEvents
        for property in kafkaProperties {
            // Never echo the item: `sasl.password:secret` (":" for "=") is all secret after the name.
            guard let equals = property.value.firstIndex(of: "="), equals != property.value.startIndex else {
                // librdkafka names are lower case: a glued-on value (`sasl.passwordHunter2`) is cut off,
                // and a secret-looking name is not shown at all.
                let name = property.value.prefix { ($0.isLowercase || $0.isNumber || "._-".contains($0)) && $0.isASCII }
                let shown = name.isEmpty || Redaction.isSecretName(String(name)) ? "a secret or malformed property" : "\"\(name)…\""
                throw property.invalidWithoutValue("\(shown) is not name=value (e.g. linger.ms=5)")
            }
            options.kafkaProperties.append((String(property.value[..<equals]), String(property.value[property.value.index(after: equals)...])))
        }
        options.redisMaxLength = try Environment.integer(.redisMaxLength, flag: redisMaxLengthFlag, in: Limits.redisMaxLength)
        if let text = Environment.lookup(.redisIDs, flag: redisIDsFlag) {
            guard let ids = SinkOptions.RedisIDs(rawValue: text.value) else { throw text.invalid("is not server or lsn") }
            options.redisIDs = ids
        }
        options.natsCreateStream = Environment.value(.natsCreateStream, flag: natsCreateStreamFlag)
        return options
    }

    /// The sink URL in effect (stdout:// by default).
    var url: String { (Environment.lookup(.sink, flag: sinkFlag) ?? Sourced(setting: .sink, value: "stdout://", origin: .flag)).value }

    /// Everything `makeSink` checks, without connecting.
    func validate(maxInFlightEvents: Int) throws {
        let options = try options(maxInFlightEvents: maxInFlightEvents)
        let sink = Environment.lookup(.sink, flag: sinkFlag) ?? Sourced(setting: .sink, value: "stdout://", origin: .flag)
        do { try SinkURL.validate(sink.value, options: options) } catch { throw relabelled(error, sink: sink) }
    }

    func makeSink(maxInFlightEvents: Int, log: Log) throws -> Sink {
        let options = try options(maxInFlightEvents: maxInFlightEvents)
        let sink = Environment.lookup(.sink, flag: sinkFlag) ?? Sourced(setting: .sink, value: "stdout://", origin: .flag)
        do {
            return try SinkURL.makeSink(sink.value, options: options, log: log)
        } catch {
            throw relabelled(error, sink: sink)
        }
    }

    /// Flags, else the environment, else the config file's `kafka-property` lines.
    private var kafkaProperties: [Sourced] {
        if !kafkaPropertyFlags.isEmpty { return kafkaPropertyFlags.map { Sourced(setting: .kafkaProperty, value: $0, origin: .flag) } }
        if let text = ProcessInfo.processInfo.environment[Setting.kafkaProperty.variable] {
            let items = text.split(whereSeparator: { $0 == "\n" || $0 == " " })
            if !items.isEmpty { return items.map { Sourced(setting: .kafkaProperty, value: String($0), origin: .environment) } }
        }
        return Environment.configValues(.kafkaProperty)
    }

    /// The sink's own errors name `--sink` or `--kafka-property NAME`: name the variable or
    /// file line instead when the value came from there.
    private func relabelled(_ error: Error, sink: Sourced) -> Error {
        guard let error = error as? SpoutError, case let .invalidOption(message) = error else { return error }
        if message.hasPrefix(Setting.sink.flag) { return sink.relabel(error) }
        let prefix = Setting.kafkaProperty.flag + " "
        guard message.hasPrefix(prefix) else { return error }
        let name = message.dropFirst(prefix.count).prefix { $0 != ":" && $0 != " " }
        return kafkaProperties.first { $0.value.hasPrefix(name + "=") }?.relabel(error) ?? error
    }
}
