/// Opens the replication stream on the slot, one attempt at a time: after a lost connection,
/// and for a standby waiting until the slot is released. The waiting, backoff and logging are
/// the relay's (`Relay.reconnect`); this only connects, re-checks the slot and starts streaming.
public final class ReplicationConnector {
    /// What one attempt found.
    public enum Attempt {
        /// Streaming; `slotConfirmed` is the slot's confirmed_flush_lsn as the attempt read it.
        case streaming(ReplicationStream, slotConfirmed: LSN?)
        /// Another client streams from the slot (a standby waits for it).
        case held(pid: String, client: String?)
        /// This process's own earlier walsender still held the slot (the server had not yet
        /// noticed the old connection is gone); it was terminated: try again shortly.
        case releasedOwn(pid: String)
        /// The database cannot be reached now (or refused the stream for a passing reason).
        case failed(SpoutError)
    }

    private let conninfo: String
    private let setup: ReplicationSetup
    /// This process's `application_name` (with its pid), to recognise its own old walsender.
    public let applicationName: String
    private let log: Log
    /// A connection kept while the slot is held, so a standby's checks do not connect each time.
    private var waiting: PostgresConnection?

    public init(conninfo: String, setup: ReplicationSetup, applicationName: String, log: Log) {
        self.conninfo = conninfo
        self.setup = setup
        self.applicationName = applicationName
        self.log = log
    }

    public var slot: String { setup.slot }

    /// One attempt to stream from `start` (the server starts at its slot's position when that is
    /// further). Throws what no retry can fix: the slot is missing or invalidated, the
    /// publication changed, the URL is unusable.
    public func attempt(at start: LSN) throws(SpoutError) -> Attempt {
        do {
            let connection: PostgresConnection
            if let waiting { connection = waiting } else {
                connection = try PostgresConnection(conninfo, replication: true, applicationName: applicationName)
            }
            waiting = nil
            // Before streaming again: the slot may have been dropped or invalidated meanwhile.
            let (state, _) = try setup.provideSlot(connection, create: false, log: log)
            if state.active, let pid = state.activePID {
                if let client = state.activeClient, client == applicationName || client.hasPrefix(applicationName + " from ") {
                    try connection.query("SELECT pg_terminate_backend(\(pid))", context: "cannot end the previous walsender (pid \(pid))")
                    waiting = connection
                    return .releasedOwn(pid: pid)
                }
                waiting = connection
                return .held(pid: pid, client: state.activeClient)
            }
            let stream = try ReplicationStream(connection: connection, slot: setup.slot, publication: setup.publication, start: start)
            return .streaming(stream, slotConfirmed: state.confirmedFlush)
        } catch {
            waiting = nil
            if case let .slotActive(_, pid, client) = error { return .held(pid: pid, client: client) }
            guard error.isConnectionLoss else { throw error }
            return .failed(error)
        }
    }
}
