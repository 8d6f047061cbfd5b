import CoreMetrics
import Foundation
import SpoutCore
import Synchronization

/// `spout_lag_bytes`: the server's WAL position minus the slot's confirmed position, read every
/// few seconds on its own thread and connection (never the relay's). A failed query leaves the
/// last value and tries again next time.
public final class LagWatch: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let conninfo: String
    private let slot: String
    private let interval: Duration
    private let gauge: Gauge

    public init(conninfo: String, slot: String, sink: String, interval: Duration = .seconds(5), factory: MetricsFactory) {
        self.conninfo = conninfo
        self.slot = slot
        self.interval = interval
        gauge = Gauge(label: "spout_lag_bytes", dimensions: [("sink", sink)], factory: factory)
    }

    public func start() {
        let thread = Thread { [self] in run() }
        thread.name = "spout-lag"
        thread.start()
    }

    public func stop() { stopped.store(true, ordering: .relaxed) }

    private func run() {
        var connection: PostgresConnection?
        // On a standby server (logical slots there: PostgreSQL 16+) the WAL position is what it received.
        let sql = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"
            + " - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = \(SQL.literal(slot))"
        while !stopped.load(ordering: .relaxed) {
            do throws(SpoutError) {
                if connection == nil { connection = try PostgresConnection(conninfo, applicationName: PostgresConnection.applicationName("metrics")) }
                if let text = try connection?.query(sql, context: "cannot read the slot's lag").first?.first ?? nil, let bytes = Int64(text) {
                    gauge.record(max(0, bytes))
                }
            } catch {
                connection = nil
            }
            let deadline = ContinuousClock.now + interval
            while !stopped.load(ordering: .relaxed), ContinuousClock.now < deadline { usleep(100_000) }
        }
    }
}
