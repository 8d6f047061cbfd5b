import ArgumentParser
import Foundation
import SpoutCore

/// An option the command line left out: `SPOUT_<NAME>` from the environment, else the
/// config file (flags win over both).
enum Environment {
    static func value(_ option: String) -> String? {
        let name = "SPOUT_" + option.uppercased().replacingOccurrences(of: "-", with: "_")
        if let value = ProcessInfo.processInfo.environment[name], !value.isEmpty { return value }
        return (try? ConfigFile.loaded.get())??.value(option)
    }

    /// Every value of a repeatable option in the config file.
    static func configValues(_ option: String) -> [String] {
        (try? ConfigFile.loaded.get())??.all(option) ?? []
    }

    static func flag(_ option: String) throws -> Bool {
        guard let value = value(option) else { return false }
        switch value.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default:
            throw SpoutError.invalidOption("SPOUT_\(option.uppercased().replacingOccurrences(of: "-", with: "_"))=\(value) is not a boolean: use true or false")
        }
    }
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

    var databaseURL: String { databaseURLFlag ?? Environment.value("database-url") ?? "postgresql:///postgres" }
    var publication: String { publicationFlag ?? Environment.value("publication") ?? "spout" }
    var slot: String { slotFlag ?? Environment.value("slot") ?? "spout" }

    func table() throws -> TableName {
        do { return try TableName(parsing: tableFlag ?? Environment.value("table") ?? "public.outbox") } catch {
            throw SpoutError.invalidOption(error.description)
        }
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
        columns.id = idColumn ?? Environment.value("id-column") ?? columns.id
        columns.aggregateType = aggregateTypeColumn ?? Environment.value("aggregate-type-column") ?? columns.aggregateType
        columns.aggregateID = aggregateIDColumn ?? Environment.value("aggregate-id-column") ?? columns.aggregateID
        columns.eventType = eventTypeColumn ?? Environment.value("event-type-column") ?? columns.eventType
        columns.payload = payloadColumn ?? Environment.value("payload-column") ?? columns.payload
        columns.headers = headersColumn ?? Environment.value("headers-column") ?? columns.headers
        let template: TopicTemplate
        do {
            template = try TopicTemplate(topicFlag ?? Environment.value("topic") ?? "outbox.event.{aggregate_type}")
        } catch {
            throw SpoutError.invalidOption(error.description)
        }
        return OutboxMapping(table: table, columns: columns, topic: template,
                             messagePrefix: messagePrefix ?? Environment.value("message-prefix") ?? "outbox")
    }
}

struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: ArgumentHelp("debug, info, warning or error (default: info). [SPOUT_LOG_LEVEL]", valueName: "level"))
    var levelFlag: String?

    func log() throws -> Log {
        let text = levelFlag ?? Environment.value("log-level") ?? "info"
        guard let level = Log.Level.allCases.first(where: { "\($0)" == text.lowercased() }) else {
            throw SpoutError.invalidOption("--log-level \(text) is not a level: use debug, info, warning or error")
        }
        return Log(level: level)
    }
}

func parseLSN(_ text: String?, option: String) throws -> LSN? {
    guard let text else { return nil }
    guard let lsn = LSN(text) else {
        throw SpoutError.invalidOption("\(option) \(text) is not an LSN: write it as PostgreSQL prints it, e.g. 0/16B3748")
    }
    return lsn
}
