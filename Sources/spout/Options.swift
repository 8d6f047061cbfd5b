import ArgumentParser
import Configuration
import Foundation
import SpoutCore

/// Every option that can also come from a `SPOUT_*` variable or the config file. One list, so
/// that the names in code, in the environment and in the file cannot drift apart, and a
/// misspelt variable or file key is an error instead of a silently used default.
enum Setting: String, CaseIterable {
    case config
    case databaseURL = "database-url", table, publication, slot
    case topic, idColumn = "id-column", aggregateTypeColumn = "aggregate-type-column", aggregateIDColumn = "aggregate-id-column"
    case eventTypeColumn = "event-type-column", payloadColumn = "payload-column", headersColumn = "headers-column"
    case messagePrefix = "message-prefix"
    case logLevel = "log-level", logFormat = "log-format"
    case sink, kafkaProperty = "kafka-property", redisMaxLength = "redis-maxlen", redisIDs = "redis-ids"
    case natsCreateStream = "nats-create-stream"
    case startLSN = "start-lsn", endLSN = "end-lsn", noCreate = "no-create", recreateLostSlot = "recreate-lost-slot"
    case maxInFlight = "max-in-flight"
    case maxInFlightBytes = "max-in-flight-bytes", spoolMemoryBytes = "spool-memory-bytes"
    case shutdownTimeout = "shutdown-timeout"
    case format
    // issue 12: failover slots (PostgreSQL 17+)
    case failover
    // issue 12: reconnect and standby
    case reconnectTimeout = "reconnect-timeout", noStandby = "no-standby"
    // issue 12: snapshot (a lost slot, snapshot and backfill)
    case onSlotLost = "on-slot-lost", snapshot
    case backfillWhere = "where", backfillAfter = "after", backfillBatch = "batch", backfillRate = "rate"
    // issue 13: metrics and health
    case metricsAddress = "metrics-address", unreadyAfter = "unready-after"
    // issue 13: poison events and retries
    case onPoison = "on-poison", deadLetterTopic = "dead-letter-topic", maxRetries = "max-retries"
    // issue 13: CloudEvents envelope
    case envelope, ceSource = "ce-source"
    // issue 14: AMQP sink
    case amqpExchange = "amqp-exchange", amqpDeclare = "amqp-declare"
    // issue 14: STOMP
    case stompDestination = "stomp-destination"
    // issue 14: HTTP
    case httpBatch = "http-batch", httpTimeout = "http-timeout", httpConcurrency = "http-concurrency"
    case httpSecret = "http-secret", httpHeader = "http-header"
    // issue 14: several sinks
    case route, defaultRoute = "default-route"
    // issue 15: TLS
    case sinkCAFile = "sink-ca-file", sinkCertFile = "sink-cert-file", sinkKeyFile = "sink-key-file"
    case sinkInsecureSkipVerify = "sink-insecure-skip-verify"

    var flag: String { "--" + rawValue }

    var variable: String {
        // One variable carries the whole list of the repeatable --kafka-property.
        self == .kafkaProperty ? "SPOUT_KAFKA_PROPERTIES" : "SPOUT_" + rawValue.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// `--config` names the file, so the file cannot name another.
    var allowedInFile: Bool { self != .config }

    /// The keys a config file may have.
    static let fileKeys = allCases.filter(\.allowedInFile).map(\.rawValue)

    /// The key under which swift-configuration's providers hold it.
    var key: AbsoluteConfigKey { AbsoluteConfigKey([rawValue]) }

    /// `--kafka-property` is given once per property.
    var isRepeatable: Bool { self == .kafkaProperty || self == .httpHeader || self == .sink } // issue 14: --http-header, several sinks (--sink NAME=URL)

    /// Values that may carry a password or token: swift-configuration masks them in its own
    /// reports; spout's messages mask them through `Redaction`.
    var mayHoldSecret: Bool { self == .databaseURL || self == .sink || self == .kafkaProperty || self == .httpSecret || self == .httpHeader }

    /// spout's defaults, the last provider of `Settings`. The numeric limits keep theirs in
    /// `Relay.Options` and `SinkOptions`.
    static let defaults: [AbsoluteConfigKey: ConfigValue] = {
        let columns = OutboxMapping.Columns()
        let values: [Setting: String] = [
            .databaseURL: "postgresql:///postgres", .table: "public.outbox", .publication: "spout", .slot: "spout",
            .topic: "outbox.event.{aggregate_type}", .idColumn: columns.id, .aggregateTypeColumn: columns.aggregateType,
            .aggregateIDColumn: columns.aggregateID, .eventTypeColumn: columns.eventType, .payloadColumn: columns.payload,
            .headersColumn: columns.headers, .messagePrefix: "outbox", .logLevel: "info", .logFormat: "text", .sink: "stdout://",
        ]
        return Dictionary(uniqueKeysWithValues: values.map { ($0.key.key, ConfigValue(.string($0.value), isSecret: false)) })
    }()

    /// Variables of the project's own scripts and test suite (scripts/pg-start, scripts/test),
    /// which a shell that runs spout may well have exported; spout reads none of them.
    static func isToolingVariable(_ name: String) -> Bool {
        name.hasPrefix("SPOUT_TEST_") || name.hasPrefix("SPOUT_PG_") || name == "SPOUT_BIN" || name == "SPOUT_KAFKA_MOCK_BIN"
    }

    /// The valid name nearest to a misspelt one, when it is near enough to be meant.
    static func suggestion(for name: String, among candidates: [String]) -> String? {
        let scored = candidates.map { ($0, editDistance(name.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, name.count / 3) else { return nil }
        return best.0
    }

    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1] + Array(repeating: 0, count: b.count)
            for (j, y) in b.enumerated() {
                current[j + 1] = min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

/// The numeric options' ranges: checked at startup, shown in --help, and small enough that
/// no arithmetic on them can overflow (the spool doubles its limit, the relay adds sizes).
enum Limits {
    static let maxInFlight = 1...10_000_000
    static let maxInFlightBytes = 1...(1 << 40)
    static let spoolMemoryBytes = (1 << 16)...(1 << 40)
    static let redisMaxLength = 1...Int(Int64.max)
    static let shutdownTimeoutSeconds = 0.0...86_400.0
    // issue 12: reconnect
    static let reconnectTimeoutSeconds = 0.0...604_800.0
    // issue 12: snapshot (backfill)
    static let backfillBatch = 1...100_000
    static let backfillRate = 1...10_000_000
    // issue 13: metrics and health
    static let unreadyAfterSeconds = 0.0...86_400.0
    // issue 13: poison events and retries
    static let maxRetries = 0...1_000_000
    // issue 14: HTTP
    static let httpBatch = 1...10_000
    static let httpConcurrency = 1...256
    static let httpTimeoutSeconds = 1.0...3600.0
}

/// A value and where it came from, so that an error can say which flag, variable or line to fix.
struct Sourced {
    enum Origin {
        case flag
        case environment
        case file(path: String, line: Int)
    }

    var setting: Setting
    var value: String
    var origin: Origin

    /// `--max-in-flight 0`, `SPOUT_MAX_IN_FLIGHT=0` or `max-in-flight = 0 (spout.conf:3)`;
    /// `value` replaces the value when it must not be shown as given.
    func display(value shown: String? = nil) -> String {
        let text = shown ?? value
        switch origin {
        case .flag: return "\(setting.flag) \(text)"
        case .environment: return "\(setting.variable)=\(text)"
        case let .file(path, line): return "\(setting.rawValue) = \(text) (\(path):\(line))"
        }
    }

    /// Where to fix it: `--sink`, `SPOUT_SINK` or `sink in spout.conf:3`.
    var label: String {
        switch origin {
        case .flag: return setting.flag
        case .environment: return setting.variable
        case let .file(path, line): return "\(setting.rawValue) in \(path):\(line)"
        }
    }

    func invalid(_ problem: String) -> SpoutError { .invalidOption("\(display()) \(problem)") }

    /// For a value that must not be shown (it may hold a secret): names only where it was set.
    func invalidWithoutValue(_ problem: String) -> SpoutError { .invalidOption("\(label): \(problem)") }

    /// Errors from SpoutCore name the flag (`--sink …`): point them at where the value was set.
    func relabel(_ error: SpoutError) -> SpoutError {
        guard case let .invalidOption(message) = error, message.hasPrefix(setting.flag) else { return error }
        let rest = message.dropFirst(setting.flag.count)
        switch origin {
        case .flag: return error
        case .environment where rest.hasPrefix(" "): return .invalidOption(setting.variable + "=" + rest.dropFirst())
        case .environment, .file: return .invalidOption(label + (rest.hasPrefix(" ") ? ":" : "") + rest)
        }
    }

    func integer(in range: ClosedRange<Int>) throws(SpoutError) -> Int {
        let bounds = "\(range.lowerBound) to \(range.upperBound)"
        guard let number = Int(value.trimmingCharacters(in: .whitespaces)) else {
            throw invalid("is not a whole number: use \(bounds)")
        }
        guard range.contains(number) else { throw invalid("is out of range: use \(bounds)") }
        return number
    }

    /// Seconds, fractions allowed, within `range` (`--shutdown-timeout`, `--reconnect-timeout`, `--unready-after`).
    func seconds(in range: ClosedRange<Double>) throws(SpoutError) -> Double {
        let bounds = "\(Int(range.lowerBound)) to \(Int(range.upperBound)) seconds"
        guard let seconds = Double(value.trimmingCharacters(in: .whitespaces)), seconds.isFinite else {
            throw invalid("is not a number of seconds: use \(bounds)")
        }
        guard range.contains(seconds) else { throw invalid("is out of range: use \(bounds)") }
        return seconds
    }

    func boolean() throws(SpoutError) -> Bool {
        switch value.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw invalid("is not a boolean: use true or false")
        }
    }
}

/// Where to find the database and the outbox: shared by every command.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: ArgumentHelp(
        "A YAML config file of `option-name: value` lines (flags and SPOUT_* variables win over it). [SPOUT_CONFIG]", valueName: "file"))
    var configFile: String?

    @Option(name: .customLong("database-url"), help: ArgumentHelp(
        "libpq URL or key/value DSN (default: postgresql:///postgres, libpq's PG* variables apply). [SPOUT_DATABASE_URL]",
        valueName: "url"))
    var databaseURLFlag: String?

    @Option(name: .customLong("table"), help: ArgumentHelp("The outbox table, schema.table (default: public.outbox). [SPOUT_TABLE]", valueName: "table"))
    var tableFlag: String?

    @Option(name: .customLong("publication"), help: ArgumentHelp("Publication to stream (default: spout). [SPOUT_PUBLICATION]", valueName: "name"))
    var publicationFlag: String?

    @Option(name: .customLong("slot"), help: ArgumentHelp("Logical replication slot (default: spout). [SPOUT_SLOT]", valueName: "name"))
    var slotFlag: String?

    var flags: Settings.Flags {
        Settings.Flags(flags: [.config: configFile, .databaseURL: databaseURLFlag, .table: tableFlag, .publication: publicationFlag,
                               .slot: slotFlag])
    }

    /// Connects to the database named by --database-url / SPOUT_DATABASE_URL / the file; an
    /// unusable URL is reported against where it was set (always redacted).
    func connect(_ settings: Settings, replication: Bool = false, applicationName: String = "spout") throws -> PostgresConnection {
        let url = settings.given(.databaseURL)
        do {
            return try PostgresConnection(settings.text(.databaseURL), replication: replication, applicationName: applicationName)
        } catch {
            throw Self.naming(url, in: error)
        }
    }

    private static func naming(_ url: Sourced?, in error: SpoutError) -> SpoutError {
        guard let url, case let .invalidOption(message) = error, message.hasPrefix(PostgresConnection.urlErrorPrefix) else { return error }
        return .invalidOption(url.label + ": " + message)
    }

    static func table(_ settings: Settings) throws -> TableName {
        let table = settings.lookup(.table) ?? Sourced(setting: .table, value: "public.outbox", origin: .flag)
        do { return try TableName(parsing: table.value) } catch {
            throw SpoutError.invalidOption("\(table.label): \(error.description)")
        }
    }

    func setup(_ settings: Settings) throws -> ReplicationSetup {
        ReplicationSetup(table: try Self.table(settings), publication: settings.text(.publication), slot: settings.text(.slot))
    }
}

/// How rows become events.
struct MappingOptions: ParsableArguments {
    @Option(name: .customLong("topic"), help: ArgumentHelp(
        "Topic template over columns (default: outbox.event.{aggregate_type}). [SPOUT_TOPIC]", valueName: "template"))
    var topicFlag: String?

    @Option(name: .customLong("id-column"), help: ArgumentHelp("Event id column (default: id). [SPOUT_ID_COLUMN]", valueName: "column"))
    var idColumn: String?
    @Option(name: .customLong("aggregate-type-column"), help: ArgumentHelp("(default: aggregate_type) [SPOUT_AGGREGATE_TYPE_COLUMN]", valueName: "column"))
    var aggregateTypeColumn: String?
    @Option(name: .customLong("aggregate-id-column"), help: ArgumentHelp("Message key column (default: aggregate_id). [SPOUT_AGGREGATE_ID_COLUMN]", valueName: "column"))
    var aggregateIDColumn: String?
    @Option(name: .customLong("event-type-column"), help: ArgumentHelp("(default: event_type) [SPOUT_EVENT_TYPE_COLUMN]", valueName: "column"))
    var eventTypeColumn: String?
    @Option(name: .customLong("payload-column"), help: ArgumentHelp("(default: payload) [SPOUT_PAYLOAD_COLUMN]", valueName: "column"))
    var payloadColumn: String?
    @Option(name: .customLong("headers-column"), help: ArgumentHelp("(default: headers) [SPOUT_HEADERS_COLUMN]", valueName: "column"))
    var headersColumn: String?
    @Option(name: .customLong("message-prefix"), help: ArgumentHelp(
        "Transactional pg_logical_emit_message prefix whose JSON content is an event (default: outbox). [SPOUT_MESSAGE_PREFIX]", valueName: "prefix"))
    var messagePrefix: String?

    var flags: Settings.Flags {
        Settings.Flags(flags: [.topic: topicFlag, .idColumn: idColumn, .aggregateTypeColumn: aggregateTypeColumn,
                               .aggregateIDColumn: aggregateIDColumn, .eventTypeColumn: eventTypeColumn, .payloadColumn: payloadColumn,
                               .headersColumn: headersColumn, .messagePrefix: messagePrefix])
    }

    /// The mapping's columns (id, payload, topic placeholders) against the table's, at startup
    /// rather than at the first event.
    func check(_ mapper: EventMapper, against table: ReplicationSetup.TableInfo) throws {
        do { try mapper.checkColumns(table.columns) } catch { throw SpoutError.invalidOption(error.description) }
    }

    static func mapping(_ settings: Settings, table: TableName) throws -> OutboxMapping {
        var columns = OutboxMapping.Columns()
        columns.id = settings.text(.idColumn)
        columns.aggregateType = settings.text(.aggregateTypeColumn)
        columns.aggregateID = settings.text(.aggregateIDColumn)
        columns.eventType = settings.text(.eventTypeColumn)
        columns.payload = settings.text(.payloadColumn)
        columns.headers = settings.text(.headersColumn)
        let topic = settings.lookup(.topic) ?? Sourced(setting: .topic, value: "outbox.event.{aggregate_type}", origin: .flag)
        let template: TopicTemplate
        do {
            template = try TopicTemplate(topic.value)
        } catch {
            throw SpoutError.invalidOption("\(topic.label): \(error.description)")
        }
        var mapping = OutboxMapping(table: table, columns: columns, topic: template, messagePrefix: settings.text(.messagePrefix))
        mapping.route = try SinkOptionGroup.route(settings) // issue 14: several sinks
        return mapping
    }
}

struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: ArgumentHelp("debug, info, warning or error (default: info). [SPOUT_LOG_LEVEL]", valueName: "level"))
    var levelFlag: String?

    @Option(name: .customLong("log-format"), help: ArgumentHelp(
        "text (spout: … lines) or json (one object per line: time, level, message, slot, lsn…) (default: text). [SPOUT_LOG_FORMAT]",
        valueName: "format"))
    var formatFlag: String?

    var flags: Settings.Flags { Settings.Flags(flags: [.logLevel: levelFlag, .logFormat: formatFlag]) }

    /// The log the options ask for; its format becomes the process's (`Log.defaultFormat`), so
    /// that every later line, an error's too, has the same shape.
    static func log(_ settings: Settings) throws -> Log {
        if let text = settings.lookup(.logFormat) {
            guard let format = Log.Format(rawValue: text.value.lowercased()) else { throw text.invalid("is not a log format: use text or json") }
            Log.defaultFormat = format
        }
        guard let text = settings.lookup(.logLevel) else { return Log(level: .info) }
        guard let level = Log.Level.allCases.first(where: { "\($0)" == text.value.lowercased() }) else {
            throw text.invalid("is not a level: use debug, info, warning or error")
        }
        return Log(level: level)
    }
}

extension Settings.Flags {
    /// The options given, by setting; nil (not given) options left out.
    init(flags: [Setting: String?], lists: [Setting: [String]] = [:], switches: [Setting: Bool] = [:]) {
        self.init()
        for case let (setting, value?) in flags { self[setting] = [value] }
        for (setting, values) in lists where !values.isEmpty { self[setting] = values }
        for (setting, on) in switches where on { self[setting] = ["true"] }
    }

    /// Several groups' flags in one.
    static func + (lhs: Self, rhs: Self) -> Self { lhs.merging(rhs) { _, new in new } }
}

extension Settings {
    /// A value that has a default: never empty-handed.
    func text(_ setting: Setting) -> String { value(setting) ?? "" }
}

func parseLSN(_ text: Sourced?) throws -> LSN? {
    guard let text else { return nil }
    guard let lsn = LSN(text.value) else {
        throw text.invalid("is not an LSN: write it as PostgreSQL prints it, e.g. 0/16B3748")
    }
    return lsn
}
