import CLibPQ
import Foundation

/// The CopyBoth phase of a logical replication connection, in the shape of
/// pg_recvlogical's loop: read without blocking, wait on the socket, send feedback.
public final class ReplicationStream {
    public let connection: PostgresConnection
    public let protocolVersion: Int
    private let slot: String
    private let publication: String
    private var ended = false

    /// The highest pgoutput protocol the server speaks: 4 on 16+, 3 on 15, 2 on 14.
    public static func protocolVersion(forServer version: Int) -> Int {
        switch version {
        case 160000...: 4
        case 150000...: 3
        case 140000...: 2
        default: 1
        }
    }

    /// Sends `START_REPLICATION`; on return the connection is in CopyBoth mode.
    public init(connection: PostgresConnection, slot: String, publication: String, start: LSN) throws(SpoutError) {
        self.connection = connection
        self.slot = slot
        self.publication = publication
        protocolVersion = Self.protocolVersion(forServer: connection.serverVersion)
        var options = ["\"proto_version\" '\(protocolVersion)'",
                       "\"publication_names\" \(SQL.literal(SQL.identifier(publication)))"]
        if protocolVersion >= 2 { options.append("\"messages\" 'true'") }
        let command = "START_REPLICATION SLOT \(SQL.identifier(slot)) LOGICAL \(start) (\(options.joined(separator: ", ")))"
        guard let result = PQexec(connection.handle, command) else {
            throw .connectionLost(detail: connection.lastErrorMessage)
        }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_BOTH else {
            let error = connection.error(from: result, context: "cannot start streaming from slot \"\(slot)\"")
            guard case let .server(serverError, _) = error else { throw error }
            if serverError.sqlState == "55006" {
                let pid = Self.pid(in: serverError.message)
                let client = try? pid.flatMap { pid in
                    try connection.query(ReplicationSetup.clientSQL(pid: pid), context: "").first?.first ?? nil
                }
                throw .slotActive(slot: slot, pid: pid ?? "?", client: client ?? nil)
            }
            if serverError.sqlState == "55000", serverError.message.contains("cannot read from logical replication slot") {
                throw .slotLost(slot: slot, reason: "wal_removed")
            }
            throw error
        }
    }

    static func pid(in message: String) -> String? {
        guard let range = message.range(of: "PID ") else { return nil }
        let digits = message[range.upperBound...].prefix { $0.isNumber }
        return digits.isEmpty ? nil : String(digits)
    }

    /// The result of one non-blocking read.
    public enum Read {
        /// One CopyData message; valid only inside the `read` call.
        case message(UnsafeRawBufferPointer)
        /// Nothing buffered: wait for the socket.
        case wouldBlock
        /// The server ended the copy.
        case ended
    }

    /// Reads one CopyData message if one is buffered, without blocking. The buffer passed
    /// to `body` is freed when `body` returns.
    public func read<R>(_ body: (Read) throws(SpoutError) -> R) throws(SpoutError) -> R {
        var buffer: UnsafeMutablePointer<CChar>?
        let length = PQgetCopyData(connection.handle, &buffer, 1)
        // A notice is taken in while libpq parses the input, before the messages after it are
        // handed out: nothing decoded after a skipped change reaches the session.
        if let skipped = connection.notices.skippedPublication {
            if let buffer { PQfreemem(buffer) }
            throw skippedPublication(skipped)
        }
        if length > 0, let buffer {
            defer { PQfreemem(buffer) }
            return try body(.message(UnsafeRawBufferPointer(start: buffer, count: Int(length))))
        }
        switch length {
        case 0: return try body(.wouldBlock)
        case -1:
            ended = true
            try finishCopyResult()
            return try body(.ended)
        default:
            throw .connectionLost(detail: connection.lastErrorMessage)
        }
    }

    /// After the copy ends, the command's result says why (an ERROR, or a clean end).
    private func finishCopyResult() throws(SpoutError) {
        var failure: SpoutError?
        collectResults(until: ContinuousClock.now + .seconds(5)) { result in
            let status = PQresultStatus(result)
            if status != PGRES_COMMAND_OK, status != PGRES_TUPLES_OK, failure == nil {
                failure = explained(connection.error(from: result, context: "streaming stopped"))
            }
        }
        if let failure { throw failure }
    }

    /// pgoutput looks the publication up with the catalog as it was at each decoded change, so a
    /// publication dropped and created again is "missing" for all WAL written before its
    /// re-creation — on every start, though it exists now.
    private func explained(_ error: SpoutError) -> SpoutError {
        guard case let .server(serverError, _) = error, serverError.sqlState == "42704",
              serverError.message.contains("publication") else { return error }
        return .publicationChanged(
            "PostgreSQL cannot use publication \"\(publication)\" for the WAL slot \"\(slot)\" still holds (\(serverError.message)): the "
            + "publication was dropped and created again after the slot's position, and PostgreSQL decodes each change with the catalog "
            + "as it was then, so this repeats on every start. Inserts between the drop and the re-creation were never published. "
            + "To recover: advance the slot past the re-creation (SELECT pg_replication_slot_advance('\(slot)', pg_current_wal_lsn())), "
            + "re-publish outbox rows written since spout last ran from the table, then restart spout")
    }

    /// PostgreSQL 18 skipped a change because the publication did not exist at its point in
    /// the WAL (a publication dropped and created again): say so, as earlier versions' error does.
    private func skippedPublication(_ message: String) -> SpoutError {
        explained(.server(ServerError(sqlState: "42704", message: message, detail: nil, hint: nil), while: "streaming"))
    }

    /// Reads the remaining results without blocking past `deadline`. A result still in a
    /// COPY state would be handed out again on every call (libpq), so it ends the loop.
    private func collectResults(until deadline: ContinuousClock.Instant, _ inspect: (OpaquePointer) -> Void) {
        while ContinuousClock.now < deadline {
            if PQisBusy(connection.handle) == 1 {
                var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 100)
                guard PQconsumeInput(connection.handle) == 1 else { return }
                continue
            }
            guard let result = PQgetResult(connection.handle) else { return }
            let status = PQresultStatus(result)
            inspect(result)
            PQclear(result)
            if status == PGRES_COPY_OUT || status == PGRES_COPY_IN || status == PGRES_COPY_BOTH { return }
        }
    }

    /// Waits until the socket is readable, one of `others` is readable, or `timeout` passes;
    /// then lets libpq take in what arrived.
    public func wait(readingSocket: Bool, others: [Int32], timeout: Duration) throws(SpoutError) {
        var descriptors: [pollfd] = []
        if readingSocket { descriptors.append(pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)) }
        for descriptor in others { descriptors.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)) }
        let milliseconds = Int32(clamping: max(0, timeout.wholeMilliseconds))
        let ready = poll(&descriptors, nfds_t(descriptors.count), milliseconds)
        if ready < 0, errno != EINTR {
            throw .connectionLost(detail: "poll failed: \(String(cString: strerror(errno)))")
        }
        if readingSocket, ready > 0, descriptors[0].revents != 0 {
            guard PQconsumeInput(connection.handle) == 1 else {
                throw .connectionLost(detail: connection.lastErrorMessage)
            }
        }
    }

    /// Waits, without a connection, until one of `descriptors` is readable or `timeout` passes.
    public static func wait(others descriptors: [Int32], timeout: Duration) throws(SpoutError) {
        var polled = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let milliseconds = Int32(clamping: max(0, timeout.wholeMilliseconds))
        if poll(&polled, nfds_t(polled.count), milliseconds) < 0, errno != EINTR {
            throw .connectionLost(detail: "poll failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Moves what the socket holds into libpq's buffer (one non-blocking read), without
    /// waiting for it to become readable.
    public func readSocket() throws(SpoutError) {
        guard PQconsumeInput(connection.handle) == 1 else { throw .connectionLost(detail: connection.lastErrorMessage) }
    }

    /// Sends a standby status update (`'r'`).
    public func send(_ update: StandbyStatusUpdate) throws(SpoutError) {
        let bytes = update.encode()
        let sent = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(connection.handle, $0.baseAddress, Int32($0.count)) }
        }
        guard sent == 1, PQflush(connection.handle) == 0 else {
            throw .connectionLost(detail: connection.lastErrorMessage)
        }
    }

    /// Ends the copy cleanly (as pg_recvlogical does): CopyDone, then drain until the
    /// server's CommandComplete, for at most a few seconds (a walsender busy replaying a large
    /// transaction may not answer soon; closing the connection is then just as safe).
    public func finish() {
        guard !ended else { return }
        ended = true
        guard PQputCopyEnd(connection.handle, nil) == 1, PQflush(connection.handle) == 0 else { return }
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(connection.handle, &buffer, 1)
            if let buffer { PQfreemem(buffer) }
            if length > 0 { continue }
            if length == 0 {
                var descriptor = pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 100)
                guard PQconsumeInput(connection.handle) == 1 else { return }
                continue
            }
            break
        }
        collectResults(until: deadline) { _ in }
    }
}
