import Foundation

/// A slot created with `SNAPSHOT 'export'`: where it starts streaming, and the snapshot that
/// shows the table exactly as it was at that point (every transaction committed before it,
/// none after). Publishing the snapshot's rows and then streaming from `consistentPoint`
/// delivers every row once: no gap, no overlap.
public struct ExportedSnapshot: Sendable, Equatable {
    public var slot: String
    public var consistentPoint: LSN
    /// The name `SET TRANSACTION SNAPSHOT` imports, valid until the replication connection
    /// that created the slot runs its next command.
    public var name: String
}

extension ReplicationSetup {
    /// `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')` on a replication connection (15+; 14
    /// spells it `EXPORT_SNAPSHOT`). `failover` adds `FAILOVER true` on PostgreSQL 17+.
    public func createSlotExportingSnapshot(_ connection: PostgresConnection, failover: Bool) throws(SpoutError) -> ExportedSnapshot {
        let version = connection.serverVersion
        var command = "CREATE_REPLICATION_SLOT \(SQL.identifier(slot)) LOGICAL pgoutput "
        if version >= 150000 {
            command += "(SNAPSHOT 'export'\(failover && version >= 170000 ? ", FAILOVER true" : ""))"
        } else {
            command += "EXPORT_SNAPSHOT"
        }
        // Columns: slot_name, consistent_point, snapshot_name, output_plugin.
        let rows = try connection.query(command, context: "cannot create replication slot \"\(slot)\" with an exported snapshot")
        guard let row = rows.first, row.count > 2, let point = row[1].flatMap({ LSN($0) }), let name = row[2], !name.isEmpty else {
            throw .protocolViolation(.invalidValue(message: "CREATE_REPLICATION_SLOT", field: "consistent_point/snapshot_name", value: 0),
                                     context: "creating slot \"\(slot)\" with an exported snapshot")
        }
        return ExportedSnapshot(slot: slot, consistentPoint: point, name: name)
    }
}

/// Publishes the outbox rows of a slot's exported snapshot, before the slot streams:
/// imports the snapshot on a second connection (`REPEATABLE READ READ ONLY`, `SET TRANSACTION
/// SNAPSHOT`), reads the table in primary-key order through a cursor (bounded memory), maps
/// each row as a streamed one and hands it to the sink with the relay's window, waits until
/// every one is acknowledged, and only then records in `SlotMarker` that the snapshot is done.
public struct SlotSnapshot {
    public var setup: ReplicationSetup
    public var conninfo: String
    public var mapper: EventMapper
    public var maxInFlightEvents = 10_000
    public var maxInFlightBytes = 32 << 20
    /// Rows per FETCH.
    public var batch = 1_000
    public var log: Log

    public init(setup: ReplicationSetup, conninfo: String, mapper: EventMapper, log: Log) {
        self.setup = setup
        self.conninfo = conninfo
        self.mapper = mapper
        self.log = log
    }

    /// Publishes the snapshot's rows through `sink`; `replication` is the connection that
    /// created the slot (idle until the snapshot is imported). Returns the rows published.
    /// Their events carry the slot's consistent point as their LSN (every row in the snapshot
    /// committed before it) and `source` `snapshot`.
    @discardableResult
    public func publish(_ exported: ExportedSnapshot, replication: PostgresConnection, sink: Sink) throws(SpoutError) -> Int {
        let reader = try PostgresConnection(conninfo, applicationName: PostgresConnection.applicationName("snapshot"))
        try reader.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", context: "cannot start the snapshot's transaction")
        try reader.query("SET TRANSACTION SNAPSHOT \(SQL.literal(exported.name))",
                         context: "cannot import the exported snapshot of slot \"\(exported.slot)\"")
        // Imported: the replication connection may run commands again.
        try SlotMarker.recordCreation(replication, schema: setup.table.schema, slot: exported.slot, at: exported.consistentPoint)
        log.info("publishing the rows of \(setup.table) from slot \"\(exported.slot)\"'s snapshot at \(exported.consistentPoint), then streaming from there",
                 metadata: ["slot": "\(exported.slot)", "lsn": "\(exported.consistentPoint)", "table": "\(setup.table)"])
        let table = try OutboxTableReader(reader, table: setup.table)
        let layout = try table.layout(mapper)
        let publisher = AcknowledgedPublisher(sink: sink, maxInFlightEvents: maxInFlightEvents, maxInFlightBytes: maxInFlightBytes)
        try reader.query("DECLARE spout_snapshot NO SCROLL CURSOR FOR SELECT \(table.selectList) FROM \(setup.table.sql)\(table.orderBy)",
                         context: "cannot read \(setup.table) in the snapshot")
        let committedAt = PostgresTimestamp(unixMicroseconds: Int64(Date().timeIntervalSince1970 * 1_000_000))
        let clock = ContinuousClock()
        var nextReport = clock.now + .seconds(10)
        var rows = 0
        while true {
            let fetched = try reader.query("FETCH FORWARD \(batch) FROM spout_snapshot", context: "cannot read \(setup.table) in the snapshot")
            if fetched.isEmpty { break }
            for values in fetched {
                let row = table.row(values)
                let event: OutboxEvent
                do {
                    event = try mapper.event(tableRow: row.tuple, layout: layout, lsn: exported.consistentPoint, committedAt: committedAt, source: .snapshot)
                } catch {
                    throw .unmappableRow(error, key: OutboxTableReader.keyText(row.key), while: "publishing the snapshot of slot \"\(exported.slot)\"")
                }
                try publisher.publish(event)
                rows += 1
            }
            if clock.now >= nextReport {
                nextReport = clock.now + .seconds(10)
                log.info("snapshot: \(rows) rows published, \(publisher.acknowledged) acknowledged", metadata: ["slot": "\(exported.slot)"])
            }
        }
        try publisher.waitForAll()
        try reader.query("COMMIT", context: "cannot end the snapshot's transaction")
        try SlotMarker.finishSnapshot(replication, schema: setup.table.schema, slot: exported.slot)
        try setup.releaseSnapshotLock(replication)
        log.info("snapshot: published \(rows) rows of \(setup.table), all acknowledged; streaming from \(exported.consistentPoint)",
                 metadata: ["slot": "\(exported.slot)", "lsn": "\(exported.consistentPoint)", "events": "\(rows)"])
        return rows
    }
}
