import Foundation
import Synchronization

/// Watches, on a second (normal) connection of its own thread, that what Spout streams has not
/// changed under it: the outbox is still the same table (by OID: a rename is the same table)
/// and still in the same publication (by OID: a dropped and recreated publication is not).
///
/// Why: rows written to a recreated table, or to a table the publication dropped, never reach
/// the slot at all, so the relay cannot notice them; but an idle slot confirms the newest WAL
/// position, and a later event's commit would be confirmed too, past them silently. So the
/// relay confirms nothing past `verified`, a WAL position read just before a check that
/// passed; a failed check stops the relay with `failure`, before anything past the change is
/// confirmed.
/// Each round also records the slot's progress in its `SlotMarker`.
public final class PublicationWatch: Sendable {
    /// What was verified at startup.
    public struct Identity: Sendable, Equatable {
        public var tableOID: UInt32
        public var publicationOID: UInt32
        /// The table's `pg_publication_rel` row: removed and added again within one check
        /// interval, the table is still published, but rows written in between were not.
        public var membershipOID: UInt32?

        public init(tableOID: UInt32, publicationOID: UInt32, membershipOID: UInt32?) {
            self.tableOID = tableOID
            self.publicationOID = publicationOID
            self.membershipOID = membershipOID
        }
    }

    private struct State {
        var verified: LSN
        var failure: SpoutError?
        var checks = 0
        var checkRequested = false
        /// `checkNow` requests, counted; and the newest of them that a check started after has answered.
        var requests = 0
        var answeredRequest = 0
        var stopped = false
        var shuttingDown = false
        var shutdowns = 0
    }

    private let state: Mutex<State>
    private let wakeThread = Wakeup()
    private let conninfo: String
    private let setup: ReplicationSetup
    private let identity: Identity
    private let markSlot: Bool
    private let interval: Duration
    private let log: Log
    static let checksPerMarkerRefresh = 15

    /// - Parameters:
    ///   - verified: the position the slot stands at (nothing past it is confirmed before the first check).
    ///   - markSlot: record the slot's progress in its marker (not for `tail`'s temporary slot).
    public init(conninfo: String, setup: ReplicationSetup, identity: Identity, verified: LSN, markSlot: Bool,
                interval: Duration = .seconds(2), log: Log) {
        state = Mutex(State(verified: verified))
        self.conninfo = conninfo
        self.setup = setup
        self.identity = identity
        self.markSlot = markSlot
        self.interval = interval
        self.log = log
    }

    /// The newest WAL position at which the table and publication were verified unchanged.
    public var verified: LSN { state.withLock { $0.verified } }
    /// Set once a check found a change: the relay stops with it.
    public var failure: SpoutError? { state.withLock { $0.failure } }
    var checks: Int { state.withLock { $0.checks } }
    /// The server refuses new connections because it is shutting down. A fast shutdown waits
    /// until every walsender's client confirmed all WAL, which the relay cannot do past what
    /// this watch verified: so the relay lets go of its connection (and reconnects later).
    /// Counts the shutdowns seen (the relay acts on each once).
    public var serverShutdowns: Int { state.withLock { $0.shutdowns } }

    public func start() {
        let thread = Thread { [self] in loop() }
        thread.name = "spout-watch"
        thread.start()
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        wakeThread.signal()
    }

    /// Asks for a check now and waits (at most `timeout`) until one finished: the final status
    /// update on exit then confirms as far as is verified.
    /// A check already running when this is called read its WAL position earlier, so only one
    /// that starts after the request answers it.
    public func checkNow(timeout: Duration) {
        let request = state.withLock { state in
            state.checkRequested = true
            state.requests += 1
            return state.requests
        }
        wakeThread.signal()
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, state.withLock({ $0.answeredRequest < request && $0.failure == nil }) { usleep(5_000) }
    }

    private func loop() {
        var connection: PostgresConnection?
        var outage = false
        var quietOutage = false
        while !state.withLock({ $0.stopped }) {
            state.withLock { $0.checkRequested = false }
            do throws(SpoutError) {
                let current: PostgresConnection
                if let connection { current = connection } else {
                    current = try PostgresConnection(conninfo, applicationName: PostgresConnection.applicationName("watch"))
                    connection = current
                }
                try check(current)
                state.withLock { $0.shuttingDown = false }
                if outage {
                    outage = false
                    if quietOutage { log.debug("verifying the outbox table and publication again") } else {
                        log.info("verifying the outbox table and publication again")
                    }
                }
            } catch {
                if case .publicationChanged = error {
                    state.withLock { $0.failure = error }
                    return
                }
                connection = nil
                // The check's connection was ended: a new one at once tells a shutdown apart.
                var shuttingDown = Self.isShutdown(error)
                if !shuttingDown {
                    do throws(SpoutError) {
                        connection = try PostgresConnection(conninfo, applicationName: PostgresConnection.applicationName("watch"))
                    } catch {
                        shuttingDown = Self.isShutdown(error)
                    }
                }
                state.withLock { state in
                    if shuttingDown, !state.shuttingDown { state.shutdowns += 1 }
                    state.shuttingDown = shuttingDown
                }
                if !outage {
                    outage = true
                    // A lost connection is the relay's outage too, and it says so once: here only a debug line.
                    quietOutage = error.isConnectionLoss
                    let text = "cannot verify the outbox table and publication (\(error.connectionDetail)); "
                        + "an idle slot is not confirmed further until this works again"
                    if quietOutage { log.debug(text) } else { log.warning(text) }
                }
            }
            var descriptor = pollfd(fd: wakeThread.descriptor, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: interval.wholeMilliseconds)
            if !state.withLock({ $0.checkRequested || $0.stopped }) { _ = poll(&descriptor, 1, milliseconds) }
            wakeThread.drain()
        }
    }

    /// PostgreSQL's "the database system is shutting down" (SQLSTATE 57P03, which also means
    /// "starting up": only the message tells them apart; a connection attempt has no SQLSTATE).
    static func isShutdown(_ error: SpoutError) -> Bool {
        error.description.contains("is shutting down")
    }

    private func check(_ connection: PostgresConnection) throws(SpoutError) {
        let answering = state.withLock { $0.requests }
        // The position first: whatever committed before it is visible to the check below.
        guard let text = try connection.query("SELECT pg_current_wal_lsn()", context: "cannot read the WAL position").first?.first ?? nil,
              let position = LSN(text) else {
            throw .connectionLost(detail: "pg_current_wal_lsn() returned nothing")
        }
        let rows = try connection.query(Self.checkSQL(setup: setup, identity: identity), context: "cannot check the outbox table and publication")
        guard let row = rows.first, row.count == 6 else { throw .connectionLost(detail: "the watch query returned no row") }
        if let change = Self.change(setup: setup, identity: identity, tableName: row[0], publicationOID: row[1].flatMap { UInt32($0) },
                                    published: row[2] == "t", nameOID: row[3].flatMap { UInt32($0) },
                                    membershipOID: row[4].flatMap { UInt32($0) }, publishesInserts: row[5] != "f") {
            throw .publicationChanged(change)
        }
        // The marker's progress every 30 s: it only bounds what a lost slot had confirmed, and
        // each update writes WAL that an idle slot then has to follow.
        if markSlot, checks % Self.checksPerMarkerRefresh == 0 {
            try? SlotMarker.refresh(connection, schema: setup.table.schema, slot: setup.slot)
        }
        state.withLock { state in
            if position > state.verified { state.verified = position }
            state.checks += 1
            state.answeredRequest = max(state.answeredRequest, answering)
        }
    }

    static func checkSQL(setup: ReplicationSetup, identity: Identity) -> String {
        """
        SELECT (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = \(identity.tableOID)),
               (SELECT oid FROM pg_publication WHERE pubname = \(SQL.literal(setup.publication))),
               EXISTS (SELECT 1 FROM pg_publication_tables pt
                         JOIN pg_namespace n ON n.nspname = pt.schemaname
                         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                        WHERE pt.pubname = \(SQL.literal(setup.publication)) AND c.oid = \(identity.tableOID)),
               to_regclass(\(SQL.literal(setup.table.sql)))::oid,
               (SELECT pr.oid FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = \(SQL.literal(setup.publication)) AND pr.prrelid = \(identity.tableOID)),
               (SELECT pubinsert FROM pg_publication WHERE pubname = \(SQL.literal(setup.publication)))
        """
    }

    /// What changed, as the error message; nil when nothing did. Pure, for unit tests.
    static func change(setup: ReplicationSetup, identity: Identity, tableName: String?, publicationOID: UInt32?,
                       published: Bool, nameOID: UInt32?, membershipOID: UInt32?, publishesInserts: Bool = true) -> String? {
        let table = setup.table.description
        let publication = setup.publication
        let backfill = "re-publish outbox rows written since the change from the table, then restart spout"
        guard tableName != nil else {
            let replaced = nameOID.map { " and a new table of that name (oid \($0)) exists" } ?? ""
            return "the outbox table \(table) (oid \(identity.tableOID)) was dropped while spout ran\(replaced): rows written to a new "
                + "table are not in publication \"\(publication)\" and never reach the slot, so spout stopped before confirming past the change. "
                + "To recover: add the new table to the publication (ALTER PUBLICATION \(SQL.identifier(publication)) ADD TABLE \(setup.table.sql)), "
                + backfill
        }
        guard let publicationOID else {
            return "publication \"\(publication)\" was dropped while spout ran: nothing written since reaches the slot, so spout stopped before "
                + "confirming past the change. To recover: create it again (spout setup), advance the slot past the re-creation "
                + "(SELECT pg_replication_slot_advance('\(setup.slot)', pg_current_wal_lsn())), " + backfill
        }
        guard publicationOID == identity.publicationOID else {
            return "publication \"\(publication)\" was dropped and created again while spout ran (oid \(identity.publicationOID), now \(publicationOID)): "
                + "inserts between the drop and the re-creation were never published, so spout stopped before confirming past the change. "
                + "To recover: re-publish outbox rows written in between from the table and restart spout (if the slot still holds WAL "
                + "from before the re-creation with changes in it, PostgreSQL refuses to decode it, and spout then says how to skip it)"
        }
        guard published else {
            return "publication \"\(publication)\" no longer publishes the outbox table \(table): inserts written since never reach the slot, "
                + "so spout stopped before confirming past the change. To recover: ALTER PUBLICATION \(SQL.identifier(publication)) ADD TABLE "
                + "\(setup.table.sql), " + backfill
        }
        guard publishesInserts else {
            return "publication \"\(publication)\" no longer publishes inserts (ALTER PUBLICATION … SET (publish = …)): inserts written since "
                + "never reach the slot, so spout stopped before confirming past the change. To recover: ALTER PUBLICATION "
                + "\(SQL.identifier(publication)) SET (publish = 'insert'), " + backfill
        }
        guard membershipOID == identity.membershipOID else {
            return "the outbox table \(table) was removed from publication \"\(publication)\" and added again while spout ran: inserts "
                + "written in between never reached the slot, so spout stopped before confirming past the change. To recover: " + backfill
        }
        if let nameOID, nameOID != identity.tableOID {
            return "\(table) is now another table (oid \(nameOID)); spout streams oid \(identity.tableOID), now named \(tableName ?? "?"). "
                + "Rows written to the new \(table) are not in publication \"\(publication)\". To recover: rename the tables back, or add the "
                + "new one to the publication (ALTER PUBLICATION \(SQL.identifier(publication)) ADD TABLE \(setup.table.sql)) and " + backfill
        }
        return nil
    }
}
