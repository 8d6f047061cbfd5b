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
