/// The publication and slot Spout streams from: checks, idempotent creation, and the SQL
/// that `spout setup --print` shows (the same statements `setup` and `run` execute).
public struct ReplicationSetup: Sendable {
    public var table: TableName
    public var publication: String
    public var slot: String
    /// Create the slot with `failover = true` (PostgreSQL 17+, see FailoverSlots.swift).
    public var failover = false

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
    public var slotSQL: String { slotSQL(failover: failover) }

    /// `failover`: PostgreSQL 17's fifth argument (a slot synchronized to standbys).
    public func slotSQL(failover: Bool) -> String {
        """
        SELECT \(Self.createSlotCall(slot: slot, failover: failover))
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
        public var twoPhase: Bool
        /// Why PostgreSQL invalidated the slot (`invalidation_reason` on 17+, `conflicting`
        /// on 16, `wal_status = lost` everywhere), nil while it is usable.
        public var invalidation: String?
        /// Who streams from the slot: the `application_name`/address of its walsender's
        /// client (Spout names itself "spout run host=… pid=…").
        public var activeClient: String?
    }

    /// Checks what `run` and `tail` need of the server: version and `wal_level`.
    public static func checkServer(_ connection: PostgresConnection) throws(SpoutError) {
        guard connection.serverVersion >= 140000 else { throw .unsupportedServer(version: connection.serverVersion) }
        let level = try connection.query("SHOW wal_level", context: "cannot read wal_level").first?.first ?? nil
        guard level == "logical" else { throw .walLevelNotLogical(current: level ?? "unknown") }
    }

    /// The outbox table as it is now: its OID (which Spout follows through renames) and columns.
    public struct TableInfo: Sendable {
        public var oid: UInt32
        public var columns: Set<String>
    }

    @discardableResult
    public func checkTable(_ connection: PostgresConnection) throws(SpoutError) -> TableInfo {
        let rows = try connection.query("""
            SELECT c.oid, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = \(SQL.literal(table.schema)) AND c.relname = \(SQL.literal(table.name))
               AND c.relkind IN ('r', 'p')
            """, context: "cannot look up table \(table)")
        guard let oid = rows.first?.first.flatMap({ $0.flatMap { UInt32($0) } }) else { throw .tableMissing(table: table.description) }
        return TableInfo(oid: oid, columns: Set(rows.compactMap { $0.count > 1 ? $0[1] : nil }))
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
        let inserts = try connection.query("SELECT pubinsert FROM pg_publication WHERE pubname = \(SQL.literal(publication))",
                                           context: "cannot look up publication \"\(publication)\"").first?.first ?? nil
        guard inserts == "t" else { throw .publicationLacksInserts(publication: publication) }
        // Every insert the publication sends must be an event: a publication shared with other
        // tables (or FOR ALL TABLES) would stop spout at their first insert, so say it now.
        let others = try connection.query("""
            SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables
             WHERE pubname = \(SQL.literal(publication))
               AND NOT (schemaname = \(SQL.literal(table.schema)) AND tablename = \(SQL.literal(table.name)))
             ORDER BY 1 LIMIT 6
            """, context: "cannot look up publication \"\(publication)\"").compactMap { $0.first ?? nil }
        if !others.isEmpty {
            let list = others.prefix(5).joined(separator: ", ") + (others.count > 5 ? ", …" : "")
            throw .publicationChanged("publication \"\(publication)\" publishes other tables besides \(table) (\(list)): spout maps only the "
                                      + "outbox, and an insert into another table would stop it. Give spout a publication of its own "
                                      + "(--publication NAME; spout setup creates it for the outbox only) or ALTER PUBLICATION "
                                      + "\(SQL.identifier(publication)) DROP TABLE the others")
        }
        return !exists
    }

    /// What the watch holds on to: the table's OID, the publication's (a dropped and recreated
    /// publication has another one) and the table's membership row in it (a table removed from
    /// the publication and added again has another one; nil when the publication covers the
    /// table through its schema).
    public func identity(_ connection: PostgresConnection, tableOID: UInt32) throws(SpoutError) -> PublicationWatch.Identity {
        let row = try connection.query("""
            SELECT p.oid, (SELECT pr.oid FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = \(tableOID))
              FROM pg_publication p WHERE p.pubname = \(SQL.literal(publication))
            """, context: "cannot look up publication \"\(publication)\"").first
        guard let row, row.count == 2, let oid = row[0].flatMap({ UInt32($0) }) else {
            throw .publicationMissing(publication: publication, table: table.sql)
        }
        return PublicationWatch.Identity(tableOID: tableOID, publicationOID: oid, membershipOID: row[1].flatMap { UInt32($0) })
    }

    public static func publicationExists(_ connection: PostgresConnection, name: String) throws(SpoutError) -> Bool {
        try !connection.query("SELECT 1 FROM pg_publication WHERE pubname = \(SQL.literal(name))",
                              context: "cannot look up publication \"\(name)\"").isEmpty
    }

    public static func slotState(_ connection: PostgresConnection, slot: String) throws(SpoutError) -> SlotState? {
        let rows = try connection.query("""
            SELECT s.plugin, s.database, s.active, s.active_pid, s.confirmed_flush_lsn, s.restart_lsn, s.wal_status,
                   s.temporary, s.two_phase,
                   \(invalidationSQL(connection)),
                   (\(Self.clientSQL(pid: "s.active_pid")))
              FROM pg_replication_slots s WHERE s.slot_name = \(SQL.literal(slot))
            """, context: "cannot look up replication slot \"\(slot)\"")
        guard let row = rows.first, row.count == 11 else { return nil }
        return SlotState(plugin: row[0] ?? "", database: row[1], active: row[2] == "t", activePID: row[3],
                         confirmedFlush: row[4].flatMap { LSN($0) }, restartLSN: row[5].flatMap { LSN($0) },
                         walStatus: row[6], temporary: row[7] == "t", twoPhase: row[8] == "t", invalidation: row[9],
                         activeClient: row[10])
    }

    /// Who holds a connection, from `pg_stat_activity`: its `application_name` (Spout's say
    /// "spout run host=… pid=…") and where it connects from; NULL when nothing is known.
    static func clientSQL(pid: String) -> String {
        """
        SELECT NULLIF(concat_ws(' from ', NULLIF(a.application_name, ''), COALESCE(a.client_hostname, host(a.client_addr))), '')
          FROM pg_stat_activity a WHERE a.pid = \(pid)
        """
    }

    /// Why a slot of `pg_replication_slots s` is invalidated, or NULL. The columns differ by
    /// version: `conflicting` (16), `invalidation_reason` (17); `wal_status = 'lost'` everywhere.
    public static func invalidationSQL(_ connection: PostgresConnection) -> String {
        let version = connection.serverVersion
        let reason = version >= 170000 ? "s.invalidation_reason"
            : version >= 160000 ? "CASE WHEN s.conflicting THEN 'rows_removed' END" : "NULL::text"
        return "COALESCE(\(reason), CASE WHEN s.wal_status = 'lost' THEN 'wal_removed' END)"
    }

    /// What a run needs of a slot beyond its existence: pgoutput, this database, no two-phase
    /// decoding (PostgreSQL then sends prepared transactions even unasked, which Spout does not
    /// stream), and WAL it still has.
    func checkUsable(_ state: SlotState, database: String?) throws(SpoutError) {
        guard state.plugin == "pgoutput" else { throw .slotWrongPlugin(slot: slot, plugin: state.plugin) }
        if let database, let slotDatabase = state.database, slotDatabase != database {
            throw .slotUnusable(slot: slot, reason: "belongs to database \"\(slotDatabase)\", not \"\(database)\" (logical slots are per database)",
                                fix: "connect to \(slotDatabase) with --database-url, or use another --slot")
        }
        guard !state.twoPhase else {
            throw .slotUnusable(slot: slot, reason: "was created with two_phase = true: PostgreSQL then sends prepared transactions, which spout does not stream",
                                fix: "drop it once it is confirmed (spout slot drop \(slot)) and let spout create a new one, or use another --slot")
        }
        if let reason = state.invalidation { throw .slotLost(slot: slot, reason: reason) }
    }

    /// What to do with a slot that is invalidated, or that Spout created and is gone
    /// (`--on-slot-lost`).
    public enum SlotLostPolicy: String, Sendable, CaseIterable {
        /// Stop with the cause and the fix (the default).
        case fail
        /// Create the slot again and publish the table's rows from its exported snapshot.
        case recreate
    }

    /// Whether a slot Spout creates first publishes the rows already in the table (`--snapshot`).
    public enum InitialSnapshot: String, Sendable, CaseIterable {
        case initial
        case never
    }

    /// What `provideSlot` did.
    public struct SlotProvision: Sendable {
        public var state: SlotState
        public var created: Bool
        /// The slot was created with an exported snapshot whose rows must be published (see
        /// `SlotSnapshot`) before streaming starts, and before this connection runs any other
        /// command: the snapshot lives only until then.
        public var snapshot: ExportedSnapshot?
    }

    /// Makes sure the slot exists (creating it when `create`) and can be streamed; in use or
    /// not (what `spout setup` needs). A slot Spout created and that is gone, or an invalidated
    /// one, is refused (its events are lost: see `SlotMarker`) unless `onLost` is `recreate`.
    ///
    /// A slot is created with an exported snapshot when its rows must be published: after a
    /// loss (`recreate`), with `snapshot` `initial`, or when a snapshot started earlier never
    /// finished (the marker says so). That needs a replication connection (`replication`);
    /// on a plain one (`spout setup`) the slot is created without and marked, so that the next
    /// `spout run` creates it again with the snapshot. `failover`: a failover slot (PostgreSQL 17+).
    public func provisionSlot(_ connection: PostgresConnection, create: Bool, onLost: SlotLostPolicy = .fail,
                            snapshot: InitialSnapshot = .never, replication: Bool = false, failover: Bool = false,
                            log: Log = Log()) throws(SpoutError) -> SlotProvision {
        let failover = failover || self.failover
        let database = try connection.query("SELECT current_database()", context: "cannot read the database name").first?.first ?? nil
        let marker = try SlotMarker.read(connection, schema: table.schema, slot: slot)
        var existing = try Self.slotState(connection, slot: slot)
        /// Rows owed from a snapshot: the table's rows are published before streaming.
        var owesSnapshot = false
        var lost = false
        var locked = false
        if let state = existing, let marker, marker.snapshotPending, !state.active {
            if !Self.streamed(state, since: marker) {
                // PostgreSQL releases a slot once it is created: while another spout publishes
                // its snapshot the slot looks idle. That spout holds the snapshot lock.
                try takeSnapshotLock(connection)
                locked = true
                // Nothing was streamed from it yet: a fresh slot and snapshot lose nothing.
                try dropSlot(connection, because: "its snapshot was not finished (spout stopped during it)")
                log.warning("replication slot \"\(slot)\" was created with a snapshot that was not finished (spout stopped during it): "
                            + "creating it again and publishing the table's rows from a new snapshot; rows published before come again (same ids)")
                existing = nil
                owesSnapshot = true
            } else {
                try SlotMarker.finishSnapshot(connection, schema: table.schema, slot: slot)
            }
        } else if existing == nil, marker?.snapshotPending == true {
            owesSnapshot = true
        }
        if let state = existing, state.invalidation != nil, onLost == .recreate, !state.active {
            try dropSlot(connection, because: "it is invalidated")
            log.warning("dropped the invalidated replication slot \"\(slot)\" (\(state.invalidation ?? "?"), --on-slot-lost recreate)")
            existing = nil
            lost = true
        }
        if let state = existing {
            try checkUsable(state, database: database)
            if marker == nil { try SlotMarker.adopt(connection, schema: table.schema, slot: slot, log: log) }
            if snapshot == .initial {
                log.debug("replication slot \"\(slot)\" exists: --snapshot initial applies only to a slot spout creates")
            }
            return SlotProvision(state: state, created: false, snapshot: nil)
        }
        // A marker without created_lsn is a creation that failed (a full max_replication_slots,
        // a bad name): that slot never existed, nothing was lost.
        if let marker, marker.createdLSN != nil, !owesSnapshot, !lost {
            guard onLost == .recreate else {
                throw try vanished(connection, marker: marker)
            }
            lost = true
        }
        guard create || lost || owesSnapshot else { throw .slotMissing(slot: slot) }
        let withSnapshot = lost || owesSnapshot || snapshot == .initial
        // The marker first: a slot Spout cannot remember having created would go unnoticed when lost.
        try SlotMarker.prepare(connection, schema: table.schema, slot: slot, snapshotPending: withSnapshot)
        if lost {
            log.warning("creating replication slot \"\(slot)\" again in place of the lost one (--on-slot-lost recreate): "
                        + "the table's rows are published from its snapshot, then it streams; events delivered before the loss come again "
                        + "(same ids), and rows deleted from the table since \(marker?.confirmedLSN?.description ?? "the loss") are not recovered")
        }
        if withSnapshot, replication {
            if !locked { try takeSnapshotLock(connection) }
            let exported = try createSlotExportingSnapshot(connection, failover: failover)
            // The slot's state waits: any command here would end the exported snapshot.
            let state = SlotState(plugin: "pgoutput", database: database, active: false, activePID: nil, confirmedFlush: exported.consistentPoint,
                                  restartLSN: nil, walStatus: nil, temporary: false, twoPhase: false, invalidation: nil, activeClient: nil)
            return SlotProvision(state: state, created: true, snapshot: exported)
        }
        try connection.query(slotSQL(failover: failover && connection.serverVersion >= 170000), context: "cannot create replication slot \"\(slot)\"")
        guard let state = try Self.slotState(connection, slot: slot) else { throw .slotMissing(slot: slot) }
        try SlotMarker.recordCreation(connection, schema: table.schema, slot: slot, at: state.confirmedFlush)
        if withSnapshot {
            log.warning("created replication slot \"\(slot)\" without a snapshot (this connection cannot export one): "
                        + "the next spout run creates it again and publishes the table's rows before streaming")
        }
        return SlotProvision(state: state, created: true, snapshot: nil)
    }

    /// The slot as a reconnecting or standby relay finds it before streaming again: it only
    /// looks, it never creates or drops a slot (that is startup's, with the sink's snapshot).
    /// Missing, invalidated, or created with a snapshot nobody finished publishing: an error.
    public func resumableSlot(_ connection: PostgresConnection) throws(SpoutError) -> SlotState {
        let database = try connection.query("SELECT current_database()", context: "cannot read the database name").first?.first ?? nil
        let marker = try SlotMarker.read(connection, schema: table.schema, slot: slot)
        guard let state = try Self.slotState(connection, slot: slot) else {
            guard let marker, marker.createdLSN != nil else { throw .slotMissing(slot: slot) }
            throw try vanished(connection, marker: marker)
        }
        try checkUsable(state, database: database)
        if let marker, marker.snapshotPending, !state.active {
            // The spout publishing the snapshot holds its lock; without it, nobody finishes it.
            if !Self.streamed(state, since: marker) {
                do { try takeSnapshotLock(connection) } catch {
                    guard case let .slotActive(_, pid, client) = error else { throw error }
                    var held = state
                    (held.active, held.activePID, held.activeClient) = (true, pid, client)
                    return held
                }
                try? releaseSnapshotLock(connection)
                throw .snapshotUnfinished(slot: slot)
            }
        }
        return state
    }

    /// Whether the slot was confirmed past the point its marker says it was created at.
    private static func streamed(_ state: SlotState, since marker: SlotMarker) -> Bool {
        guard let created = marker.createdLSN, let confirmed = state.confirmedFlush else { return false }
        return confirmed > created
    }

    /// The error for a slot Spout created and that is gone, with the WAL position now.
    private func vanished(_ connection: PostgresConnection, marker: SlotMarker) throws(SpoutError) -> SpoutError {
        let current = try connection.query("SELECT pg_current_wal_lsn()", context: "cannot read the WAL position").first?.first ?? nil
        return .slotVanished(slot: slot, marker: marker, currentLSN: current.flatMap { LSN($0) })
    }

    /// The session advisory lock of this slot's snapshot: held by the connection that creates
    /// the slot with a snapshot until its rows are published (`releaseSnapshotLock`), so that
    /// a second spout does not take the idle-looking slot for one whose snapshot was abandoned.
    /// Another holder is reported as the slot being in use (a standby waits for it).
    func takeSnapshotLock(_ connection: PostgresConnection) throws(SpoutError) {
        let taken = try connection.query("SELECT pg_try_advisory_lock(\(snapshotLockKey))",
                                         context: "cannot take the snapshot lock of slot \"\(slot)\"").first?.first ?? nil
        guard taken != "t" else { return }
        let holder = try connection.query("""
            SELECT l.pid, (\(Self.clientSQL(pid: "l.pid"))) FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.objid = (\(snapshotLockKey))::bigint & 4294967295 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """, context: "cannot look up the snapshot lock of slot \"\(slot)\"").first
        throw .slotActive(slot: slot, pid: (holder?.first ?? nil) ?? "?", client: holder.flatMap { $0.count > 1 ? $0[1] : nil })
    }

    public func releaseSnapshotLock(_ connection: PostgresConnection) throws(SpoutError) {
        try connection.query("SELECT pg_advisory_unlock(\(snapshotLockKey))", context: "cannot release the snapshot lock of slot \"\(slot)\"")
    }

    private var snapshotLockKey: String { "hashtext(\(SQL.literal("spout snapshot " + slot)))" }

    private func dropSlot(_ connection: PostgresConnection, because reason: String) throws(SpoutError) {
        try connection.query("SELECT pg_drop_replication_slot(\(SQL.literal(slot)))", context: "cannot drop replication slot \"\(slot)\" (\(reason))")
    }

    /// Makes sure the slot exists, can be streamed and is not in use (see `provisionSlot`).
    public func ensureSlotProvision(_ connection: PostgresConnection, create: Bool, onLost: SlotLostPolicy = .fail,
                                    snapshot: InitialSnapshot = .never, replication: Bool = false, failover: Bool = false,
                                    log: Log = Log()) throws(SpoutError) -> SlotProvision {
        let provision = try provisionSlot(connection, create: create, onLost: onLost, snapshot: snapshot, replication: replication,
                                          failover: failover, log: log)
        guard !provision.state.active else {
            throw .slotActive(slot: slot, pid: provision.state.activePID ?? "?", client: provision.state.activeClient)
        }
        return provision
    }

    /// `provisionSlot` without a snapshot of its own: returns the slot's state and whether it was created.
    public func provideSlot(_ connection: PostgresConnection, create: Bool, recreateLost: Bool = false,
                            log: Log = Log()) throws(SpoutError) -> (state: SlotState, created: Bool) {
        let provision = try provisionSlot(connection, create: create, onLost: recreateLost ? .recreate : .fail, log: log)
        return (provision.state, provision.created)
    }

    /// `ensureSlotProvision` without a snapshot of its own: returns the slot's state and whether it was created.
    public func ensureSlot(_ connection: PostgresConnection, create: Bool, recreateLost: Bool = false,
                           log: Log = Log()) throws(SpoutError) -> (state: SlotState, created: Bool) {
        let provision = try ensureSlotProvision(connection, create: create, onLost: recreateLost ? .recreate : .fail, log: log)
        return (provision.state, provision.created)
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
