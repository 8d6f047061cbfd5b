/// Spout's durable memory of the slots it created: one row per slot in `spout_slots`, in
/// the outbox's schema. PostgreSQL forgets a dropped slot completely, so without this a
/// slot dropped by hand (or missing after a restore or failover) would be created afresh,
/// silently skipping every event committed in between. With it, a slot that Spout had and
/// lost is told apart from one it never had: `run` and `setup` refuse to go on until the
/// user chooses `--on-slot-lost recreate`. While Spout runs, the row records how far the slot
/// was confirmed and when, which is what the refusal names as the events at risk.
///
/// `snapshot_pending` makes a slot's snapshot crash-safe: it is set before a slot is created
/// with an exported snapshot (`--snapshot initial`, `--on-slot-lost recreate`) and cleared once
/// every row of that snapshot is acknowledged. A slot whose snapshot is still pending, and
/// that was never confirmed past its consistent point, is dropped and created again with a
/// fresh snapshot on the next start: rows may come twice, none is lost.
public struct SlotMarker: Sendable, Equatable {
    public var createdAt: String?
    public var createdLSN: LSN?
    public var confirmedLSN: LSN?
    public var seenAt: String?
    public var snapshotPending = false

    public static let tableName = "spout_slots"

    static func table(_ schema: String) -> String { "\(SQL.identifier(schema)).\(SQL.identifier(tableName))" }

    /// The statement `spout setup` runs (and `--print` shows) so the run role only needs DML on it.
    public static func createSQL(schema: String) -> String {
        """
        CREATE TABLE IF NOT EXISTS \(table(schema)) (
          slot_name     text PRIMARY KEY,     -- a logical slot spout created in this database
          created_at    timestamptz NOT NULL DEFAULT now(),
          created_lsn   pg_lsn,               -- its first confirmed_flush_lsn
          confirmed_lsn pg_lsn,               -- how far spout last saw it confirmed
          seen_at       timestamptz,          -- when
          snapshot_pending boolean NOT NULL DEFAULT false  -- its rows are still to be published from a snapshot
        );
        \(snapshotColumnSQL(schema: schema))
        """
    }

    /// Tables made before the column existed get it (`spout setup`, as the table's owner).
    static func snapshotColumnSQL(schema: String) -> String {
        "ALTER TABLE \(table(schema)) ADD COLUMN IF NOT EXISTS snapshot_pending boolean NOT NULL DEFAULT false;"
    }

    /// The marker of `slot`, nil when Spout never recorded one (or the table does not exist).
    public static func read(_ connection: PostgresConnection, schema: String, slot: String) throws(SpoutError) -> SlotMarker? {
        guard try tableExists(connection, schema: schema) else { return nil }
        let rows: [[String?]]
        do {
            rows = try connection.query("""
                SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), created_lsn, confirmed_lsn,
                       to_char(seen_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                       to_jsonb(m) ->> 'snapshot_pending'
                  FROM \(table(schema)) m WHERE slot_name = \(SQL.literal(slot))
                """, context: "cannot read \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
        // to_jsonb: a table from before snapshot_pending reads as false, without an error.
        guard let row = rows.first, row.count == 5 else { return nil }
        return SlotMarker(createdAt: row[0], createdLSN: row[1].flatMap { LSN($0) },
                          confirmedLSN: row[2].flatMap { LSN($0) }, seenAt: row[3], snapshotPending: row[4] == "true")
    }

    /// Before Spout creates `slot`: the table exists and holds a row for it.
    /// `snapshotPending`: the slot's rows are still to be published from its snapshot.
    static func prepare(_ connection: PostgresConnection, schema: String, slot: String, snapshotPending: Bool = false) throws(SpoutError) {
        do {
            try createTable(connection, schema: schema)
            let hasColumn = try hasSnapshotColumn(connection, schema: schema, adding: snapshotPending)
            let pending = hasColumn ? ", snapshot_pending = \(snapshotPending)" : ""
            try connection.query("""
                INSERT INTO \(table(schema)) (slot_name\(hasColumn ? ", snapshot_pending" : "")) VALUES (\(SQL.literal(slot))\(hasColumn ? ", \(snapshotPending)" : ""))
                ON CONFLICT (slot_name) DO UPDATE SET created_at = now(), created_lsn = NULL, confirmed_lsn = NULL, seen_at = NULL\(pending)
                """, context: "cannot record replication slot \"\(slot)\" in \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
    }

    static func recordCreation(_ connection: PostgresConnection, schema: String, slot: String, at lsn: LSN?) throws(SpoutError) {
        let value = lsn.map { SQL.literal($0.description) } ?? "NULL"
        do {
            try connection.query("""
                UPDATE \(table(schema)) SET created_lsn = \(value), confirmed_lsn = \(value), seen_at = now()
                 WHERE slot_name = \(SQL.literal(slot))
                """, context: "cannot record replication slot \"\(slot)\" in \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
    }

    /// Every row of the slot's snapshot is acknowledged: from now on the slot is streamed.
    static func finishSnapshot(_ connection: PostgresConnection, schema: String, slot: String) throws(SpoutError) {
        do {
            try connection.query("UPDATE \(table(schema)) SET snapshot_pending = false WHERE slot_name = \(SQL.literal(slot))",
                                 context: "cannot record replication slot \"\(slot)\" in \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
    }

    /// Whether the table has `snapshot_pending`; with `adding`, adds it when missing (which
    /// needs the table's owner: a run role gets a message naming `spout setup`).
    private static func hasSnapshotColumn(_ connection: PostgresConnection, schema: String, adding: Bool) throws(SpoutError) -> Bool {
        let exists = try connection.query("""
            SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(\(SQL.literal(table(schema))))
               AND attname = 'snapshot_pending' AND NOT attisdropped
            """, context: "cannot look up \(schema).\(tableName)").isEmpty == false
        guard !exists, adding else { return exists }
        do {
            try connection.query(snapshotColumnSQL(schema: schema), context: "cannot add column snapshot_pending to \(schema).\(tableName)")
        } catch let .server(error, context) where error.sqlState == "42501" {
            throw .slotMarker("\(context): permission denied; spout records there that a slot's snapshot is still to be published, "
                              + "so that a crash during it loses no row: run spout setup once as the table's owner (it adds the column)")
        }
        return true
    }

    /// `spout setup`, as the table's owner: brings a table from an older spout up to date.
    public static func migrate(_ connection: PostgresConnection, schema: String) throws(SpoutError) {
        guard try tableExists(connection, schema: schema) else { return }
        _ = try hasSnapshotColumn(connection, schema: schema, adding: true)
    }

    /// A slot that exists but has no marker (made by hand, or by a Spout before markers):
    /// remember it from now on. Without the rights to, Spout still runs, and says what it cannot do.
    static func adopt(_ connection: PostgresConnection, schema: String, slot: String, log: Log) throws(SpoutError) {
        do {
            try createTable(connection, schema: schema)
            try connection.query("""
                INSERT INTO \(table(schema)) (slot_name, created_lsn, confirmed_lsn, seen_at)
                SELECT slot_name, confirmed_flush_lsn, confirmed_flush_lsn, now() FROM pg_replication_slots
                 WHERE slot_name = \(SQL.literal(slot))
                ON CONFLICT (slot_name) DO NOTHING
                """, context: "cannot record replication slot \"\(slot)\" in \(schema).\(tableName)")
        } catch {
            log.warning("\(markerError(error, schema: schema).description); until then a lost slot cannot be detected")
        }
    }

    /// Records how far the slot is confirmed now (the relay's watch does this every few seconds).
    public static func refresh(_ connection: PostgresConnection, schema: String, slot: String) throws(SpoutError) {
        do {
            try connection.query("""
                UPDATE \(table(schema)) m SET confirmed_lsn = s.confirmed_flush_lsn, seen_at = now()
                  FROM pg_replication_slots s WHERE s.slot_name = m.slot_name AND m.slot_name = \(SQL.literal(slot))
                """, context: "cannot update \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
    }

    /// `spout slot drop`: dropping a slot through Spout is the explicit choice to forget it.
    public static func remove(_ connection: PostgresConnection, schema: String, slot: String) throws(SpoutError) {
        guard try tableExists(connection, schema: schema) else { return }
        do {
            try connection.query("DELETE FROM \(table(schema)) WHERE slot_name = \(SQL.literal(slot))",
                                 context: "cannot forget replication slot \"\(slot)\" in \(schema).\(tableName)")
        } catch {
            throw markerError(error, schema: schema)
        }
    }

    private static func tableExists(_ connection: PostgresConnection, schema: String) throws(SpoutError) -> Bool {
        try connection.query("SELECT to_regclass(\(SQL.literal(table(schema)))) IS NOT NULL",
                             context: "cannot look up \(schema).\(tableName)").first?.first ?? nil == "t"
    }

    private static func createTable(_ connection: PostgresConnection, schema: String) throws(SpoutError) {
        // CREATE TABLE IF NOT EXISTS checks the schema's CREATE privilege before it looks for
        // the table: the run role (sql/role.sql) has the table but not that privilege.
        guard try !tableExists(connection, schema: schema) else { return }
        do {
            try connection.query(createSQL(schema: schema), context: "cannot create \(schema).\(tableName)")
        } catch let .server(error, context) where error.sqlState == "23505" || error.sqlState == "42P07" {
            // Two first runs at once: CREATE TABLE IF NOT EXISTS can race on the catalog; the other one made it.
            _ = context
        }
    }

    private static func markerError(_ error: SpoutError, schema: String) -> SpoutError {
        guard case let .server(serverError, context) = error, serverError.sqlState == "42501" else { return error }
        return .slotMarker("\(context): permission denied; spout records the slots it creates there so that a lost slot "
                              + "is noticed: run spout setup as the outbox table's owner once, and GRANT SELECT, INSERT, UPDATE, DELETE ON "
                              + "\(table(schema)) TO the role spout runs as (see sql/role.sql)")
    }
}
