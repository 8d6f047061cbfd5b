import CNats
import Synchronization

/// Where one connection's publish acknowledgements land. libnats calls the ack handler on
/// its own threads; the handler records the outcome here and signals the wakeup, and the
/// sink takes the outcomes on the relay thread.
final class NATSAckInbox: Sendable {
    struct Completion: Sendable {
        var ticket: UInt64
        /// nil: the stream stored the message (a PubAck, possibly flagged duplicate).
        var failure: NATSFailure?
    }

    private struct State {
        /// In-flight messages by the address of their `natsMsg` (the ack handler gets that
        /// message back) → ticket.
        var tickets: [UInt: UInt64] = [:]
        var completions: [Completion] = []
        var closedReason: String?
        var asyncError: String?
    }

    private let state: Mutex<State>
    private let wakeup: Wakeup

    init(wakeup: Wakeup, capacity: Int) {
        var initial = State()
        initial.tickets.reserveCapacity(capacity)
        initial.completions.reserveCapacity(capacity)
        state = Mutex(initial)
        self.wakeup = wakeup
    }

    func expect(message: UInt, ticket: UInt64) {
        state.withLock { _ = $0.tickets.updateValue(ticket, forKey: message) }
    }

    func forget(message: UInt) {
        state.withLock { _ = $0.tickets.removeValue(forKey: message) }
    }

    /// Called by libnats threads.
    func complete(message: UInt, failure: NATSFailure?) {
        let signal = state.withLock { state -> Bool in
            guard let ticket = state.tickets.removeValue(forKey: message) else { return false }
            state.completions.append(Completion(ticket: ticket, failure: failure))
            // One wakeup per batch: the sink takes all completions at once.
            return state.completions.count == 1
        }
        if signal { wakeup.signal() }
    }

    /// Called by libnats threads when the connection closed on its own (server gone).
    func connectionClosed(reason: String) {
        state.withLock { $0.closedReason = $0.closedReason ?? reason }
        wakeup.signal()
    }

    /// Called by libnats threads for errors not tied to a call (e.g. a permissions violation).
    func asynchronousError(_ text: String) {
        state.withLock { $0.asyncError = text }
    }

    /// Moves the completions into `spare` (which must be empty; the buffers swap, so neither
    /// side allocates) and returns why the connection closed, if it did.
    func take(into spare: inout [Completion]) -> (closedReason: String?, asyncError: String?) {
        state.withLock { state in
            swap(&state.completions, &spare)
            return (state.closedReason, state.asyncError)
        }
    }
}

/// Lets libnats callbacks find their connection's inbox by a number rather than by a pointer
/// to a Swift object: libnats does not join its subscription threads when a connection is
/// destroyed, so a callback may still run after `NATSConnection.close()`. It then finds no
/// entry and only frees the message.
enum NATSCallbackRegistry {
    private struct Entries {
        var next = 1
        var inboxes: [Int: NATSAckInbox] = [:]
    }

    private static let entries = Mutex(Entries())

    static func register(_ inbox: NATSAckInbox) -> UnsafeMutableRawPointer? {
        let key = entries.withLock { entries -> Int in
            let key = entries.next
            entries.next += 1
            entries.inboxes[key] = inbox
            return key
        }
        return UnsafeMutableRawPointer(bitPattern: key)
    }

    static func remove(_ closure: UnsafeMutableRawPointer?) {
        let key = Int(bitPattern: closure)
        _ = entries.withLock { $0.inboxes.removeValue(forKey: key) }
    }

    static func inbox(_ closure: UnsafeMutableRawPointer?) -> NATSAckInbox? {
        let key = Int(bitPattern: closure)
        return entries.withLock { $0.inboxes[key] }
    }
}

/// The C callbacks libnats calls on its threads; their closure argument is a registry key.
enum NATSCallbacks {
    static let ack: jsPubAckHandler = { _, message, _, failure, closure in
        if let inbox = NATSCallbackRegistry.inbox(closure) {
            let failure = failure.map { pointer in
                NATSFailure(status: pointer.pointee.Err, errorCode: Int(pointer.pointee.ErrCode.rawValue),
                            text: pointer.pointee.ErrText.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(pointer.pointee.Err)))
            }
            inbox.complete(message: UInt(bitPattern: message), failure: failure)
        }
        // The ack handler owns the message (nats.h, jsPubAckHandler).
        natsMsg_Destroy(message)
    }

    static let closed: natsConnectionHandler = { connection, closure in
        guard let inbox = NATSCallbackRegistry.inbox(closure) else { return }
        var text: UnsafePointer<CChar>?
        let status = natsConnection_GetLastError(connection, &text)
        let detail = status == NATS_OK ? nil : text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status))
        inbox.connectionClosed(reason: "the connection was lost" + (detail.map { " (\($0))" } ?? ""))
    }

    static let error: natsErrHandler = { connection, _, status, closure in
        guard let inbox = NATSCallbackRegistry.inbox(closure) else { return }
        var text: UnsafePointer<CChar>?
        _ = natsConnection_GetLastError(connection, &text)
        inbox.asynchronousError(text.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status)))
    }
}
