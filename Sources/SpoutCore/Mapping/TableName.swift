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
