/// What `spout check` asks of PostgreSQL: everything `run` needs before it streams, each as a
/// line of the checklist instead of the first error. The rules are `run`'s own
/// (`ReplicationSetup.checkTable`, `ensurePublication`, `checkUsable`, `EventMapper.checkColumns`);
/// this only looks, on a plain connection: it creates, alters and drops nothing.
public struct DatabaseChecks {
    public var conninfo: String
    public var setup: ReplicationSetup
    public var mapper: EventMapper
    /// `run` creates a missing publication and slot (not with `--no-create`).
    public var create = true
    public var onLost = ReplicationSetup.SlotLostPolicy.fail
    /// `run` waits as a standby while another client streams from the slot (not with `--no-standby`).
    public var standby = true
    /// How byte counts read (the CLI's `formatBytes`).
    public var bytes: (Int64) -> String = { "\($0) bytes" }

    /// Every statement gives up after this long: a check never hangs on a locked catalog.
    static let statementTimeout = "10s"

    public init(conninfo: String, setup: ReplicationSetup, mapper: EventMapper) {
        self.conninfo = conninfo
        self.setup = setup
        self.mapper = mapper
    }

    static let names = ["connection", "wal_level", "replication_slots", "wal_senders", "replication_role",
                        "table", "table_select", "columns", "publication", "slot"]

    /// The checks in order. Throws only for a database URL that is not one (a usage error).
    public func run() throws(SpoutError) -> [CheckResult] {
        let connection: PostgresConnection
        do {
            // libpq's connect_timeout (10 s unless the URL says otherwise) bounds the attempt.
            connection = try PostgresConnection(conninfo, applicationName: PostgresConnection.applicationName("check"))
        } catch {
            if case .invalidOption = error { throw error }
            // A TLS problem's fix is already in the message (see TLSProblem).
            let tls = TLSProblem(libpqMessage: error.description) != nil
            return [.fail("connection", error.description,
                          fix: tls ? "change the ssl parameters of --database-url as the message says"
                              : "check --database-url (host, port, user, password, database), that PostgreSQL is running, and that pg_hba.conf lets this client in")]
                + Self.names.dropFirst().map { .skip($0, because: "no connection to PostgreSQL") }
        }
        var results: [CheckResult] = []
        func checking(_ name: String, _ body: () throws -> CheckResult) {
            do { results.append(try body()) } catch {
                let error = error as? SpoutError
                results.append(.fail(name, error?.description ?? "\(error as Any)",
                                     fix: error?.isConnectionLoss == true ? "check the server and the network" : "see the detail"))
            }
        }
        let version: String
        do {
            try connection.query("SET statement_timeout = '\(Self.statementTimeout)'", context: "cannot set statement_timeout")
            version = try connection.query("SHOW server_version", context: "cannot read the server version").first?.first.flatMap { $0 } ?? "?"
        } catch {
            return [.fail("connection", error.description, fix: "check the server and the network")]
                + Self.names.dropFirst().map { .skip($0, because: "no connection to PostgreSQL") }
        }
        guard connection.serverVersion >= 140000 else {
            return [.fail("connection", SpoutError.unsupportedServer(version: connection.serverVersion).description,
                          fix: "upgrade PostgreSQL to 14 or newer")]
                + Self.names.dropFirst().map { .skip($0, because: "PostgreSQL is too old") }
        }
        results.append(.pass("connection", "PostgreSQL \(version) at \(connection.target), \(connection.encryptionDescription)"))

        checking("wal_level") {
            let level = try connection.query("SHOW wal_level", context: "cannot read wal_level").first?.first ?? nil
            guard level == "logical" else {
                return .fail("wal_level", "wal_level is \(level ?? "unknown"): logical decoding needs wal_level = logical",
                             fix: "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
            }
            return .pass("wal_level", "logical")
        }

        var role = "?"
        do {
            results += try replication(connection, role: &role)
        } catch {
            results.append(.fail("replication_slots", error.description, fix: "see the detail"))
            results.append(.skip("wal_senders", because: "the replication settings could not be read"))
            results.append(.skip("replication_role", because: "the replication settings could not be read"))
        }

        var table: ReplicationSetup.TableInfo?
        checking("table") {
            do { table = try setup.checkTable(connection) } catch SpoutError.tableMissing {
                return .fail("table", "table \(setup.table) does not exist", fix: "create it (see sql/outbox.sql) or name the outbox table with --table")
            }
            return .pass("table", "\(setup.table) exists")
        }
        if let table {
            checking("table_select") {
                let allowed = try connection.query("SELECT has_table_privilege(\(table.oid), 'SELECT')",
                                                   context: "cannot read the privileges on \(setup.table)").first?.first ?? nil
                guard allowed == "t" else {
                    return .fail("table_select", "role \(role) may not SELECT from \(setup.table) (snapshots and spout backfill read it)",
                                 fix: "GRANT SELECT ON \(setup.table.sql) TO \(SQL.identifier(role))")
                }
                return .pass("table_select", "role \(role) may SELECT from \(setup.table)")
            }
            checking("columns") { try columns(connection, table: table) }
        } else {
            results.append(.skip("table_select", because: "the table check failed"))
            results.append(.skip("columns", because: "the table check failed"))
        }

        checking("publication") { try publication(connection, tableExists: table != nil) }
        checking("slot") { try slot(connection) }
        return results
    }

    /// Free slots and walsenders, and the role's REPLICATION: one query, three lines.
    private func replication(_ connection: PostgresConnection, role: inout String) throws(SpoutError) -> [CheckResult] {
        let row = try connection.query("""
            SELECT current_setting('max_replication_slots'), (SELECT count(*) FROM pg_replication_slots),
                   current_setting('max_wal_senders'), (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'),
                   EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = \(SQL.literal(setup.slot))),
                   current_user, r.rolreplication, r.rolsuper
              FROM pg_roles r WHERE r.rolname = current_user
            """, context: "cannot read the replication settings").first ?? []
        guard row.count == 8, let maxSlots = row[0].flatMap({ Int($0) }), let usedSlots = row[1].flatMap({ Int($0) }),
              let maxSenders = row[2].flatMap({ Int($0) }), let usedSenders = row[3].flatMap({ Int($0) }) else {
            throw .invalidOption("cannot read max_replication_slots and max_wal_senders")
        }
        role = row[5] ?? "?"
        let slots: CheckResult
        if row[4] == "t" {
            slots = .pass("replication_slots", "slot \"\(setup.slot)\" exists (\(usedSlots) of max_replication_slots = \(maxSlots) in use)")
        } else if usedSlots >= maxSlots {
            slots = .fail("replication_slots", "all \(maxSlots) of max_replication_slots are in use: slot \"\(setup.slot)\" cannot be created",
                          fix: "drop a slot nobody uses (spout slot list, spout slot drop NAME) or ALTER SYSTEM SET max_replication_slots = \(maxSlots + 10); then restart PostgreSQL")
        } else {
            slots = .pass("replication_slots", "\(usedSlots) of max_replication_slots = \(maxSlots) in use: room for slot \"\(setup.slot)\"")
        }
        let senders: CheckResult = usedSenders < maxSenders
            ? .pass("wal_senders", "\(usedSenders) of max_wal_senders = \(maxSenders) in use")
            : .fail("wal_senders", "all \(maxSenders) of max_wal_senders are in use: the relay's replication connection would be refused",
                    fix: "ALTER SYSTEM SET max_wal_senders = \(maxSenders + 10); then restart PostgreSQL (or stop a replication client)")
        let replication: CheckResult = row[6] == "t" || row[7] == "t"
            ? .pass("replication_role", "role \(role) has \(row[7] == "t" ? "SUPERUSER" : "REPLICATION")")
            : .fail("replication_role", "role \(role) has neither REPLICATION nor SUPERUSER: it cannot open a replication connection",
                    fix: "ALTER ROLE \(SQL.identifier(role)) REPLICATION")
        return [slots, senders, replication]
    }

    /// `EventMapper.checkColumns` (what `run` refuses to start without), then the types.
    private func columns(_ connection: PostgresConnection, table: ReplicationSetup.TableInfo) throws(SpoutError) -> CheckResult {
        do { try mapper.checkColumns(table.columns) } catch {
            return .fail("columns", error.description, fix: "add the column to \(setup.table), or name the right one with the option the message names")
        }
        let rows = try connection.query("""
            SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = \(table.oid) AND attnum > 0 AND NOT attisdropped
            """, context: "cannot read the columns of \(setup.table)")
        var types: [String: String] = [:]
        for row in rows where row.count == 2 { if let name = row[0], let type = row[1] { types[name] = type } }
        let names = mapper.mapping.columns
        func part(_ column: String, _ role: String) -> String { "\(column) \(types[column] ?? "?") (\(role))" }
        var parts = [part(names.id, "id"), part(names.payload, "payload")]
        for column in mapper.mapping.topic.columns { parts.append(part(column, "topic")) }
        if types[names.aggregateID] != nil { parts.append(part(names.aggregateID, "key")) }
        if types[names.eventType] != nil { parts.append(part(names.eventType, "type")) }
        if let type = types[names.headers] {
            parts.append(part(names.headers, "headers"))
            // Headers are read as a JSON object: a column of another type fails every row that sets it.
            guard ["jsonb", "json", "text"].contains(type) || type.hasPrefix("character varying") else {
                return .fail("columns", "headers column \(names.headers) is \(type): spout reads headers as a JSON object",
                             fix: "ALTER TABLE \(setup.table.sql) ALTER COLUMN \(SQL.identifier(names.headers)) TYPE jsonb USING …, or name another column with --headers-column")
            }
        }
        let detail = parts.joined(separator: ", ")
        guard types[names.aggregateID] != nil else {
            return .warn("columns", detail + "; no key column \(names.aggregateID): events have no key, so brokers keep no per-entity order",
                         fix: "name the key column with --aggregate-id-column")
        }
        return .pass("columns", detail)
    }

    /// `ensurePublication`'s rules without creating anything.
    private func publication(_ connection: PostgresConnection, tableExists: Bool) throws(SpoutError) -> CheckResult {
        let name = setup.publication
        guard try ReplicationSetup.publicationExists(connection, name: name) else {
            guard create else {
                return .fail("publication", "publication \"\(name)\" does not exist (--no-create)",
                             fix: "spout setup, or CREATE PUBLICATION \(SQL.identifier(name)) FOR TABLE \(setup.table.sql) WITH (publish = 'insert'), or drop --no-create")
            }
            guard tableExists else { return .skip("publication", because: "publication \"\(name)\" does not exist and the table is missing") }
            // CREATE PUBLICATION … FOR TABLE needs the table's ownership and CREATE on the database.
            let allowed = try connection.query("""
                SELECT pg_has_role(c.relowner, 'USAGE') AND has_database_privilege(current_database(), 'CREATE')
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = \(SQL.literal(setup.table.schema)) AND c.relname = \(SQL.literal(setup.table.name))
                """, context: "cannot read the privileges on \(setup.table)").first?.first ?? nil
            guard allowed == "t" else {
                return .fail("publication", "publication \"\(name)\" does not exist, and this role cannot create it (it needs to own \(setup.table) and CREATE on the database)",
                             fix: "as the table's owner: CREATE PUBLICATION \(SQL.identifier(name)) FOR TABLE \(setup.table.sql) WITH (publish = 'insert')")
            }
            return .pass("publication", "publication \"\(name)\" does not exist: spout run creates it (inserts of \(setup.table) only)")
        }
        do { try setup.ensurePublication(connection, create: false) } catch {
            switch error {
            case .publicationLacksTable:
                return .fail("publication", "publication \"\(name)\" does not publish \(setup.table)",
                             fix: "ALTER PUBLICATION \(SQL.identifier(name)) ADD TABLE \(setup.table.sql), or name another with --publication")
            case .publicationChanged:
                return .fail("publication", error.description, fix: "ALTER PUBLICATION \(SQL.identifier(name)) DROP TABLE the others, or --publication NAME of spout's own")
            case .publicationLacksInserts:
                return .fail("publication", "publication \"\(name)\" does not publish inserts: no event would ever arrive",
                             fix: "ALTER PUBLICATION \(SQL.identifier(name)) SET (publish = 'insert')")
            default: throw error
            }
        }
        return .pass("publication", "publication \"\(name)\" publishes inserts of \(setup.table)")
    }

    /// The slot as `run` would take it (`checkUsable`), with what `spout status` shows of it.
    private func slot(_ connection: PostgresConnection) throws(SpoutError) -> CheckResult {
        let name = setup.slot
        guard let state = try ReplicationSetup.slotState(connection, slot: name) else {
            // A slot spout created and that is gone lost events (SlotMarker): run refuses it too.
            let marker: SlotMarker?
            do { marker = try SlotMarker.read(connection, schema: setup.table.schema, slot: name) } catch {
                guard case .slotMarker = error else { throw error }
                return .fail("slot", error.description, fix: "as the table's owner: spout setup once, then GRANT SELECT, INSERT, UPDATE, DELETE ON "
                                 + "\(SQL.identifier(setup.table.schema)).spout_slots TO the role spout runs as (see sql/role.sql)")
            }
            if let marker, marker.createdLSN != nil, onLost != .recreate {
                let current = try connection.query("SELECT pg_current_wal_lsn()", context: "cannot read the WAL position").first?.first ?? nil
                return .fail("slot", SpoutError.slotVanished(slot: name, marker: marker, currentLSN: current.flatMap { LSN($0) }).description,
                             fix: "spout backfill the rows since the loss, or spout run --on-slot-lost recreate")
            }
            guard create else {
                return .fail("slot", "replication slot \"\(name)\" does not exist (--no-create)", fix: "spout setup, or drop --no-create")
            }
            return .pass("slot", "replication slot \"\(name)\" does not exist: spout run creates it")
        }
        let database = try connection.query("SELECT current_database()", context: "cannot read the database name").first?.first ?? nil
        let held = try connection.query("""
            SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = \(SQL.literal(name))
            """, context: "cannot read the WAL held by slot \"\(name)\"").first?.first.flatMap { $0.flatMap { Int64($0) } }
        var parts = ["plugin \(state.plugin)", "database \(state.database ?? "?")", "two_phase \(state.twoPhase ? "on" : "off")",
                     "wal_status \(state.walStatus ?? "?")", "holds \(held.map(bytes) ?? "no") WAL",
                     "confirmed up to \(state.confirmedFlush?.description ?? "?")"]
        parts.append(state.active ? "active (\(state.activeClient.map { "\"\($0)\", " } ?? "")walsender pid \(state.activePID ?? "?"))" : "not active")
        let detail = "replication slot \"\(name)\": " + parts.joined(separator: ", ")
        do { try setup.checkUsable(state, database: database) } catch {
            if case .slotLost = error, onLost == .recreate {
                return .warn("slot", detail + "; invalidated: spout run creates it again and publishes the table's rows (--on-slot-lost recreate)")
            }
            let fix: String = switch error {
            case .slotWrongPlugin: "spout slot drop \(name) (once nothing needs it), or use another --slot"
            case let .slotUnusable(_, _, fix): fix
            case .slotLost: "spout run --on-slot-lost recreate, or spout backfill and spout slot drop \(name)"
            default: "use another --slot"
            }
            return .fail("slot", error.description, fix: fix)
        }
        if state.active {
            let holder = SpoutError.slotActive(slot: name, pid: state.activePID ?? "?", client: state.activeClient).description
            guard standby else { return .fail("slot", holder + " (--no-standby)", fix: "stop the other client, use another --slot, or drop --no-standby") }
            return .warn("slot", detail + "; spout run waits as a standby until it is released")
        }
        if state.walStatus == "extended" || state.walStatus == "unreserved" {
            return .warn("slot", detail + "; it holds more WAL than max_wal_size", fix: "start spout run so it confirms, or drop the slot if nothing uses it")
        }
        return .pass("slot", detail)
    }
}
