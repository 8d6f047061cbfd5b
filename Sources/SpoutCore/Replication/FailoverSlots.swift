import Foundation

/// Failover slots (PostgreSQL 17+): a logical slot with `failover = true` is copied to physical
/// standbys that run with `sync_replication_slots = on`, so that after a promotion Spout
/// continues from the standby's copy instead of finding no slot. Here: whether a slot gets the
/// flag, the statement pieces that create or alter it, and what `spout status` reports.
extension ReplicationSetup {
    /// `failover` in `pg_create_logical_replication_slot`, `CREATE_REPLICATION_SLOT` and
    /// `ALTER_REPLICATION_SLOT`, `synced` in `pg_replication_slots`: PostgreSQL 17.
    public static let failoverMinimumVersion = 170000

    /// Whether Spout's slot is a failover slot: `requested` (--failover / --no-failover) or,
    /// not given, on exactly when the server has failover slots. Asking for it on an older
    /// server is an error: the user expects a slot that survives a failover and would not get one.
    public static func failover(requested: Bool?, serverVersion: Int) throws(SpoutError) -> Bool {
        guard serverVersion >= failoverMinimumVersion else {
            if requested == true {
                throw .invalidOption("--failover needs PostgreSQL 17 or newer (failover slots), the server is PostgreSQL \(serverVersion / 10000): "
                                     + "drop --failover (it is off by default before 17), or upgrade the server")
            }
            return false
        }
        return requested ?? true
    }

    /// The SQL function call that creates the slot (`ReplicationSetup.slotSQL`): its fifth
    /// argument is `failover` (after `temporary` and `two_phase`), only on 17+.
    public static func createSlotCall(slot: String, failover: Bool) -> String {
        failover ? "pg_create_logical_replication_slot(\(SQL.literal(slot)), 'pgoutput', false, false, true)"
            : "pg_create_logical_replication_slot(\(SQL.literal(slot)), 'pgoutput')"
    }

    /// The option that makes `CREATE_REPLICATION_SLOT name LOGICAL pgoutput (…)` a failover
    /// slot, nil when it must not be given (the option is unknown before 17).
    public static func createSlotCommandOption(failover: Bool) -> String? {
        failover ? "FAILOVER true" : nil
    }

    /// Makes an existing slot a failover slot. A replication command (there is no SQL function):
    /// it runs only on a `replication=database` connection, on a primary, on a slot not in use.
    public static func alterFailoverCommand(slot: String) -> String {
        "ALTER_REPLICATION_SLOT \(SQL.identifier(slot)) (FAILOVER true)"
    }

    /// What `ensureFailover` did.
    public enum FailoverChange: Sendable, Equatable {
        /// Failover is off, the server has no failover slots, or the slot has the flag already.
        case unchanged
        /// The slot had no failover flag and has it now.
        case enabled
        /// It could not be set (the slot is in use, the role lacks REPLICATION…): the warning says how.
        case failed(String)
    }

    /// With failover on (17+), gives an existing slot without the flag `failover = true` over a
    /// short replication connection of its own (`connection` may be a plain one); when that is
    /// impossible, warns with the exact command instead of failing: the slot still streams, it
    /// just would not survive a failover.
    @discardableResult
    public func ensureFailover(_ connection: PostgresConnection, conninfo: String, enabled: Bool, log: Log = Log()) throws(SpoutError) -> FailoverChange {
        guard enabled, connection.serverVersion >= Self.failoverMinimumVersion else { return .unchanged }
        let row = try connection.query("SELECT failover, temporary FROM pg_replication_slots WHERE slot_name = \(SQL.literal(slot))",
                                       context: "cannot look up replication slot \"\(slot)\"").first
        guard let row, row.count == 2, row[0] == "f", row[1] == "f" else { return .unchanged }
        let command = Self.alterFailoverCommand(slot: slot)
        do {
            let replication = try PostgresConnection(conninfo, replication: true, applicationName: PostgresConnection.applicationName("setup"))
            try replication.query(command, context: "cannot make replication slot \"\(slot)\" a failover slot")
        } catch {
            let database = (try? connection.query("SELECT current_database()", context: "").first?.first) ?? nil
            log.warning("replication slot \"\(slot)\" is not a failover slot and spout could not make it one (\(error.description)): "
                        + "it would not survive a failover to a standby; run \(command) over a replication connection "
                        + "(psql \"dbname=\(database ?? "DB") replication=database\" -c '\(command)') while the slot is not in use, "
                        + "or run spout with --no-failover", metadata: ["slot": "\(slot)"])
            return .failed(error.description)
        }
        log.info("made replication slot \"\(slot)\" a failover slot (failover = true)", metadata: ["slot": "\(slot)"])
        return .enabled
    }

    /// The slot's failover state as `spout status` shows it, read on the server it is pointed at:
    /// on a primary, whether the standbys named in `synchronized_standby_slots` have received
    /// what the slot confirmed; on a standby, whether its copy of the slot is synchronized and
    /// which of the settings slot synchronization needs are missing.
    public struct FailoverStatus: Sendable, Equatable {
        /// A physical slot named in the primary's `synchronized_standby_slots`.
        public struct StandbySlot: Sendable, Equatable {
            public var name: String
            /// nil: no physical slot of that name exists (a logical walsender then waits for it forever).
            public var active: Bool?
            /// What the standby has flushed (a physical slot's `restart_lsn`).
            public var flushed: LSN?
            /// How far that is behind the logical slot's `confirmed_flush_lsn`; 0 when caught up.
            public var behindBytes: UInt64?
        }

        public var serverVersion: Int
        /// A standby (`pg_is_in_recovery()`): the slot there is a synchronized copy.
        public var isStandby: Bool
        /// nil before PostgreSQL 17.
        public var failover: Bool?
        public var synced: Bool?
        /// A synchronized copy stays temporary (and is dropped by a promotion) until persisted.
        public var temporary = false
        /// The primary's `synchronized_standby_slots`, nil on a standby or before 17.
        public var standbySlotsSetting: String?
        public var standbySlots: [StandbySlot] = []
        /// What stands between this slot and a failover that keeps it, each with its fix.
        public var problems: [String] = []
    }

    public static func failoverStatus(_ connection: PostgresConnection, slot: String) throws(SpoutError) -> FailoverStatus {
        let version = connection.serverVersion
        let isStandby = try connection.query("SELECT pg_is_in_recovery()", context: "cannot read pg_is_in_recovery()").first?.first == "t"
        var status = FailoverStatus(serverVersion: version, isStandby: isStandby)
        guard version >= failoverMinimumVersion else {
            status.problems.append("PostgreSQL \(version / 10000) has no failover slots (17 and newer have): after a failover the slot is not on the new primary")
            return status
        }
        let settings = try Dictionary(connection.query("""
            SELECT name, setting FROM pg_settings WHERE name IN ('synchronized_standby_slots', 'sync_replication_slots',
              'hot_standby_feedback', 'wal_level', 'primary_slot_name', 'primary_conninfo')
            """, context: "cannot read pg_settings").compactMap { row -> (String, String)? in
                guard row.count == 2, let name = row[0] else { return nil }
                return (name, row[1] ?? "")
            }, uniquingKeysWith: { first, _ in first })
        let row = try connection.query("""
            SELECT failover, synced, confirmed_flush_lsn, temporary FROM pg_replication_slots WHERE slot_name = \(SQL.literal(slot))
            """, context: "cannot read pg_replication_slots").first
        guard let row, row.count == 4 else {
            // No copy on this standby: what it lacks is the likely reason.
            if isStandby { status.problems = standbyProblems(settings) }
            return status
        }
        status.failover = row[0] == "t"
        status.synced = row[1] == "t"
        status.temporary = row[3] == "t"
        let confirmed = row[2].flatMap { LSN($0) }
        if status.failover == false {
            status.problems.append("the slot is not a failover slot: run spout setup (it sets failover = true on 17+), "
                                   + "or \(alterFailoverCommand(slot: slot)) over a replication connection while the slot is not in use")
        }
        if isStandby {
            if status.synced == false {
                status.problems.append("this standby's slot is not synchronized from the primary (synced = false): it was created here, not copied")
            } else if status.temporary {
                // PostgreSQL keeps a new copy temporary until the primary's slot has moved past
                // what this standby holds; a promotion drops temporary slots.
                status.problems.append("this standby's copy of the slot is not persisted yet (temporary): the primary's slot must first move past "
                                       + "what this standby holds, which happens once spout confirms new changes; a failover now would lose the slot")
            }
            status.problems += standbyProblems(settings)
        } else {
            let setting = settings["synchronized_standby_slots"] ?? ""
            status.standbySlotsSetting = setting
            let names = setting.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if names.isEmpty, status.failover == true {
                status.problems.append("synchronized_standby_slots is empty: spout may confirm changes no standby has received, "
                                       + "and a promoted standby's slot would be behind them; set it to the standbys' physical slots "
                                       + "(ALTER SYSTEM SET synchronized_standby_slots = 'standby1'; SELECT pg_reload_conf())")
            }
            for name in names {
                let physical = try connection.query("""
                    SELECT active, restart_lsn FROM pg_replication_slots WHERE slot_name = \(SQL.literal(name)) AND slot_type = 'physical'
                    """, context: "cannot read pg_replication_slots").first
                var standby = FailoverStatus.StandbySlot(name: name)
                if let physical, physical.count == 2 {
                    standby.active = physical[0] == "t"
                    standby.flushed = physical[1].flatMap { LSN($0) }
                    if let confirmed, let flushed = standby.flushed {
                        standby.behindBytes = confirmed > flushed ? confirmed.rawValue - flushed.rawValue : 0
                    }
                    if standby.active == false {
                        status.problems.append("the standby of physical slot \"\(name)\" (synchronized_standby_slots) is not connected: "
                                               + "logical decoding waits for it, so spout receives nothing new until it is back or removed from the setting")
                    }
                } else {
                    status.problems.append("synchronized_standby_slots names \"\(name)\", which is not a physical slot here: "
                                           + "logical decoding waits for it forever; create it (SELECT pg_create_physical_replication_slot('\(name)')) "
                                           + "and set it as the standby's primary_slot_name, or remove it from the setting")
                }
                status.standbySlots.append(standby)
            }
        }
        return status
    }

    /// What a standby needs for slot synchronization (PostgreSQL 17 "Replication Slot
    /// Synchronization"), as far as this role may read its settings.
    static func standbyProblems(_ settings: [String: String]) -> [String] {
        var problems: [String] = []
        if settings["sync_replication_slots"] != "on" {
            problems.append("sync_replication_slots is off on this standby: set it on (ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf())")
        }
        if settings["hot_standby_feedback"] != "on" {
            problems.append("hot_standby_feedback is off on this standby: slot synchronization needs it on")
        }
        if let level = settings["wal_level"], level != "logical" {
            problems.append("wal_level is \"\(level)\" on this standby: slot synchronization needs logical (restart needed)")
        }
        if (settings["primary_slot_name"] ?? "").isEmpty {
            problems.append("primary_slot_name is not set on this standby: give it a physical slot on the primary, and name that slot in the primary's synchronized_standby_slots")
        }
        if let conninfo = settings["primary_conninfo"] {
            if !conninfoNamesDatabase(conninfo) {
                problems.append("primary_conninfo has no dbname on this standby: slot synchronization connects to a database; add dbname=postgres (any database)")
            }
        } else {
            problems.append("cannot read primary_conninfo (it needs superuser or pg_read_all_settings): make sure it has a dbname")
        }
        return problems
    }

    /// `dbname=…` in a key/value connection string, or a database path in a URL.
    static func conninfoNamesDatabase(_ conninfo: String) -> Bool {
        let text = conninfo.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            let rest = text.drop(while: { $0 != ":" }).dropFirst(3)
            guard let slash = rest.firstIndex(of: "/") else { return rest.contains("dbname=") }
            let path = rest[rest.index(after: slash)...].prefix(while: { $0 != "?" })
            return !path.isEmpty || rest.contains("dbname=")
        }
        return text.contains(#/(^|\s)dbname\s*=/#)
    }
}
