import ArgumentParser
import Foundation
import SpoutCore

struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the publication and the replication slot (idempotent).",
        discussion: "Run it as a role that owns the outbox table (CREATE PUBLICATION needs it); spout run can then use a least-privilege role (sql/role.sql).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LogOptions

    @Flag(name: .customLong("print"), help: "Print the SQL instead of running it.")
    var printOnly = false

    @OptionGroup var lostSlot: LostSlotOption
    @OptionGroup var failover: FailoverOption

    func run() async throws {
        try await reportingErrors(database.flags + logging.flags + lostSlot.flags + failover.flags) { settings in
            let log = try LogOptions.log(settings)
            var setup = try database.setup(settings)
            if printOnly {
                // No server to ask for its version: a failover slot only when asked for.
                setup.failover = try settings.given(.failover)?.boolean() ?? false
                print("-- Publication: inserts into the outbox only (cleanup deletes are not events).")
                print(setup.publicationSQL)
                print("-- Where spout remembers the slots it created, so that a lost slot is noticed (the run role needs")
                print("-- SELECT, INSERT, UPDATE on it, see sql/role.sql).")
                print(SlotMarker.createSQL(schema: setup.table.schema))
                print("-- Logical replication slot with the pgoutput plugin" + (setup.failover ? ", a failover slot (PostgreSQL 17+)."
                      : " (on PostgreSQL 17+ spout setup makes it a failover slot unless --no-failover: a fifth argument, true)."))
                print(setup.slotSQL)
                return
            }
            let connection = try database.connect(settings, applicationName: PostgresConnection.applicationName("setup"))
            try ReplicationSetup.checkServer(connection)
            setup.failover = try FailoverOption.enabled(settings, serverVersion: connection.serverVersion)
            try setup.checkTable(connection)
            let createdPublication = try setup.ensurePublication(connection, create: true)
            log.info(createdPublication ? "created publication \"\(setup.publication)\" for \(setup.table) (inserts only)"
                     : "publication \"\(setup.publication)\" exists and publishes \(setup.table)",
                     metadata: ["publication": "\(setup.publication)", "table": "\(setup.table)"])
            do { try SlotMarker.migrate(connection, schema: setup.table.schema) } catch { log.warning("\(error)") }
            let provision = try setup.provisionSlot(connection, create: true, onLost: try LostSlotOption.onSlotLost(settings, log: log),
                                                    snapshot: try LostSlotOption.snapshot(settings), log: log)
            let (state, created) = (provision.state, provision.created)
            log.info(created ? "created replication slot \"\(setup.slot)\" at \(state.confirmedFlush?.description ?? "?")"
                     : "replication slot \"\(setup.slot)\" exists (confirmed_flush_lsn \(state.confirmedFlush?.description ?? "?"))",
                     metadata: ["slot": "\(setup.slot)", "lsn": "\(state.confirmedFlush?.description ?? "")"])
            if !created { try setup.ensureFailover(connection, conninfo: settings.text(.databaseURL), enabled: setup.failover, log: log) }
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the slot: active or not, confirmed_flush_lsn, restart_lsn, WAL held back, and (PostgreSQL 17+) whether it is a failover slot synchronized to standbys.",
        discussion: "Pointed at a standby, shows the standby's synchronized copy of the slot and the settings slot synchronization still needs.")

    @OptionGroup var database: DatabaseOptions

    @Flag(name: .customLong("json"), help: "Print one JSON object.")
    var json = false

    func run() async throws {
        try await reportingErrors(database.flags) { settings in
            let connection = try database.connect(settings)
            let slot = settings.text(.slot)
            // A standby has no current WAL position (pg_current_wal_lsn() fails in recovery): what it replayed.
            let rows = try connection.query("""
                SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn, restart_lsn, wal_status,
                       pg_wal_lsn_diff(w.lsn, restart_lsn)::bigint,
                       pg_wal_lsn_diff(w.lsn, confirmed_flush_lsn)::bigint,
                       w.lsn
                  FROM pg_replication_slots,
                       (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn) w
                 WHERE slot_name = \(SQL.literal(slot))
                """, context: "cannot read pg_replication_slots")
            let failover = try ReplicationSetup.failoverStatus(connection, slot: slot)
            guard let row = rows.first else {
                guard failover.isStandby else { throw SpoutError.slotMissing(slot: slot) }
                let missing = failover.problems.isEmpty ? "" : "; here: " + failover.problems.joined(separator: "; ")
                throw SpoutError.slotUnusable(slot: slot, reason: "is not on this standby",
                                              fix: "PostgreSQL 17+ copies failover slots to standbys that synchronize slots: check with spout status on the primary "
                                                  + "that it is a failover slot, and on this standby sync_replication_slots = on, hot_standby_feedback = on, "
                                                  + "primary_slot_name and a dbname in primary_conninfo" + missing)
            }
            let fields = ["slot", "plugin", "database", "active", "active_pid", "confirmed_flush_lsn", "restart_lsn",
                          "wal_status", "wal_held_bytes", "lag_bytes", "current_wal_lsn"]
            if json {
                let numeric: Set<String> = ["active_pid", "wal_held_bytes", "lag_bytes"]
                let members: [(name: String, value: JSONWriter.Value)] = zip(fields, row).map { name, value in
                    switch (name, value) {
                    case (_, nil): (name, .null)
                    case ("active", let value?): (name, .bool(value == "t"))
                    case (let name, let value?) where numeric.contains(name): (name, Int64(value).map { .integer($0) } ?? .string(value))
                    case (_, let value?): (name, .string(value))
                    }
                }
                // issue 15: whether this connection is encrypted (TLS)
                let tls = connection.encryption
                let encryption: [(name: String, value: JSONWriter.Value)] = [
                    ("encrypted", .bool(tls != nil)),
                    ("tls_protocol", tls.map { .string($0.protocol) } ?? .null), ("tls_cipher", tls.map { .string($0.cipher) } ?? .null),
                ]
                print(Self.json(members + encryption, failover: failover))
            } else {
                for (name, value) in zip(fields, row) {
                    var text = value ?? "-"
                    if name == "active" { text = value == "t" ? "yes" : "no" }
                    if name.hasSuffix("_bytes"), let bytes = value.flatMap({ Int64($0) }) { text = formatBytes(bytes) }
                    print(Self.line(name, text))
                }
                Self.printText(failover)
                print(Self.line("connection", connection.encryptionDescription)) // issue 15: TLS
            }
        }
    }

    static func line(_ name: String, _ text: String) -> String { name.padding(toLength: 20, withPad: " ", startingAt: 0) + text }

    static func printText(_ status: ReplicationSetup.FailoverStatus) {
        func yesNo(_ flag: Bool?) -> String { flag.map { $0 ? "yes" : "no" } ?? "- (PostgreSQL 17+)" }
        print(line("server", status.isStandby ? "standby" : "primary"))
        print(line("failover", yesNo(status.failover)))
        print(line("synced", yesNo(status.synced) + (status.temporary ? " (temporary: not persisted yet)" : "")))
        if let setting = status.standbySlotsSetting {
            print(line("standby_slots", setting.isEmpty ? "- (synchronized_standby_slots is empty)" : Log.escaped(setting)))
            for standby in status.standbySlots {
                print(line("  " + standby.name, standbyText(standby)))
            }
        }
        for problem in status.problems { print(line("problem", Log.escaped(problem))) }
    }

    static func standbyText(_ standby: ReplicationSetup.FailoverStatus.StandbySlot) -> String {
        guard let active = standby.active else { return "missing (no physical slot of that name)" }
        var text = active ? "connected" : "not connected"
        if let flushed = standby.flushed { text += ", flushed \(flushed)" }
        if let behind = standby.behindBytes {
            text += behind == 0 ? " (has everything the slot confirmed)" : " (\(formatBytes(Int64(clamping: behind))) behind the slot's confirmed_flush_lsn)"
        }
        return Log.escaped(text)
    }

    /// The slot's fields, then the failover ones; `standby_slots` and `failover_problems` are
    /// arrays, written with the same writer and spliced in.
    static func json(_ members: [(name: String, value: JSONWriter.Value)], failover status: ReplicationSetup.FailoverStatus) -> String {
        var object = JSONWriter.object(members + [
            ("server_role", .string(status.isStandby ? "standby" : "primary")),
            ("failover", status.failover.map { .bool($0) } ?? .null),
            ("synced", status.synced.map { .bool($0) } ?? .null),
            ("temporary", .bool(status.temporary)),
            ("synchronized_standby_slots", status.standbySlotsSetting.map { .string($0) } ?? .null),
        ])
        let standbys = status.standbySlots.map { standby in
            JSONWriter.object([
                ("slot", .string(standby.name)), ("exists", .bool(standby.active != nil)),
                ("active", standby.active.map { .bool($0) } ?? .null),
                ("flushed_lsn", standby.flushed.map { .string($0.description) } ?? .null),
                ("behind_bytes", standby.behindBytes.map { .integer(Int64(clamping: $0)) } ?? .null),
            ])
        }
        var problems: [UInt8] = []
        for (index, problem) in status.problems.enumerated() {
            if index > 0 { problems.append(UInt8(ascii: ",")) }
            JSONWriter.appendString(problem, to: &problems)
        }
        object.removeLast()
        object += ",\"standby_slots\":[" + standbys.joined(separator: ",") + "],\"failover_problems\":["
            + String(decoding: problems, as: UTF8.self) + "]}"
        return object
    }
}

struct Slot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List or drop logical replication slots.",
                                                    subcommands: [List.self, Drop.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the logical replication slots of every database.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await reportingErrors(database.flags) { settings in
                let connection = try database.connect(settings, applicationName: PostgresConnection.applicationName("admin"))
                // An invalidated slot is not merely "inactive": it can never stream again.
                let rows = try connection.query("""
                    SELECT s.slot_name, s.plugin, s.database,
                           CASE WHEN \(ReplicationSetup.invalidationSQL(connection)) IS NOT NULL
                                THEN 'invalidated (' || \(ReplicationSetup.invalidationSQL(connection)) || ')'
                                WHEN s.active THEN 'active' ELSE 'inactive' END,
                           s.confirmed_flush_lsn, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint
                      FROM pg_replication_slots s WHERE s.slot_type = 'logical' ORDER BY s.slot_name
                    """, context: "cannot read pg_replication_slots")
                print(["SLOT", "PLUGIN", "DATABASE", "STATE", "CONFIRMED", "WAL HELD"].map { $0.padding(toLength: 18, withPad: " ", startingAt: 0) }.joined())
                for row in rows {
                    var cells = row.map { Log.escaped($0 ?? "-") }
                    if let bytes = row[5].flatMap({ Int64($0) }) { cells[5] = formatBytes(bytes) }
                    print(cells.map { $0.padding(toLength: max(18, $0.count + 1), withPad: " ", startingAt: 0) }.joined())
                }
            }
        }
    }

    struct Drop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Drop a replication slot. Events not yet confirmed from it are gone for spout.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The slot to drop.") var name: String

        func run() async throws {
            try await reportingErrors(database.flags) { settings in
                let connection = try database.connect(settings, applicationName: PostgresConnection.applicationName("admin"))
                guard let state = try ReplicationSetup.slotState(connection, slot: name) else { throw SpoutError.slotMissing(slot: name) }
                guard !state.active else { throw SpoutError.slotActive(slot: name, pid: state.activePID ?? "?", client: state.activeClient) }
                try connection.query("SELECT pg_drop_replication_slot(\(SQL.literal(name)))", context: "cannot drop slot \"\(name)\"")
                // Dropping through spout is the explicit choice: forget the slot, so the next run creates a new one.
                try SlotMarker.remove(connection, schema: try DatabaseOptions.table(settings).schema, slot: name)
                Log().info("dropped replication slot \"\(name)\"", metadata: ["slot": "\(name)"])
            }
        }
    }
}

func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@ (%lld bytes)", value, units[unit], bytes)
}

/// How `run` and `setup` create a slot: what to do with a lost one (`--on-slot-lost`, and its
/// deprecated spelling `--recreate-lost-slot`), and whether a new one first publishes the
/// rows already in the table (`--snapshot`).
struct LostSlotOption: ParsableArguments {
    @Option(name: .customLong("on-slot-lost"), help: ArgumentHelp(
        "A slot spout created that is gone, or an invalidated slot: fail (stop with the cause and the fix) or recreate (create it again, publish the rows the table holds from its snapshot, then stream; events delivered before come again) (default: fail). [SPOUT_ON_SLOT_LOST]",
        valueName: "fail|recreate"))
    var onSlotLostFlag: String?

    @Flag(name: .customLong("recreate-lost-slot"), help: ArgumentHelp("Deprecated: --on-slot-lost recreate. [SPOUT_RECREATE_LOST_SLOT]"))
    var flag = false

    @Option(name: .customLong("snapshot"), help: ArgumentHelp(
        "initial: a slot spout creates first publishes the rows already in the table (from the slot's exported snapshot), then streams; never: only rows inserted later (default: never). [SPOUT_SNAPSHOT]",
        valueName: "initial|never"))
    var snapshotFlag: String?

    var flags: Settings.Flags {
        Settings.Flags(flags: [.onSlotLost: onSlotLostFlag, .snapshot: snapshotFlag], switches: [.recreateLostSlot: flag])
    }

    static func onSlotLost(_ settings: Settings, log: Log) throws -> ReplicationSetup.SlotLostPolicy {
        var policy = ReplicationSetup.SlotLostPolicy.fail
        let given = settings.given(.onSlotLost)
        if let given {
            guard let chosen = ReplicationSetup.SlotLostPolicy(rawValue: given.value.lowercased()) else { throw given.invalid("is not fail or recreate") }
            policy = chosen
        }
        if let alias = settings.given(.recreateLostSlot), try alias.boolean() {
            if let given, policy != .recreate {
                throw SpoutError.invalidOption("\(alias.display()) contradicts \(given.display()): give only --on-slot-lost")
            }
            log.warning("\(alias.display()) is deprecated: use --on-slot-lost recreate")
            policy = .recreate
        }
        return policy
    }

    static func snapshot(_ settings: Settings) throws -> ReplicationSetup.InitialSnapshot {
        guard let given = settings.given(.snapshot) else { return .never }
        guard let chosen = ReplicationSetup.InitialSnapshot(rawValue: given.value.lowercased()) else { throw given.invalid("is not initial or never") }
        return chosen
    }
}

// issue 12: failover slots
/// `--failover` / `--no-failover`: whether spout's slot is a failover slot, which PostgreSQL
/// 17+ copies to standbys with `sync_replication_slots = on` (default: on exactly for 17+).
struct FailoverOption: ParsableArguments {
    @Flag(name: .customLong("failover"), inversion: .prefixedNo, help: ArgumentHelp(
        "Create the slot as a failover slot, synchronized to standbys (PostgreSQL 17+; default: on for 17+, off before). [SPOUT_FAILOVER]"))
    var flag: Bool?

    var flags: Settings.Flags { Settings.Flags(flags: [.failover: flag.map { $0 ? "true" : "false" }]) }

    /// The choice for this server; a --failover it cannot honour is an error naming where it was set.
    static func enabled(_ settings: Settings, serverVersion: Int) throws -> Bool {
        let given = settings.given(.failover)
        let requested = try given?.boolean()
        let decision = Result { () throws(SpoutError) -> Bool in try ReplicationSetup.failover(requested: requested, serverVersion: serverVersion) }
        let error: SpoutError
        switch decision {
        case let .success(enabled): return enabled
        case let .failure(failure): error = failure
        }
        // The message names --failover: name the variable or file line instead when it came from there.
        guard let given, case let .invalidOption(message) = error, message.hasPrefix(Setting.failover.flag) else { throw error }
        throw SpoutError.invalidOption(given.label + message.dropFirst(Setting.failover.flag.count))
    }
}
