import ArgumentParser
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
    case logLevel = "log-level"
    case sink, kafkaProperty = "kafka-property", redisMaxLength = "redis-maxlen", redisIDs = "redis-ids"
    case natsCreateStream = "nats-create-stream"
    case startLSN = "start-lsn", endLSN = "end-lsn", noCreate = "no-create", recreateLostSlot = "recreate-lost-slot"
    case maxInFlight = "max-in-flight"
    case maxInFlightBytes = "max-in-flight-bytes", spoolMemoryBytes = "spool-memory-bytes"
    case shutdownTimeout = "shutdown-timeout"
    case format

    var flag: String { "--" + rawValue }

    var variable: String {
        // One variable carries the whole list of the repeatable --kafka-property.
        self == .kafkaProperty ? "SPOUT_KAFKA_PROPERTIES" : "SPOUT_" + rawValue.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// `--config` names the file, so the file cannot name another.
    var allowedInFile: Bool { self != .config }

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

    func boolean() throws(SpoutError) -> Bool {
        switch value.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw invalid("is not a boolean: use true or false")
        }
    }
}

/// An option the command line left out: `SPOUT_<NAME>` from the environment, else the
/// config file (flags win over both).
enum Environment {
    static func lookup(_ setting: Setting, flag: String? = nil) -> Sourced? {
        if let flag { return Sourced(setting: setting, value: flag, origin: .flag) }
        if let value = ProcessInfo.processInfo.environment[setting.variable], !value.isEmpty {
            return Sourced(setting: setting, value: value, origin: .environment)
        }
        guard let file = try? ConfigFile.loaded.get(), let entry = file.entries(setting.rawValue).last else { return nil }
        return Sourced(setting: setting, value: entry.value, origin: .file(path: file.path, line: entry.line))
    }

    static func value(_ setting: Setting, flag: String? = nil) -> String? { lookup(setting, flag: flag)?.value }

    /// Every value of a repeatable option in the config file.
    static func configValues(_ setting: Setting) -> [Sourced] {
        guard let file = try? ConfigFile.loaded.get() else { return [] }
        return file.entries(setting.rawValue).map { Sourced(setting: setting, value: $0.value, origin: .file(path: file.path, line: $0.line)) }
    }

    /// A flag that is on when given, else from the environment or the file.
    static func flag(_ setting: Setting, given: Bool) throws(SpoutError) -> Bool {
        if given { return true }
        return try lookup(setting)?.boolean() ?? false
    }

    /// A numeric option checked against its range, from wherever it was set.
    static func integer(_ setting: Setting, flag: String?, in range: ClosedRange<Int>) throws(SpoutError) -> Int? {
        try lookup(setting, flag: flag)?.integer(in: range)
    }

    /// Unknown `SPOUT_*` variables are mistakes (`SPOUT_SLOTT`) that would otherwise leave an
    /// option at its default; the project's tooling variables are not spout's and pass.
    static func checkVariables() throws(SpoutError) {
        let known = Setting.allCases.map(\.variable)
        for name in ProcessInfo.processInfo.environment.keys.sorted() where name.hasPrefix("SPOUT_") {
            guard !known.contains(name), !Setting.isToolingVariable(name) else { continue }
            let hint = Setting.suggestion(for: name, among: known).map { ": did you mean \($0)?" }
                ?? ": see spout help for the options (SPOUT_ + the option name, dashes as underscores)"
            throw .invalidOption("unknown environment variable \(name)\(hint)")
        }
    }

    /// Every string on the command line, in `SPOUT_*` variables or in the config file that is
    /// a password, token or secret property value: no message may contain one.
    static let secrets: [String] = {
        var texts = CommandLine.arguments.flatMap { argument -> [String] in
            guard argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") else { return [argument] }
            return [argument, String(argument[argument.index(after: equals)...])]
        }
        texts += ProcessInfo.processInfo.environment.filter { $0.key.hasPrefix("SPOUT_") }.values
        if let file = try? ConfigFile.loaded.get() { texts += file.allValues }
        return texts.flatMap(Redaction.secrets(in:))
    }()
}

/// Where to find the database and the outbox: shared by every command.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: ArgumentHelp(
        "A config file of `option-name = value` lines (flags and SPOUT_* variables win over it). [SPOUT_CONFIG]", valueName: "file"))
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

    var databaseURL: String { Environment.value(.databaseURL, flag: databaseURLFlag) ?? "postgresql:///postgres" }
    var publication: String { Environment.value(.publication, flag: publicationFlag) ?? "spout" }
    var slot: String { Environment.value(.slot, flag: slotFlag) ?? "spout" }

    func table() throws -> TableName {
        guard let table = Environment.lookup(.table, flag: tableFlag) else { return try TableName(parsing: "public.outbox") }
        do { return try TableName(parsing: table.value) } catch {
            throw SpoutError.invalidOption("\(table.label): \(error.description)")
        }
    }

    /// Connects to the database named by --database-url / SPOUT_DATABASE_URL / the file; an
    /// unusable URL is reported against where it was set (always redacted).
    func connect(replication: Bool = false, applicationName: String = "spout") throws -> PostgresConnection {
        let url = Environment.lookup(.databaseURL, flag: databaseURLFlag)
        do {
            return try PostgresConnection(url?.value ?? "postgresql:///postgres", replication: replication, applicationName: applicationName)
        } catch {
            throw Self.naming(url, in: error)
        }
    }

    private static func naming(_ url: Sourced?, in error: SpoutError) -> SpoutError {
        guard let url, case let .invalidOption(message) = error, message.hasPrefix(PostgresConnection.urlErrorPrefix) else { return error }
        return .invalidOption(url.label + ": " + message)
    }

    func setup() throws -> ReplicationSetup {
        ReplicationSetup(table: try table(), publication: publication, slot: slot)
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

    /// The mapping's columns (id, payload, topic placeholders) against the table's, at startup
    /// rather than at the first event.
    func check(_ mapper: EventMapper, against table: ReplicationSetup.TableInfo) throws {
        do { try mapper.checkColumns(table.columns) } catch { throw SpoutError.invalidOption(error.description) }
    }

    func mapping(table: TableName) throws -> OutboxMapping {
        var columns = OutboxMapping.Columns()
        columns.id = Environment.value(.idColumn, flag: idColumn) ?? columns.id
        columns.aggregateType = Environment.value(.aggregateTypeColumn, flag: aggregateTypeColumn) ?? columns.aggregateType
        columns.aggregateID = Environment.value(.aggregateIDColumn, flag: aggregateIDColumn) ?? columns.aggregateID
        columns.eventType = Environment.value(.eventTypeColumn, flag: eventTypeColumn) ?? columns.eventType
        columns.payload = Environment.value(.payloadColumn, flag: payloadColumn) ?? columns.payload
        columns.headers = Environment.value(.headersColumn, flag: headersColumn) ?? columns.headers
        let topic = Environment.lookup(.topic, flag: topicFlag)
        let template: TopicTemplate
        do {
            template = try TopicTemplate(topic?.value ?? "outbox.event.{aggregate_type}")
        } catch {
            throw SpoutError.invalidOption("\(topic?.label ?? Setting.topic.flag): \(error.description)")
        }
        return OutboxMapping(table: table, columns: columns, topic: template,
                             messagePrefix: Environment.value(.messagePrefix, flag: messagePrefix) ?? "outbox")
    }
}

struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: ArgumentHelp("debug, info, warning or error (default: info). [SPOUT_LOG_LEVEL]", valueName: "level"))
    var levelFlag: String?

    func log() throws -> Log {
        guard let text = Environment.lookup(.logLevel, flag: levelFlag) else { return Log(level: .info) }
        guard let level = Log.Level.allCases.first(where: { "\($0)" == text.value.lowercased() }) else {
            throw text.invalid("is not a level: use debug, info, warning or error")
        }
        return Log(level: level)
    }
}

func parseLSN(_ text: Sourced?) throws -> LSN? {
    guard let text else { return nil }
    guard let lsn = LSN(text.value) else {
        throw text.invalid("is not an LSN: write it as PostgreSQL prints it, e.g. 0/16B3748")
    }
    return lsn
}
