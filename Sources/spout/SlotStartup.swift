import Foundation
import SpoutCore

/// `run`'s slot, before streaming: found, or created (again) with an exported snapshot whose
/// rows are published and acknowledged first (`--snapshot initial`, `--on-slot-lost recreate`,
/// or a snapshot an earlier run did not finish). One call from `Run`, on the replication
/// connection it streams on, before START_REPLICATION. Like `ReplicationSetup.provideSlot`,
/// it returns a slot in use by another client as it is (the caller refuses it or waits).
enum SlotStartup {
    static func provideSlot(_ setup: ReplicationSetup, connection: PostgresConnection, create: Bool, settings: Settings,
                           mapper: EventMapper, sink: Sink, options: Relay.Options, failover: Bool = false,
                           log: Log) throws -> (state: ReplicationSetup.SlotState, created: Bool) {
        let provision = try setup.provisionSlot(connection, create: create, onLost: try LostSlotOption.onSlotLost(settings, log: log),
                                                snapshot: try LostSlotOption.snapshot(settings), replication: true,
                                                failover: failover, log: log)
        if let exported = provision.snapshot {
            var snapshot = SlotSnapshot(setup: setup, conninfo: settings.text(.databaseURL), mapper: mapper, log: log)
            snapshot.maxInFlightEvents = options.maxInFlightEvents
            snapshot.maxInFlightBytes = options.maxInFlightBytes
            try snapshot.publish(exported, replication: connection, sink: sink)
        }
        return (provision.state, provision.created)
    }

    /// `provideSlot`, standing by while another spout holds the slot's snapshot lock (it is
    /// publishing the rows of the slot it just created, which looks idle meanwhile): checked
    /// every second until that spout streams (the relay then stands by on the slot) or stops
    /// (this one then creates the slot again with a new snapshot). Stop signals are not caught
    /// yet: nothing was handed to the sink, so they end spout at once.
    static func provideSlotStandingBy(_ setup: ReplicationSetup, connection: PostgresConnection, create: Bool, settings: Settings,
                                      mapper: EventMapper, sink: Sink, options: Relay.Options, failover: Bool = false,
                                      log: Log) throws -> (state: ReplicationSetup.SlotState, created: Bool) {
        var standingBy = false
        while true {
            do {
                return try provideSlot(setup, connection: connection, create: create, settings: settings, mapper: mapper, sink: sink,
                                       options: options, failover: failover, log: log)
            } catch let SpoutError.slotActive(slot, pid, client) where options.standby {
                if !standingBy {
                    standingBy = true
                    log.info("standby: slot \"\(slot)\" is held by pid \(pid) (\(client ?? "unknown client")) while it publishes the slot's snapshot, "
                             + "taking over when it is released", metadata: ["slot": "\(slot)"])
                }
                sleep(1)
            }
        }
    }
}
