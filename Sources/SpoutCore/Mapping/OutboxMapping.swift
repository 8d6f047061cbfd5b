/// How outbox rows (and `pg_logical_emit_message` events) become events (DESIGN.md §2).
public struct OutboxMapping: Equatable, Sendable {
    /// Column names, Debezium-compatible by default.
    public struct Columns: Equatable, Sendable {
        public var id = "id"
        public var aggregateType = "aggregate_type"
        public var aggregateID = "aggregate_id"
        public var eventType = "event_type"
        public var payload = "payload"
        public var headers = "headers"
        public init() {}
    }

    public var table: TableName
    public var columns: Columns
    public var topic: TopicTemplate
    /// Transactional logical messages with this prefix are events too.
    public var messagePrefix: String

    public init(table: TableName, columns: Columns = Columns(), topic: TopicTemplate, messagePrefix: String = "outbox") {
        self.table = table
        self.columns = columns
        self.topic = topic
        self.messagePrefix = messagePrefix
    }
}

/// A schema-qualified table name as the user wrote it (`public.outbox`, `outbox`).
public struct TableName: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var schema: String
    public var name: String

    public init(schema: String, name: String) {
        self.schema = schema
        self.name = name
    }

    /// Parses `schema.table` or `table` (schema `public`); double quotes keep dots and case.
    public init(parsing text: String) throws(MappingError) {
        var parts: [String] = []
        var current = ""
        var quoted = false
        var iterator = Array(text).makeIterator()
        var previousWasQuote = false
        while let character = iterator.next() {
            if character == "\"" {
                // `""` inside quotes is a quote: the first one closed the quotes, this one reopens them.
                if !quoted, previousWasQuote { current.append("\""); quoted = true; previousWasQuote = false; continue }
                quoted.toggle()
                previousWasQuote = !quoted
                continue
            }
            previousWasQuote = false
            if character == ".", !quoted {
                parts.append(current)
                current = ""
            } else if !quoted, ("A"..."Z").contains(character) {
                // Unquoted names fold to lower case, as PostgreSQL folds them (ASCII only, like downcase_identifier).
                current.append(Character(character.lowercased()))
            } else {
                current.append(character)
            }
        }
        parts.append(current)
        guard !quoted, (1...2).contains(parts.count), !parts.contains(where: \.isEmpty) else {
            throw .invalidTableName(text)
        }
        schema = parts.count == 2 ? parts[0] : "public"
        name = parts.last ?? ""
    }

    /// Quoted for SQL: `"public"."outbox"`.
    public var sql: String { "\(SQL.identifier(schema)).\(SQL.identifier(name))" }
    public var description: String { "\(schema).\(name)" }
}

/// Quoting for the few statements Spout builds (identifiers and literals come from flags).
public enum SQL {
    public static func identifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    public static func literal(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
    }
}

public enum MappingError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidTableName(String)
    case invalidTopicTemplate(String, reason: String)
    case missingColumn(table: String, column: String, hint: String)
    case nullColumn(column: String)
    case emptyTopicPart(column: String)
    case invalidHeaders(reason: String)
    case invalidPayload(reason: String)
    case invalidMessage(reason: String)

    public var description: String {
        switch self {
        case let .invalidTableName(text):
            "invalid table name \"\(text)\": use schema.table or table (quote names with dots: \"my.schema\".outbox)"
        case let .invalidTopicTemplate(text, reason):
            "invalid topic template \"\(text)\": \(reason); use text with {column} placeholders, e.g. outbox.event.{aggregate_type}"
        case let .missingColumn(table, column, hint):
            "table \(table) has no column \"\(column)\"; \(hint)"
        case let .nullColumn(column):
            "column \"\(column)\" is null"
        case let .emptyTopicPart(column):
            "topic placeholder {\(column)} is null or empty"
        case let .invalidHeaders(reason):
            "headers are not a JSON object of names to values: \(reason)"
        case let .invalidPayload(reason):
            "payload is not valid: \(reason)"
        case let .invalidMessage(reason):
            "logical message is not a JSON object with the outbox fields: \(reason)"
        }
    }
}
