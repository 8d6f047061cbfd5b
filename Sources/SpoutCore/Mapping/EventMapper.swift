/// Turns outbox rows and outbox logical messages into events. Column positions are resolved
/// once per Relation message, not per row.
public struct EventMapper: Sendable {
    public let mapping: OutboxMapping

    /// Where the outbox columns sit in a row of the current outbox relation.
    struct RowLayout: Sendable {
        var id: Int
        var payload: Int
        var payloadFormat: OutboxEvent.PayloadFormat
        var aggregateID: Int?
        var eventType: Int?
        var headers: Int?
        var topicColumns: [String: Int]
        var routeColumns: [String: Int] = [:] // issue 14: several sinks
        /// Every column's name, in row order (a dead letter shows the row by them).
        var columnNames: [String] = []
    }

    private var layouts: [UInt32: RowLayout] = [:]
    /// The outbox table's OID when Spout started: a Relation with this OID is the outbox
    /// under whatever name (a rename is the same table; the WAL's Relation carries the new name).
    public var outboxOID: UInt32?
    /// `schema.name` of relations that are not the outbox, for errors about their rows.
    private var otherRelations: [UInt32: String] = [:]

    public init(mapping: OutboxMapping, outboxOID: UInt32? = nil) {
        self.mapping = mapping
        self.outboxOID = outboxOID
    }

    /// PostgreSQL type oids (`pg_type.dat`).
    enum TypeOID {
        static let bytea: UInt32 = 17
        static let json: UInt32 = 114
        static let jsonb: UInt32 = 3802
    }

    /// Records a Relation message. Returns true when it is the outbox table: its configured
    /// name, or the OID the outbox had at startup under another name; throws when the outbox
    /// table lacks a column the mapping needs.
    @discardableResult
    public mutating func register(_ relation: PgOutputMessage.Relation) throws(MappingError) -> Bool {
        let schema = relation.namespace.isEmpty ? "pg_catalog" : relation.namespace
        guard (schema == mapping.table.schema && relation.name == mapping.table.name) || relation.oid == outboxOID else {
            layouts[relation.oid] = nil
            otherRelations[relation.oid] = "\(schema).\(relation.name)"
            return false
        }
        layouts[relation.oid] = try layout(columns: relation.columns.map { ($0.name, $0.typeOID) })
        otherRelations[relation.oid] = nil
        return true
    }

    /// Where the mapping's columns sit among `columns` (name and type OID, in row order).
    func layout(columns: [(name: String, typeOID: UInt32)]) throws(MappingError) -> RowLayout {
        var positions: [String: (index: Int, type: UInt32)] = [:]
        for (index, column) in columns.enumerated() { positions[column.name] = (index, column.typeOID) }
        try checkColumns(Set(positions.keys))
        let names = mapping.columns
        let id = positions[names.id]?.index ?? 0
        let payloadType = positions[names.payload]?.type ?? 0
        var topicColumns: [String: Int] = [:]
        for column in mapping.topic.columns { topicColumns[column] = positions[column]?.index }
        let format: OutboxEvent.PayloadFormat = switch payloadType {
        case TypeOID.json, TypeOID.jsonb: .json
        case TypeOID.bytea: .binary
        default: .text
        }
        var layout = RowLayout(
            id: id, payload: positions[names.payload]?.index ?? 0, payloadFormat: format,
            aggregateID: positions[names.aggregateID]?.index, eventType: positions[names.eventType]?.index,
            headers: positions[names.headers]?.index, topicColumns: topicColumns, columnNames: columns.map(\.name))
        for column in mapping.route?.columns ?? [] { layout.routeColumns[column] = positions[column]?.index } // issue 14: several sinks
        return layout
    }

    /// Throws when a table with these columns lacks one the mapping needs: the id, the
    /// payload, every topic placeholder. Spout checks the table at startup with it, and
    /// every Relation message.
    public func checkColumns(_ columns: Set<String>) throws(MappingError) {
        func required(_ name: String, _ flag: String) throws(MappingError) {
            guard columns.contains(name) else {
                throw .missingColumn(table: mapping.table.description, column: name,
                                     hint: "name the right column with \(flag), or check that the publication's table is the outbox")
            }
        }
        try required(mapping.columns.id, "--id-column")
        try required(mapping.columns.payload, "--payload-column")
        for column in mapping.topic.columns { try required(column, "--topic (placeholders name columns)") }
    }

    /// `schema.name` of a relation that is not the outbox (from its Relation message).
    public func otherRelationName(_ relationOID: UInt32) -> String? { otherRelations[relationOID] }

    public func isOutbox(relationOID: UInt32) -> Bool { layouts[relationOID] != nil }

    /// The id of an outbox row, for error messages about a row that cannot be mapped.
    public func rowID(relationOID: UInt32, row: TupleData) -> String? {
        layouts[relationOID].flatMap { row.string(at: $0.id) }
    }

    /// Every column of an outbox row by name, as text (nil: SQL NULL or an unchanged TOAST
    /// value), for the dead letter of a row that cannot be mapped.
    public func rowColumns(relationOID: UInt32, row: TupleData) -> [(name: String, value: String?)] {
        guard let layout = layouts[relationOID] else { return [] }
        return row.columns.indices.map { index in
            (index < layout.columnNames.count ? layout.columnNames[index] : "column \(index + 1)", row.string(at: index))
        }
    }

    /// Maps an inserted row; `nil` when the row is not in the outbox table. The event's
    /// `committedAt` is the transaction's; its `lsn` stays zero until the Commit (the spool sets it).
    public func event(relationOID: UInt32, row: TupleData, commit: PgOutputMessage.Begin) throws(MappingError) -> OutboxEvent? {
        guard let layout = layouts[relationOID] else { return nil }
        return try event(layout: layout, row: row, committedAt: commit.commitTime, lsn: .zero, source: .stream)
    }

    /// The columns of a row read from the table with SQL (a snapshot or a backfill), where
    /// the mapping finds its columns; built once per read, like a Relation message's.
    public struct TableLayout: Sendable {
        let row: RowLayout
    }

    /// The layout of rows whose columns are `columns` (name and type OID, in row order), as
    /// `SELECT` returns them; throws when one the mapping needs is missing.
    public func tableLayout(columns: [(name: String, typeOID: UInt32)]) throws(MappingError) -> TableLayout {
        TableLayout(row: try layout(columns: columns))
    }

    /// Maps a row read from the table with SQL, in text format: the same mapping as an
    /// inserted row's (PostgreSQL's text output is what pgoutput sends), marked with its
    /// `source`. Such a row has no commit of its own: the caller says which LSN and time it carries.
    public func event(tableRow row: TupleData, layout: TableLayout, lsn: LSN, committedAt: PostgresTimestamp,
                      source: OutboxEvent.Source) throws(MappingError) -> OutboxEvent {
        try event(layout: layout.row, row: row, committedAt: committedAt, lsn: lsn, source: source)
    }

    /// The id of a row read from the table, for error messages.
    public func rowID(tableRow row: TupleData, layout: TableLayout) -> String? { row.string(at: layout.row.id) }

    private func event(layout: RowLayout, row: TupleData, committedAt: PostgresTimestamp, lsn: LSN,
                       source: OutboxEvent.Source) throws(MappingError) -> OutboxEvent {
        guard let id = row.string(at: layout.id) else { throw .nullColumn(column: mapping.columns.id) }
        guard let rawPayload = row.bytes(at: layout.payload) else { throw .nullColumn(column: mapping.columns.payload) }
        let payload: [UInt8]
        if layout.payloadFormat == .binary {
            guard let decoded = ByteaText.decode(rawPayload) else { throw .invalidPayload(reason: "bytea text is malformed") }
            payload = decoded
        } else {
            payload = Array(rawPayload)
        }
        let topic = try mapping.topic.render { name in layout.topicColumns[name].flatMap { row.string(at: $0) } }
        var headers: [OutboxEvent.Header] = []
        if let index = layout.headers, let raw = row.bytes(at: index) {
            headers = try Self.headers(fromJSON: raw)
        }
        var event = OutboxEvent(id: id, topic: topic, key: layout.aggregateID.flatMap { row.string(at: $0) },
                                type: layout.eventType.flatMap { row.string(at: $0) }, payload: payload,
                                payloadFormat: layout.payloadFormat, headers: headers,
                                lsn: lsn, committedAt: committedAt, source: source)
        // issue 14: several sinks
        if let route = mapping.route {
            event.route = Self.render(route) { name in
                if let index = layout.routeColumns[name] { return row.string(at: index) }
                return headers.first { $0.name == name }?.value
            }
        }
        return event
    }

    /// Maps a logical message with the outbox prefix: a JSON object with the same fields as an
    /// outbox row. Without an `id`, the message's LSN is its stable id. `committedAt` is its
    /// transaction's commit time (for a non-transactional message, when Spout read it).
    public func event(message: PgOutputMessage.LogicalMessage, committedAt: PostgresTimestamp) throws(MappingError) -> OutboxEvent? {
        guard message.prefix == mapping.messagePrefix else { return nil }
        let members: [(key: String, value: JSONScanner.Value)]
        do {
            members = try JSONScanner.objectMembers(message.content[...])
        } catch {
            throw .invalidMessage(reason: "\(error.reason) at byte \(error.offset)")
        }
        var fields: [String: JSONScanner.Value] = [:]
        for member in members { fields[member.key] = member.value }
        func text(_ name: String) -> String? {
            switch fields[name] {
            case let .string(value): value
            case let .raw(bytes): String(decoding: bytes, as: UTF8.self)
            case .null, nil: nil
            }
        }
        let names = mapping.columns
        let payload: [UInt8]
        switch fields[names.payload] {
        case let .raw(bytes): payload = Array(bytes)
        case let .string(value):
            var encoded: [UInt8] = []
            JSONWriter.appendString(value, to: &encoded)
            payload = encoded
        case .null, nil: throw .nullColumn(column: names.payload)
        }
        let topic = try mapping.topic.render { name in text(name) }
        var headers: [OutboxEvent.Header] = []
        switch fields[names.headers] {
        case let .raw(bytes): headers = try Self.headers(fromJSON: bytes)
        case .string: throw .invalidHeaders(reason: "a string, not an object")
        case .null, nil: break
        }
        var event = OutboxEvent(id: text(names.id) ?? "lsn:\(message.lsn)", topic: topic, key: text(names.aggregateID),
                                type: text(names.eventType), payload: payload, payloadFormat: .json, headers: headers,
                                lsn: .zero, committedAt: committedAt)
        // issue 14: several sinks
        if let route = mapping.route {
            event.route = Self.render(route) { name in fields[name] != nil ? text(name) : headers.first { $0.name == name }?.value }
        }
        return event
    }

    // issue 14: several sinks
    /// `--route` for one event: nil when a placeholder is NULL or empty (`--default-route` applies).
    static func render(_ template: TopicTemplate, _ value: (String) -> String?) -> String? {
        if template.segments.count == 1, case let .column(name) = template.segments[0] {
            guard let text = value(name), !text.isEmpty else { return nil }
            return text
        }
        var route = ""
        for segment in template.segments {
            switch segment {
            case let .literal(text): route += text
            case let .column(name):
                guard let part = value(name), !part.isEmpty else { return nil }
                route += part
            }
        }
        return route
    }

    /// A JSON object of header names to values; string values are taken as they are,
    /// other values as their JSON text.
    static func headers(fromJSON bytes: ArraySlice<UInt8>) throws(MappingError) -> [OutboxEvent.Header] {
        // A jsonb `null` in the headers column means no headers, as a null column does.
        if bytes.elementsEqual("null".utf8) { return [] }
        do {
            return try JSONScanner.objectMembers(bytes).compactMap { member in
                switch member.value {
                case let .string(value): OutboxEvent.Header(name: member.key, value: value)
                case let .raw(raw): OutboxEvent.Header(name: member.key, value: String(decoding: raw, as: UTF8.self))
                case .null: nil
                }
            }
        } catch {
            throw .invalidHeaders(reason: "\(error.reason) at byte \(error.offset)")
        }
    }
}

/// `bytea` in text output: `\x` hex (the default `bytea_output`) or the escape format.
enum ByteaText {
    static func decode(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        if text.count >= 2, text.first == UInt8(ascii: "\\"), text[text.startIndex + 1] == UInt8(ascii: "x") {
            let digits = text.dropFirst(2)
            guard digits.count % 2 == 0 else { return nil }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(digits.count / 2)
            var index = digits.startIndex
            while index < digits.endIndex {
                guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
                bytes.append(high << 4 | low)
                index += 2
            }
            return bytes
        }
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let byte = text[index]
            guard byte == UInt8(ascii: "\\") else { bytes.append(byte); index += 1; continue }
            if index + 1 < text.endIndex, text[index + 1] == UInt8(ascii: "\\") {
                bytes.append(byte)
                index += 2
            } else if index + 3 < text.endIndex {
                var value: UInt16 = 0
                for offset in 1...3 {
                    let digit = text[index + offset]
                    guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(digit) else { return nil }
                    value = value * 8 + UInt16(digit - UInt8(ascii: "0"))
                }
                guard value <= 255 else { return nil }
                bytes.append(UInt8(value))
                index += 4
            } else {
                return nil
            }
        }
        return bytes
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
