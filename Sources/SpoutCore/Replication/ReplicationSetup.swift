/// The publication and slot Spout streams from: checks, idempotent creation, and the SQL
/// that `spout setup --print` shows (the same statements `setup` and `run` execute).
public struct ReplicationSetup: Sendable {
    public var table: TableName
    public var publication: String
    public var slot: String

    public init(table: TableName, publication: String, slot: String) {
        self.table = table
        self.publication = publication
        self.slot = slot
    }

    /// Idempotent: creates the publication only when no publication of that name exists.
    /// Inserts only: updates and deletes of outbox rows (cleanup) are not events. Changes of a
    /// partitioned outbox are published as the root table's, so one Relation maps them all.
    public var publicationSQL: String {
        """
        DO $spout$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = \(SQL.literal(publication))) THEN
            CREATE PUBLICATION \(SQL.identifier(publication)) FOR TABLE \(table.sql) WITH (publish = 'insert', publish_via_partition_root = true);
          END IF;
        END $spout$;
        """
    }

    /// Idempotent: creates the slot only when no slot of that name exists.
    public var slotSQL: String {
        """
        SELECT pg_create_logical_replication_slot(\(SQL.literal(slot)), 'pgoutput')
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = \(SQL.literal(slot)));
        """
    }

    public struct SlotState: Sendable, Equatable {
        public var plugin: String
        public var database: String?
        public var active: Bool
        public var activePID: String?
        public var confirmedFlush: LSN?
        public var restartLSN: LSN?
        public var walStatus: String?
        public var temporary: Bool
    }

    /// Checks what `run` and `tail` need of the server: version and `wal_level`.
    public static func checkServer(_ connection: PostgresConnection) throws(SpoutError) {
        guard connection.serverVersion >= 140000 else { throw .unsupportedServer(version: connection.serverVersion) }
        let level = try connection.query("SHOW wal_level", context: "cannot read wal_level").first?.first ?? nil
        guard level == "logical" else { throw .walLevelNotLogical(current: level ?? "unknown") }
    }

    public func checkTable(_ connection: PostgresConnection) throws(SpoutError) {
        let rows = try connection.query("""
            SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = \(SQL.literal(table.schema)) AND c.relname = \(SQL.literal(table.name))
               AND c.relkind IN ('r', 'p')
            """, context: "cannot look up table \(table)")
        guard !rows.isEmpty else { throw .tableMissing(table: table.description) }
    }

    /// Makes sure the publication exists and publishes the table. Returns true when it was created.
    @discardableResult
    public func ensurePublication(_ connection: PostgresConnection, create: Bool) throws(SpoutError) -> Bool {
        let exists = try Self.publicationExists(connection, name: publication)
        if !exists {
            guard create else { throw .publicationMissing(publication: publication, table: table.sql) }
            try connection.query(publicationSQL, context: "cannot create publication \"\(publication)\"")
        }
        let publishes = try connection.query("""
            SELECT 1 FROM pg_publication_tables WHERE pubname = \(SQL.literal(publication))
               AND schemaname = \(SQL.literal(table.schema)) AND tablename = \(SQL.literal(table.name))
            """, context: "cannot look up publication \"\(publication)\"")
        guard !publishes.isEmpty else { throw .publicationLacksTable(publication: publication, table: table.sql) }
        return !exists
    }

    public static func publicationExists(_ connection: PostgresConnection, name: String) throws(SpoutError) -> Bool {
        try !connection.query("SELECT 1 FROM pg_publication WHERE pubname = \(SQL.literal(name))",
                              context: "cannot look up publication \"\(name)\"").isEmpty
    }

    public static func slotState(_ connection: PostgresConnection, slot: String) throws(SpoutError) -> SlotState? {
        let rows = try connection.query("""
            SELECT plugin, database, active, active_pid, confirmed_flush_lsn, restart_lsn, wal_status, temporary
              FROM pg_replication_slots WHERE slot_name = \(SQL.literal(slot))
            """, context: "cannot look up replication slot \"\(slot)\"")
        guard let row = rows.first, row.count == 8 else { return nil }
        return SlotState(plugin: row[0] ?? "", database: row[1], active: row[2] == "t", activePID: row[3],
                         confirmedFlush: row[4].flatMap { LSN($0) }, restartLSN: row[5].flatMap { LSN($0) },
                         walStatus: row[6], temporary: row[7] == "t")
    }

    /// Makes sure the slot exists (creating it when `create`) and uses pgoutput; in use or
    /// not (what `spout setup` needs). Returns its state and whether it was created.
    public func provideSlot(_ connection: PostgresConnection, create: Bool) throws(SpoutError) -> (state: SlotState, created: Bool) {
        var created = false
        if try Self.slotState(connection, slot: slot) == nil {
            guard create else { throw .slotMissing(slot: slot) }
            try connection.query(slotSQL, context: "cannot create replication slot \"\(slot)\"")
            created = true
        }
        guard let state = try Self.slotState(connection, slot: slot) else { throw .slotMissing(slot: slot) }
        guard state.plugin == "pgoutput" else { throw .slotWrongPlugin(slot: slot, plugin: state.plugin) }
        return (state, created)
    }

    /// Makes sure the slot exists, uses pgoutput, is not in use and still has its WAL.
    /// Returns its state and whether it was created.
    public func ensureSlot(_ connection: PostgresConnection, create: Bool) throws(SpoutError) -> (state: SlotState, created: Bool) {
        let (state, created) = try provideSlot(connection, create: create)
        guard !state.active else { throw .slotActive(slot: slot, pid: state.activePID ?? "?") }
        guard state.walStatus != "lost" else { throw .slotLost(slot: slot) }
        return (state, created)
    }

    /// Creates a temporary slot on this (replication) connection: PostgreSQL drops it when
    /// the connection ends, however it ends. Returns its consistent point.
    public func createTemporarySlot(_ connection: PostgresConnection) throws(SpoutError) -> LSN {
        let rows = try connection.query("CREATE_REPLICATION_SLOT \(SQL.identifier(slot)) TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                                        context: "cannot create temporary replication slot \"\(slot)\"")
        guard let row = rows.first, row.count > 1, let text = row[1], let lsn = LSN(text) else {
            throw .protocolViolation(.invalidValue(message: "CREATE_REPLICATION_SLOT", field: "consistent_point", value: 0),
                            context: "creating a temporary slot")
        }
        return lsn
    }
}
