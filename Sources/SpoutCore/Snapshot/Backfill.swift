import Foundation

/// `spout backfill`: re-publishes selected outbox rows through the sink, keyset-paginated in
/// primary-key order (each batch one statement, so one consistent snapshot per batch), and
/// reports a batch done only once the sink acknowledged every row of it. Uses no slot.
public struct Backfill {
    public struct Options: Sendable {
        /// A SQL condition on the table's rows (`--where`), trusted: the user runs it as themselves.
        public var condition: String?
        /// Resume after this primary key (`--after`): the key itself, or for a composite key a
        /// JSON array of strings, as `keyText` prints it.
        public var after: String?
        public var batch = 1_000
        /// Rows per second, at most (`--rate`).
        public var rate: Int?
        public var maxInFlightEvents = 10_000
        public var maxInFlightBytes = 32 << 20

        public init() {}
    }

    public struct Progress: Sendable {
        /// Rows published and acknowledged.
        public var rows: Int
        /// Rows the selection held when the backfill started (rows inserted later may add a few).
        public var total: Int
        /// The primary key of the last row done, as `--after` takes it.
        public var lastKey: String?
        public var elapsed: Duration
    }

    public enum Outcome: Sendable, Equatable {
        case finished
        /// Stopped on request after a batch's acknowledgements.
        case interrupted
    }

    public let table: OutboxTableReader
    private let connection: PostgresConnection
    private let mapper: EventMapper
    private let layout: EventMapper.TableLayout
    public let options: Options
    private let after: [String]?

    public init(_ connection: PostgresConnection, table name: TableName, mapper: EventMapper, options: Options) throws(SpoutError) {
        self.connection = connection
        self.mapper = mapper
        self.options = options
        table = try OutboxTableReader(connection, table: name)
        guard !table.primaryKey.isEmpty else {
            throw .invalidOption("table \(name) has no primary key: backfill pages through the rows in primary-key order and resumes after a key; "
                                 + "add one (ALTER TABLE \(name.sql) ADD PRIMARY KEY (id))")
        }
        if let text = options.after {
            guard let key = OutboxTableReader.key(text, columns: table.primaryKey.count) else {
                let columns = table.primaryKey.map(\.name).joined(separator: ", ")
                throw .invalidOption("--after \(text) is not a key of \(name), whose primary key has \(table.primaryKey.count) columns (\(columns)): "
                                     + "give a JSON array of strings, one per key column, as backfill prints it")
            }
            after = key
        } else {
            after = nil
        }
        layout = try table.layout(mapper)
    }

    private func condition(after key: [String]?) -> String {
        var parts: [String] = []
        if let condition = options.condition { parts.append("(\(condition))") }
        if let key { parts.append(table.after(key)) }
        return parts.isEmpty ? "" : " WHERE " + parts.joined(separator: " AND ")
    }

    /// The rows the selection holds now (for the progress total); checks `--where` too.
    public func count() throws(SpoutError) -> Int {
        let text = try connection.query("SELECT count(*) FROM \(table.table.sql)\(condition(after: after))",
                                         context: "cannot count the rows to backfill (check --where)").first?.first ?? nil
        return text.flatMap { Int($0) } ?? 0
    }

    /// Publishes every selected row through `sink`, batch by batch, until done or `stop`
    /// (checked after each batch's acknowledgements). `report` gets the progress after each batch.
    public func run(sink: Sink, total: Int, stop: StopSignal, report: (Progress) -> Void) throws(SpoutError) -> Outcome {
        let publisher = AcknowledgedPublisher(sink: sink, maxInFlightEvents: options.maxInFlightEvents, maxInFlightBytes: options.maxInFlightBytes)
        let clock = ContinuousClock()
        let started = clock.now
        var after = after
        var rows = 0
        var sent: Int64 = 0
        while !stop.isRequested {
            // One statement, one snapshot. The WAL insert position, read while the statement
            // runs, is at or after the commit of every row it sees: the LSN the events carry.
            let fetched = try connection.query("""
                SELECT \(table.selectList), pg_current_wal_insert_lsn()::text FROM \(table.table.sql)\(condition(after: after))\(table.orderBy) LIMIT \(options.batch)
                """, context: "cannot read the rows to backfill")
            if fetched.isEmpty { return .finished }
            let now = PostgresTimestamp(unixMicroseconds: Int64(Date().timeIntervalSince1970 * 1_000_000))
            var lastKey: [String] = []
            for values in fetched {
                let lsn = values.last.flatMap { $0.flatMap { LSN($0) } } ?? .zero
                let row = table.row(Array(values.dropLast()))
                let event: OutboxEvent
                do {
                    event = try mapper.event(tableRow: row.tuple, layout: layout, lsn: lsn, committedAt: now, source: .backfill)
                } catch {
                    throw .unmappableRow(error, key: OutboxTableReader.keyText(row.key), while: "backfill")
                }
                if let rate = options.rate {
                    // The rows published so far may not be ahead of `rate` per second.
                    try publisher.idle(until: started + .microseconds(sent * 1_000_000 / Int64(rate)))
                }
                try publisher.publish(event)
                sent += 1
                lastKey = row.key
            }
            try publisher.waitForAll()
            rows += fetched.count
            after = lastKey
            report(Progress(rows: rows, total: max(total, rows), lastKey: OutboxTableReader.keyText(lastKey), elapsed: clock.now - started))
            if fetched.count < options.batch { return .finished }
        }
        return .interrupted
    }
}
