import Foundation

/// Reads outbox rows with SQL, for a snapshot or a backfill: which columns the table has (in
/// the order a `SELECT` returns them), its primary key, and rows turned into the same
/// `TupleData` pgoutput sends, so `EventMapper` maps them as it maps inserted rows.
public struct OutboxTableReader: Sendable {
    public struct Column: Sendable {
        public var name: String
        public var typeOID: UInt32
    }

    /// A primary-key column and its type as SQL writes it, for comparisons with a given key.
    public struct KeyColumn: Sendable {
        public var name: String
        public var type: String
    }

    public let table: TableName
    public let columns: [Column]
    /// Empty when the table has none.
    public let primaryKey: [KeyColumn]

    init(table: TableName, columns: [Column], primaryKey: [KeyColumn]) {
        self.table = table
        self.columns = columns
        self.primaryKey = primaryKey
    }

    public init(_ connection: PostgresConnection, table: TableName) throws(SpoutError) {
        self.table = table
        let rows = try connection.query("""
            SELECT a.attname, a.atttypid FROM pg_attribute a
             WHERE a.attrelid = \(SQL.literal(table.sql))::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum
            """, context: "cannot read the columns of \(table)")
        columns = rows.compactMap { row in
            guard row.count == 2, let name = row[0], let oid = row[1].flatMap({ UInt32($0) }) else { return nil }
            return Column(name: name, typeOID: oid)
        }
        guard !columns.isEmpty else { throw .tableMissing(table: table.description) }
        // A partitioned table's primary key is a partitioned index: pg_index has it too.
        primaryKey = try connection.query("""
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
             WHERE i.indrelid = \(SQL.literal(table.sql))::regclass AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)
            """, context: "cannot read the primary key of \(table)").compactMap { row in
            guard row.count == 2, let name = row[0], let type = row[1] else { return nil }
            return KeyColumn(name: name, type: type)
        }
    }

    public func layout(_ mapper: EventMapper) throws(SpoutError) -> EventMapper.TableLayout {
        do {
            return try mapper.tableLayout(columns: columns.map { ($0.name, $0.typeOID) })
        } catch {
            throw .invalidOption(error.description)
        }
    }

    /// Every column, in table order, then the primary key's columns as text (the key a
    /// backfill prints and resumes after).
    public var selectList: String {
        // Aliased: a second output column named like the key would make ORDER BY ambiguous.
        (columns.map { SQL.identifier($0.name) }
            + primaryKey.enumerated().map { "\(SQL.identifier($1.name))::text AS spout_key_\($0)" }).joined(separator: ", ")
    }

    public var orderBy: String {
        primaryKey.isEmpty ? "" : " ORDER BY " + primaryKey.map { SQL.identifier($0.name) }.joined(separator: ", ")
    }

    /// `(k1, k2) > ('v1'::t1, 'v2'::t2)`: rows after `key` in primary-key order.
    public func after(_ key: [String]) -> String {
        let columns = primaryKey.map { SQL.identifier($0.name) }.joined(separator: ", ")
        let values = zip(key, primaryKey).map { "\(SQL.literal($0))::\($1.type)" }.joined(separator: ", ")
        return "ROW(\(columns)) > ROW(\(values))"
    }

    /// One row of a `SELECT selectList` result: the table's columns as pgoutput's tuple
    /// (text format) and the primary key as text.
    public func row(_ values: [String?]) -> (tuple: TupleData, key: [String]) {
        var storage: [UInt8] = []
        var tupleColumns: [TupleData.Column] = []
        tupleColumns.reserveCapacity(columns.count)
        for value in values.prefix(columns.count) {
            guard let value else { tupleColumns.append(.null); continue }
            let start = storage.count
            storage.append(contentsOf: value.utf8)
            tupleColumns.append(.text(start..<storage.count))
        }
        let key = values.dropFirst(columns.count).map { $0 ?? "" }
        return (TupleData(columns: tupleColumns, storage: storage), key)
    }

    /// A key as `keyText` wrote it: nil when a composite key is not a JSON array of that many strings.
    public static func key(_ text: String, columns: Int) -> [String]? {
        if columns == 1 { return [text] }
        guard let array = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [Any], array.count == columns else { return nil }
        let values = array.compactMap { $0 as? String }
        return values.count == columns ? values : nil
    }

    /// How a key is shown and given back with `--after`: the value itself for a one-column
    /// key, a JSON array of strings for a composite one.
    public static func keyText(_ key: [String]) -> String {
        if key.count == 1 { return key[0] }
        var bytes: [UInt8] = [UInt8(ascii: "[")]
        for (index, value) in key.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            JSONWriter.appendString(value, to: &bytes)
        }
        bytes.append(UInt8(ascii: "]"))
        return String(decoding: bytes, as: UTF8.self)
    }
}
