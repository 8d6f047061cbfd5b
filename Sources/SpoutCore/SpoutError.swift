/// Every failure Spout reports to a user: one line that names the problem and the fix.
public enum SpoutError: Error, Sendable, CustomStringConvertible {
    /// libpq could not connect or authenticate. `target` never contains a password.
    case connectionFailed(target: String, detail: String)
    /// The connection to PostgreSQL broke while streaming.
    case connectionLost(detail: String)
    /// PostgreSQL answered a statement with an error.
    case server(ServerError, while: String)
    case unsupportedServer(version: Int)
    case walLevelNotLogical(current: String)
    case tableMissing(table: String)
    case publicationMissing(publication: String, table: String)
    case publicationLacksTable(publication: String, table: String)
    /// The publication does not publish inserts (`publish = 'update'`, …): no event would arrive.
    case publicationLacksInserts(publication: String)
    case slotMissing(slot: String)
    case slotActive(slot: String, pid: String, client: String?)
    case slotWrongPlugin(slot: String, plugin: String)
    /// PostgreSQL invalidated the slot (`reason`: wal_removed, rows_removed, …).
    case slotLost(slot: String, reason: String)
    /// A slot Spout created (its `SlotMarker`) no longer exists.
    case slotVanished(slot: String, marker: SlotMarker, currentLSN: LSN?)
    /// The slot was created with a snapshot whose rows its spout did not finish publishing.
    case snapshotUnfinished(slot: String)
    case slotUnusable(slot: String, reason: String, fix: String)
    /// The slot marker table cannot be read or written.
    case slotMarker(String)
    /// The outbox table or the publication changed under a running Spout.
    case publicationChanged(String)
    case startBeforeSlot(start: LSN, slot: String, confirmed: LSN)
    case invalidOption(String)
    case protocolViolation(DecodingError, context: String)
    case unmappableEvent(MappingError, eventID: String?, lsn: LSN)
    /// A non-transactional logical message (`lsn`: where its record ends) that cannot be mapped.
    case unmappableMessage(MappingError, lsn: LSN)
    case sink(SinkError)
    case spoolFailed(String)
    /// Reconnecting to PostgreSQL did not succeed within `--reconnect-timeout`.
    case reconnectTimedOut(seconds: String, lastError: String)
    /// A row read from the table (snapshot, backfill) that cannot be mapped; `key`: its primary key.
    case unmappableRow(MappingError, key: String, while: String)

    public var description: String {
        switch self {
        case let .connectionFailed(target, detail):
            "cannot connect to PostgreSQL at \(target): \(detail)"
        case let .connectionLost(detail):
            "lost the connection to PostgreSQL: \(detail); nothing unacknowledged was confirmed, restart spout to resume from the slot"
        case let .server(error, context):
            "\(context): \(error)"
        case let .unsupportedServer(version):
            "PostgreSQL \(version / 10000) is too old: spout needs PostgreSQL 14 or newer (logical messages and pgoutput protocol 2)"
        case let .walLevelNotLogical(current):
            "wal_level is \"\(current)\", logical decoding needs wal_level = logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
        case let .tableMissing(table):
            "table \(table) does not exist: create it (see sql/outbox.sql) or name the outbox table with --table"
        case let .publicationMissing(publication, table):
            "publication \"\(publication)\" does not exist: run spout setup, or CREATE PUBLICATION \(SQL.identifier(publication)) FOR TABLE \(table) WITH (publish = 'insert'), or drop --no-create"
        case let .publicationLacksTable(publication, table):
            "publication \"\(publication)\" does not publish \(table): ALTER PUBLICATION \(SQL.identifier(publication)) ADD TABLE \(table), or name another with --publication"
        case let .publicationLacksInserts(publication):
            "publication \"\(publication)\" does not publish inserts, so no event would ever arrive: ALTER PUBLICATION \(SQL.identifier(publication)) SET (publish = 'insert')"
        case let .slotMissing(slot):
            "replication slot \"\(slot)\" does not exist: create it with spout setup (spout run creates it too, unless --no-create)"
        case let .slotActive(slot, pid, client):
            // The PID is the walsender's, a database backend: name the client so nobody kills the server's process.
            "replication slot \"\(slot)\" is in use by \(client.map { "\"\($0)\"" } ?? "another client") (its walsender is server PID \(pid), "
                + "a PostgreSQL backend: stop the client, not that PID): stop the other spout or consumer, or use another --slot"
        case let .slotWrongPlugin(slot, plugin):
            "replication slot \"\(slot)\" uses the \(plugin) plugin, spout needs pgoutput: drop it (spout slot drop \(slot)) or use another --slot"
        case let .slotLost(slot, reason):
            "replication slot \"\(slot)\" is invalidated (\(reason)\(reason == "wal_removed" ? ": PostgreSQL removed WAL it needed, see max_slot_wal_keep_size" : "")): "
                + "events in that WAL are gone from the slot: run spout with --on-slot-lost recreate to create it again and publish the rows the table "
                + "still holds from its snapshot (events delivered before come again, same ids), or re-publish them with spout backfill and drop the slot (spout slot drop \(slot))"
        case let .slotVanished(slot, marker, current):
            "replication slot \"\(slot)\" is gone: spout created it\(marker.createdAt.map { " at \($0)" } ?? "")"
                + "\(marker.createdLSN.map { " (LSN \($0))" } ?? "") and last saw it confirmed up to \(marker.confirmedLSN?.description ?? "its start")"
                + "\(marker.seenAt.map { " at \($0)" } ?? ""), but it was dropped (by hand, or lost in a restore or failover). "
                + "Events committed after \(marker.confirmedLSN?.description ?? "that")\(current.map { " up to now (\($0))" } ?? "") were not delivered by spout "
                + "and a new slot would never see them: re-publish outbox rows created since \(marker.seenAt ?? marker.createdAt ?? "then") from the table (spout backfill), "
                + "then create a new slot, or let spout do both: spout run --on-slot-lost recreate creates it again and publishes the rows the table "
                + "still holds from its snapshot before streaming (events delivered before come again, same ids)"
        case let .snapshotUnfinished(slot):
            "replication slot \"\(slot)\" was created with a snapshot whose rows the spout that created it did not finish publishing (it stopped during it), "
                + "so streaming from it would skip them: start spout again (a restart manager's Restart=on-failure does), and it creates the slot "
                + "again and publishes the table's rows from a new snapshot before streaming"
        case let .slotUnusable(slot, reason, fix):
            "replication slot \"\(slot)\" \(reason): \(fix)"
        case let .slotMarker(message):
            message
        case let .publicationChanged(message):
            message
        case let .startBeforeSlot(start, slot, confirmed):
            "--start-lsn \(start) is before what slot \"\(slot)\" still holds (confirmed_flush_lsn \(confirmed)): PostgreSQL can only replay from \(confirmed) on"
        case let .invalidOption(message):
            message
        case let .protocolViolation(error, context):
            "unexpected data from PostgreSQL (\(context)): \(error)"
        case let .unmappableEvent(error, eventID, lsn):
            "cannot map outbox event \(eventID.map { "\"\($0)\" " } ?? "")in the transaction that commits at \(lsn): \(error). "
                + "The slot stays before that transaction, and the WAL holds the row as it was inserted, so changing the row now changes nothing: "
                + "fix the mapping (e.g. --topic) if it is wrong, or skip that whole transaction (all its events, and only them) with "
                + "spout run --start-lsn \(lsn.advanced(by: 1)) and your other options, then deliver its events by hand"
        case let .unmappableMessage(error, lsn):
            // The server decodes a non-transactional message only when its record starts at or
            // after the start position, so starting at its end skips it and nothing else.
            "cannot map the non-transactional logical message at \(lsn): \(error). The slot stays before it: fix the mapping if it "
                + "is wrong, or skip that message (and only it) with spout run --start-lsn \(lsn) and your other options"
        case let .sink(error):
            error.description
        case let .unmappableRow(error, key, context):
            "\(context): cannot map the outbox row with key \(key): \(error). Fix the row or the mapping (e.g. --topic) and start again"
        case let .spoolFailed(message):
            message + "; nothing past the spooled events was confirmed"
        case let .reconnectTimedOut(seconds, lastError):
            "lost the connection to PostgreSQL and could not stream again within --reconnect-timeout \(seconds) s (last: \(lastError)); "
                + "nothing unacknowledged was confirmed: make the database reachable and restart spout to resume from the slot, "
                + "or raise --reconnect-timeout"
        }
    }

    /// What went wrong with the connection, for the outage's log line (without the advice to restart).
    public var connectionDetail: String {
        switch self {
        case let .connectionLost(detail): detail
        default: description
        }
    }

    /// The database went away or cannot be reached for now (a restart, a terminated
    /// walsender, a network fault, a server starting up or out of connections): worth
    /// reconnecting. Everything else (a slot or publication that changed, a bad option) is not.
    public var isConnectionLoss: Bool {
        switch self {
        case .connectionFailed, .connectionLost: true
        // 08: connection exception; 57: operator intervention (admin_shutdown, crash_shutdown,
        // cannot_connect_now); 53: insufficient resources (too many connections).
        case let .server(error, _): ["08", "57", "53"].contains(String(error.sqlState.prefix(2)))
        default: false
        }
    }

    /// The process exit status for this error.
    public var exitCode: Int32 {
        switch self {
        case .invalidOption: 64
        default: 1
        }
    }
}

/// An error reported by PostgreSQL, with its SQLSTATE.
public struct ServerError: Error, Sendable, CustomStringConvertible {
    public var sqlState: String
    public var message: String
    public var detail: String?
    public var hint: String?

    public init(sqlState: String, message: String, detail: String? = nil, hint: String? = nil) {
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
        self.hint = hint
    }

    public var description: String {
        var text = message
        if let detail, !detail.isEmpty { text += " (\(detail))" }
        if let hint, !hint.isEmpty { text += "; hint: \(hint)" }
        return text + " [SQLSTATE \(sqlState)]"
    }
}
